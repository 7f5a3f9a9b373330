//! End-to-end specs of HEP capture (`[capture]`, docs/CAPTURE.md): `fsroute run` between SIPp
//! peers with a HEP collector on loopback (a UDP socket in the test, decoding HEP3 with the
//! spec-written decoder of `fsroute_dataplane::testing`). Every message of a call appears once as
//! received and once as sent, with the right addresses, ports, capture id and payload; a dead
//! collector never costs a call; a SIGHUP turns capture on and off; messages on a TCP connection
//! are captured as TCP with the connection's own addresses.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use fsroute_dataplane::testing::{HepCollector as Collector, HepPacket};

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// One SIP message as captured: its start line, Call-ID, CSeq, top Via.
struct Sip {
    start: String,
    call_id: String,
    cseq: String,
    top_via: String,
}

fn sip(p: &HepPacket) -> Sip {
    let text = String::from_utf8(p.payload.clone().expect("a payload")).expect("SIP is text here");
    let header = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("").trim().to_string();
    Sip { start: text.lines().next().unwrap_or("").to_string(), call_id: header("Call-ID:"), cseq: header("CSeq:"), top_via: header("Via:") }
}

fn capture_config(backend: u16, capture: &str) -> String {
    format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = 2\n\n[control]\nadmin = \"{{ADMIN}}\"\n\n{capture}\n\
         [[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:{backend}\"\nweight = 1\n\n[[route]]\nto_dispatcher = 1\n"
    )
}

fn shard_capture(proxy: &Proxy) -> (u64, u64) {
    let st = proxy.status();
    let shards = st["shards"].as_array().unwrap();
    let sum = |k: &str| shards.iter().map(|s| s["capture"][k].as_u64().unwrap()).sum();
    (sum("sent"), sum("dropped"))
}

#[test]
fn every_message_of_a_sipp_call_reaches_the_collector_received_and_sent_with_its_addresses() {
    let _g = serial();
    let collector = Collector::start();
    let backend = free_udp_port();
    let _uas = Sipp::uas(backend, None, &[]);
    let proxy = Proxy::start(&capture_config(backend, &format!("[capture]\nhep = \"{}\"\ncapture_id = 2001\n", collector.addr)));
    // Proxy::start's readiness OPTIONS were captured too.
    let _ = collector.take();
    let before = now_us();
    let calls = 3;
    let run = Sipp::uac(proxy.sip, None, calls, 10, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    let packets = collector.take();
    let after = now_us();

    let uac: SocketAddr = format!("127.0.0.1:{}", run.port).parse().unwrap();
    let uas: SocketAddr = format!("127.0.0.1:{backend}").parse().unwrap();
    let fsroute_via = format!("SIP/2.0/UDP {};branch=z9hG4bK", proxy.sip);
    // Per call: INVITE, 180, 200, ACK, BYE, 200 (SIPp's stock UAS sends no 100), each once in
    // and once out.
    let mut per_call: HashMap<String, Vec<(&HepPacket, Sip)>> = HashMap::new();
    for p in &packets {
        assert_eq!((p.family, p.protocol, p.proto_type, p.capture_id), (Some(2), Some(17), Some(1), Some(2001)));
        let t = p.time_us().unwrap();
        assert!(before <= t && t <= after, "time {t} outside the run [{before}, {after}]");
        let s = sip(p);
        per_call.entry(s.call_id.clone()).or_default().push((p, s));
    }
    assert_eq!(per_call.len(), calls as usize, "{} packets", packets.len());
    for (call, msgs) in &per_call {
        assert_eq!(msgs.len(), 12, "call {call}: six messages, each received and sent");
        for (method, cseq_method) in [("INVITE", "INVITE"), ("ACK", "ACK"), ("BYE", "BYE")] {
            let req = |p: &&(&HepPacket, Sip)| p.1.start.starts_with(&format!("{method} ")) && p.1.cseq.ends_with(cseq_method);
            let rx: Vec<_> = msgs.iter().filter(req).filter(|m| m.0.dst() == Some(proxy.sip)).collect();
            let tx: Vec<_> = msgs.iter().filter(req).filter(|m| m.0.src() == Some(proxy.sip)).collect();
            assert_eq!((rx.len(), tx.len()), (1, 1), "call {call}: {method} once in, once out");
            assert_eq!(rx[0].0.src(), Some(uac), "{method} from the caller");
            assert_eq!(tx[0].0.dst(), Some(uas), "{method} to the backend");
            assert!(!rx[0].1.top_via.starts_with(&fsroute_via), "as received: the caller's Via on top");
            assert!(tx[0].1.top_via.starts_with(&fsroute_via), "as sent: fsroute's Via on top: {}", tx[0].1.top_via);
            assert!(rx[0].0.time_us() <= tx[0].0.time_us(), "{method} received before it was forwarded");
        }
        for (status, cseq_method) in [("180", "INVITE"), ("200", "INVITE"), ("200", "BYE")] {
            let resp = |p: &&(&HepPacket, Sip)| p.1.start.starts_with(&format!("SIP/2.0 {status}")) && p.1.cseq.ends_with(cseq_method);
            let rx: Vec<_> = msgs.iter().filter(resp).filter(|m| m.0.dst() == Some(proxy.sip)).collect();
            let tx: Vec<_> = msgs.iter().filter(resp).filter(|m| m.0.src() == Some(proxy.sip)).collect();
            assert_eq!((rx.len(), tx.len()), (1, 1), "call {call}: {status} to {cseq_method} once in, once out");
            assert_eq!((rx[0].0.src(), tx[0].0.dst()), (Some(uas), Some(uac)), "{status}: from the backend to the caller");
            assert!(rx[0].1.top_via.starts_with(&fsroute_via), "as received: fsroute's Via on top");
            assert!(!tx[0].1.top_via.starts_with(&fsroute_via), "as sent: fsroute's Via gone");
            assert!(rx[0].0.time_us() <= tx[0].0.time_us());
        }
    }
    let (sent, dropped) = shard_capture(&proxy);
    assert_eq!(dropped, 0);
    assert!(sent >= packets.len() as u64, "{sent} counted, {} arrived", packets.len());
    let st = proxy.status();
    assert_eq!(st["capture"]["hep"], collector.addr.to_string());
    let (code, metrics) = http(proxy.admin, "GET", "/metrics", "");
    assert_eq!(code, 200);
    assert!(metrics.contains("fsroute_shard_capture_sent_total{shard=\"0\"}"), "{metrics}");
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

#[test]
fn a_dead_collector_never_fails_a_call_and_a_sighup_turns_capture_on_and_off() {
    let _g = serial();
    let backend = free_udp_port();
    let _uas = Sipp::uas(backend, None, &[]);
    let proxy = Proxy::start(&capture_config(backend, ""));
    assert!(proxy.status()["capture"].is_null());

    // Nothing listens at the collector's address: loopback answers ICMP port unreachable.
    let dead = free_udp_port();
    proxy.rewrite_config(&capture_config(backend, &format!("[capture]\nhep = \"127.0.0.1:{dead}\"\n")));
    proxy.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || !proxy.status()["capture"].is_null()), "{}", proxy.log());
    let run = Sipp::uac(proxy.sip, None, 50, 50, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert!(wait_for(Duration::from_secs(3), || shard_capture(&proxy).1 > 0), "refused captures are counted: {:?}", shard_capture(&proxy));

    // Back to a live collector, then off, without a restart.
    let collector = Collector::start();
    proxy.rewrite_config(&capture_config(backend, &format!("[capture]\nhep = \"{}\"\ncapture_id = 5\n", collector.addr)));
    proxy.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || proxy.status()["capture"]["capture_id"] == 5), "{}", proxy.log());
    let run = Sipp::uac(proxy.sip, None, 1, 1, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    let packets = collector.take();
    let call: Vec<_> = packets.iter().filter(|p| sip(p).start.starts_with("INVITE ")).collect();
    assert_eq!(call.len(), 2, "the call's INVITE in and out");
    assert!(packets.iter().all(|p| p.capture_id == Some(5)));

    proxy.rewrite_config(&capture_config(backend, ""));
    proxy.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || proxy.status()["capture"].is_null()), "{}", proxy.log());
    let run = Sipp::uac(proxy.sip, None, 1, 1, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    assert!(collector.take().iter().all(|p| !sip(p).start.starts_with("INVITE ")), "capture is off");
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

/// The IPv4/UDP datagrams of a pcap file (as sngrep writes them): source, destination, payload.
fn pcap_datagrams(file: &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    assert!(file.len() >= 24 && file[..4] == [0xd4, 0xc3, 0xb2, 0xa1], "a little-endian pcap file");
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    // Link-layer header before IP: Ethernet, Linux cooked v1 / v2, raw IP.
    let link = match u32_at(file, 20) {
        1 => 14,
        113 => 16,
        276 => 20,
        101 | 228 => 0,
        other => panic!("link type {other}"),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32_at(file, at + 8) as usize;
        let p = &file[at + 16 + link..at + 16 + len];
        at += 16 + len;
        let ihl = usize::from(p[0] & 15) * 4;
        let ip = |i: usize| std::net::Ipv4Addr::new(p[i], p[i + 1], p[i + 2], p[i + 3]);
        let port = |i: usize| u16::from_be_bytes([p[ihl + i], p[ihl + i + 1]]);
        out.push((SocketAddr::from((ip(12), port(0))), SocketAddr::from((ip(16), port(2))), p[ihl + 8..].to_vec()));
    }
    out
}

/// Waits until something is bound to UDP `port` on 127.0.0.1 (/proc/net/udp, hex address:port).
fn udp_bound(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    wait_for(Duration::from_secs(5), || std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| t.contains(&want)))
}

#[test]
fn sngrep_reads_a_captured_call_with_fsroutes_addresses() {
    let _g = serial();
    let ok = std::process::Command::new("sngrep").arg("-V").stdout(std::process::Stdio::null()).status().is_ok();
    assert!(ok, "sngrep is not installed: `apt-get install -y sngrep` (.ci/run does it)");
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("hep.pcap");
    let port = free_udp_port();
    // -N: no interface, -q: quiet, -L: listen for HEP (and capture nothing else), -O: write a pcap.
    let mut sngrep = std::process::Command::new("sngrep")
        .args(["-N", "-q", "-L", &format!("udp:127.0.0.1:{port}"), "-O"])
        .arg(&pcap)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sngrep");
    assert!(udp_bound(port), "sngrep listens");
    let backend = free_udp_port();
    let _uas = Sipp::uas(backend, None, &[]);
    let proxy = Proxy::start(&capture_config(backend, &format!("[capture]\nhep = \"127.0.0.1:{port}\"\n")));
    let run = Sipp::uac(proxy.sip, None, 2, 10, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child; sngrep writes out its pcap on SIGINT.
    unsafe { libc::kill(sngrep.id() as i32, libc::SIGINT) };
    assert!(wait_with_timeout(&mut sngrep, Duration::from_secs(5)).is_some(), "sngrep stops on SIGINT");
    let datagrams = pcap_datagrams(&std::fs::read(&pcap).expect("sngrep wrote its pcap"));
    let uac: SocketAddr = format!("127.0.0.1:{}", run.port).parse().unwrap();
    let uas: SocketAddr = format!("127.0.0.1:{backend}").parse().unwrap();
    let calls: Vec<_> = datagrams.iter().filter(|(_, _, p)| !String::from_utf8_lossy(p).contains("CSeq: 1 OPTIONS")).collect();
    assert_eq!(calls.len(), 2 * 12, "two calls, six messages each, in and out");
    let legs = |from, to| calls.iter().filter(|(s, d, _)| *s == from && *d == to).count();
    // INVITE, ACK, BYE from the caller in and on to the backend; 180, 200, 200 back.
    assert_eq!((legs(uac, proxy.sip), legs(proxy.sip, uas), legs(uas, proxy.sip), legs(proxy.sip, uac)), (6, 6, 6, 6));
    assert_eq!(shard_capture(&proxy).1, 0, "nothing dropped");
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

#[test]
fn messages_on_a_tcp_connection_are_captured_as_tcp_with_the_connections_addresses() {
    let _g = serial();
    let collector = Collector::start();
    let backend = free_tcp_port();
    let _uas = Sipp::uas(backend, None, &["-t", "t1"]);
    let config = capture_config(backend, &format!("[capture]\nhep = \"{}\"\ncapture_id = 7\n", collector.addr))
        .replace(&format!("sip:127.0.0.1:{backend}\""), &format!("sip:127.0.0.1:{backend};transport=tcp\""));
    let proxy = Proxy::start(&config);
    let _ = collector.take();
    let run = Sipp::uac(proxy.sip, None, 2, 10, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    let packets = collector.take();
    let uas: SocketAddr = format!("127.0.0.1:{backend}").parse().unwrap();
    let to_uas: Vec<_> = packets.iter().filter(|p| p.dst() == Some(uas)).collect();
    let from_uas: Vec<_> = packets.iter().filter(|p| p.src() == Some(uas)).collect();
    // Per call INVITE, ACK, BYE to the backend and 180, 200, 200 from it, all on the connection.
    assert_eq!((to_uas.len(), from_uas.len()), (6, 6), "{} packets", packets.len());
    for p in to_uas.iter().chain(&from_uas) {
        assert_eq!(p.protocol, Some(6), "captured as TCP");
        let s = sip(p);
        let local = if p.dst() == Some(uas) { p.src() } else { p.dst() };
        // fsroute's side of the connection is an ephemeral port of its own, not the UDP listener.
        assert!(local.is_some_and(|l| l.ip() == proxy.sip.ip() && l.port() != proxy.sip.port()), "{local:?}");
        if p.dst() == Some(uas) && !s.start.starts_with("ACK") {
            assert!(s.top_via.starts_with("SIP/2.0/TCP "), "as sent: fsroute's TCP Via on top: {}", s.top_via);
        }
    }
    // The caller's side stays UDP.
    assert!(packets.iter().filter(|p| p.dst() == Some(proxy.sip) || p.src() == Some(proxy.sip)).all(|p| p.protocol == Some(17)));
    assert_eq!(shard_capture(&proxy).1, 0, "nothing dropped");
}
