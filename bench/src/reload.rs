//! `reload`: SIGHUP every 100 ms while calls flow. Each reload rewrites the config with
//! different weights (so the table really changes, not a no-op swap); the requirement is
//! zero failed calls, and the table says how many reloads fsroute applied and rejected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::common::{machine, run_step, Opts, Step, StepSpec};
use crate::peers::{Dest, Peer, ProxyConfig};
use crate::report::{progress, us, Table};
use crate::uas::FastUas;

#[derive(Serialize)]
pub struct ReloadResult {
    pub machine: String,
    pub shards: usize,
    pub step: Step,
    pub sighups_sent: u64,
    pub reloads_applied: u64,
    pub reload_failures: u64,
}

pub fn ok(r: &ReloadResult) -> bool {
    r.step.uac.failed() == 0 && r.step.uac.answered > 0 && r.reload_failures == 0
}

fn cfg(shards: usize, backends: &[SocketAddr], flip: bool) -> ProxyConfig {
    ProxyConfig {
        shards,
        ingress: "flow",
        algorithm: "round-robin",
        dests: backends
            .iter()
            .enumerate()
            .map(|(i, b)| Dest { addr: *b, weight: if flip && i == 0 { "2".into() } else { "1".into() } })
            .collect(),
        control_extra: String::new(),
        custom_rows: None,
        tcp_listen: None,
        proxy_extra: String::new(),
    }
}

pub fn run(o: &Opts) -> Result<ReloadResult, String> {
    let shards = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let uas: Vec<FastUas> = (0..2).map(|_| FastUas::start()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let backends: Vec<SocketAddr> = uas.iter().map(FastUas::addr).collect();
    let p = Peer::fsroute(&cfg(shards, &backends, false))?;
    let duration = o.duration.unwrap_or(if o.smoke { Duration::from_secs(2) } else { Duration::from_secs(10) });
    let rate = if o.smoke { 200.0 } else { 2000.0 };
    let spec = StepSpec {
        target: p.sip,
        targets: Vec::new(),
        backends: backends.clone(),
        peers: 4,
        threads: o.uac_threads,
        duration,
        hold: Duration::from_millis(if o.smoke { 100 } else { 500 }),
        // Full RFC Timer B here: a reload must not lose a call, and a lost datagram that is
        // recovered by a retransmission still shows in the retransmission column.
        timer_b: Duration::from_secs(32),
    };
    let pb = progress(duration + Duration::from_secs(1), &format!("reload: SIGHUP every 100 ms @ {rate:.0}/s"));
    let done = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let t0 = Instant::now();
    let step = std::thread::scope(|s| {
        s.spawn(|| {
            let mut flip = false;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                flip = !flip;
                if p.reload(&cfg(shards, &backends, flip)).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                pb.set_position(t0.elapsed().as_secs());
            }
        });
        let r = run_step(&p.name, Some(&p), &spec, rate);
        done.store(true, Ordering::Relaxed);
        r
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let st = p.status().unwrap_or_default();
    pb.finish_and_clear();
    Ok(ReloadResult {
        machine: machine(),
        shards,
        step,
        sighups_sent: sent.load(Ordering::Relaxed),
        reloads_applied: st["config"]["reloads"].as_u64().unwrap_or(0),
        reload_failures: st["config"]["reload_failures"].as_u64().unwrap_or(0),
    })
}

pub fn render(r: &ReloadResult) -> String {
    let u = &r.step.uac;
    let mut t = Table::new(
        format!("reload: SIGHUP every 100 ms under load ({}; fsroute {} shards, {} peers, 2 built-in UAS)", r.machine, r.shards, r.step.peers),
        &["calls/s", "attempted", "completed", "failed", "503", "retransmissions", "SIGHUPs", "applied", "rejected", "PDD p99"],
    );
    t.row(vec![
        format!("{:.0}", r.step.rate),
        u.attempted.to_string(),
        u.completed.to_string(),
        u.failed().to_string(),
        u.responses_503.to_string(),
        (u.invite_retransmissions + u.bye_retransmissions).to_string(),
        r.sighups_sent.to_string(),
        r.reloads_applied.to_string(),
        r.reload_failures.to_string(),
        us(u.pdd.p99_us),
    ]);
    let mut s = t.render();
    s.push_str(if ok(r) { "PASS: no call failed across the reloads\n" } else { "FAIL: calls failed (or reloads were rejected) under SIGHUP\n" });
    s
}
