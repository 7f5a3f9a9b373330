//! `fs-aware`: the claim fsroute exists for. Three emulated FreeSWITCH boxes of unequal size
//! (Max-Sessions 400/200/100, the middle one also busy with 50% background CPU), offered
//! 85% of their total capacity, routed three ways: blind round-robin with static equal
//! weights; the dispatcher with FreeSWITCH weights (`weight = "fs://..."`: each box's
//! heartbeat sets its weight); and the load_balancer with FreeSWITCH capacities. A mode this
//! build rejects (`fsroute check` fails) is reported as not available, never guessed.
//!
//! The boxes are the ESL crate's emulator in-process: its capacity model answers 503 when
//! full and answers later as it fills (answer delay × (1 + 4·load²), ringing at a fifth of
//! it), and its heartbeats report the same story (Idle-CPU falling with load). Callers retry
//! a 503 once, at once, as an upstream carrier does. The table: 503s seen by callers, calls
//! finally rejected, retries, retransmissions, PDD p50/p90/p99 and per-box utilisation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fsroute_esl::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use serde::Serialize;

use crate::common::{machine, next_run_id, Opts};
use crate::peers::{Dest, Peer, ProxyConfig};
use crate::report::{progress, us, Table};
use crate::uac::{self, UacConfig, UacReport};

/// One emulated box.
#[derive(Clone, Debug, Serialize)]
pub struct BoxSpec {
    pub max_sessions: u64,
    pub background_cpu: u32,
}

/// Everything that sizes an fs-aware run (the scenario and `fsroute demo` use different sizes).
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub boxes: Vec<BoxSpec>,
    /// Share of total capacity offered (0.85 = 85%).
    pub load: f64,
    pub hold: Duration,
    pub answer_delay: Duration,
    pub heartbeat: Duration,
    pub duration: Duration,
    pub shards: usize,
}

impl Params {
    pub fn scenario(o: &Opts) -> Params {
        let smoke = o.smoke;
        Params {
            boxes: [(400, 5), (200, 50), (100, 5)]
                .into_iter()
                .map(|(m, bg)| BoxSpec { max_sessions: if smoke { m / 10 } else { m }, background_cpu: bg })
                .collect(),
            load: 0.85,
            hold: if smoke { Duration::from_millis(500) } else { Duration::from_secs(4) },
            answer_delay: Duration::from_millis(100),
            heartbeat: Duration::from_secs(1),
            duration: o.duration.unwrap_or(if smoke { Duration::from_secs(3) } else { Duration::from_secs(20) }),
            shards: 2,
        }
    }

    /// Offered calls/s: load × capacity / (time a call holds a session: answer delay + hold).
    pub fn rate(&self) -> f64 {
        let cap: u64 = self.boxes.iter().map(|b| b.max_sessions).sum();
        // The answer delay at ~85% load is about 1 + 4·0.85² ≈ 3.9 times the idle one.
        let occupancy = self.hold.as_secs_f64() + self.answer_delay.as_secs_f64() * 3.9;
        self.load * cap as f64 / occupancy
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BoxUse {
    pub sip: String,
    pub max_sessions: u64,
    pub background_cpu: u32,
    pub answered: u64,
    pub rejected_503: u64,
    pub peak_calls: u64,
    /// Mean active calls / Max-Sessions over the load window.
    pub mean_utilisation: f64,
    pub peak_utilisation: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModeRun {
    pub mode: String,
    /// None when this build cannot run the mode; then `unavailable` says why.
    pub uac: Option<UacReport>,
    pub unavailable: Option<String>,
    pub boxes: Vec<BoxUse>,
    pub proxy_cpu_s: Option<f64>,
    /// Offered load as a share of capacity, as planned.
    pub offered_rate: f64,
}

#[derive(Serialize)]
pub struct FsAwareResult {
    pub machine: String,
    pub params: Params,
    pub modes: Vec<ModeRun>,
    pub plot: Option<String>,
    pub conclusion: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    RoundRobin,
    FsWeights,
    LoadBalancer,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::RoundRobin => "blind round-robin (equal weights)",
            Mode::FsWeights => "dispatcher + FreeSWITCH weights",
            Mode::LoadBalancer => "load_balancer + FreeSWITCH capacity",
        }
    }
}

fn proxy_cfg(mode: Mode, p: &Params, emus: &[EmulatorHandle]) -> ProxyConfig {
    let fs = |e: &EmulatorHandle| format!("fs://:ClueCon@{}", e.esl_addr());
    let custom_rows = (mode == Mode::LoadBalancer).then(|| {
        let mut s = String::new();
        for e in emus {
            s.push_str(&format!(
                "[[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:{}\"\nresources = \"ch={}\"\n\n",
                e.sip_addr(),
                fs(e)
            ));
        }
        s.push_str("[[route]]\nto_load_balancer = 1\nresources = \"ch\"\n");
        s
    });
    ProxyConfig {
        shards: p.shards,
        ingress: "flow",
        algorithm: "round-robin",
        dests: emus
            .iter()
            .map(|e| Dest { addr: e.sip_addr(), weight: if mode == Mode::FsWeights { format!("\"{}\"", fs(e)) } else { "1".into() } })
            .collect(),
        control_extra: String::new(),
        custom_rows,
    }
}

fn start_boxes(p: &Params) -> Result<Vec<EmulatorHandle>, String> {
    p.boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Emulator::start(EmulatorConfig {
                max_sessions: b.max_sessions,
                background_cpu: b.background_cpu,
                // The caller hangs up (BYE after `hold`); the box's own hangup comes much later.
                hold: p.hold + Duration::from_secs(60),
                heartbeat: p.heartbeat,
                answer_delay: p.answer_delay,
                hostname: format!("fsemu{}", i + 1),
                ..EmulatorConfig::default()
            })
            .map_err(|e| format!("emulator: {e}"))
        })
        .collect()
}

/// Waits until fsroute reports every fs:// destination connected (bounded), so the run does
/// not start on stale weights.
fn wait_fs_connected(peer: &Peer, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = peer.status() {
            let dests = st["dispatcher"][0]["destinations"].as_array().cloned().unwrap_or_default();
            let lb = st["load_balancer"].as_array().is_some_and(|a| !a.is_empty());
            if lb || (!dests.is_empty() && dests.iter().all(|d| d["fs"]["connected"].as_bool() == Some(true) && d["fs"]["stale"].as_bool() != Some(true))) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_mode(mode: Mode, p: &Params) -> Result<ModeRun, String> {
    let emus = start_boxes(p)?;
    let cfg = proxy_cfg(mode, p, &emus);
    let rate = p.rate();
    if let Err(e) = crate::peers::fsroute_accepts(&cfg) {
        return Ok(ModeRun {
            mode: mode.name().into(),
            uac: None,
            unavailable: Some(format!("not available in this build: {e}")),
            boxes: Vec::new(),
            proxy_cpu_s: None,
            offered_rate: rate,
        });
    }
    let peer = Peer::fsroute(&cfg)?;
    if mode != Mode::RoundRobin {
        wait_fs_connected(&peer, Duration::from_secs(5) + p.heartbeat * 2);
    }
    let ucfg = UacConfig {
        targets: vec![peer.sip],
        sockets: 2,
        threads: 1,
        rate,
        duration: p.duration,
        hold: p.hold,
        // Long enough for the slowest answer (5 x the idle delay) plus retries.
        timer_b: Duration::from_secs(8),
        drain: Duration::from_millis(500),
        retry_503: true,
        backends: emus.iter().map(EmulatorHandle::sip_addr).collect(),
        run_id: next_run_id(),
    };
    // Sample each box's active calls while the load runs (utilisation over time).
    let stop = AtomicBool::new(false);
    let samples: Mutex<Vec<Vec<u64>>> = Mutex::new(vec![Vec::new(); emus.len()]);
    let cpu0 = peer.cpu_secs();
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < p.duration {
                {
                    let mut g = samples.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, e) in emus.iter().enumerate() {
                        g[i].push(e.active_calls());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = uac::run(&ucfg);
        stop.store(true, Ordering::Relaxed);
        r
    })
    .map_err(|e| format!("generator: {e}"))?;
    let cpu = peer.cpu_secs() - cpu0;
    let samples = samples.into_inner().unwrap_or_default();
    let boxes = emus
        .iter()
        .zip(&p.boxes)
        .zip(&samples)
        .map(|((e, b), smp)| {
            let mean = if smp.is_empty() { 0.0 } else { smp.iter().sum::<u64>() as f64 / smp.len() as f64 };
            BoxUse {
                sip: e.sip_addr().to_string(),
                max_sessions: b.max_sessions,
                background_cpu: b.background_cpu,
                answered: e.calls_answered(),
                rejected_503: e.calls_rejected(),
                peak_calls: e.peak_calls(),
                mean_utilisation: mean / b.max_sessions.max(1) as f64,
                peak_utilisation: e.peak_calls() as f64 / b.max_sessions.max(1) as f64,
            }
        })
        .collect();
    Ok(ModeRun { mode: mode.name().into(), uac: Some(report), unavailable: None, boxes, proxy_cpu_s: Some(cpu), offered_rate: rate })
}

/// Runs the comparison with the given sizes; `pb_label` names the progress bar.
pub fn run_with(p: &Params, out_dir: &std::path::Path, pb_label: &str) -> Result<FsAwareResult, String> {
    let modes = [Mode::RoundRobin, Mode::FsWeights, Mode::LoadBalancer];
    let per = p.duration + p.hold + Duration::from_secs(3);
    let pb = progress(per * 3, pb_label);
    let t0 = Instant::now();
    let mut runs = Vec::new();
    for m in modes {
        pb.set_message(format!("{pb_label}: {}", m.name()));
        runs.push(run_mode(m, p)?);
        pb.set_position(t0.elapsed().as_secs());
    }
    pb.finish_and_clear();
    let plot = crate::plot::pdd_cdf(&runs, &out_dir.join(format!("fsroute-bench-pdd-cdf-{}.svg", std::process::id()))).ok();
    let conclusion = conclude(&runs);
    Ok(FsAwareResult { machine: machine(), params: p.clone(), modes: runs, plot, conclusion })
}

pub fn run(o: &Opts) -> Result<FsAwareResult, String> {
    run_with(&Params::scenario(o), &o.out_dir, "fs-aware")
}

/// One line saying what the table shows, computed from the numbers (never a fixed claim).
pub fn conclude(runs: &[ModeRun]) -> String {
    let rr = runs.iter().find(|r| r.mode == Mode::RoundRobin.name()).and_then(|r| r.uac.as_ref());
    let fw = runs.iter().find(|r| r.mode == Mode::FsWeights.name()).and_then(|r| r.uac.as_ref());
    match (rr, fw) {
        (Some(rr), Some(fw)) => {
            let ratio = if fw.pdd.p99_us > 0 { rr.pdd.p99_us as f64 / fw.pdd.p99_us as f64 } else { 0.0 };
            format!(
                "At the same offered load, FreeSWITCH weights gave callers {} 503s (vs {} blind), {} rejected calls (vs {}), and p99 PDD {} vs {} ({:.2}x {}).",
                fw.responses_503,
                rr.responses_503,
                fw.rejected_503,
                rr.rejected_503,
                us(fw.pdd.p99_us),
                us(rr.pdd.p99_us),
                if ratio >= 1.0 { ratio } else if ratio > 0.0 { 1.0 / ratio } else { 0.0 },
                if ratio >= 1.0 { "lower" } else { "HIGHER" }
            )
        }
        (Some(rr), None) => format!(
            "Only blind round-robin could run in this build: callers saw {} 503s and p99 PDD {}; FreeSWITCH-weighted modes are not available yet.",
            rr.responses_503,
            us(rr.pdd.p99_us)
        ),
        _ => "no mode ran".into(),
    }
}

pub fn render(r: &FsAwareResult) -> String {
    let p = &r.params;
    let boxes: Vec<String> =
        p.boxes.iter().map(|b| format!("{}{}", b.max_sessions, if b.background_cpu > 10 { format!(" (+{}% bg CPU)", b.background_cpu) } else { String::new() })).collect();
    let mut t = Table::new(
        format!(
            "fs-aware: {} emulated FreeSWITCH boxes, Max-Sessions {}; offered {:.0}% of capacity = {:.0} calls/s for {:.0} s, hold {:.1} s, heartbeat {:.0} s; fsroute {} shards, 2 peers ({})",
            p.boxes.len(),
            boxes.join("/"),
            p.load * 100.0,
            p.rate(),
            p.duration.as_secs_f64(),
            p.hold.as_secs_f64(),
            p.heartbeat.as_secs_f64(),
            p.shards,
            r.machine
        ),
        &["mode", "calls", "answered", "503 seen", "rejected", "retries", "retransmit", "timed out", "PDD p50", "PDD p90", "PDD p99", "utilisation mean/peak per box"],
    );
    for m in &r.modes {
        match &m.uac {
            None => t.row(vec![m.mode.clone(), "n/a".into()]),
            Some(u) => t.row(vec![
                m.mode.clone(),
                u.attempted.to_string(),
                u.answered.to_string(),
                u.responses_503.to_string(),
                u.rejected_503.to_string(),
                u.retries.to_string(),
                (u.invite_retransmissions + u.bye_retransmissions).to_string(),
                u.timed_out.to_string(),
                us(u.pdd.p50_us),
                us(u.pdd.p90_us),
                us(u.pdd.p99_us),
                m.boxes
                    .iter()
                    .map(|b| format!("{:.0}/{:.0}%", b.mean_utilisation * 100.0, b.peak_utilisation * 100.0))
                    .collect::<Vec<_>>()
                    .join("  "),
            ]),
        }
    }
    let mut s = t.render();
    for m in &r.modes {
        if let Some(reason) = &m.unavailable {
            s.push_str(&format!("{}: {reason}\n", m.mode));
        }
    }
    if let Some(pl) = &r.plot {
        s.push_str(&format!("PDD CDF per mode: {pl}\n"));
    }
    s.push_str(&r.conclusion);
    s.push('\n');
    s
}
