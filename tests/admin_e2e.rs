//! End-to-end specs of the admin listener's defences (issue 9): a huge declared body, a body that
//! never arrives and a crowd of idle connections cost a bounded amount and never stop the data
//! plane or the control loop; the bearer token guards every endpoint; a listener reachable from
//! other hosts without a token is refused by `run` and `check`. Every client here is on 127.0.0.1
//! and every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "e2e-0123456789abcdef-token";

fn config() -> String {
    dispatcher_config(2, &[free_udp_port()], "round-robin")
}

fn with_token(token: &str) -> String {
    config().replace("[control]\n", &format!("[control]\nadmin_token = \"{token}\"\n"))
}

/// Sends `request` as is and reads the reply until the server closes or `limit` passes.
fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("admin connect");
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(request).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    (status_code(&resp), resp)
}

fn status_code(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn alive(proxy: &mut Proxy) -> bool {
    matches!(proxy.child.try_wait(), Ok(None))
}

/// Finding 1: tiny_http allocated the declared length to drain it and aborted the process.
#[test]
fn a_huge_declared_body_gets_413_and_the_process_keeps_serving() {
    let _g = serial();
    let mut proxy = Proxy::start(&config());
    let started = Instant::now();
    for request in [
        "GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
        "POST /dispatcher/state HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n{",
        "POST /dispatcher/state HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
    ] {
        let (code, resp) = raw(proxy.admin, request.as_bytes(), Duration::from_secs(3));
        assert_eq!(code, 413, "{request:?} -> {resp}");
        assert!(resp.contains(r#"{"error":"request body too large"#), "{resp}");
    }
    // A body with no declared length is cut off at the limit while it streams.
    // One byte over the limit and no more, so the server reads all that was sent before it closes.
    let mut chunked = b"POST /dispatcher/state HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n".to_vec();
    chunked.extend_from_slice(&[b'x'; 0x10001]);
    let (code, resp) = raw(proxy.admin, &chunked, Duration::from_secs(3));
    assert_eq!(code, 413, "{resp}");
    assert!(started.elapsed() < Duration::from_secs(5), "refusals took {:?}", started.elapsed());

    assert!(alive(&mut proxy), "fsroute died: {}", proxy.log());
    assert!(options_ping(proxy.sip).is_some_and(|l| l.contains("200")), "SIP stopped answering");
    assert_eq!(proxy.status()["config"]["reloads"], 0);
    assert!(!proxy.log().contains("memory allocation"), "{}", proxy.log());
}

/// Finding 5: a POST whose body never came held the control thread, so /status, SIGHUP and
/// SIGTERM waited for it.
#[test]
fn a_post_whose_body_never_arrives_stops_neither_status_nor_sighup_nor_sigterm() {
    let _g = serial();
    let proxy = Proxy::start(&config());
    // Longer than any body an HTTP library buffers before handing the request over (tiny_http: 1 KiB).
    let mut stalled = TcpStream::connect_timeout(&proxy.admin, Duration::from_secs(2)).unwrap();
    stalled
        .write_all(b"POST /dispatcher/state HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"setid\"")
        .unwrap();
    let hung_at = Instant::now();
    std::thread::sleep(Duration::from_millis(200));

    let t = Instant::now();
    let st = proxy.status();
    assert!(t.elapsed() < Duration::from_secs(1), "/status took {:?} behind a stalled POST", t.elapsed());
    assert_eq!(st["config"]["reloads"], 0);

    proxy.signal(libc::SIGHUP);
    let t = Instant::now();
    while proxy.status()["config"]["reloads"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(2), "SIGHUP not handled behind a stalled POST");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(hung_at.elapsed() < Duration::from_secs(4), "the stall must still be on while SIGHUP is checked");

    // The stalled client itself is told, once the body read time (5 s) has passed.
    stalled.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut resp = Vec::new();
    let _ = stalled.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    assert_eq!(status_code(&resp), 408, "{resp}");
    let waited = hung_at.elapsed();
    assert!(waited >= Duration::from_millis(4500) && waited < Duration::from_secs(8), "408 after {waited:?}");

    // And SIGTERM is not held up by a client that stalls again.
    let mut again = TcpStream::connect_timeout(&proxy.admin, Duration::from_secs(2)).unwrap();
    again.write_all(b"POST /dispatcher/state HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let status = proxy.stop().expect("fsroute did not stop");
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(3), "SIGTERM took {:?}", t.elapsed());
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Finding 5: tiny_http started a thread per connection (3,000 idle connections, 3,004 threads).
#[test]
fn idle_connections_cost_no_thread_and_past_the_cap_are_closed_at_once() {
    let _g = serial();
    let proxy = Proxy::start(&config());
    let pid = proxy.child.id();
    let before = threads_of(pid);
    let mut open: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect_timeout(&proxy.admin, Duration::from_secs(2)).expect("admin connect"))
        .collect();
    for c in &open {
        c.set_nonblocking(true).unwrap();
    }
    // Drops the connections the server has closed (EOF or reset); the rest still wait for a request.
    let reap = |open: &mut Vec<TcpStream>| {
        open.retain_mut(|c| match c.read(&mut [0u8; 64]) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        })
    };
    // Past the cap (64) a connection is accepted and closed straight away.
    let t = Instant::now();
    reap(&mut open);
    while open.len() > 64 && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        reap(&mut open);
    }
    let threads = threads_of(pid);
    assert!(threads < 40, "{threads} threads with 300 admin connections (before: {before})");
    assert!(threads <= before + 1, "admin connections started threads: {before} -> {threads}");
    assert_eq!(open.len(), 64, "idle connections held by the server, the cap is 64");
    assert!(options_ping(proxy.sip).is_some(), "SIP stopped answering");

    // Idle connections are closed by the server after the header read time (5 s).
    let t = Instant::now();
    while !open.is_empty() && t.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(200));
        reap(&mut open);
    }
    assert!(open.is_empty(), "{} idle connections outlived the idle timeout", open.len());
    let t = Instant::now();
    proxy.status();
    assert!(t.elapsed() < Duration::from_secs(1), "/status took {:?}", t.elapsed());
}

#[test]
fn the_admin_endpoints_answer_as_before_over_http_1_0_and_1_1() {
    let _g = serial();
    let proxy = Proxy::start(&config());
    let (code, resp) = raw(proxy.admin, b"GET /metrics HTTP/1.0\r\n\r\n", Duration::from_secs(3));
    assert_eq!(code, 200, "{resp}");
    assert_eq!(header(&resp, "content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(resp.contains("fsroute_shard_processed_total"), "{resp}");
    assert_eq!(http(proxy.admin, "GET", "/nope", ""), (404, r#"{"error":"not found"}"#.to_string()));
    assert_eq!(http(proxy.admin, "POST", "/status", "").0, 404);
    let (code, body) = http(proxy.admin, "POST", "/dispatcher/state", "not json");
    assert!(code == 400 && body.contains("bad request body"), "{code} {body}");

    // Two requests on one keep-alive connection, the second one closing it.
    let (code, resp) = raw(
        proxy.admin,
        b"GET /status?x=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 2, "{resp}");
    assert_eq!(header(&resp, "content-type"), Some("application/json"));

    // Oversized heads are refused rather than buffered.
    let big = format!("GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "p".repeat(10 * 1024));
    let (code, resp) = raw(proxy.admin, big.as_bytes(), Duration::from_secs(3));
    assert_eq!(code, 431, "{resp}");
}

#[test]
fn the_token_guards_every_endpoint_and_never_shows() {
    let _g = serial();
    let proxy = Proxy::start(&with_token(TOKEN));
    let bearer = format!("Authorization: Bearer {TOKEN}");
    for (method, path) in [("GET", "/status"), ("GET", "/metrics"), ("POST", "/dispatcher/state"), ("GET", "/nope")] {
        for headers in [vec![], vec!["Authorization: Bearer wrong-0123456789abcdef-tok"], vec!["Authorization: Basic Zm9vOmJhcg=="]] {
            let (code, body) = http_with(proxy.admin, method, path, &headers, "{}");
            assert_eq!((code, body.as_str()), (401, r#"{"error":"unauthorized"}"#), "{method} {path} {headers:?}");
        }
    }
    let almost = format!("Authorization: Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    assert_eq!(http_with(proxy.admin, "GET", "/status", &[&almost], "").0, 401);
    let (code, resp) = raw(proxy.admin, b"GET /status HTTP/1.0\r\n\r\n", Duration::from_secs(3));
    assert_eq!(code, 401);
    assert_eq!(header(&resp, "www-authenticate"), Some("Bearer"));

    let (code, status) = http_with(proxy.admin, "GET", "/status", &[&bearer], "");
    assert_eq!(code, 200, "{status}");
    assert!(serde_json::from_str::<serde_json::Value>(&status).is_ok(), "{status}");
    let lower = format!("authorization: bearer {TOKEN}");
    let (code, metrics) = http_with(proxy.admin, "GET", "/metrics", &[&lower], "");
    assert_eq!(code, 200, "{metrics}");
    assert_eq!(http_with(proxy.admin, "GET", "/nope", &[&bearer], "").0, 404);
    for shown in [&status, &metrics, &proxy.log()] {
        assert!(!shown.contains(TOKEN), "token leaked:\n{shown}");
    }

    // A reload changes the token without a restart.
    let next = "next-0123456789abcdef-token";
    proxy.rewrite_config(&with_token(next));
    proxy.signal(libc::SIGHUP);
    let next_bearer = format!("Authorization: Bearer {next}");
    let t = Instant::now();
    while http_with(proxy.admin, "GET", "/status", &[&next_bearer], "").0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(3), "the reloaded token is not taken");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_with(proxy.admin, "GET", "/status", &[&bearer], "").0, 401);
    assert!(!proxy.log().contains(next), "token leaked into the log");
}

#[test]
fn a_non_loopback_admin_without_a_token_is_refused_by_run_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fsroute.toml");
    let port = free_tcp_port();
    let text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:{}\"]\n\n[control]\nadmin = \"0.0.0.0:{port}\"\n",
        free_udp_port()
    );
    std::fs::write(&path, &text).unwrap();
    for sub in ["check", "run"] {
        let mut child = Command::new(fsroute_bin())
            .args([sub, "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_with_timeout(&mut child, Duration::from_secs(10)).expect("fsroute did not exit");
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{sub}: {err}");
        assert!(err.contains("fsroute.toml:5:") && err.contains("control.admin_token"), "{sub}: {err}");
        assert!(err.contains(&format!("0.0.0.0:{port}")), "{sub}: {err}");
    }
    // Nothing was bound by the refused `run`.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());

    // `check` shows that a token is set and never the token.
    std::fs::write(&path, text.replace("0.0.0.0", "127.0.0.1") + &format!("admin_token = \"{TOKEN}\"\n")).unwrap();
    let out = Command::new(fsroute_bin()).args(["check", "--config"]).arg(&path).output().unwrap();
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("bearer token ****") && !shown.contains(TOKEN), "{shown}");
}

#[test]
fn check_warns_about_an_admin_listener_reachable_from_other_hosts_and_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fsroute.toml");
    let text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:{}\"]\n\n[control]\nadmin = \"0.0.0.0:9060\"\nadmin_token = \"{TOKEN}\"\n",
        free_udp_port()
    );
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(fsroute_bin()).args(["check", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: ") && err.contains("control.admin") && err.contains("0.0.0.0:9060"), "{err}");
    assert!(!err.contains(TOKEN) && !String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    // On loopback there is nothing to warn about.
    std::fs::write(&path, text.replace("0.0.0.0", "127.0.0.1")).unwrap();
    let out = Command::new(fsroute_bin()).args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("warning"), "{out:?}");
}

/// The admin listener is bound before the data plane starts: whoever waits for fsroute to answer
/// SIP (a supervisor, a test, `fsroute ctl` in a script) finds the admin API listening too. When
/// the data plane came first, `fsroute ctl` right after the first SIP answer could be refused.
#[test]
fn the_admin_api_is_listening_as_soon_as_fsroute_answers_sip() {
    let _g = serial();
    for _ in 0..3 {
        let proxy = Proxy::start(&config());
        let conn = std::net::TcpStream::connect_timeout(&proxy.admin, Duration::from_secs(1));
        assert!(conn.is_ok(), "admin refused right after SIP answered: {conn:?}\n{}", proxy.log());
        assert_eq!(proxy.status()["config"]["reloads"], 0);
    }
}
