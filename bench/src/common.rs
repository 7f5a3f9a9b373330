//! What the scenarios share: options, one measured load step against a target (UAC run plus
//! the target's CPU from /proc before and after), the pass rule, and the search for the
//! highest zero-failure rate (ramp by doubling, then bisection with short steps).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;

use crate::peers::Peer;
use crate::uac::{self, UacConfig, UacReport};

/// Options every scenario takes.
#[derive(Clone, Debug)]
pub struct Opts {
    pub json: bool,
    /// Overrides the main measurement length of a scenario.
    pub duration: Option<Duration>,
    /// A few seconds, for CI: low rates, short steps, same code paths.
    pub smoke: bool,
    pub uac_threads: usize,
    /// Where pictures go (fs-aware).
    pub out_dir: std::path::PathBuf,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { json: false, duration: None, smoke: false, uac_threads: 1, out_dir: std::env::temp_dir() }
    }
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// A run id unique to this process and step, so stragglers of an earlier step are ignored.
pub fn next_run_id() -> u64 {
    (u64::from(std::process::id()) << 20) + RUN.fetch_add(1, Ordering::Relaxed) + 1
}

/// One measured load step.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub target: String,
    pub peers: usize,
    pub rate: f64,
    pub pass: bool,
    /// Why a step failed (empty when it passed).
    pub why: String,
    pub uac: UacReport,
    pub proxy_cpu_s: Option<f64>,
    pub proxy_cpu_per_call_us: Option<f64>,
    /// System calls of the proxy per call offered (only in a step run by
    /// [`run_step_counting_syscalls`]; the count includes the 0.3 s before the load).
    pub proxy_syscalls_per_call: Option<f64>,
}

/// Parameters of a step: everything but the rate.
#[derive(Clone, Debug)]
pub struct StepSpec {
    pub target: SocketAddr,
    /// When set, socket i sends to `targets[i % len]` instead (direct mode: UAC → UAS).
    pub targets: Vec<SocketAddr>,
    pub backends: Vec<SocketAddr>,
    pub peers: usize,
    pub threads: usize,
    pub duration: Duration,
    pub hold: Duration,
    pub timer_b: Duration,
}

/// The pass rule of the throughput search: every call completed, no 503, no retransmission
/// (on loopback a retransmission means a datagram was dropped somewhere: overload), and the
/// generator kept its schedule (otherwise the step measured the generator, not the target).
pub fn judge(r: &UacReport) -> (bool, String) {
    let mut why = Vec::new();
    if r.failed() > 0 {
        why.push(format!("{} failed ({} timed out)", r.failed(), r.timed_out));
    }
    if r.responses_503 > 0 {
        why.push(format!("{} x 503", r.responses_503));
    }
    if r.invite_retransmissions + r.bye_retransmissions > 0 {
        why.push(format!("{} retransmissions", r.invite_retransmissions + r.bye_retransmissions));
    }
    if r.max_send_lag_ms > 50.0 {
        why.push(format!("generator {:.0} ms behind schedule", r.max_send_lag_ms));
    }
    (why.is_empty(), why.join(", "))
}

pub fn run_step(name: &str, peer: Option<&Peer>, spec: &StepSpec, rate: f64) -> Result<Step, String> {
    let cfg = UacConfig {
        targets: if spec.targets.is_empty() { vec![spec.target] } else { spec.targets.clone() },
        sockets: spec.peers,
        threads: spec.threads,
        rate,
        duration: spec.duration,
        hold: spec.hold,
        timer_b: spec.timer_b,
        drain: Duration::from_millis(300),
        retry_503: true,
        backends: spec.backends.clone(),
        run_id: next_run_id(),
        ..UacConfig::default()
    };
    let cpu0 = peer.map(Peer::cpu_secs);
    let r = uac::run(&cfg).map_err(|e| format!("generator: {e}"))?;
    let cpu = peer.map(Peer::cpu_secs).zip(cpu0).map(|(b, a)| b - a);
    let (pass, why) = judge(&r);
    let per_call = cpu.filter(|_| r.attempted > 0).map(|c| c * 1e6 / r.attempted as f64);
    Ok(Step {
        target: name.to_string(),
        peers: spec.peers,
        rate,
        pass,
        why,
        uac: r,
        proxy_cpu_s: cpu,
        proxy_cpu_per_call_us: per_call,
        proxy_syscalls_per_call: None,
    })
}

/// A step at `rate` whose proxy system calls are counted (sys::SyscallCounter); its CPU figure is
/// not comparable with other steps' (the tracepoint costs a little per syscall).
pub fn run_step_counting_syscalls(name: &str, peer: &crate::peers::Peer, spec: &StepSpec, rate: f64) -> Result<Step, String> {
    let counter = crate::sys::SyscallCounter::start(peer.pid(), peer.dir.0.join("perf-syscalls.csv"));
    let mut step = run_step(name, Some(peer), spec, rate)?;
    step.proxy_cpu_s = None;
    step.proxy_cpu_per_call_us = None;
    step.proxy_syscalls_per_call = counter.and_then(|c| c.finish()).filter(|_| step.uac.attempted > 0).map(|n| n as f64 / step.uac.attempted as f64);
    Ok(step)
}

#[derive(Clone, Debug)]
pub struct SearchParams {
    pub start: f64,
    pub cap: f64,
    pub max_steps: usize,
    /// Stop bisecting when the bracket is this narrow (relative).
    pub precision: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Search {
    pub target: String,
    pub peers: usize,
    /// Highest passing rate (calls/s); 0 when even the first step failed.
    pub max_rate: f64,
    /// Lowest failing rate seen, if any (the true limit lies between).
    pub first_fail: Option<f64>,
    pub steps: Vec<Step>,
}

impl Search {
    pub fn best(&self) -> Option<&Step> {
        self.steps.iter().filter(|s| s.pass).max_by(|a, b| a.rate.total_cmp(&b.rate))
    }

    /// Calls that saw reordering over all steps, and calls answered over all steps.
    pub fn reorders(&self) -> (u64, u64) {
        self.steps.iter().fold((0, 0), |(r, a), s| (r + s.uac.reordered_calls, a + s.uac.answered))
    }
}

/// Finds the highest zero-failure rate: doubling from `start` until a step fails, then
/// bisection, all bounded by `max_steps`.
pub fn search(name: &str, peer: Option<&Peer>, spec: &StepSpec, p: &SearchParams, pb: &ProgressBar, t0: Instant) -> Result<Search, String> {
    let mut s = Search { target: name.to_string(), peers: spec.peers, max_rate: 0.0, first_fail: None, steps: Vec::new() };
    let mut rate = p.start;
    let mut lo = 0.0f64;
    let mut hi: Option<f64> = None;
    while s.steps.len() < p.max_steps {
        pb.set_message(format!("{name} @ {rate:.0}/s"));
        let st = run_step(name, peer, spec, rate)?;
        pb.set_position(t0.elapsed().as_secs());
        let pass = st.pass;
        s.steps.push(st);
        if pass {
            lo = lo.max(rate);
        } else {
            hi = Some(hi.map_or(rate, |h: f64| h.min(rate)));
        }
        rate = match hi {
            None if rate * 2.0 <= p.cap => rate * 2.0,
            None => break,
            Some(h) => {
                if lo > 0.0 && (h - lo) / h < p.precision {
                    break;
                }
                if lo == 0.0 {
                    // Even the start failed: look lower.
                    h / 2.0
                } else {
                    (lo + h) / 2.0
                }
            }
        };
        if rate < 10.0 {
            break;
        }
        // Let queues in the target drain between steps.
        std::thread::sleep(Duration::from_millis(150));
    }
    s.max_rate = lo;
    s.first_fail = hi;
    Ok(s)
}

/// The machine line every table carries.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    format!("{model}, {cores} cores, loopback")
}
