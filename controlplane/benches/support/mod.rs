//! Shared pieces of the control-plane benchmarks: config text with N `[[dispatcher]]` rows on
//! distinct loopback addresses, and for the benches that drive the real binary, finding and
//! starting `fsroute run`, reading `/status` over a minimal HTTP/1.0 exchange, reading a process's
//! VmRSS/VmHWM from /proc, and raising RLIMIT_NOFILE. Loopback only; nothing here is timed.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The i-th destination's SIP address: 127.0.x.y:5060 (x from 1, y in 1..=250), distinct for i < 63,750.
pub fn dest_addr(i: usize) -> SocketAddr {
    let x = 1 + i / 250;
    let y = 1 + i % 250;
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, x as u8, y as u8), 5060))
}

/// How one row gets its weight.
#[derive(Clone, Debug)]
pub enum RowWeight {
    Static(u32),
    /// `fs://:ClueCon@<addr>`
    Fs(SocketAddr),
}

#[derive(Clone, Debug)]
pub struct Row {
    pub setid: i32,
    pub sip: SocketAddr,
    pub weight: RowWeight,
}

/// A complete config: one SIP listener, one shard, the admin listener, `rows`, and one route per
/// set (`ruri_user_prefix = "+<setid>"`, round-robin).
pub fn config_text(sip: SocketAddr, admin: SocketAddr, rows: &[Row]) -> String {
    let mut c = format!(
        "[proxy]\nlisten = [\"{sip}\"]\nshards = 1\n\n[control]\nadmin = \"{admin}\"\nheartbeat_timeout = \"30s\"\nmax_freeswitch_weight = 100\n\n"
    );
    let mut setids: Vec<i32> = Vec::new();
    for r in rows {
        if !setids.contains(&r.setid) {
            setids.push(r.setid);
        }
        let w = match &r.weight {
            RowWeight::Static(w) => w.to_string(),
            RowWeight::Fs(a) => format!("\"fs://:ClueCon@{a}\""),
        };
        c.push_str(&format!(
            "[[dispatcher]]\nsetid = {}\ndestination = \"sip:{}\"\nweight = {w}\n\n",
            r.setid, r.sip
        ));
    }
    for s in setids {
        c.push_str(&format!(
            "[[route]]\nruri_user_prefix = \"+{s}\"\nto_dispatcher = {s}\nalgorithm = \"round-robin\"\n\n"
        ));
    }
    c
}

/// The fsroute binary: `$FSROUTE_BIN`, else `fsroute` in the profile directory this bench
/// executable was built into (`<target>/release/deps/<bench>` -> `<target>/release/fsroute`).
pub fn fsroute_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FSROUTE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin = dir.join("fsroute");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --release --bin fsroute` with the same CARGO_TARGET_DIR first, or set FSROUTE_BIN",
        bin.display()
    );
    bin
}

pub fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// One running `fsroute run`, killed on drop.
pub struct Fsroute {
    pub child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Fsroute {
    /// Writes `config` and starts the binary; returns once `/status` answers (or panics after
    /// `limit`). Logs go to a file in the temp dir (RUST_LOG=warn).
    pub fn start(config: &str, admin: SocketAddr, limit: Duration) -> Fsroute {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fsroute.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(fsroute_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", std::env::var("FSROUTE_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fsroute");
        let mut f = Fsroute { child, admin, dir };
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = f.child.try_wait() {
                panic!("fsroute exited at start with {st}:\n{}", f.log());
            }
            if f.try_status().is_some() {
                return f;
            }
            assert!(start.elapsed() < limit, "fsroute did not answer /status:\n{}", f.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn try_status(&self) -> Option<serde_json::Value> {
        let body = http_get(self.admin, "/status")?;
        serde_json::from_str(&body).ok()
    }

    pub fn status(&self) -> serde_json::Value {
        self.try_status().unwrap_or_else(|| panic!("/status failed:\n{}", self.log()))
    }

    /// SIGTERM, then wait (SIGKILL after 5 s).
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Fsroute {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// GET `path` over HTTP/1.0; the body on a 200, else None.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code: u16 = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n")?.1.to_string();
    (code == 200).then_some(body)
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
pub fn rss_hwm_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Number of threads of `pid`.
pub fn threads(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Raises RLIMIT_NOFILE's soft limit to `want` (capped at the hard limit); returns the new soft limit.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn raise_nofile(want: u64) -> u64 {
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        let target = want.min(r.rlim_max as u64);
        if (r.rlim_cur as u64) < target {
            r.rlim_cur = target as libc::rlim_t;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur as u64
    }
}

/// CPU time (user + system) of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / tick
}

/// Every fs:// destination in `/status` reports connected with numbers.
pub fn fs_connected(status: &serde_json::Value) -> (usize, usize) {
    let mut total = 0;
    let mut up = 0;
    for set in status["dispatcher"].as_array().into_iter().flatten() {
        for d in set["destinations"].as_array().into_iter().flatten() {
            if d["fs"].is_object() {
                total += 1;
                if d["fs"]["connected"] == true && d["fs"]["session_count"].is_u64() {
                    up += 1;
                }
            }
        }
    }
    (up, total)
}

/// Median of a slice (sorted copy).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}
