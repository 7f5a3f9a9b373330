//! The shard shell over real loopback sockets: batched receive and send, and which listener a
//! reply leaves from.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use fsroute_dataplane::shard::{DataPlane, ShardSpec};
use fsroute_dataplane::socket::Ingress;
use fsroute_dataplane::table::ArcSwap;
use fsroute_dataplane::testing::{listener_table, options_to};

#[test]
fn a_reply_leaves_from_the_listener_its_request_arrived_on_and_a_burst_is_answered_whole() {
    let listeners: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap(), "127.0.0.2:0".parse().unwrap()];
    let spec = ShardSpec { listeners, shards: 1, ingress: Ingress::Flow, handoff_capacity: 64, pin: false };
    let table = Arc::new(ArcSwap::from_pointee(listener_table(&["127.0.0.1:5060".parse().unwrap()])));
    let dp = DataPlane::start(&spec, table.clone()).expect("bind loopback listeners");
    table.store(Arc::new(listener_table(&dp.bound)));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = client.local_addr().unwrap();
    let mut buf = [0u8; 4096];
    for (n, &listener) in dp.bound.iter().enumerate() {
        client.send_to(options_to(listener, me, n as u32).as_bytes(), listener).unwrap();
        let (len, from) = client.recv_from(&mut buf).expect("a 200 to the keepalive OPTIONS");
        assert!(buf[..len].starts_with(b"SIP/2.0 200"), "{}", String::from_utf8_lossy(&buf[..len]));
        assert_eq!(from, listener, "the reply leaves from the listener the request arrived on");
    }
    // More than one recvmmsg batch at once: every request gets its answer.
    let burst = 100;
    for n in 0..burst {
        client.send_to(options_to(dp.bound[1], me, 1000 + n).as_bytes(), dp.bound[1]).unwrap();
    }
    let mut answered = 0;
    while answered < burst {
        let (len, from) = client.recv_from(&mut buf).expect("every request of the burst answered");
        assert!(buf[..len].starts_with(b"SIP/2.0 200"));
        assert_eq!(from, dp.bound[1]);
        answered += 1;
    }
    dp.stop();
}

#[test]
fn a_burst_from_one_peer_is_handed_to_the_owning_shards_in_batches_and_answered_whole() {
    let listeners: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap()];
    let spec = ShardSpec { listeners, shards: 2, ingress: Ingress::Flow, handoff_capacity: 8192, pin: false };
    let table = Arc::new(ArcSwap::from_pointee(listener_table(&["127.0.0.1:5060".parse().unwrap()])));
    let dp = DataPlane::start(&spec, table.clone()).expect("bind loopback listener");
    table.store(Arc::new(listener_table(&dp.bound)));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = client.local_addr().unwrap();
    // One source address: the kernel gives every datagram to one shard, which hands the other
    // shard's calls over.
    let burst = 200;
    for n in 0..burst {
        client.send_to(options_to(dp.bound[0], me, n).as_bytes(), dp.bound[0]).unwrap();
    }
    let mut buf = [0u8; 4096];
    let mut answered = std::collections::HashSet::new();
    while answered.len() < burst as usize {
        let (len, _) = client.recv_from(&mut buf).expect("every request of the burst answered");
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        assert!(text.starts_with("SIP/2.0 200"), "{text}");
        let call_id = text.lines().find_map(|l| l.strip_prefix("Call-ID: ")).unwrap().to_string();
        assert!(answered.insert(call_id), "answered once");
    }
    let handed: u64 = dp.stats.iter().map(|s| s.handed_off.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert!(handed > 0 && handed < u64::from(burst), "about half the calls belong to the other shard: {handed}");
    dp.stop();
}
