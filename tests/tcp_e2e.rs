//! End-to-end specs of SIP over TCP (docs/TCP.md): `fsroute run` with a UDP and a TCP listener and
//! two shards, SIPp callers over TCP (`-t t1`: one connection for every call, `-t tn`: one per
//! call) in front of SIPp backends over UDP, CANCEL and ACK on the INVITE's path, and hostile
//! peers on raw TCP sockets that must cost only their own connection. Bounded in calls and time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// A dispatcher config with a UDP listener (`{SIP}`) and a TCP listener on `tcp`.
fn tcp_config(shards: usize, backends: &[u16], tcp: SocketAddr, extra_proxy: &str) -> String {
    dispatcher_config(shards, backends, "round-robin")
        .replace("listen = [\"{SIP}\"]", &format!("listen = [\"{{SIP}}\", \"tcp:{tcp}\"]\n{extra_proxy}"))
}

#[test]
fn sipp_calls_over_one_tcp_connection_reach_udp_backends_and_complete() {
    let _g = serial();
    let (b1, b2) = (free_udp_port(), free_udp_port());
    let _uas1 = Sipp::uas(b1, None, &[]);
    let _uas2 = Sipp::uas(b2, None, &[]);
    let tcp = free_tcp_addr();
    let proxy = Proxy::start(&tcp_config(2, &[b1, b2], tcp, ""));
    // One connection carries every call: half of them belong to the shard that does not own it,
    // so their responses reach the caller through the owner.
    let run = Sipp::uac(tcp, None, 200, 100, &["-t", "t1"], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(200), "{}", run.explain());
    // INVITE, ACK and BYE per call came in over TCP; 180, 200 and the BYE's 200 went back on it.
    assert!(tcp_total(&proxy, &["received"]) >= 600, "{}", proxy.status()["shards"]);
    assert!(tcp_total(&proxy, &["sent"]) >= 600, "{}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["accepted"]), 1);
    let handed: u64 = proxy.status()["shards"].as_array().unwrap().iter().map(|s| s["handed_off"].as_u64().unwrap()).sum();
    assert!(handed > 0, "some calls were owned by the other shard");
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

#[test]
fn sipp_with_a_tcp_connection_per_call_completes_and_every_connection_is_counted() {
    let _g = serial();
    let b1 = free_udp_port();
    let _uas = Sipp::uas(b1, None, &[]);
    let tcp = free_tcp_addr();
    let proxy = Proxy::start(&tcp_config(2, &[b1], tcp, ""));
    // SIPp refuses tn mode when its default socket budget exceeds the open-file limit.
    let run = Sipp::uac(tcp, None, 50, 25, &["-t", "tn", "-max_socket", "200"], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(50), "{}", run.explain());
    assert!(tcp_total(&proxy, &["accepted"]) >= 50, "{}", proxy.status()["shards"]);
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

#[test]
fn a_cancel_over_tcp_and_its_ack_reach_the_backend_that_got_the_invite() {
    let _g = serial();
    let (b1, b2) = (free_udp_port(), free_udp_port());
    let uas_sf = repo_path("tests/scenarios/cancel_uas.xml");
    let uac_sf = repo_path("tests/scenarios/cancel_uac.xml");
    let uas1 = Sipp::uas(b1, Some(&uas_sf), &[]);
    let uas2 = Sipp::uas(b2, Some(&uas_sf), &[]);
    let tcp = free_tcp_addr();
    let proxy = Proxy::start(&tcp_config(2, &[b1, b2], tcp, ""));
    let run = Sipp::uac(tcp, Some(&uac_sf), 40, 20, &["-t", "t1"], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\nuas1: {}\nuas2: {}\n{}", run.explain(), uas1.errors(), uas2.errors(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(40), "{}", run.explain());
    let st = proxy.status();
    let fwd: Vec<u64> = st["dispatcher"][0]["destinations"].as_array().unwrap().iter().map(|d| d["forwarded"].as_u64().unwrap()).collect();
    assert!(fwd.iter().all(|&f| f >= 15), "round-robin gave both backends INVITEs to cancel: {fwd:?}");
}

/// True when the peer closed `s` (EOF or reset) within the timeout.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
        }
    }
}

#[test]
fn garbage_a_10_mb_content_length_and_idle_connections_are_closed_and_counted_while_udp_calls_go_on() {
    let _g = serial();
    let b1 = free_udp_port();
    let _uas = Sipp::uas(b1, None, &[]);
    let tcp = free_tcp_addr();
    let proxy = Proxy::start(&tcp_config(2, &[b1], tcp, "tcp_idle_timeout = \"1s\"\ntcp_connections_per_source = 8"));
    let mut huge = TcpStream::connect(tcp).unwrap();
    huge.write_all(b"INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKx\r\nContent-Length: 10485760\r\n\r\n").unwrap();
    let mut junk = TcpStream::connect(tcp).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut idle = TcpStream::connect(tcp).unwrap();
    // UDP callers are unaffected meanwhile.
    let run = Sipp::uac(proxy.sip, None, 100, 100, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert!(closed_by_peer(&mut huge), "a 10 MB Content-Length closes its connection");
    assert!(closed_by_peer(&mut junk), "a stream message without Content-Length closes its connection");
    assert!(closed_by_peer(&mut idle), "a silent connection is closed after tcp_idle_timeout");
    assert!(wait_for(Duration::from_secs(5), || tcp_total(&proxy, &["closed", "too_large"]) == 1
        && tcp_total(&proxy, &["closed", "framing"]) == 1
        && tcp_total(&proxy, &["closed", "idle"]) == 1));
    // The per-source limit: 8 open at once from 127.0.0.1, the ninth is refused.
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(tcp).unwrap()).collect();
    assert!(wait_for(Duration::from_secs(5), || tcp_total(&proxy, &["connections"]) == 8));
    let mut ninth = TcpStream::connect(tcp).unwrap();
    assert!(closed_by_peer(&mut ninth), "the ninth connection from one source is refused");
    assert_eq!(tcp_total(&proxy, &["refused_source_limit"]), 1);
    drop(held);
    let metrics = http(proxy.admin, "GET", "/metrics", "").1;
    assert!(metrics.contains("fsroute_shard_tcp_closed_total{shard=\"0\",reason=\"too_large\"}")
        || metrics.contains("fsroute_shard_tcp_closed_total{shard=\"1\",reason=\"too_large\"}"), "{metrics}");
    assert!(metrics.contains("fsroute_shard_tcp_connections{"), "{metrics}");
}

/// A config whose set holds the given destination URIs (with `;transport=` as written), on a
/// failover route.
fn transport_config(dests: &[String], tcp: SocketAddr) -> String {
    let mut c = format!("[proxy]\nlisten = [\"{{SIP}}\", \"tcp:{tcp}\"]\nshards = 2\nrecord_route = true\n\n[control]\nadmin = \"{{ADMIN}}\"\n\n");
    for d in dests {
        c.push_str(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"{d}\"\nweight = 1\n\n"));
    }
    c.push_str("[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\nfailover = true\n\n[failover]\nno_answer_timeout = \"5s\"\n");
    c
}

#[test]
fn a_udp_caller_reaches_a_tcp_backend_and_a_tcp_caller_reaches_it_too() {
    let _g = serial();
    let b = free_tcp_port();
    let uas = Sipp::uas(b, None, &["-t", "t1", "-max_socket", "200"]);
    let tcp = free_tcp_addr();
    let proxy = Proxy::start(&transport_config(&[format!("sip:127.0.0.1:{b};transport=tcp")], tcp));
    let run = Sipp::uac(proxy.sip, None, 50, 25, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\nuas: {}\n{}", run.explain(), uas.errors(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(50), "{}", run.explain());
    // One connection per shard that sent to the backend, reused by every call.
    let connected = tcp_total(&proxy, &["connected"]);
    assert!((1..=2).contains(&connected), "{}", proxy.status()["shards"]);
    let run = Sipp::uac(tcp, None, 20, 20, &["-t", "t1"], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\nuas: {}\n{}", run.explain(), uas.errors(), proxy.log());
    assert_eq!(tcp_total(&proxy, &["connected"]), connected, "the backend connections are reused");
}

#[test]
fn a_tcp_destination_that_refuses_connections_is_failed_over_at_once_and_counted() {
    let _g = serial();
    let good = free_udp_port();
    let _uas = Sipp::uas(good, None, &[]);
    // Nothing listens on this TCP port: every connect is refused.
    let dead = free_tcp_port();
    let tcp = free_tcp_addr();
    let proxy = Proxy::start(&transport_config(&[format!("sip:127.0.0.1:{dead};transport=tcp"), format!("sip:127.0.0.1:{good}")], tcp));
    let started = std::time::Instant::now();
    let run = Sipp::uac(proxy.sip, None, 20, 20, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(20), "{}", run.explain());
    // Round-robin sent half the first attempts to the dead box: each failed over without waiting
    // out the 5 s no-answer timer.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(tcp_total(&proxy, &["connect_failed"]) >= 5, "{}", proxy.status()["shards"]);
    let metrics = http(proxy.admin, "GET", "/metrics", "").1;
    let failed: u64 = metrics
        .lines()
        .find(|l| l.starts_with("fsroute_destination_failed_total{") && l.contains(&format!("127.0.0.1:{dead};transport=tcp")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(failed >= 5, "the dead destination's failures are counted: {metrics}");
}

/// A backend on a TCP listener that answers INVITE with 180 and 200 and BYE with 200, and drops
/// the connection an ACK arrives on: a backend whose side of the connection dies mid-call. It
/// records which accepted connection (1, 2, ...) each request came on.
struct ConnKillingUas {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>,
}

impl ConnKillingUas {
    fn start() -> ConnKillingUas {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        // The threads end with the test process; every read is bounded by a timeout.
        std::thread::spawn(move || {
            for (n, s) in listener.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut buf = Vec::new();
                    while let Some(req) = read_sip(&mut s, &mut buf) {
                        let method = req.split_whitespace().next().unwrap_or("").to_string();
                        log.lock().unwrap().push((method.clone(), n + 1));
                        match method.as_str() {
                            "INVITE" => {
                                let _ = s.write_all(sip_response(&req, "180 Ringing", &format!("sip:uas@{addr};transport=tcp")).as_bytes());
                                let _ = s.write_all(sip_response(&req, "200 OK", &format!("sip:uas@{addr};transport=tcp")).as_bytes());
                            }
                            // The call is up: this side of the connection goes away.
                            "ACK" => return,
                            _ => {
                                let _ = s.write_all(sip_response(&req, "200 OK", &format!("sip:uas@{addr};transport=tcp")).as_bytes());
                            }
                        }
                    }
                });
            }
        });
        ConnKillingUas { addr, seen }
    }

    fn seen(&self) -> Vec<(String, usize)> {
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn a_backend_connection_killed_mid_call_is_counted_and_the_bye_reaches_the_backend_on_a_new_one() {
    let _g = serial();
    let uas = ConnKillingUas::start();
    let tcp = free_tcp_addr();
    let proxy = Proxy::start(&transport_config(&[format!("sip:{};transport=tcp", uas.addr)], tcp));
    // A UDP caller that holds the call 1 s between its ACK and its BYE: time for fsroute to see
    // the backend's side of the connection go.
    let run = Sipp::uac(proxy.sip, None, 1, 1, &["-d", "1000"], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}\nuas saw {:?}\n{}", run.explain(), uas.seen(), proxy.log());
    let seen = uas.seen();
    assert_eq!(seen.iter().find(|(m, _)| m == "INVITE"), Some(&("INVITE".to_string(), 1)), "{seen:?}");
    assert_eq!(seen.iter().find(|(m, _)| m == "ACK"), Some(&("ACK".to_string(), 1)), "{seen:?}");
    assert_eq!(seen.iter().find(|(m, _)| m == "BYE"), Some(&("BYE".to_string(), 2)), "the BYE came on a new connection: {seen:?}");
    assert_eq!(tcp_total(&proxy, &["closed", "peer"]), 1, "{}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["connected"]), 2, "{}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["connect_failed"]), 0);
}

/// Raises this process's open-file limit to `n` (children, fsroute and SIPp, inherit it).
fn raise_nofile(n: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        if r.rlim_cur < n {
            r.rlim_cur = n.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[test]
fn a_thousand_idle_tcp_connections_are_held_while_udp_calls_complete_and_the_gauge_returns_when_they_close() {
    let _g = serial();
    raise_nofile(4096);
    let b1 = free_udp_port();
    let _uas = Sipp::uas(b1, None, &[]);
    let tcp = free_tcp_addr();
    let proxy = Proxy::start(&tcp_config(2, &[b1], tcp, "tcp_connections_per_source = 2000"));
    let idle: Vec<TcpStream> = (0..1000).map(|i| TcpStream::connect(tcp).unwrap_or_else(|e| panic!("connection {i}: {e}"))).collect();
    assert!(
        wait_for(Duration::from_secs(10), || tcp_total(&proxy, &["connections"]) == 1000),
        "{}",
        proxy.status()["shards"]
    );
    let run = Sipp::uac(proxy.sip, None, 200, 100, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(200), "{}", run.explain());
    assert_eq!(tcp_total(&proxy, &["connections"]), 1000, "no idle connection was dropped: {}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["accepted"]), 1000);
    assert_eq!(tcp_total(&proxy, &["refused_source_limit"]), 0);
    drop(idle);
    assert!(wait_for(Duration::from_secs(10), || tcp_total(&proxy, &["connections"]) == 0), "{}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["closed", "peer"]), 1000);
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

/// A 3 kB INVITE (a STIR/SHAKEN Identity header and a long SDP, as real trunks send) from a
/// UDP caller at `me` to `to`, call `n`.
fn large_invite(me: SocketAddr, to: SocketAddr, n: u32) -> Vec<u8> {
    let sdp: String = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\n".to_string()
        + &"a=candidate:1 1 UDP 2130706431 127.0.0.1 6000 typ host generation 0 network-id 1\r\n".repeat(26);
    let identity = "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0In0".repeat(8);
    format!(
        "INVITE sip:100@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbig{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=b{n}\r\nTo: <sip:100@{to}>\r\nCall-ID: big-{n}-{}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{me}>\r\nIdentity: {identity};info=<https://cert.example.net/c.pem>;alg=ES256;ppt=shaken\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        me.port(),
        sdp.len()
    )
    .into_bytes()
}

/// The first response with status `code` the UDP caller `sock` gets within 5 s.
fn udp_response(sock: &std::net::UdpSocket, code: &str) -> Option<String> {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65_535];
    while let Ok(n) = sock.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.starts_with(&format!("SIP/2.0 {code}")) {
            return Some(m);
        }
    }
    None
}

#[test]
fn a_3_kb_invite_over_udp_leaves_over_tcp_and_falls_back_to_udp_where_the_box_takes_no_connection() {
    let _g = serial();
    // A box on TCP only: the large INVITE can reach it only by switching (RFC 3261 §18.1.1).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_box = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Bounded: one connection, reads time out; the thread ends with the test process.
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        while let Some(req) = read_sip(&mut s, &mut buf) {
            let _ = tx.send(req.clone());
            if req.starts_with("INVITE ") {
                let _ = s.write_all(sip_response(&req, "200 OK", &format!("sip:fs@{tcp_box};transport=tcp")).as_bytes());
            }
        }
    });
    // A box on UDP only: nothing listens on its TCP port, so fsroute's connect is refused.
    let udp_box = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_box_addr = udp_box.local_addr().unwrap();
    let mut c = "[proxy]\nlisten = [\"{SIP}\"]\nshards = 1\n\n[control]\nadmin = \"{ADMIN}\"\n\n".to_string();
    for (set, b) in [(1, tcp_box), (2, udp_box_addr)] {
        c.push_str(&format!("[[dispatcher]]\nsetid = {set}\ndestination = \"sip:{b}\"\n\n"));
    }
    c.push_str("[[route]]\nruri_user_prefix = \"100\"\nto_dispatcher = 1\n\n[[route]]\nto_dispatcher = 2\n");
    let proxy = Proxy::start(&c);
    let caller = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = caller.local_addr().unwrap();
    let invite = large_invite(me, proxy.sip, 1);
    assert!(invite.len() > 3000, "{}", invite.len());
    caller.send_to(&invite, proxy.sip).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("nothing reached the TCP box\n{}", proxy.log()));
    assert!(got.starts_with("INVITE sip:100@"), "{got}");
    assert!(got.contains("\r\nVia: SIP/2.0/TCP "), "fsroute's Via says TCP: {got}");
    assert!(got.ends_with("a=candidate:1 1 UDP 2130706431 127.0.0.1 6000 typ host generation 0 network-id 1\r\n"), "the body arrived whole");
    assert!(udp_response(&caller, "200").is_some(), "the box's 200 came back to the UDP caller\n{}", proxy.log());
    assert_eq!(tcp_total(&proxy, &["udp_to_tcp"]), 1, "{}", proxy.status()["shards"]);
    // A small request to the same box stays UDP: it reaches no TCP listener and is not counted.
    let opts = "OPTIONS sip:100@x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKsmall\r\nMax-Forwards: 70\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: small@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    caller.send_to(opts.replace("sip:100@x", &format!("sip:100@{tcp_box}")).as_bytes(), proxy.sip).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tcp_total(&proxy, &["udp_to_tcp"]), 1);

    // To the UDP-only box: refused over TCP, so it goes over UDP after all, its Via UDP again.
    let invite = String::from_utf8(large_invite(me, proxy.sip, 2)).unwrap().replace("sip:100@", "sip:200@");
    caller.send_to(invite.as_bytes(), proxy.sip).unwrap();
    udp_box.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = udp_box.recv(&mut buf).unwrap_or_else(|e| panic!("the large INVITE was lost: {e}\n{}", proxy.log()));
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("INVITE sip:200@") && got.contains("\r\nVia: SIP/2.0/UDP "), "{got}");
    assert_eq!(tcp_total(&proxy, &["udp_to_tcp_fallback"]), 1, "{}", proxy.status()["shards"]);
    assert!(tcp_total(&proxy, &["connect_failed"]) >= 1);
    // The refusal is remembered: the next large request goes over UDP without a connect.
    let invite = invite.replace("big-2-", "big-3-").replace("bKbig2", "bKbig3");
    caller.send_to(invite.as_bytes(), proxy.sip).unwrap();
    assert!(udp_box.recv(&mut buf).is_ok());
    assert_eq!(tcp_total(&proxy, &["udp_to_tcp"]), 2, "the refused box was not tried again");
}
