//! End-to-end specs of the stateless dispatcher: `fsroute run` with two shards on loopback in
//! front of SIPp backends, driven by SIPp callers and raw UDP probes. Bounded in calls and time.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

#[test]
fn round_robin_carries_2000_sipp_calls_from_one_peer_evenly_over_backends_and_shards_in_order() {
    let _g = serial();
    let (b1, b2) = (free_udp_port(), free_udp_port());
    let _uas1 = Sipp::uas(b1, None, &[]);
    let _uas2 = Sipp::uas(b2, None, &[]);
    let proxy = Proxy::start(&dispatcher_config(2, &[b1, b2], "round-robin"));

    // One SIPp caller = one peer address: plain SO_REUSEPORT would put it all on one shard.
    let run = Sipp::uac(proxy.sip, None, 2000, 400, &["-l", "400", "-trace_msg", "-message_file", "messages.log"], Duration::from_secs(60));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(2000), "{}", run.explain());
    assert_eq!(run.counter("Failed call"), Some(0), "{}", run.explain());

    let st = proxy.status();
    let dests = st["dispatcher"][0]["destinations"].as_array().unwrap();
    let fwd: Vec<u64> = dests.iter().map(|d| d["forwarded"].as_u64().unwrap()).collect();
    let total: u64 = fwd.iter().sum();
    // Initial INVITEs only (retransmissions follow the first choice).
    assert!(total >= 2000, "{fwd:?}");
    for f in &fwd {
        let share = *f as f64 / total as f64;
        assert!((0.45..=0.55).contains(&share), "round-robin split {fwd:?}");
    }

    let shards = st["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let processed: Vec<u64> = shards.iter().map(|s| s["processed"].as_u64().unwrap()).collect();
    let all: u64 = processed.iter().sum();
    // INVITE, 180, 200, ACK, BYE, 200 per call (SIPp's stock UAS sends no 100).
    assert!(all >= 2000 * 6, "{processed:?}");
    for p in &processed {
        let share = *p as f64 / all as f64;
        assert!((0.40..=0.60).contains(&share), "per-shard processed shares {processed:?}");
    }

    // Order: what the caller received for each call must be in the order the backend sent it.
    let log = std::fs::read_to_string(run.dir.path().join("messages.log")).unwrap_or_default();
    let out_of_order = calls_with_reordered_responses(&log);
    assert_eq!(out_of_order, 0, "calls whose responses arrived out of order");
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

/// Counts calls in a SIPp message trace where a 180 arrived after the 200 to the INVITE.
fn calls_with_reordered_responses(log: &str) -> usize {
    let mut seen: HashMap<String, (bool, bool)> = HashMap::new();
    let mut bad = 0;
    for block in log.split("----------------------------------------------- ") {
        if !block.contains("message received") {
            continue;
        }
        let Some(start) = block.lines().find(|l| l.starts_with("SIP/2.0 ")) else { continue };
        let cid = block.lines().find_map(|l| l.strip_prefix("Call-ID: ")).unwrap_or("").trim().to_string();
        let is_invite = block.lines().any(|l| l.starts_with("CSeq:") && l.contains("INVITE"));
        if !is_invite {
            continue;
        }
        let e = seen.entry(cid).or_default();
        if start.starts_with("SIP/2.0 200") {
            e.1 = true;
        } else if start.starts_with("SIP/2.0 18") && e.1 {
            bad += 1;
        }
    }
    assert!(!seen.is_empty(), "the message trace held no INVITE responses");
    bad
}

#[test]
fn cancel_and_its_ack_reach_the_backend_that_got_the_invite() {
    let _g = serial();
    let (b1, b2) = (free_udp_port(), free_udp_port());
    let uas_sf = repo_path("tests/scenarios/cancel_uas.xml");
    let uac_sf = repo_path("tests/scenarios/cancel_uac.xml");
    let uas1 = Sipp::uas(b1, Some(&uas_sf), &[]);
    let uas2 = Sipp::uas(b2, Some(&uas_sf), &[]);
    let proxy = Proxy::start(&dispatcher_config(2, &[b1, b2], "round-robin"));
    let run = Sipp::uac(proxy.sip, Some(&uac_sf), 100, 50, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\nuas1: {}\nuas2: {}\n{}", run.explain(), uas1.errors(), uas2.errors(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(100), "{}", run.explain());
    // Round-robin spread the INVITEs, so the CANCELs had two places to go wrong.
    let st = proxy.status();
    let fwd: Vec<u64> = st["dispatcher"][0]["destinations"].as_array().unwrap().iter().map(|d| d["forwarded"].as_u64().unwrap()).collect();
    assert!(fwd.iter().all(|&f| f >= 40), "{fwd:?}");
}

#[test]
fn max_forwards_zero_is_answered_483() {
    let b1 = free_udp_port();
    let proxy = Proxy::start(&dispatcher_config(2, &[b1], "round-robin"));
    let msg = format!(
        "INVITE sip:100@{0} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKmf0;rport\r\nMax-Forwards: 0\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:100@{0}>\r\nCall-ID: mf0@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        proxy.sip
    );
    let reply = exchange(proxy.sip, msg.as_bytes(), Duration::from_secs(2)).expect("a reply");
    assert!(reply.starts_with("SIP/2.0 483 Too Many Hops\r\n"), "{reply}");
    assert!(reply.contains("Call-ID: mf0@test"));
}

#[test]
fn garbage_datagrams_are_counted_drops_and_the_proxy_keeps_working() {
    let b1 = free_udp_port();
    let proxy = Proxy::start(&dispatcher_config(2, &[b1], "round-robin"));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk: [&[u8]; 4] = [b"\x00\x01\x02garbage", b"INVITE\r\n\r\n", &[0xff; 1400], b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n"];
    for j in junk {
        sock.send_to(j, proxy.sip).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(options_ping(proxy.sip).as_deref(), Some("SIP/2.0 200 OK"));
    let st = proxy.status();
    let dropped: u64 = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["dropped"]["malformed"].as_u64().unwrap() + s["dropped"]["bad_response"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 4, "{st}");
    assert!(proxy.stop().is_some_and(|s| s.success()));
}
