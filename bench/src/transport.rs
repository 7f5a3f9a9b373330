//! `throughput --transport tcp|both` and `tcp-idle`: SIP over TCP against SIP over UDP through
//! one fsroute in one run, so the ratios come from one machine state. The caller is SIPp for
//! both transports (`-t u1`: one UDP socket, `-t t1`: one TCP connection, the carrier-trunk
//! case), since the built-in generator (`uac`) speaks UDP only; the backends are the built-in
//! UDP UAS of the UDP run, so the TCP run measures TCP→UDP conversion (a TCP trunk in front of
//! UDP FreeSWITCH boxes, the common carrier case). Per transport: the highest zero-failure rate
//! SIPp reaches, fsroute's CPU per call and system calls per call at one common rate. Then the
//! idle-connection section (`tcp-idle` alone): fsroute's VmRSS before and after N idle TCP
//! connections (memory per connection), and UDP PDD p50/p99 from the built-in generator without
//! and with those connections open.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::common::{machine, run_step, Opts, Step, StepSpec};
use crate::peers::{Peer, ProxyConfig, Scratch};
use crate::report::{num, progress, us, Table};
use crate::soak::rss_kib;
use crate::sys;
use crate::throughput::fsroute_cfg;
use crate::uas::FastUas;

/// Which transports `throughput` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Transport {
    Udp,
    Tcp,
    Both,
}

/// One SIPp step at a fixed rate.
#[derive(Clone, Debug, Serialize)]
pub struct SippStep {
    pub transport: &'static str,
    pub rate: f64,
    pub calls: u64,
    pub successful: u64,
    pub failed: u64,
    pub retransmissions: u64,
    /// Wall time SIPp took against the time the schedule asked for (calls / rate + hold).
    pub elapsed_s: f64,
    pub scheduled_s: f64,
    pub pass: bool,
    pub why: String,
    /// INVITE → 200 as SIPp measured it (its `rtd` on the 200), per call.
    pub invite_to_200_p50_ms: Option<f64>,
    pub invite_to_200_p99_ms: Option<f64>,
    pub proxy_cpu_s: Option<f64>,
    pub proxy_cpu_per_call_us: Option<f64>,
    pub proxy_syscalls_per_call: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SippSearch {
    pub transport: &'static str,
    pub max_rate: f64,
    pub first_fail: Option<f64>,
    pub steps: Vec<SippStep>,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleResult {
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (after - before) / connections: what fsroute's process holds per idle connection (the
    /// kernel's socket buffers are not in VmRSS).
    pub bytes_per_connection: f64,
    /// `/status` shards[].tcp.connections once they were all open.
    pub gauge: u64,
    pub rate: f64,
    pub without: Step,
    pub with: Step,
    pub rss_closed_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransportResult {
    pub machine: String,
    pub shards: usize,
    pub backends: usize,
    pub hold_ms: u64,
    pub step_s: f64,
    pub searches: Vec<SippSearch>,
    pub cpu_rate: f64,
    pub cpu_steps: Vec<SippStep>,
    pub syscall_steps: Vec<SippStep>,
    pub idle: Option<IdleResult>,
}

/// fsroute with a UDP and a TCP listener in front of `backends` (UDP), its per-source limit
/// raised so one bench host may hold `connections` TCP connections.
fn tcp_cfg(shards: usize, backends: &[SocketAddr], tcp: SocketAddr, connections: usize) -> ProxyConfig {
    let mut c = fsroute_cfg(shards, "flow", backends);
    c.tcp_listen = Some(tcp);
    c.proxy_extra = format!("tcp_connections_per_source = {}\n", connections + 64);
    c
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// A counter of SIPp's last statistics line (`-trace_stat`), e.g. "SuccessfulCall(C)".
fn stat(csv: &str, name: &str) -> Option<u64> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let i = header.iter().position(|h| h.trim() == name)?;
    last.get(i)?.trim().parse().ok()
}

/// The INVITE → 200 times (ms) in SIPp's `-trace_rtt` file(s) in `dir`.
fn rtts(dir: &Path) -> Vec<f64> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with("_rtt.csv") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            v.extend(text.lines().skip(1).filter_map(|l| l.split(';').nth(1)?.trim().parse::<f64>().ok()));
        }
    }
    v.sort_by(f64::total_cmp);
    v
}

/// Runs SIPp's stock UAC against `target` at `rate` for `calls` calls, holding each `hold`;
/// fsroute's CPU (and, with `count_syscalls`, its system calls) over the run.
fn sipp_step(transport: &'static str, target: SocketAddr, proxy: &Peer, rate: f64, calls: u64, hold: Duration, count_syscalls: bool) -> Result<SippStep, String> {
    let dir = Scratch::new("sipp");
    let port = loop {
        let p = sys::free_udp_port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    let scheduled = calls as f64 / rate + hold.as_secs_f64();
    let limit = Duration::from_secs_f64(scheduled * 3.0 + 10.0);
    let counter = if count_syscalls { sys::SyscallCounter::start(proxy.pid(), dir.0.join("perf-syscalls.csv")) } else { None };
    let cpu0 = proxy.cpu_secs();
    let started = Instant::now();
    let mut child = Command::new("sipp")
        .arg(target.to_string())
        .args(["-sn", "uac", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", if transport == "tcp" { "t1" } else { "u1" }])
        .args(["-r", &format!("{rate:.0}"), "-m", &calls.to_string(), "-d", &hold.as_millis().to_string()])
        // SIPp's default limit of simultaneous calls (3 x rate x the pause) is plenty; the
        // socket budget must fit the open-file limit.
        .args(["-max_socket", "1000", "-nostdin", "-trace_stat", "-stf"])
        .arg(dir.0.join("stat.csv"))
        .args(["-fd", "1", "-trace_rtt", "-rtt_freq", "1", "-trace_err", "-error_file"])
        .arg(dir.0.join("errors.log"))
        .args(["-timeout", &format!("{}s", limit.as_secs()), "-timeout_error"])
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn sipp (apt-get install -y sip-tester): {e}"))?;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if started.elapsed() > limit + Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = proxy.cpu_secs() - cpu0;
    let syscalls = counter.and_then(|c| c.finish());
    let csv = std::fs::read_to_string(dir.0.join("stat.csv")).unwrap_or_default();
    let successful = stat(&csv, "SuccessfulCall(C)").unwrap_or(0);
    let failed = stat(&csv, "FailedCall(C)").unwrap_or(calls.saturating_sub(successful));
    let retransmissions = stat(&csv, "Retransmissions(C)").unwrap_or(0);
    let mut why = Vec::new();
    if status.is_none_or(|s| s.code() != Some(0)) {
        why.push(format!("sipp exit {:?}", status.and_then(|s| s.code())));
    }
    if successful < calls {
        why.push(format!("{} of {calls} calls failed", calls - successful));
    }
    if retransmissions > 0 {
        why.push(format!("{retransmissions} retransmissions"));
    }
    // SIPp that cannot keep its rate falls behind instead of failing: that step measured SIPp.
    if elapsed > scheduled * 1.25 + 1.5 {
        why.push(format!("sipp took {elapsed:.1} s for a {scheduled:.1} s schedule"));
    }
    let rtt = rtts(&dir.0);
    let (cpu_s, per_call) = if count_syscalls { (None, None) } else { (Some(cpu), Some(cpu * 1e6 / calls.max(1) as f64)) };
    Ok(SippStep {
        transport,
        rate,
        calls,
        successful,
        failed,
        retransmissions,
        elapsed_s: elapsed,
        scheduled_s: scheduled,
        pass: why.is_empty(),
        why: why.join(", "),
        invite_to_200_p50_ms: percentile(&rtt, 0.50),
        invite_to_200_p99_ms: percentile(&rtt, 0.99),
        proxy_cpu_s: cpu_s,
        proxy_cpu_per_call_us: per_call,
        proxy_syscalls_per_call: syscalls.map(|n| n as f64 / calls.max(1) as f64),
    })
}

/// Doubling from `start`, then bisection to 10 %, within `max_steps`.
fn sipp_search(transport: &'static str, target: SocketAddr, proxy: &Peer, o: &Opts, step: Duration, hold: Duration, pb: &indicatif::ProgressBar) -> Result<SippSearch, String> {
    let (start, cap, max_steps) = if o.smoke { (100.0, 100.0, 1) } else { (250.0, 16_000.0, 8) };
    let mut s = SippSearch { transport, max_rate: 0.0, first_fail: None, steps: Vec::new() };
    let (mut lo, mut hi, mut rate) = (0.0f64, None::<f64>, start);
    while s.steps.len() < max_steps {
        pb.set_message(format!("sipp {transport} @ {rate:.0}/s"));
        let calls = (rate * step.as_secs_f64()).ceil() as u64;
        let st = sipp_step(transport, target, proxy, rate, calls, hold, false)?;
        let pass = st.pass;
        s.steps.push(st);
        if pass {
            lo = lo.max(rate);
        } else {
            hi = Some(hi.map_or(rate, |h: f64| h.min(rate)));
        }
        rate = match hi {
            None if rate * 2.0 <= cap => rate * 2.0,
            None => break,
            Some(h) if lo > 0.0 && (h - lo) / h < 0.10 => break,
            Some(h) if lo == 0.0 => h / 2.0,
            Some(h) => (lo + h) / 2.0,
        };
        if rate < 20.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    s.max_rate = lo;
    s.first_fail = hi;
    Ok(s)
}

/// Raises this process's open-file limit to `n` where the hard limit allows.
fn raise_nofile(n: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < n {
            r.rlim_cur = n.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn tcp_gauge(p: &Peer) -> u64 {
    p.status()
        .and_then(|s| s["shards"].as_array().map(|a| a.iter().map(|x| x["tcp"]["connections"].as_u64().unwrap_or(0)).sum()))
        .unwrap_or(0)
}

/// VmRSS after settling: the lowest of a few reads 100 ms apart (a read can catch a transient).
fn settled_rss(pid: u32) -> u64 {
    (0..5)
        .filter_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            rss_kib(pid)
        })
        .min()
        .unwrap_or(0)
}

/// Memory per idle TCP connection and UDP PDD without/with them, on a fresh fsroute.
pub fn idle(o: &Opts, connections: usize, backends: &[SocketAddr], shards: usize) -> Result<IdleResult, String> {
    raise_nofile(connections as u64 * 2 + 1024);
    let tcp: SocketAddr = format!("127.0.0.1:{}", sys::free_tcp_port()).parse().unwrap();
    let p = Peer::fsroute(&tcp_cfg(shards, backends, tcp, connections))?;
    let rate = if o.smoke { 200.0 } else { 1000.0 };
    let spec = StepSpec {
        target: p.sip,
        targets: Vec::new(),
        backends: backends.to_vec(),
        peers: 4,
        threads: o.uac_threads,
        duration: o.duration.unwrap_or(if o.smoke { Duration::from_millis(500) } else { Duration::from_secs(3) }),
        hold: Duration::from_millis(100),
        timer_b: Duration::from_secs(4),
    };
    // A warm-up step, so both measured steps find the same warm memory and caches.
    run_step(&p.name, Some(&p), &spec, rate)?;
    let without = run_step(&p.name, Some(&p), &spec, rate)?;
    let before = settled_rss(p.pid());
    let mut held = Vec::with_capacity(connections);
    for i in 0..connections {
        held.push(TcpStream::connect(tcp).map_err(|e| format!("idle connection {i}: {e}"))?);
    }
    let t = Instant::now();
    while tcp_gauge(&p) < connections as u64 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let gauge = tcp_gauge(&p);
    let after = settled_rss(p.pid());
    let with = run_step(&p.name, Some(&p), &spec, rate)?;
    drop(held);
    let t = Instant::now();
    while tcp_gauge(&p) > 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = settled_rss(p.pid());
    Ok(IdleResult {
        connections,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_connection: (after as f64 - before as f64) * 1024.0 / connections as f64,
        gauge,
        rate,
        without,
        with,
        rss_closed_kib: closed,
    })
}

pub fn run(o: &Opts, which: Transport, idle_connections: usize) -> Result<TransportResult, String> {
    let shards = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let step = o.duration.unwrap_or(if o.smoke { Duration::from_secs(1) } else { Duration::from_secs(4) });
    let hold = Duration::from_millis(100);
    let uas: Vec<FastUas> = (0..2).map(|_| FastUas::start()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let backends: Vec<SocketAddr> = uas.iter().map(FastUas::addr).collect();
    let pb = progress(if o.smoke { Duration::from_secs(15) } else { Duration::from_secs(180) }, "transport");
    let tcp: SocketAddr = format!("127.0.0.1:{}", sys::free_tcp_port()).parse().unwrap();
    let p = Peer::fsroute(&tcp_cfg(shards, &backends, tcp, 1000))?;
    let transports: &[&'static str] = match which {
        Transport::Tcp => &["tcp"],
        _ => &["udp", "tcp"],
    };
    let target = |t: &str| if t == "tcp" { tcp } else { p.sip };
    let mut searches = Vec::new();
    for &t in transports {
        searches.push(sipp_search(t, target(t), &p, o, step, hold, &pb)?);
    }
    // One common rate below every transport's max, so CPU per call compares like with like.
    let lowest = searches.iter().map(|s| s.max_rate).fold(f64::INFINITY, f64::min);
    let cpu_rate = if o.smoke { 100.0 } else { (lowest / 2.0).max(100.0).round() };
    let calls = (cpu_rate * step.as_secs_f64()).ceil() as u64;
    let mut cpu_steps = Vec::new();
    let mut syscall_steps = Vec::new();
    for &t in transports {
        pb.set_message(format!("cpu {t} @ {cpu_rate:.0}/s"));
        cpu_steps.push(sipp_step(t, target(t), &p, cpu_rate, calls, hold, false)?);
        syscall_steps.push(sipp_step(t, target(t), &p, cpu_rate, calls, hold, true)?);
    }
    drop(p);
    let idle_r = if idle_connections > 0 {
        pb.set_message(format!("{idle_connections} idle tcp connections"));
        Some(idle(o, idle_connections, &backends, shards)?)
    } else {
        None
    };
    pb.finish_and_clear();
    drop(uas);
    Ok(TransportResult {
        machine: machine(),
        shards,
        backends: backends.len(),
        hold_ms: hold.as_millis() as u64,
        step_s: step.as_secs_f64(),
        searches,
        cpu_rate,
        cpu_steps,
        syscall_steps,
        idle: idle_r,
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2} ms"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

pub fn render_idle(i: &IdleResult) -> String {
    let mut t = Table::new(
        format!(
            "{} idle TCP connections to fsroute (gauge saw {}): VmRSS {} → {} KiB ({:.0} bytes per connection; {} KiB once closed)",
            i.connections, i.gauge, i.rss_before_kib, i.rss_after_kib, i.bytes_per_connection, i.rss_closed_kib
        ),
        &["UDP calls (built-in generator)", "rate", "failed", "PDD p50", "PDD p99", "INVITE→200 p99", "CPU/call"],
    );
    for (name, s) in [("without idle connections", &i.without), ("with them open", &i.with)] {
        t.row(vec![
            name.to_string(),
            format!("{:.0}", s.rate),
            s.uac.failed().to_string(),
            us(s.uac.pdd.p50_us),
            us(s.uac.pdd.p99_us),
            us(s.uac.invite_to_200.p99_us),
            s.proxy_cpu_per_call_us.map_or("-".into(), |v| format!("{} µs", num(v))),
        ]);
    }
    let r = |a: u64, b: u64| if b > 0 { format!("{:.2}x", a as f64 / b as f64) } else { "-".into() };
    format!(
        "{}with/without: PDD p50 {}, PDD p99 {}\n",
        t.render(),
        r(i.with.uac.pdd.p50_us, i.without.uac.pdd.p50_us),
        r(i.with.uac.pdd.p99_us, i.without.uac.pdd.p99_us)
    )
}

pub fn render(r: &TransportResult) -> String {
    let mut t = Table::new(
        format!(
            "SIP over TCP vs UDP through fsroute {} shards ({}; SIPp stock UAC -t u1 / -t t1, {} built-in UDP UAS backends, hold {} ms, steps of {:.0} s)",
            r.shards, r.machine, r.backends, r.hold_ms, r.step_s
        ),
        &["caller transport", "max calls/s", "first fail", "INVITE→200 p50/p99 at max", "CPU/call at max", "steps"],
    );
    for s in &r.searches {
        let best = s.steps.iter().filter(|x| x.pass).max_by(|a, b| a.rate.total_cmp(&b.rate));
        t.row(vec![
            s.transport.to_string(),
            format!("{:.0}", s.max_rate),
            s.first_fail.map_or("-".into(), |f| format!("{f:.0}: {}", s.steps.iter().find(|x| x.rate == f).map_or("", |x| x.why.as_str()))),
            best.map_or("-".into(), |b| format!("{} / {}", ms(b.invite_to_200_p50_ms), ms(b.invite_to_200_p99_ms))),
            best.and_then(|b| b.proxy_cpu_per_call_us).map_or("-".into(), |c| format!("{} µs", num(c))),
            s.steps.len().to_string(),
        ]);
    }
    let mut out = t.render();
    let mut c = Table::new(
        format!("fsroute CPU and system calls per call at {:.0} calls/s offered (syscalls counted in a step of their own)", r.cpu_rate),
        &["caller transport", "calls", "failed", "CPU s", "CPU/call", "syscalls/call", "INVITE→200 p50/p99"],
    );
    for (s, sc) in r.cpu_steps.iter().zip(&r.syscall_steps) {
        c.row(vec![
            s.transport.to_string(),
            s.calls.to_string(),
            (s.calls - s.successful.min(s.calls)).to_string(),
            s.proxy_cpu_s.map_or("-".into(), |v| format!("{v:.2}")),
            s.proxy_cpu_per_call_us.map_or("-".into(), |v| format!("{} µs", num(v))),
            sc.proxy_syscalls_per_call.map_or("-".into(), |v| format!("{v:.1}")),
            format!("{} / {}", ms(s.invite_to_200_p50_ms), ms(s.invite_to_200_p99_ms)),
        ]);
    }
    out.push('\n');
    out.push_str(&c.render());
    let find = |v: &[SippStep], t: &str| v.iter().find(|s| s.transport == t).cloned();
    if let (Some(u), Some(tc)) = (find(&r.cpu_steps, "udp"), find(&r.cpu_steps, "tcp")) {
        let max = |t: &str| r.searches.iter().find(|s| s.transport == t).map(|s| s.max_rate);
        let (su, st) = (find(&r.syscall_steps, "udp"), find(&r.syscall_steps, "tcp"));
        out.push_str(&format!(
            "TCP/UDP: max calls/s {}, CPU/call {}, syscalls/call {}\n",
            ratio(max("tcp"), max("udp")),
            ratio(tc.proxy_cpu_per_call_us, u.proxy_cpu_per_call_us),
            ratio(st.and_then(|s| s.proxy_syscalls_per_call), su.and_then(|s| s.proxy_syscalls_per_call)),
        ));
    }
    if let Some(i) = &r.idle {
        out.push('\n');
        out.push_str(&render_idle(i));
    }
    out
}

/// `tcp-idle`: the idle-connection section alone, with its own UAS backends.
pub fn run_idle(o: &Opts, connections: usize) -> Result<IdleResult, String> {
    let shards = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let uas: Vec<FastUas> = (0..2).map(|_| FastUas::start()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let backends: Vec<SocketAddr> = uas.iter().map(FastUas::addr).collect();
    let r = idle(o, connections, &backends, shards);
    drop(uas);
    r
}
