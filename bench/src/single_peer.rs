//! `single-peer`: all load from one source address, as a carrier edge behind one SBC sees it.
//! Plain SO_REUSEPORT would put it all on one core; this measures what fsroute's two ingress
//! modes do about it: `flow` (per-flow REUSEPORT + hand-off to the Call-ID's owner shard) and
//! `random` (a classic BPF program picks a random socket per datagram). For each: the highest
//! zero-failure rate next to 1 shard, the per-shard shares of received and processed datagrams
//! (from /status) at one common rate, and how many calls saw their responses out of order.
//! That last pair is the measurement behind the ingress design decision.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::common::{machine, run_step, search, Opts, Search, SearchParams, Step, StepSpec};
use crate::peers::{shard_counters, Peer};
use crate::report::{num, progress, Table};
use crate::throughput::fsroute_cfg;
use crate::uas::FastUas;

#[derive(Serialize)]
pub struct ModeResult {
    pub name: String,
    pub shards: usize,
    pub ingress: String,
    pub search: Search,
    pub fixed: Step,
    /// Per shard: share of datagrams read from its socket, and share it processed.
    pub received_share: Vec<f64>,
    pub processed_share: Vec<f64>,
    pub handed_off: u64,
}

#[derive(Serialize)]
pub struct SinglePeerResult {
    pub machine: String,
    pub fixed_rate: f64,
    pub modes: Vec<ModeResult>,
}

fn shares(before: &[(u64, u64, u64)], after: &[(u64, u64, u64)]) -> (Vec<f64>, Vec<f64>, u64) {
    let d: Vec<(u64, u64, u64)> = after
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&(0, 0, 0))))
        .map(|(a, b)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1), a.2.saturating_sub(b.2)))
        .collect();
    let (tr, tp): (u64, u64) = d.iter().fold((0, 0), |(r, p), x| (r + x.0, p + x.1));
    let frac = |v: u64, t: u64| if t == 0 { 0.0 } else { v as f64 / t as f64 };
    (d.iter().map(|x| frac(x.0, tr)).collect(), d.iter().map(|x| frac(x.1, tp)).collect(), d.iter().map(|x| x.2).sum())
}

pub fn run(o: &Opts) -> Result<SinglePeerResult, String> {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let step = o.duration.unwrap_or(if o.smoke { Duration::from_millis(500) } else { Duration::from_millis(1200) });
    let params = if o.smoke {
        SearchParams { start: 200.0, cap: 400.0, max_steps: 2, precision: 0.5 }
    } else {
        SearchParams { start: 2000.0, cap: 256_000.0, max_steps: 8, precision: 0.08 }
    };
    let uas: Vec<FastUas> = (0..2).map(|_| FastUas::start()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let backends: Vec<SocketAddr> = uas.iter().map(FastUas::addr).collect();
    let spec = |target: SocketAddr| StepSpec {
        target,
        targets: Vec::new(),
        backends: backends.clone(),
        peers: 1,
        threads: 1,
        duration: step,
        hold: Duration::from_millis(if o.smoke { 50 } else { 100 }),
        timer_b: Duration::from_secs(1),
    };
    let pb = progress(if o.smoke { Duration::from_secs(10) } else { Duration::from_secs(90) }, "single-peer");
    let t0 = Instant::now();
    let modes = [(1usize, "flow"), (n, "flow"), (n, "random")];
    let mut searches = Vec::new();
    for (shards, ingress) in modes {
        let p = Peer::fsroute(&fsroute_cfg(shards, ingress, &backends))?;
        searches.push(search(&p.name.clone(), Some(&p), &spec(p.sip), &params, &pb, t0)?);
    }
    // One common rate for the shares and reorder counts: 80% of the lowest max (all pass it).
    let lowest = searches.iter().map(|s| s.max_rate).fold(f64::INFINITY, f64::min);
    let fixed_rate = if o.smoke { 200.0 } else { (lowest * 0.8).max(500.0) };
    let mut out = Vec::new();
    for ((shards, ingress), s) in modes.into_iter().zip(searches) {
        pb.set_message(format!("{shards} shards {ingress} @ {fixed_rate:.0}/s"));
        let p = Peer::fsroute(&fsroute_cfg(shards, ingress, &backends))?;
        let before = p.status().map(|v| shard_counters(&v)).unwrap_or_default();
        let mut fixed_spec = spec(p.sip);
        fixed_spec.duration = if o.smoke { Duration::from_millis(500) } else { Duration::from_secs(3) };
        let fixed = run_step(&p.name, Some(&p), &fixed_spec, fixed_rate)?;
        let after = p.status().map(|v| shard_counters(&v)).unwrap_or_default();
        let (rs, ps, h) = shares(&before, &after);
        pb.set_position(t0.elapsed().as_secs());
        out.push(ModeResult {
            name: p.name.clone(),
            shards,
            ingress: ingress.to_string(),
            search: s,
            fixed,
            received_share: rs,
            processed_share: ps,
            handed_off: h,
        });
    }
    pb.finish_and_clear();
    Ok(SinglePeerResult { machine: machine(), fixed_rate, modes: out })
}

pub fn render(r: &SinglePeerResult) -> String {
    let base = r.modes.first().map_or(0.0, |m| m.search.max_rate);
    let pct = |v: &[f64]| v.iter().map(|x| format!("{:.0}", x * 100.0)).collect::<Vec<_>>().join("/");
    let mut t = Table::new(
        format!("single-peer: all calls from ONE source address ({}; 2 built-in UAS backends)", r.machine),
        &[
            "fsroute",
            "max calls/s",
            "vs 1 shard",
            "received % per shard",
            "processed % per shard",
            "handed off",
            "CPU/call",
            "reordered (fixed)",
            "reordered (search)",
        ],
    );
    for m in &r.modes {
        let (re, ans) = m.search.reorders();
        t.row(vec![
            m.name.clone(),
            format!("{:.0}", m.search.max_rate),
            if base > 0.0 { format!("{:.2}x", m.search.max_rate / base) } else { "-".into() },
            pct(&m.received_share),
            pct(&m.processed_share),
            m.handed_off.to_string(),
            m.fixed.proxy_cpu_per_call_us.map_or("-".into(), |c| format!("{} µs", num(c))),
            format!("{}/{}", m.fixed.uac.reordered_calls, m.fixed.uac.answered),
            format!("{re}/{ans}"),
        ]);
    }
    let mut s = t.render();
    s.push_str(&format!(
        "shares, CPU/call and 'reordered (fixed)' at {:.0} calls/s offered for each mode; 'reordered' = calls with a response out of the UAS's send order (X-Seq) or a 18x after the 200\n",
        r.fixed_rate
    ));
    for m in &r.modes {
        if !m.fixed.pass {
            s.push_str(&format!("note: {} failed the fixed-rate step: {}\n", m.name, m.fixed.why));
        }
    }
    s
}
