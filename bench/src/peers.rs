//! The systems under test as child processes: fsroute (`fsroute run` on a generated config),
//! Kamailio's dispatcher (Debian's package with the reference config), and the bare relay
//! (`fsroute-bench relay`). Each gives its SIP address and its pid, so the harness can charge
//! the process's CPU from /proc. Binaries are found next to the running executable (cargo
//! puts fsroute, fsemu and fsroute-bench in one target dir; test binaries live one level
//! down in `deps/`), or through FSROUTE_BIN / FSROUTE_BENCH_BIN. Every child is killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

/// Finds a sibling binary of the current executable (or of its parent dir, for test binaries).
pub fn find_bin(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent();
    for _ in 0..3 {
        let d = dir?;
        let cand = d.join(name);
        if cand.is_file() {
            return Some(cand);
        }
        dir = d.parent();
    }
    None
}

pub fn fsroute_bin() -> Result<PathBuf, String> {
    find_bin("fsroute", "FSROUTE_BIN").ok_or_else(|| {
        "fsroute binary not found next to this executable: build it (`cargo build --release` builds \
         target/release/fsroute) or set FSROUTE_BIN"
            .to_string()
    })
}

pub fn bench_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FSROUTE_BENCH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    if exe.file_name().is_some_and(|n| n == "fsroute-bench") {
        return Ok(exe);
    }
    find_bin("fsroute-bench", "FSROUTE_BENCH_BIN").ok_or_else(|| "fsroute-bench binary not found".into())
}

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "fsroute-bench-{}-{}-{tag}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::create_dir_all(&p);
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends an OPTIONS to `to` and waits briefly for any response: the readiness probe for every peer
/// (fsroute answers it itself; Kamailio and the relay pass it to a backend, which answers).
pub fn options_ping(to: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else { return false };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(me) = sock.local_addr() else { return false };
    let msg = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKping{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p1\r\nTo: <sip:{to}>\r\nCall-ID: ping-{}@fsroute-bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    if sock.send_to(msg.as_bytes(), to).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    sock.recv_from(&mut buf).is_ok()
}

fn wait_ready(child: &mut Child, sip: SocketAddr, what: &str, log: &Path) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if options_ping(sip) {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("{what} exited at start with {st}: {}", tail(log)));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("{what} did not answer on {sip} within 10 s: {}", tail(log)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// One destination row of a generated fsroute config.
#[derive(Clone, Debug)]
pub struct Dest {
    pub addr: SocketAddr,
    /// `"1"` or `"\"fs://:ClueCon@127.0.0.1:8021\""`: inserted as-is after `weight = `.
    pub weight: String,
}

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub shards: usize,
    pub ingress: &'static str,
    pub algorithm: &'static str,
    pub dests: Vec<Dest>,
    /// Extra lines for `[control]` (heartbeat_timeout etc.).
    pub control_extra: String,
    /// Replaces the generated `[[dispatcher]]` and `[[route]]` rows (e.g. load_balancer rows).
    pub custom_rows: Option<String>,
    /// A `tcp:` listener beside the UDP one (the transport scenarios).
    pub tcp_listen: Option<SocketAddr>,
    /// Extra lines for `[proxy]` (tcp_connections_per_source etc.).
    pub proxy_extra: String,
}

impl ProxyConfig {
    pub fn render(&self, sip: SocketAddr, admin: SocketAddr) -> String {
        let tcp = self.tcp_listen.map_or_else(String::new, |t| format!(", \"tcp:{t}\""));
        let mut s = format!(
            "# generated by fsroute-bench\n[proxy]\nlisten = [\"{sip}\"{tcp}]\nshards = {}\ningress = \"{}\"\nrecord_route = true\n{}\n[control]\nadmin = \"{admin}\"\n{}\n",
            self.shards, self.ingress, self.proxy_extra, self.control_extra
        );
        if let Some(rows) = &self.custom_rows {
            s.push_str(rows);
            return s;
        }
        for d in &self.dests {
            s.push_str(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"sip:{}\"\nweight = {}\n\n", d.addr, d.weight));
        }
        s.push_str(&format!("[[route]]\nto_dispatcher = 1\nalgorithm = \"{}\"\n", self.algorithm));
        s
    }
}

/// Runs `fsroute check` on a config: Err(message) when this build rejects it (e.g. fs:// weights
/// before the FreeSWITCH control plane landed).
pub fn fsroute_accepts(cfg: &ProxyConfig) -> Result<(), String> {
    let bin = fsroute_bin()?;
    let dir = Scratch::new("check");
    let path = dir.0.join("fsroute.toml");
    std::fs::write(&path, cfg.render("127.0.0.1:5999".parse().unwrap(), "127.0.0.1:5998".parse().unwrap()))
        .map_err(|e| e.to_string())?;
    let out = Command::new(bin).args(["check", "--config"]).arg(&path).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let line = text.lines().find(|l| l.contains("not available") || l.contains("error")).unwrap_or(text.trim());
        // Drop the scratch file's path and position: keep the reason.
        let reason = match line.find("not available") {
            Some(at) => line[..at].rfind(": ").map_or(line, |p| &line[p + 2..]),
            None => line,
        };
        Err(reason.trim().to_string())
    }
}

/// A running proxy-like peer under test.
pub struct Peer {
    pub name: String,
    pub sip: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub child: Child,
    pub config: Option<PathBuf>,
    pub proxy_config: Option<ProxyConfig>,
    pub dir: Scratch,
}

impl Peer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds of the peer and its children (Kamailio forks workers).
    pub fn cpu_secs(&self) -> f64 {
        sys::tree_cpu_secs(self.pid())
    }

    pub fn fsroute(cfg: &ProxyConfig) -> Result<Peer, String> {
        let bin = fsroute_bin()?;
        let sip: SocketAddr = format!("127.0.0.1:{}", sys::free_udp_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", sys::free_tcp_port()).parse().unwrap();
        let dir = Scratch::new("fsroute");
        let path = dir.0.join("fsroute.toml");
        std::fs::write(&path, cfg.render(sip, admin)).map_err(|e| e.to_string())?;
        let log = dir.0.join("stderr.log");
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("spawn fsroute: {e}"))?;
        wait_ready(&mut child, sip, "fsroute", &log)?;
        Ok(Peer {
            name: format!("fsroute {} shard{} ({})", cfg.shards, if cfg.shards == 1 { "" } else { "s" }, cfg.ingress),
            sip,
            admin: Some(admin),
            child,
            config: Some(path),
            proxy_config: Some(cfg.clone()),
            dir,
        })
    }

    /// Rewrites the config file (same listen/admin) and sends SIGHUP.
    pub fn reload(&self, cfg: &ProxyConfig) -> Result<(), String> {
        let (Some(path), Some(admin)) = (&self.config, self.admin) else { return Err("not fsroute".into()) };
        std::fs::write(path, cfg.render(self.sip, admin)).map_err(|e| e.to_string())?;
        self.signal(libc::SIGHUP);
        Ok(())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let body = http_get(self.admin?, "/status")?;
        serde_json::from_str(&body).ok()
    }

    pub fn relay(backends: &[SocketAddr], threads: usize) -> Result<Peer, String> {
        let bin = bench_bin()?;
        let sip: SocketAddr = format!("127.0.0.1:{}", sys::free_udp_port()).parse().unwrap();
        let dir = Scratch::new("relay");
        let log = dir.0.join("stderr.log");
        let mut cmd = Command::new(bin);
        cmd.args(["relay", "--listen", &sip.to_string(), "--threads", &threads.to_string()]);
        for b in backends {
            cmd.args(["--backend", &b.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("spawn relay: {e}"))?;
        wait_ready(&mut child, sip, "relay", &log)?;
        Ok(Peer {
            name: format!("bare UDP relay ({threads} thread{})", if threads == 1 { "" } else { "s" }),
            sip,
            admin: None,
            child,
            config: None,
            proxy_config: None,
            dir,
        })
    }

    /// Kamailio with the reference dispatcher config (Call-ID hash, stateless), or Err with the
    /// reason it cannot run here.
    pub fn kamailio(backends: &[SocketAddr], workers: usize) -> Result<Peer, String> {
        let bin = ["/usr/sbin/kamailio", "/usr/local/sbin/kamailio"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or("kamailio is not installed (apt-get install -y kamailio); skipped")?;
        let cfg = kamailio_cfg()?;
        let sip: SocketAddr = format!("127.0.0.1:{}", sys::free_udp_port()).parse().unwrap();
        let dir = Scratch::new("kamailio");
        let list = dir.0.join("dispatcher.list");
        let body: String = backends.iter().map(|b| format!("1 sip:{b} 0 0\n")).collect();
        std::fs::write(&list, body).map_err(|e| e.to_string())?;
        let log = dir.0.join("stderr.log");
        let mut child = Command::new(bin)
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-n", &workers.to_string(), "-m", "256", "-M", "16", "-Y"])
            .arg(&dir.0)
            .arg("-A")
            .arg(format!("DS_LIST=\"{}\"", list.display()))
            .arg("-A")
            .arg(format!("LISTEN=udp:{sip}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("spawn kamailio: {e}"))?;
        wait_ready(&mut child, sip, "kamailio", &log)?;
        Ok(Peer {
            name: format!("Kamailio dispatcher ({workers} workers, Call-ID hash)"),
            sip,
            admin: None,
            child,
            config: None,
            proxy_config: None,
            dir,
        })
    }
}

/// bench/peers/kamailio-dispatcher.cfg, found from the source tree or next to the binary.
fn kamailio_cfg() -> Result<PathBuf, String> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/kamailio-dispatcher.cfg"),
        PathBuf::from("bench/peers/kamailio-dispatcher.cfg"),
        PathBuf::from("peers/kamailio-dispatcher.cfg"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| "bench/peers/kamailio-dispatcher.cfg not found".to_string())
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM first so fsroute drains and Kamailio reaps its workers; then SIGKILL.
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET to the admin listener; the body on 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    http_get_timeout(addr, path, Duration::from_secs(2), Duration::from_secs(5))
}

/// [`http_get`] with its connect and read limits: a sampler that must keep its one-second
/// rhythm gives up sooner than a scenario reading its final numbers.
pub fn http_get_timeout(addr: SocketAddr, path: &str, connect: Duration, read: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, connect).ok()?;
    s.set_read_timeout(Some(read)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.split_whitespace().nth(1).filter(|c| *c == "200")?;
    Some(body.to_string())
}

/// Per-shard counters from /status, as (received, processed, handed_off) triples.
pub fn shard_counters(status: &serde_json::Value) -> Vec<(u64, u64, u64)> {
    status["shards"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (s["received"].as_u64().unwrap_or(0), s["processed"].as_u64().unwrap_or(0), s["handed_off"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default()
}
