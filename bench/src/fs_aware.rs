//! `fs-aware`: the claim fsroute exists for. Three emulated FreeSWITCH boxes, each bound by a
//! different limit FreeSWITCH enforces (docs/ADMISSION.md): one by Max-Sessions, one by CPU (it is
//! busy with other work and has `min-idle-cpu` set), one by `sessions-per-second`; the boxes are a
//! one-way network delay away, so a refused INVITE costs a real round trip. They are offered a share
//! (85 %) of what the pool can really hold, routed four ways: blind round-robin *with failover*
//! (how a carrier configures the incumbents), the dispatcher with FreeSWITCH weights, the
//! load_balancer with FreeSWITCH capacity (the headroom model), and the load_balancer with
//! `capacity_model = "opensips"`; each at every heartbeat interval asked for. A mode this build
//! rejects (`fsroute check` fails) is reported as not available, never guessed.
//!
//! The boxes are the emulator (`fsroute-fsemu`) in-process, enforcing FreeSWITCH's admission (503
//! Maximum Calls In Progress + Retry-After: 300) and reporting the same story over ESL. Callers do
//! not retry: a call the caller did not get answered is lost. The table: calls lost, INVITEs the
//! boxes refused (each a wasted round trip), PDD p50/p90/p99, per-box utilisation of its real
//! capacity, and what the boxes refused by reason (which limit bound).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fsroute_fsemu::{Emulator, EmulatorConfig, EmulatorHandle};
use serde::Serialize;

use crate::common::{machine, next_run_id, Opts};
use crate::peers::{Dest, Peer, ProxyConfig};
use crate::report::{progress, us, Table};
use crate::uac::{self, UacConfig, UacReport};

/// One emulated box.
#[derive(Clone, Debug, Serialize)]
pub struct BoxSpec {
    /// Which limit is meant to bind it (for the table).
    pub binds: &'static str,
    pub max_sessions: u64,
    pub background_cpu: u32,
    /// Idle-CPU points one session costs.
    pub cpu_per_session: f64,
    pub min_idle_cpu: f64,
    pub sessions_per_second: u64,
}

impl BoxSpec {
    /// Sessions the box admits by CPU: Idle = 100 − background − cost × S stays ≥ min-idle-cpu.
    pub fn cpu_sessions(&self) -> u64 {
        let spare = 100.0 - f64::from(self.background_cpu) - self.min_idle_cpu;
        if self.cpu_per_session <= 0.0 {
            return u64::MAX;
        }
        (spare.max(0.0) / self.cpu_per_session).floor() as u64
    }

    /// Calls per second the box can really carry with calls occupying it `occupancy` each: the
    /// least of Max-Sessions and CPU over the occupancy, and the sps budget (sps − 1 per second).
    pub fn real_rate(&self, occupancy: f64) -> f64 {
        let concurrent = self.max_sessions.min(self.cpu_sessions()) as f64;
        (concurrent / occupancy).min(self.sessions_per_second.saturating_sub(1) as f64)
    }

    /// The same as concurrent calls (what utilisation is measured against).
    pub fn real_concurrent(&self, occupancy: f64) -> f64 {
        self.real_rate(occupancy) * occupancy
    }
}

/// Everything that sizes an fs-aware run (the scenario and `fsroute demo` use different sizes).
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub boxes: Vec<BoxSpec>,
    /// Share of the pool's real capacity offered (0.85 = 85%).
    pub load: f64,
    pub hold: Duration,
    pub answer_delay: Duration,
    /// Heartbeat intervals to run every mode at.
    pub heartbeats: Vec<Duration>,
    /// One-way delay between fsroute and each box.
    pub network_delay: Duration,
    /// The emulator's `cpu-idle-smoothing-depth` (FreeSWITCH's default is 30).
    pub idle_cpu_smoothing: u32,
    /// The same load, unmeasured, before the measured run: boxes in production have carried calls
    /// before (and fsroute learns their CPU cost from that); a pool that has never seen a call
    /// measures a cold start instead. At least one and a half heartbeat intervals, so a slow
    /// heartbeat has given fsroute a few readings too.
    pub warmup: Duration,
    pub duration: Duration,
    pub shards: usize,
}

impl Params {
    pub fn scenario(o: &Opts) -> Params {
        let smoke = o.smoke;
        Params {
            boxes: pool(if smoke { 4 } else { 1 }),
            load: 0.85,
            hold: if smoke { Duration::from_millis(1500) } else { Duration::from_secs(3) },
            answer_delay: Duration::from_millis(10),
            heartbeats: if smoke { vec![Duration::from_secs(1)] } else { vec![Duration::from_secs(1), Duration::from_secs(20)] },
            network_delay: Duration::from_millis(10),
            idle_cpu_smoothing: 3,
            warmup: if smoke { Duration::from_secs(1) } else { Duration::from_secs(10) },
            duration: o.duration.unwrap_or(if smoke { Duration::from_secs(3) } else { Duration::from_secs(20) }),
            shards: 2,
        }
    }

    /// How long a call occupies a session: ringing and answer at the box's base delay, plus the hold.
    pub fn occupancy(&self) -> f64 {
        self.hold.as_secs_f64() + self.answer_delay.as_secs_f64() * 2.0 + 4.0 * self.network_delay.as_secs_f64()
    }

    /// The pool's real capacity in calls/s.
    pub fn capacity_rate(&self) -> f64 {
        self.boxes.iter().map(|b| b.real_rate(self.occupancy())).sum()
    }

    /// Offered calls/s.
    pub fn rate(&self) -> f64 {
        self.load * self.capacity_rate()
    }
}

/// The three boxes: Max-Sessions binds the first, CPU the second (50 % busy with other work,
/// min-idle-cpu 10), sessions-per-second the third. `shrink` divides the session limits (smoke).
pub fn pool(shrink: u64) -> Vec<BoxSpec> {
    vec![
        BoxSpec { binds: "sessions", max_sessions: 60 / shrink, background_cpu: 5, cpu_per_session: 0.05, min_idle_cpu: 0.0, sessions_per_second: 100 },
        BoxSpec { binds: "cpu", max_sessions: 1000, background_cpu: 50, cpu_per_session: 0.8 * shrink as f64, min_idle_cpu: 10.0, sessions_per_second: 100 },
        BoxSpec { binds: "sps", max_sessions: 1000, background_cpu: 5, cpu_per_session: 0.05, min_idle_cpu: 0.0, sessions_per_second: 6 },
    ]
}

#[derive(Clone, Debug, Serialize)]
pub struct BoxUse {
    pub sip: String,
    pub binds: &'static str,
    pub answered: u64,
    /// INVITEs the box refused, by reason.
    pub refused: u64,
    pub refused_sessions: u64,
    pub refused_cpu: u64,
    pub refused_sps: u64,
    pub peak_calls: u64,
    /// Mean and peak active calls over the box's real capacity in concurrent calls.
    pub mean_utilisation: f64,
    pub peak_utilisation: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModeRun {
    pub mode: String,
    pub heartbeat_s: f64,
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
    LoadBalancerOpensips,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::RoundRobin, Mode::FsWeights, Mode::LoadBalancer, Mode::LoadBalancerOpensips];

    fn name(self) -> &'static str {
        match self {
            Mode::RoundRobin => "blind round-robin + failover",
            Mode::FsWeights => "dispatcher + fs weights",
            Mode::LoadBalancer => "load_balancer + fs capacity",
            Mode::LoadBalancerOpensips => "load_balancer, opensips model",
        }
    }
}

fn proxy_cfg(mode: Mode, p: &Params, emus: &[EmulatorHandle], heartbeat: Duration) -> ProxyConfig {
    let fs = |e: &EmulatorHandle| format!("fs://:ClueCon@{}", e.esl_addr());
    let failover = "[failover]\ncodes = [408, 500, 503]\nmax_attempts = 3\nno_answer_timeout = \"2s\"\n\n";
    let mut rows = String::from(failover);
    match mode {
        Mode::LoadBalancer | Mode::LoadBalancerOpensips => {
            for e in emus {
                rows.push_str(&format!("[[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:{}\"\nresources = \"ch={}\"\n\n", e.sip_addr(), fs(e)));
            }
            rows.push_str("[[route]]\nto_load_balancer = 1\nresources = \"ch\"\n");
        }
        Mode::RoundRobin | Mode::FsWeights => {
            for e in emus {
                let w = if mode == Mode::FsWeights { format!("\"{}\"", fs(e)) } else { "1".into() };
                rows.push_str(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"sip:{}\"\nweight = {w}\n\n", e.sip_addr()));
            }
            rows.push_str("[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\nfailover = true\n");
        }
    }
    let model = if mode == Mode::LoadBalancerOpensips { "opensips" } else { "headroom" };
    ProxyConfig {
        shards: p.shards,
        ingress: "flow",
        algorithm: "round-robin",
        dests: emus.iter().map(|e| Dest { addr: e.sip_addr(), weight: "1".into() }).collect(),
        // Stale after three missed heartbeats, as an operator would set it.
        // fsroute is told the boxes' smoothing depth, as an operator who changed it would.
        control_extra: format!(
            "capacity_model = \"{model}\"\nheartbeat_timeout = \"{}ms\"\nidle_cpu_smoothing = {}\n",
            (heartbeat * 3).as_millis(),
            p.idle_cpu_smoothing
        ),
        custom_rows: Some(rows),
        tcp_listen: None,
        proxy_extra: String::new(),
    }
}

fn start_boxes(p: &Params, heartbeat: Duration) -> Result<Vec<EmulatorHandle>, String> {
    p.boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Emulator::start(EmulatorConfig {
                max_sessions: b.max_sessions,
                background_cpu: b.background_cpu,
                cpu_per_session: b.cpu_per_session,
                min_idle_cpu: b.min_idle_cpu,
                sessions_per_second: b.sessions_per_second,
                idle_cpu_smoothing: p.idle_cpu_smoothing,
                network_delay: p.network_delay,
                // The caller hangs up (BYE after `hold`); the box's own hangup comes much later.
                hold: p.hold + Duration::from_secs(60),
                heartbeat,
                answer_delay: p.answer_delay,
                hostname: format!("fsemu{}", i + 1),
                ..EmulatorConfig::default()
            })
            .map_err(|e| format!("emulator: {e}"))
        })
        .collect()
}

/// Waits until fsroute has numbers from every box (bounded), so a run does not start before
/// the boxes have spoken.
pub(crate) fn wait_fs_connected(peer: &Peer, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = peer.status() {
            let boxes = st["freeswitch"].as_array().cloned().unwrap_or_default();
            if !boxes.is_empty() && boxes.iter().all(|b| b["connected"].as_bool() == Some(true) && b["heartbeat_age_ms"].is_u64()) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_mode(mode: Mode, p: &Params, heartbeat: Duration) -> Result<ModeRun, String> {
    let emus = start_boxes(p, heartbeat)?;
    let cfg = proxy_cfg(mode, p, &emus, heartbeat);
    let rate = p.rate();
    let hb = heartbeat.as_secs_f64();
    if let Err(e) = crate::peers::fsroute_accepts(&cfg) {
        return Ok(ModeRun {
            mode: mode.name().into(),
            heartbeat_s: hb,
            uac: None,
            unavailable: Some(format!("not available in this build: {e}")),
            boxes: Vec::new(),
            proxy_cpu_s: None,
            offered_rate: rate,
        });
    }
    let peer = Peer::fsroute(&cfg)?;
    wait_fs_connected(&peer, Duration::from_secs(5));
    let uac_cfg = |duration: Duration| UacConfig {
        targets: vec![peer.sip],
        sockets: 2,
        threads: 1,
        rate,
        duration,
        hold: p.hold,
        timer_b: Duration::from_secs(8),
        drain: Duration::from_millis(500),
        retry_503: false,
        backends: emus.iter().map(EmulatorHandle::sip_addr).collect(),
        run_id: next_run_id(),
        ..UacConfig::default()
    };
    let warmup = if p.warmup.is_zero() { p.warmup } else { p.warmup.max(heartbeat * 3 / 2) };
    if !warmup.is_zero() {
        uac::run(&uac_cfg(warmup)).map_err(|e| format!("generator (warm-up): {e}"))?;
    }
    // What the boxes did during the warm-up is not part of the measurement.
    let before: Vec<_> = emus.iter().map(|e| (e.refusals(), e.calls_answered())).collect();
    let ucfg = uac_cfg(p.duration);
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
    let occ = p.occupancy();
    let boxes = emus
        .iter()
        .zip(&p.boxes)
        .zip(&samples)
        .zip(&before)
        .map(|(((e, b), smp), (r0, a0))| {
            // Utilisation once the load is on: the first hold time is the ramp from an empty pool.
            let ramp = ((p.hold.as_secs_f64() * 10.0) as usize).min(smp.len() / 2);
            let steady = &smp[ramp..];
            let mean = if steady.is_empty() { 0.0 } else { steady.iter().sum::<u64>() as f64 / steady.len() as f64 };
            let peak = smp.iter().copied().max().unwrap_or(0);
            let cap = b.real_concurrent(occ).max(1.0);
            let r = e.refusals();
            let (sessions, cpu, sps) = (r.sessions - r0.sessions, r.cpu - r0.cpu, r.sps - r0.sps);
            BoxUse {
                sip: e.sip_addr().to_string(),
                binds: b.binds,
                answered: e.calls_answered() - a0,
                refused: r.total() - r0.total(),
                refused_sessions: sessions,
                refused_cpu: cpu,
                refused_sps: sps,
                peak_calls: peak,
                mean_utilisation: mean / cap,
                peak_utilisation: peak as f64 / cap,
            }
        })
        .collect();
    Ok(ModeRun { mode: mode.name().into(), heartbeat_s: hb, uac: Some(report), unavailable: None, boxes, proxy_cpu_s: Some(cpu), offered_rate: rate })
}

/// Runs the comparison with the given sizes; `pb_label` names the progress bar.
pub fn run_with(p: &Params, out_dir: &std::path::Path, pb_label: &str) -> Result<FsAwareResult, String> {
    let per = p.warmup + p.duration + p.hold * 2 + Duration::from_secs(8);
    let runs_n = (Mode::ALL.len() * p.heartbeats.len()) as u32;
    let pb = progress(per * runs_n, pb_label);
    let t0 = Instant::now();
    let mut runs = Vec::new();
    for &hb in &p.heartbeats {
        for m in Mode::ALL {
            pb.set_message(format!("{pb_label}: {} (heartbeat {} s)", m.name(), hb.as_secs_f64()));
            runs.push(run_mode(m, p, hb)?);
            pb.set_position(t0.elapsed().as_secs());
        }
    }
    pb.finish_and_clear();
    let plot = crate::plot::pdd_cdf(&runs, &out_dir.join(format!("fsroute-bench-pdd-cdf-{}.svg", std::process::id()))).ok();
    let conclusion = conclude(&runs);
    Ok(FsAwareResult { machine: machine(), params: p.clone(), modes: runs, plot, conclusion })
}

pub fn run(o: &Opts) -> Result<FsAwareResult, String> {
    run_with(&Params::scenario(o), &o.out_dir, "fs-aware")
}

/// INVITEs the boxes refused, over calls offered.
pub fn refused_share(m: &ModeRun) -> f64 {
    let refused: u64 = m.boxes.iter().map(|b| b.refused).sum();
    m.uac.as_ref().map_or(0.0, |u| refused as f64 / u.attempted.max(1) as f64)
}

/// Calls the caller did not get answered.
pub fn lost(u: &UacReport) -> u64 {
    u.attempted.saturating_sub(u.answered)
}

/// One line saying what the table shows, computed from the numbers (never a fixed claim): the
/// load_balancer with FreeSWITCH capacity against blind round-robin with failover, at the
/// shortest heartbeat interval that ran.
pub fn conclude(runs: &[ModeRun]) -> String {
    let Some(hb) = runs.iter().map(|r| r.heartbeat_s).reduce(f64::min) else { return "no mode ran".into() };
    let find = |m: Mode| runs.iter().find(|r| r.mode == m.name() && r.heartbeat_s == hb).filter(|r| r.uac.is_some());
    match (find(Mode::RoundRobin), find(Mode::LoadBalancer)) {
        (Some(rr), Some(lb)) => {
            let (ru, lu) = (rr.uac.as_ref().unwrap(), lb.uac.as_ref().unwrap());
            let ratio = if lu.pdd.p99_us > 0 { ru.pdd.p99_us as f64 / lu.pdd.p99_us as f64 } else { 0.0 };
            let verdict = if lu.answered >= ru.answered && refused_share(lb) < refused_share(rr) && ratio >= 1.0 {
                "FreeSWITCH-aware admission beat blind round-robin"
            } else {
                "FreeSWITCH-aware admission did NOT beat blind round-robin on every count"
            };
            format!(
                "{verdict} at {hb} s heartbeats: the load_balancer answered {} of {} calls (blind: {} of {}), its boxes refused {:.1}% of INVITEs (blind: {:.1}%), p99 PDD {} vs {} ({:.2}x {}).",
                lu.answered,
                lu.attempted,
                ru.answered,
                ru.attempted,
                refused_share(lb) * 100.0,
                refused_share(rr) * 100.0,
                us(lu.pdd.p99_us),
                us(ru.pdd.p99_us),
                if ratio >= 1.0 { ratio } else if ratio > 0.0 { 1.0 / ratio } else { 0.0 },
                if ratio >= 1.0 { "lower" } else { "HIGHER" }
            )
        }
        (Some(rr), None) => format!("Only blind round-robin could run in this build: it answered {} of {} calls.", rr.uac.as_ref().unwrap().answered, rr.uac.as_ref().unwrap().attempted),
        _ => "no mode ran".into(),
    }
}

pub fn render(r: &FsAwareResult) -> String {
    let p = &r.params;
    let occ = p.occupancy();
    let boxes: Vec<String> = p
        .boxes
        .iter()
        .map(|b| format!("{} ({:.1} calls/s; M={}, bg {}%, {}/session, min-idle {}, sps {})", b.binds, b.real_rate(occ), b.max_sessions, b.background_cpu, b.cpu_per_session, b.min_idle_cpu, b.sessions_per_second))
        .collect();
    let mut t = Table::new(
        format!(
            "fs-aware: 3 emulated FreeSWITCH boxes bound by {}; offered {:.0}% of {:.1} calls/s = {:.1} calls/s for {:.0} s after a warm-up of max({:.0} s, 1.5 heartbeats), hold {:.1} s, boxes {} ms away, Idle-CPU smoothing {}; fsroute {} shards, api status every 5 s; {}",
            boxes.join(", "),
            p.load * 100.0,
            p.capacity_rate(),
            p.rate(),
            p.duration.as_secs_f64(),
            p.warmup.as_secs_f64(),
            p.hold.as_secs_f64(),
            p.network_delay.as_millis(),
            p.idle_cpu_smoothing,
            p.shards,
            r.machine
        ),
        &["mode", "hb", "calls", "answered", "lost", "refused by boxes", "PDD p50", "PDD p90", "PDD p99", "utilisation mean/peak per box", "refusals by reason per box"],
    );
    for m in &r.modes {
        match &m.uac {
            None => t.row(vec![m.mode.clone(), format!("{} s", m.heartbeat_s), "n/a".into()]),
            Some(u) => t.row(vec![
                m.mode.clone(),
                format!("{} s", m.heartbeat_s),
                u.attempted.to_string(),
                u.answered.to_string(),
                lost(u).to_string(),
                format!("{} ({:.1}%)", m.boxes.iter().map(|b| b.refused).sum::<u64>(), refused_share(m) * 100.0),
                us(u.pdd.p50_us),
                us(u.pdd.p90_us),
                us(u.pdd.p99_us),
                m.boxes.iter().map(|b| format!("{:.0}/{:.0}%", b.mean_utilisation * 100.0, b.peak_utilisation * 100.0)).collect::<Vec<_>>().join("  "),
                m.boxes
                    .iter()
                    .map(|b| format!("{}:{}s/{}c/{}r", b.binds, b.refused_sessions, b.refused_cpu, b.refused_sps))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]),
        }
    }
    let mut s = t.render();
    s.push_str("refusals by reason: s = Max-Sessions, c = min-idle-cpu, r = sessions-per-second\n");
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
