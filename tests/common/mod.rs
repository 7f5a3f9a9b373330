//! Shared harness for the end-to-end tests: free loopback ports, a running `fsroute` child process
//! with a generated config, SIPp peers (the real client), raw UDP probes and a tiny HTTP client for
//! the admin API. Every process is killed on drop and every wait is bounded.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Load tests share two cores: run them one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port free for both UDP and TCP on loopback: a SIPp caller binds its `-p` port for the
/// transport it uses (`-t t1` is TCP).
pub fn free_port_both() -> u16 {
    loop {
        let p = free_udp_port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A loopback address with a TCP port free now (for a `tcp:` or `tls:` listener).
pub fn free_tcp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_tcp_port()))
}

/// The sum over shards of `/status`'s `shards[].tcp.<field>` (or `tcp.closed.<field>`).
pub fn tcp_total(proxy: &Proxy, path: &[&str]) -> u64 {
    proxy.status()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| path.iter().fold(&s["tcp"], |v, k| &v[*k]).as_u64().unwrap_or(0))
        .sum()
}

pub fn fsroute_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fsroute"))
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Waits for a child with a deadline; kills it when the deadline passes.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Proxy {
    pub child: Child,
    pub sip: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub stderr: PathBuf,
}

impl Proxy {
    /// Starts `fsroute run` on `config` (where `{SIP}` and `{ADMIN}` stand for chosen ports) and
    /// waits until it answers an OPTIONS.
    pub fn start(config: &str) -> Proxy {
        Proxy::start_with(config, &[])
    }

    /// [`Proxy::start`] with more `fsroute run` arguments (e.g. `--drain-timeout`).
    pub fn start_with(config: &str, args: &[&str]) -> Proxy {
        let sip: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fsroute.toml");
        let body = config.replace("{SIP}", &sip.to_string()).replace("{ADMIN}", &admin.to_string());
        std::fs::write(&path, body).unwrap();
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(fsroute_bin())
            .args(["run", "--config"])
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn fsroute");
        let mut p = Proxy { child, sip, admin, dir, config: path, stderr };
        let start = Instant::now();
        loop {
            if options_ping(sip).is_some() {
                break;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("fsroute exited at start with {st}: {}", p.log());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "fsroute did not come up: {}", p.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http(self.admin, "GET", "/status", "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Rewrites the config file (same placeholders as `start`).
    pub fn rewrite_config(&self, config: &str) {
        let body = config.replace("{SIP}", &self.sip.to_string()).replace("{ADMIN}", &self.admin.to_string());
        std::fs::write(&self.config, body).unwrap();
    }

    /// SIGTERM, then the exit status (bounded).
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        wait_with_timeout(&mut self.child, Duration::from_secs(15))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends an OPTIONS addressed to the proxy itself; returns the status line if one came back.
pub fn options_ping(to: SocketAddr) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let me = sock.local_addr().ok()?;
    let msg = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKping{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p1\r\nTo: <sip:{to}>\r\nCall-ID: ping-{}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    sock.send_to(msg.as_bytes(), to).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().map(str::to_string)
}

/// Sends one datagram and returns the reply, if any arrives within the timeout.
pub fn exchange(to: SocketAddr, msg: &[u8], timeout: Duration) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    sock.send_to(msg, to).unwrap();
    let mut buf = [0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A minimal HTTP/1.0 exchange with the admin endpoint.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, &[], body)
}

/// [`http`] with extra header lines (`"Authorization: Bearer ..."`).
pub fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

pub fn require_sipp() {
    let ok = Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(ok, "sipp is not installed: `apt-get install -y sip-tester` (.ci/run does it)");
}

/// A SIPp process (UAS backend or UAC caller) with its logs in a temp dir.
pub struct Sipp {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Sipp {
    /// `sipp -sn uas` (or a scenario file) on 127.0.0.1:port.
    pub fn uas(port: u16, scenario: Option<&Path>, extra: &[&str]) -> Sipp {
        require_sipp();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sipp");
        match scenario {
            Some(sf) => cmd.arg("-sf").arg(sf),
            None => cmd.args(["-sn", "uas"]),
        };
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin", "-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn sipp uas");
        std::thread::sleep(Duration::from_millis(200));
        Sipp { child, port, dir }
    }

    /// Runs a SIPp UAC to completion (bounded) and returns its exit status and screen dump.
    pub fn uac(target: SocketAddr, scenario: Option<&Path>, calls: u32, rate: u32, extra: &[&str], limit: Duration) -> UacRun {
        require_sipp();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_both();
        let screen = dir.path().join("screen.log");
        let mut cmd = Command::new("sipp");
        cmd.arg(target.to_string());
        match scenario {
            Some(sf) => cmd.arg("-sf").arg(sf),
            None => cmd.args(["-sn", "uac"]),
        };
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &calls.to_string(), "-r", &rate.to_string()])
            .args(["-nostdin", "-trace_screen", "-screen_file"])
            .arg(&screen)
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(["-timeout", &format!("{}s", limit.as_secs()), "-timeout_error"])
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn sipp uac");
        let status = wait_with_timeout(&mut child, limit + Duration::from_secs(10));
        let screen = std::fs::read_to_string(&screen).unwrap_or_default();
        let errors = std::fs::read_to_string(dir.path().join("errors.log")).unwrap_or_default();
        UacRun { status, screen, errors, port, dir }
    }

    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("errors.log")).unwrap_or_default()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct UacRun {
    pub status: Option<ExitStatus>,
    pub screen: String,
    pub errors: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl UacRun {
    /// SIPp exits 0 only when every call succeeded.
    pub fn all_calls_succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.code() == Some(0))
    }

    /// A counter from SIPp's final screen, e.g. "Successful call" or "Failed call".
    pub fn counter(&self, name: &str) -> Option<u64> {
        // Lines look like: "Successful call        |        0                  |        2000"
        self.screen
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.rsplit('|').next())
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn explain(&self) -> String {
        format!("status {:?}\n--- screen ---\n{}\n--- errors ---\n{}", self.status, self.screen, &self.errors[..self.errors.len().min(4000)])
    }
}

pub fn dispatcher_config(shards: usize, backends: &[u16], algorithm: &str) -> String {
    let mut c = format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = {shards}\nrecord_route = true\n\n[control]\nadmin = \"{{ADMIN}}\"\n\n"
    );
    for p in backends {
        c.push_str(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:{p}\"\nweight = 1\n\n"));
    }
    c.push_str(&format!("[[route]]\nto_dispatcher = 1\nalgorithm = \"{algorithm}\"\n"));
    c
}

/// Polls `cond` every 100 ms until it holds or `limit` passes; true if it held.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// One SIP message framed off a stream by Content-Length (RFC 3261 §18.3), CRLF keep-alives
/// between messages skipped; None on EOF or a read timeout.
pub fn read_sip(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        while buf.starts_with(b"\r\n") {
            buf.drain(..2);
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    let k = k.trim().to_ascii_lowercase();
                    (k == "content-length" || k == "l").then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + body;
            if buf.len() >= total {
                let msg = String::from_utf8_lossy(&buf[..total]).into_owned();
                buf.drain(..total);
                return Some(msg);
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response to `req` (its Vias, From, To with a tag, Call-ID, CSeq and Record-Route copied),
/// with `Contact: <contact>`.
pub fn sip_response(req: &str, status: &str, contact: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for l in req.lines() {
        let name = l.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" | "record-route" => out.push_str(&format!("{l}\r\n")),
            "to" | "t" if !l.contains(";tag=") => out.push_str(&format!("{l};tag=uas1\r\n")),
            "to" | "t" => out.push_str(&format!("{l}\r\n")),
            _ => {}
        }
    }
    out.push_str(&format!("Contact: <{contact}>\r\nContent-Length: 0\r\n\r\n"));
    out
}
