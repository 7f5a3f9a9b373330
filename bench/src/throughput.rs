//! `throughput`: the highest call rate with zero failed calls, for every target in one run so
//! the ratios come from one machine state: direct (UAC → UAS, no proxy: the generator and
//! backend limit), the bare UDP relay (the syscall floor), fsroute at 1 and N shards, and
//! Kamailio's dispatcher when installed. Same generator, same built-in UAS backends, same
//! number of peers. Then two fixed-rate runs: proxy CPU per call at a common rate, and the
//! p99 time fsroute adds at half its max rate (vs direct at that rate).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::common::{machine, run_step, run_step_counting_syscalls, search, Opts, Search, SearchParams, Step, StepSpec};
use crate::peers::{Dest, Peer, ProxyConfig};
use crate::report::{num, progress, us, Table};
use crate::uas::FastUas;

#[derive(Serialize)]
pub struct ThroughputResult {
    pub machine: String,
    pub peers: usize,
    pub backends: usize,
    pub hold_ms: u64,
    pub step_s: f64,
    pub timer_b_s: f64,
    pub searches: Vec<Search>,
    pub skipped: Vec<String>,
    /// Proxy CPU per call at one common fixed rate.
    pub cpu_rate: f64,
    pub cpu_steps: Vec<Step>,
    /// The same rate again with the proxy's system calls counted (perf stat), when perf can.
    pub syscall_steps: Vec<Step>,
    /// Direct vs fsroute N shards at half fsroute's max.
    pub half_rate_steps: Vec<Step>,
    pub added_p99_us: Option<i64>,
}

pub fn fsroute_cfg(shards: usize, ingress: &'static str, backends: &[SocketAddr]) -> ProxyConfig {
    ProxyConfig {
        shards,
        ingress,
        algorithm: "hash-callid",
        dests: backends.iter().map(|b| Dest { addr: *b, weight: "1".into() }).collect(),
        control_extra: String::new(),
        custom_rows: None,
        tcp_listen: None,
        proxy_extra: String::new(),
    }
}

pub fn run(o: &Opts) -> Result<ThroughputResult, String> {
    let shards_n = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let peers = 4;
    let step = o.duration.unwrap_or(if o.smoke { Duration::from_millis(400) } else { Duration::from_millis(1200) });
    let hold = Duration::from_millis(if o.smoke { 50 } else { 100 });
    let timer_b = Duration::from_secs(1);
    let params = if o.smoke {
        SearchParams { start: 300.0, cap: 300.0, max_steps: 1, precision: 0.5 }
    } else {
        SearchParams { start: 2000.0, cap: 256_000.0, max_steps: 8, precision: 0.08 }
    };
    let cpu_rate = if o.smoke { 200.0 } else { 2000.0 };
    let uas: Vec<FastUas> = (0..2).map(|_| FastUas::start()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let backends: Vec<SocketAddr> = uas.iter().map(FastUas::addr).collect();
    let spec = |target: SocketAddr| StepSpec {
        target,
        targets: Vec::new(),
        backends: backends.clone(),
        peers,
        threads: o.uac_threads,
        duration: step,
        hold,
        timer_b,
    };
    let estimate = if o.smoke { Duration::from_secs(12) } else { Duration::from_secs(110) };
    let pb = progress(estimate, "throughput");
    let t0 = Instant::now();
    let mut searches = Vec::new();
    let mut skipped = Vec::new();
    let mut cpu_steps = Vec::new();
    let mut syscall_steps = Vec::new();

    // Direct: no proxy; socket i talks to backend i % 2.
    let mut direct_spec = spec(backends[0]);
    direct_spec.targets = backends.clone();
    searches.push(search("direct (no proxy)", None, &direct_spec, &params, &pb, t0)?);

    {
        let relay = Peer::relay(&backends, shards_n)?;
        let s = search(&relay.name.clone(), Some(&relay), &spec(relay.sip), &params, &pb, t0)?;
        searches.push(s);
        cpu_steps.push(run_step(&relay.name, Some(&relay), &spec(relay.sip), cpu_rate)?);
        syscall_steps.push(run_step_counting_syscalls(&relay.name, &relay, &spec(relay.sip), cpu_rate)?);
    }
    let mut fsroute_n_max = 0.0;
    for shards in [1, shards_n] {
        let p = Peer::fsroute(&fsroute_cfg(shards, "flow", &backends))?;
        let s = search(&p.name.clone(), Some(&p), &spec(p.sip), &params, &pb, t0)?;
        if shards == shards_n {
            fsroute_n_max = s.max_rate;
        }
        searches.push(s);
        cpu_steps.push(run_step(&p.name, Some(&p), &spec(p.sip), cpu_rate)?);
        syscall_steps.push(run_step_counting_syscalls(&p.name, &p, &spec(p.sip), cpu_rate)?);
    }
    match Peer::kamailio(&backends, shards_n) {
        Ok(k) => {
            let s = search(&k.name.clone(), Some(&k), &spec(k.sip), &params, &pb, t0)?;
            searches.push(s);
            cpu_steps.push(run_step(&k.name, Some(&k), &spec(k.sip), cpu_rate)?);
            syscall_steps.push(run_step_counting_syscalls(&k.name, &k, &spec(k.sip), cpu_rate)?);
        }
        Err(e) => skipped.push(format!("Kamailio: {e}")),
    }
    // p99 added by fsroute at half its max rate, against direct at the same rate.
    let mut half_rate_steps = Vec::new();
    let mut added_p99_us = None;
    if fsroute_n_max > 0.0 && !o.smoke {
        let half = fsroute_n_max / 2.0;
        pb.set_message(format!("latency at {half:.0}/s"));
        let d = run_step("direct (no proxy)", None, &direct_spec, half)?;
        let p = Peer::fsroute(&fsroute_cfg(shards_n, "flow", &backends))?;
        let f = run_step(&p.name, Some(&p), &spec(p.sip), half)?;
        added_p99_us = Some(f.uac.invite_to_200.p99_us as i64 - d.uac.invite_to_200.p99_us as i64);
        half_rate_steps.push(d);
        half_rate_steps.push(f);
    }
    pb.finish_and_clear();
    drop(uas);
    Ok(ThroughputResult {
        machine: machine(),
        peers,
        backends: backends.len(),
        hold_ms: hold.as_millis() as u64,
        step_s: step.as_secs_f64(),
        timer_b_s: timer_b.as_secs_f64(),
        searches,
        skipped,
        cpu_rate,
        cpu_steps,
        syscall_steps,
        half_rate_steps,
        added_p99_us,
    })
}

pub fn render(r: &ThroughputResult) -> String {
    let relay_max = r.searches.iter().find(|s| s.target.starts_with("bare")).map_or(0.0, |s| s.max_rate);
    let kam_max = r.searches.iter().find(|s| s.target.starts_with("Kamailio")).map(|s| s.max_rate);
    let mut t = Table::new(
        format!(
            "throughput: highest zero-failure call rate ({}; {} peers, {} built-in UAS backends, hold {} ms, steps of {:.1} s, Timer B {:.0} s)",
            r.machine, r.peers, r.backends, r.hold_ms, r.step_s, r.timer_b_s
        ),
        &["target", "max calls/s", "first fail", "msgs/s at max", "vs relay", "vs Kamailio", "PDD p99 at max", "CPU/call at max", "reordered", "steps"],
    );
    for s in &r.searches {
        let best = s.best();
        let (re, ans) = s.reorders();
        t.row(vec![
            s.target.clone(),
            format!("{:.0}", s.max_rate),
            s.first_fail.map_or("-".into(), |f| format!("{f:.0}: {}", s.steps.iter().find(|x| x.rate == f).map_or("", |x| x.why.split(", ").next().unwrap_or("")))),
            best.map_or("-".into(), |b| format!("{:.0}", b.uac.messages_per_s)),
            if relay_max > 0.0 { format!("{:.2}x", s.max_rate / relay_max) } else { "-".into() },
            kam_max.filter(|k| *k > 0.0).map_or("-".into(), |k| format!("{:.2}x", s.max_rate / k)),
            best.map_or("-".into(), |b| us(b.uac.pdd.p99_us)),
            best.and_then(|b| b.proxy_cpu_per_call_us).map_or("-".into(), |c| format!("{} µs", num(c))),
            format!("{re}/{ans}"),
            s.steps.len().to_string(),
        ]);
    }
    let mut out = t.render();
    let mut c = Table::new(
        format!("proxy CPU per call at {:.0} calls/s offered (utime+stime from /proc, all threads/processes)", r.cpu_rate),
        &["target", "calls", "failed", "CPU s", "CPU/call", "INVITE→200 p99", "reordered"],
    );
    for s in &r.cpu_steps {
        c.row(vec![
            s.target.clone(),
            s.uac.attempted.to_string(),
            s.uac.failed().to_string(),
            s.proxy_cpu_s.map_or("-".into(), |v| format!("{v:.2}")),
            s.proxy_cpu_per_call_us.map_or("-".into(), |v| format!("{} µs", num(v))),
            us(s.uac.invite_to_200.p99_us),
            s.uac.reordered_calls.to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&c.render());
    if r.syscall_steps.iter().any(|s| s.proxy_syscalls_per_call.is_some()) {
        let mut sc = Table::new(
            format!("proxy system calls per call at {:.0} calls/s offered (perf stat -e raw_syscalls:sys_enter, a step of its own)", r.cpu_rate),
            &["target", "calls", "failed", "syscalls/call"],
        );
        for s in &r.syscall_steps {
            sc.row(vec![
                s.target.clone(),
                s.uac.attempted.to_string(),
                s.uac.failed().to_string(),
                s.proxy_syscalls_per_call.map_or("-".into(), |v| format!("{v:.1}")),
            ]);
        }
        out.push('\n');
        out.push_str(&sc.render());
    }
    if !r.half_rate_steps.is_empty() {
        let mut h = Table::new(
            format!("latency at half of fsroute's max ({:.0} calls/s)", r.half_rate_steps[0].rate),
            &["target", "failed", "PDD p50", "PDD p99", "INVITE→200 p99"],
        );
        for s in &r.half_rate_steps {
            h.row(vec![
                s.target.clone(),
                s.uac.failed().to_string(),
                us(s.uac.pdd.p50_us),
                us(s.uac.pdd.p99_us),
                us(s.uac.invite_to_200.p99_us),
            ]);
        }
        out.push('\n');
        out.push_str(&h.render());
        if let Some(a) = r.added_p99_us {
            out.push_str(&format!("p99 INVITE→200 added by fsroute at that rate: {a} µs (fsroute minus direct)\n"));
        }
    }
    for s in &r.skipped {
        out.push_str(&format!("skipped: {s}\n"));
    }
    out
}
