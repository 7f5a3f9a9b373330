//! Control-plane memory per ESL connection: the real `fsroute` binary with N (default 1,000)
//! `[[dispatcher]]` rows, run three ways in the same process: every row a static weight (no ESL),
//! the first 100 rows fs:// (100 connections), and every row fs:// (N connections, each to its own
//! ESL endpoint). Once `/status` shows every box connected with numbers and a settle period has
//! passed, fsroute's VmRSS and VmHWM are read from /proc/PID/status. The difference per
//! connection is (all-fs − static) / N, cross-checked by the slope (all-fs − 100-fs) / (N − 100).
//!
//! The FreeSWITCH side is a minimal ESL responder in this process, not N emulators: an emulator
//! runs 3 threads plus one per connection, each waking every 5–20 ms, so 1,000 of them would be
//! 4,000 threads and ~300k wake-ups/s on this 2-core machine. The responder is one thread, one
//! `poll(2)` over N loopback listeners and their connections, speaking the protocol with the
//! crate's own pieces (`CommandReader` for commands, `serialize` for greeting, replies, `api
//! status` and HEARTBEAT events in the requested format), heartbeating every `MEM_HB_MS` with
//! changing Session-Count so fsroute keeps rebuilding as in production. Boxes are phased evenly
//! over the interval (as independent FreeSWITCH boxes are), so N boxes make N/interval heartbeats
//! per second spread over time, not one burst. Besides memory, each configuration's fsroute CPU
//! over the settle window and `/status` `control.heartbeat_to_table` / `table_rebuild` are
//! printed: with N boxes that is the control thread under N heartbeats per interval.
//!
//! Run:
//! ```text
//! export CARGO_TARGET_DIR=/work/target-cpbench
//! cargo build --release --bin fsroute
//! cargo bench -p fsroute-controlplane --bench esl_memory
//! ```
//! Knobs (env): `MEM_N` (default 1000), `MEM_RUNS` (default 3), `MEM_SETTLE_S` (default 5),
//! `MEM_HB_MS` (default 1000).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fsroute_esl::serialize::{self, HeartbeatParams, StatusParams};
use fsroute_esl::{CommandReader, EventFormat, ServerRequest};
use support::{config_text, dest_addr, free_tcp, free_udp, fs_connected, median, rss_hwm_kib, threads, Fsroute, Row, RowWeight};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Conn {
    stream: TcpStream,
    /// Offset of this box's heartbeats within the interval.
    phase: Duration,
    /// Index of the box (listener) it belongs to.
    boxno: usize,
    reader: CommandReader,
    out: Vec<u8>,
    authed: bool,
    format: Option<EventFormat>,
    /// When this box's next HEARTBEAT is due (set once subscribed).
    next_hb: Option<Instant>,
    closed: bool,
}

fn status_params(session_count: u64) -> StatusParams {
    StatusParams {
        uptime_us: 3_600_000_000,
        version_human: "1.10.12-release 64bit".into(),
        ready: true,
        session_since_startup: 1000,
        session_count,
        session_peak_max: 900,
        session_peak_five_min: 900,
        session_per_sec_last: 1,
        sessions_per_sec_limit: 30,
        session_per_sec_max: 10,
        session_per_sec_five_min: 2,
        max_sessions: 1000,
        min_idle_cpu_micro: 0,
        idle_cpu_micro: 90_000_000,
        stack_size_kib: 240,
        stack_max_kib: 8192,
    }
}

fn heartbeat(boxno: usize, seq: u64, session_count: u64) -> HeartbeatParams {
    let timestamp_us = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    HeartbeatParams {
        core_uuid: format!("00000000-0000-4000-8000-{boxno:012}"),
        hostname: format!("fs{boxno}"),
        switchname: format!("fs{boxno}"),
        ipv4: "127.0.0.1".into(),
        ipv6: "::1".into(),
        timestamp_us,
        utc_offset_secs: 0,
        calling_line: 95,
        sequence: seq,
        event_info: "System Ready".into(),
        uptime_us: 3_600_000_000 + seq * 1000,
        version: "1.10.12-release~64bit".into(),
        session_count,
        max_sessions: 1000,
        session_per_sec: 30,
        session_per_sec_last: 1,
        session_per_sec_max: 10,
        session_per_sec_five_min: 2,
        session_since_startup: 1000,
        session_peak_max: 900,
        session_peak_five_min: 900,
        idle_cpu_micro: 90_000_000,
    }
}

impl Conn {
    fn handle_input(&mut self, session_count: u64) {
        loop {
            let cmd = match self.reader.next_command() {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(_) => {
                    self.closed = true;
                    return;
                }
            };
            let reply = match cmd.request() {
                ServerRequest::Exit => {
                    self.closed = true;
                    serialize::command_reply("+OK bye")
                }
                ServerRequest::Auth { password } if !self.authed => {
                    if password == "ClueCon" {
                        self.authed = true;
                        serialize::command_reply("+OK accepted")
                    } else {
                        self.closed = true;
                        serialize::command_reply("-ERR invalid")
                    }
                }
                _ if !self.authed => serialize::command_reply("-ERR command not found"),
                ServerRequest::Event { format, .. } => {
                    let f = format.unwrap_or(EventFormat::Plain);
                    self.format = Some(f);
                    self.next_hb.get_or_insert(Instant::now() + self.phase);
                    serialize::command_reply(&format!("+OK event listener enabled {}", f.as_str()))
                }
                ServerRequest::Api { command, .. } if command.eq_ignore_ascii_case("status") => {
                    serialize::api_response(&status_params(session_count).body())
                }
                ServerRequest::Api { command, .. } => serialize::api_response(&serialize::api_not_found(command)),
                _ => serialize::command_reply("-ERR command not found"),
            };
            self.out.extend_from_slice(&reply);
        }
    }

    fn flush(&mut self) {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }
}

/// One thread serving `listeners` until `stop`.
fn responder(listeners: Vec<TcpListener>, hb_every: Duration, stop: Arc<AtomicBool>) {
    for l in &listeners {
        l.set_nonblocking(true).unwrap();
    }
    let mut conns: Vec<Conn> = Vec::new();
    let nboxes = listeners.len().max(1) as u32;
    let mut seq = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        fds.clear();
        fds.extend(listeners.iter().map(|l| libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 }));
        fds.extend(conns.iter().map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN | if c.out.is_empty() { 0 } else { libc::POLLOUT },
            revents: 0,
        }));
        let now = Instant::now();
        let due = conns.iter().filter_map(|c| c.next_hb).min().unwrap_or(now + Duration::from_millis(100));
        let wait = due.saturating_duration_since(now).min(Duration::from_millis(100));
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait.as_millis() as i32) };
        let session_count = seq % 900;
        if n > 0 {
            for (i, l) in listeners.iter().enumerate() {
                if fds[i].revents == 0 {
                    continue;
                }
                while let Ok((stream, _)) = l.accept() {
                    stream.set_nonblocking(true).unwrap();
                    stream.set_nodelay(true).unwrap();
                    let phase = hb_every * i as u32 / nboxes;
                    let mut c = Conn { stream, phase, next_hb: None, boxno: i, reader: CommandReader::new(), out: serialize::GREETING.to_vec(), authed: false, format: None, closed: false };
                    c.flush();
                    conns.push(c);
                }
            }
            let base = listeners.len();
            for (j, fd) in fds[base..].iter().enumerate() {
                if fd.revents == 0 {
                    continue;
                }
                let c = &mut conns[j];
                if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    loop {
                        match c.stream.read(&mut buf) {
                            Ok(0) => {
                                c.closed = true;
                                break;
                            }
                            Ok(k) => c.reader.feed(&buf[..k]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => {
                                c.closed = true;
                                break;
                            }
                        }
                    }
                    c.handle_input(session_count);
                }
                c.flush();
            }
        }
        let now = Instant::now();
        for c in conns.iter_mut() {
            if let (true, Some(f), Some(at)) = (c.authed, c.format, c.next_hb) {
                if at <= now {
                    c.next_hb = Some(at + hb_every);
                    seq += 1;
                    // Different numbers per box and per beat: every heartbeat changes the table.
                    let sc = (seq * 7 + c.boxno as u64 * 13) % 900;
                    let enc = heartbeat(c.boxno, seq, sc).to_event().encode(f);
                    c.out.extend_from_slice(&enc.envelope);
                    c.out.extend_from_slice(&enc.body);
                    c.flush();
                }
            }
        }
        conns.retain(|c| !c.closed);
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Static,
    Fs(usize),
}

struct Sample {
    rss: u64,
    hwm: u64,
    threads: u64,
    connect_s: f64,
    /// fsroute CPU over the settle window, % of one core.
    cpu_pct: f64,
    /// `control.heartbeat_to_table` and `control.table_rebuild`: (count, p50, p99) in µs.
    hb: (u64, u64, u64),
    rebuild: (u64, u64, u64),
}

fn figures(v: &serde_json::Value) -> (u64, u64, u64) {
    let g = |k: &str| v[k].as_u64().unwrap_or(0);
    (g("count"), g("p50_us"), g("p99_us"))
}

fn measure(mode: Mode, n: usize, esl: &[SocketAddr], settle: Duration) -> Sample {
    let fs_count = match mode {
        Mode::Static => 0,
        Mode::Fs(k) => k,
    };
    let rows: Vec<Row> = (0..n)
        .map(|i| Row {
            setid: 1 + (i % 4) as i32,
            sip: dest_addr(i),
            weight: if i < fs_count { RowWeight::Fs(esl[i]) } else { RowWeight::Static(1 + (i % 10) as u32) },
        })
        .collect();
    let admin = free_tcp();
    let started = Instant::now();
    let f = Fsroute::start(&config_text(free_udp(), admin, &rows), admin, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (up, total) = fs_connected(&f.status());
        if up == fs_count && total == fs_count {
            break;
        }
        assert!(Instant::now() < deadline, "only {up}/{total} connected:\n{}", f.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let connect_s = started.elapsed().as_secs_f64();
    let cpu0 = support::cpu_seconds(f.pid());
    let t0 = Instant::now();
    std::thread::sleep(settle);
    let cpu_pct = 100.0 * (support::cpu_seconds(f.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    // Memory first: the /status below allocates its JSON.
    let (rss, hwm) = rss_hwm_kib(f.pid());
    let st = f.status();
    let (up, _) = fs_connected(&st);
    assert_eq!(up, fs_count, "a box dropped during the settle period:\n{}", f.log());
    let s = Sample {
        rss,
        hwm,
        threads: threads(f.pid()),
        connect_s,
        cpu_pct,
        hb: figures(&st["control"]["heartbeat_to_table"]),
        rebuild: figures(&st["control"]["table_rebuild"]),
    };
    f.stop();
    s
}

fn main() {
    let n: usize = env_or("MEM_N", 1000);
    let runs: usize = env_or("MEM_RUNS", 3);
    let settle = Duration::from_secs(env_or("MEM_SETTLE_S", 10));
    let hb = Duration::from_millis(env_or("MEM_HB_MS", 1000));
    let small = 100.min(n);
    let nofile = support::raise_nofile(4 * n as u64 + 1024);
    assert!(nofile >= 2 * n as u64 + 256, "RLIMIT_NOFILE {nofile} is too low for {n} listeners + connections");

    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind ESL listener")).collect();
    let esl: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let th = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || responder(listeners, hb, stop))
    };

    println!(
        "fsroute control-plane memory, real binary ({}), {n} destinations, shards = 1, heartbeat every {hb:?}, settle {settle:?}, RLIMIT_NOFILE {nofile}",
        support::fsroute_bin().display()
    );
    println!(
        "{:>4} {:>10} {:>10} {:>10} {:>7} {:>7} {:>6} | {:>7} {:>8} {:>8} | {:>7} {:>8} {:>8}",
        "run", "config", "VmRSS KiB", "VmHWM KiB", "threads", "ready s", "cpu%", "hb n", "hb p50", "hb p99", "rb n", "rb p50", "rb p99"
    );
    let modes = [("static", Mode::Static), ("fs x100", Mode::Fs(small)), ("fs x all", Mode::Fs(n))];
    let mut results: Vec<Vec<Sample>> = (0..modes.len()).map(|_| Vec::new()).collect();
    for run in 0..runs {
        // Rotate the order so warm caches and allocator state do not favour one config.
        for k in 0..modes.len() {
            let m = (k + run) % modes.len();
            let s = measure(modes[m].1, n, &esl, settle);
            println!(
                "{:>4} {:>10} {:>10} {:>10} {:>7} {:>7.1} {:>6.1} | {:>7} {:>6}us {:>6}us | {:>7} {:>6}us {:>6}us",
                run + 1, modes[m].0, s.rss, s.hwm, s.threads, s.connect_s, s.cpu_pct, s.hb.0, s.hb.1, s.hb.2, s.rebuild.0, s.rebuild.1, s.rebuild.2
            );
            results[m].push(s);
        }
    }
    stop.store(true, Ordering::Relaxed);
    th.join().unwrap();

    let med = |m: usize, f: &dyn Fn(&Sample) -> f64| median(&results[m].iter().map(f).collect::<Vec<_>>());
    let (rss_s, rss_100, rss_n) = (med(0, &|s| s.rss as f64), med(1, &|s| s.rss as f64), med(2, &|s| s.rss as f64));
    let (hwm_s, hwm_100, hwm_n) = (med(0, &|s| s.hwm as f64), med(1, &|s| s.hwm as f64), med(2, &|s| s.hwm as f64));
    println!("\nmedians over {runs} run(s):");
    println!("  static weights (0 ESL):   VmRSS {rss_s:.0} KiB, VmHWM {hwm_s:.0} KiB");
    println!("  {small} fs:// (100 ESL):     VmRSS {rss_100:.0} KiB, VmHWM {hwm_100:.0} KiB");
    println!("  {n} fs:// ({n} ESL):     VmRSS {rss_n:.0} KiB, VmHWM {hwm_n:.0} KiB");
    for (m, (name, _)) in modes.iter().enumerate() {
        println!(
            "  {name:>8}: fsroute CPU {:.1}% of a core; hb->table p50 {:.0} us p99 {:.0} us; rebuild p50 {:.0} us p99 {:.0} us",
            med(m, &|s| s.cpu_pct),
            med(m, &|s| s.hb.1 as f64),
            med(m, &|s| s.hb.2 as f64),
            med(m, &|s| s.rebuild.1 as f64),
            med(m, &|s| s.rebuild.2 as f64)
        );
    }
    println!(
        "  per connection: (all - static)/{n} = {:.1} KiB RSS, {:.1} KiB HWM; slope (all - 100)/{} = {:.1} KiB RSS",
        (rss_n - rss_s) / n as f64,
        (hwm_n - hwm_s) / n as f64,
        n - small,
        if n > small { (rss_n - rss_100) / (n - small) as f64 } else { f64::NAN }
    );
}
