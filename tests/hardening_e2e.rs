//! End-to-end specs of fsroute at a public edge (docs/SECURITY.md), against a running `fsroute`:
//! a stranger cannot relay through it or forge responses through it, a request addressed to
//! fsroute itself does not loop, a flood of new calls at a failover route meets a bound, and
//! SIGTERM lets answered calls finish. Loopback only; bounded in datagrams and time.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

fn socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

fn recv(s: &UdpSocket) -> Option<String> {
    let mut buf = [0u8; 65535];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn shard_sum(st: &serde_json::Value, path: &[&str]) -> u64 {
    st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| path.iter().fold(s, |v, k| &v[*k]).as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_stranger_cannot_relay_requests_or_forged_responses_through_fsroute() {
    let _g = serial();
    let backend = free_udp_port();
    let proxy = Proxy::start(&dispatcher_config(2, &[backend], "round-robin"));
    let (victim, victim_addr) = socket();
    let (attacker, me) = socket();
    for (i, method) in ["INVITE", "BYE", "MESSAGE"].iter().enumerate() {
        let req = format!(
            "{method} sip:victim@{victim_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKrelay{i};rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: relay{i}@test\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        attacker.send_to(req.as_bytes(), proxy.sip).unwrap();
        let reply = recv(&attacker).unwrap_or_default();
        assert!(reply.starts_with("SIP/2.0 403"), "{method}: {reply}");
    }
    // A response with an fsroute-looking branch, aimed at the victim through the second Via.
    let forged = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-fsr00000000000000ab00000000000000cd\r\nVia: SIP/2.0/UDP {victim_addr};branch=z9hG4bKv\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: forged@test\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n",
        proxy.sip
    );
    attacker.send_to(forged.as_bytes(), proxy.sip).unwrap();
    assert_eq!(recv(&victim), None, "nothing reaches the victim");
    std::thread::sleep(Duration::from_millis(300));
    let st = proxy.status();
    assert_eq!(shard_sum(&st, &["refused", "relay_denied"]), 3, "{st}");
    assert_eq!(shard_sum(&st, &["dropped", "forged_response"]), 1, "{st}");
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

#[test]
fn a_request_to_fsroute_through_an_unspecified_address_is_answered_482_not_looped() {
    let _g = serial();
    // The "backend" is a plain socket: fsroute trusts in-dialog requests from its destinations to
    // go where they say, so this is the path a loop would take.
    let box_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    box_sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let box_addr = box_sock.local_addr().unwrap();
    let proxy = Proxy::start(&dispatcher_config(1, &[box_addr.port()], "round-robin"));
    let bye = format!(
        "BYE sip:x@0.0.0.0:{} SIP/2.0\r\nVia: SIP/2.0/UDP {box_addr};branch=z9hG4bKloop\r\nMax-Forwards: 4294967295\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: loop@test\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        proxy.sip.port()
    );
    let before = shard_sum(&proxy.status(), &["received"]);
    box_sock.send_to(bye.as_bytes(), proxy.sip).unwrap();
    let reply = recv(&box_sock).unwrap_or_default();
    assert!(reply.starts_with("SIP/2.0 482"), "{reply}");
    std::thread::sleep(Duration::from_millis(300));
    let st = proxy.status();
    // One datagram in, one reply out: no amplification.
    assert_eq!(shard_sum(&st, &["received"]) - before, 1, "{st}");
    assert_eq!(shard_sum(&st, &["refused", "loop"]), 1, "{st}");
}

#[test]
fn a_flood_of_new_calls_at_a_failover_route_is_refused_past_the_fork_limit() {
    let _g = serial();
    // A backend that never answers keeps every fork alive.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = dispatcher_config(1, &[silent.local_addr().unwrap().port()], "round-robin");
    config = config.replace("algorithm = \"round-robin\"", "algorithm = \"round-robin\"\nfailover = true");
    config.push_str("\n[limits]\nforks = 200\n\n[failover]\nno_answer_timeout = \"60s\"\n");
    let proxy = Proxy::start(&config);
    let (caller, me) = socket();
    caller.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut unavailable = 0;
    for n in 0..400 {
        let inv = format!(
            "INVITE sip:+1555{n}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKflood{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@b>;tag={n}\r\nTo: <sip:c@d>\r\nCall-ID: flood{n}@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            proxy.sip
        );
        caller.send_to(inv.as_bytes(), proxy.sip).unwrap();
        // Read as we go: 400 replies at once would overflow this socket's receive buffer.
        if n % 20 == 19 {
            while let Some(r) = recv(&caller) {
                unavailable += usize::from(r.starts_with("SIP/2.0 503"));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match recv(&caller) {
            Some(r) if r.starts_with("SIP/2.0 503") => unavailable += 1,
            Some(_) => {}
            None if unavailable >= 200 => break,
            None => {}
        }
    }
    assert_eq!(unavailable, 200, "every INVITE past the 200 forks gets 503");
    // Gauges are published on the shards' 100 ms tick.
    std::thread::sleep(Duration::from_millis(300));
    let st = proxy.status();
    assert_eq!(shard_sum(&st, &["call_state", "forks"]), 200, "{st}");
    assert_eq!(shard_sum(&st, &["refused", "forks_full"]), 200, "{st}");
}

#[test]
fn sigterm_lets_answered_calls_reach_their_bye_then_stops_before_the_drain_timeout() {
    let _g = serial();
    let backend = free_udp_port();
    let _uas = Sipp::uas(backend, None, &[]);
    let mut proxy = Proxy::start_with(&dispatcher_config(2, &[backend], "round-robin"), &["--drain-timeout", "30s"]);
    let target = proxy.sip;
    // Ten calls held 3 s each, all started within half a second.
    let calls = std::thread::spawn(move || Sipp::uac(target, None, 10, 20, &["-d", "3000"], Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(proxy.child.try_wait().unwrap().is_none(), "fsroute must wait for the calls in progress: {}", proxy.log());
    let run = calls.join().unwrap();
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(10), "{}", run.explain());
    let status = wait_with_timeout(&mut proxy.child, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {}", proxy.log());
    assert!(signalled.elapsed() < Duration::from_secs(30), "stopped when the calls ended, not at the drain timeout");
}
