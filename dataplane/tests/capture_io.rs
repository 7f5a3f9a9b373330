//! HEP capture through real shards over loopback: every datagram a shard receives and sends shows
//! up once at a collector socket with the right addresses, capture id, payload and time; a full
//! ring or a dead collector only costs captures (counted), never an answer; a table swap turns
//! capture off or moves it without restarting anything.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fsroute_dataplane::shard::{DataPlane, ShardSpec};
use fsroute_dataplane::socket::Ingress;
use fsroute_dataplane::table::{ArcSwap, CaptureSettings, RoutingTable};
use fsroute_dataplane::testing::{listener_table, options_to, HepCollector as Collector, HepPacket};

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn call_id(p: &HepPacket) -> String {
    let text = String::from_utf8_lossy(p.payload.as_deref().unwrap_or_default()).into_owned();
    text.lines().find_map(|l| l.strip_prefix("Call-ID: ")).unwrap_or("").to_string()
}

fn start(shards: usize, capture: impl Fn(&[SocketAddr]) -> Option<CaptureSettings>) -> (DataPlane, Arc<ArcSwap<RoutingTable>>) {
    let spec = ShardSpec { listeners: vec!["127.0.0.1:0".parse().unwrap()], shards, ingress: Ingress::Flow, handoff_capacity: 8192, pin: false, tcp_listeners: vec![], tls_listeners: vec![], stream: Default::default() };
    let table = Arc::new(ArcSwap::from_pointee(listener_table(&["127.0.0.1:5060".parse().unwrap()])));
    let dp = DataPlane::start(&spec, table.clone()).expect("bind a loopback listener");
    table.store(Arc::new(listener_table(&dp.bound).with_capture(capture(&dp.bound))));
    (dp, table)
}

fn counted(dp: &DataPlane) -> (u64, u64) {
    let sent = dp.stats.iter().map(|s| s.capture_sent.load(Ordering::Relaxed)).sum();
    let dropped = dp.stats.iter().map(|s| s.capture_dropped.load(Ordering::Relaxed)).sum();
    (sent, dropped)
}

#[test]
fn a_request_and_fsroutes_own_answer_reach_the_collector_with_addresses_ports_id_payload_and_time() {
    let c = Collector::start();
    let hep = c.addr;
    let (dp, _table) = start(1, |_| Some(CaptureSettings { collector: hep, capture_id: 2001, queue: 1024 }));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = client.local_addr().unwrap();
    let listener = dp.bound[0];
    let before = now_us();
    let mut answers = Vec::new();
    for n in 0..3 {
        let req = options_to(listener, me, n);
        client.send_to(req.as_bytes(), listener).unwrap();
        let mut buf = [0u8; 4096];
        let (len, _) = client.recv_from(&mut buf).expect("fsroute answers the OPTIONS itself");
        answers.push((req, buf[..len].to_vec()));
    }
    let packets = c.take();
    let after = now_us();
    assert_eq!(packets.len(), 6, "three received, three sent: {packets:?}");
    for (req, answer) in &answers {
        let got: Vec<&HepPacket> = packets.iter().filter(|p| call_id(p) == call_id_of(req)).collect();
        assert_eq!(got.len(), 2, "{req}");
        let rx = got.iter().find(|p| p.payload.as_deref() == Some(req.as_bytes())).expect("the request, byte for byte");
        let tx = got.iter().find(|p| p.payload.as_deref() == Some(&answer[..])).expect("the answer, byte for byte");
        assert_eq!((rx.src(), rx.dst()), (Some(me), Some(listener)), "received: from the peer to the listener");
        assert_eq!((tx.src(), tx.dst()), (Some(listener), Some(me)), "sent: from the listener to the peer");
        for p in [rx, tx] {
            assert_eq!((p.family, p.protocol, p.proto_type, p.capture_id), (Some(2), Some(17), Some(1), Some(2001)));
            let t = p.time_us().unwrap();
            assert!(before <= t && t <= after, "wall-clock time {t} within the test's [{before}, {after}]");
        }
        assert!(rx.time_us() <= tx.time_us(), "received before answered");
    }
    assert_eq!(counted(&dp), (6, 0));
    dp.stop();
}

fn call_id_of(msg: &str) -> String {
    msg.lines().find_map(|l| l.strip_prefix("Call-ID: ")).unwrap().to_string()
}

#[test]
fn a_handed_off_datagram_is_captured_once_as_received_and_once_as_sent() {
    let c = Collector::start();
    let hep = c.addr;
    let (dp, _table) = start(2, |_| Some(CaptureSettings { collector: hep, capture_id: 7, queue: 4096 }));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = client.local_addr().unwrap();
    let burst = 100;
    // One peer: one shard receives everything and hands the other's calls over. Sent in small
    // bursts so no capture is dropped.
    let mut buf = [0u8; 4096];
    for n in 0..burst {
        client.send_to(options_to(dp.bound[0], me, n).as_bytes(), dp.bound[0]).unwrap();
        client.recv_from(&mut buf).expect("answered");
    }
    let packets = c.take();
    let handed: u64 = dp.stats.iter().map(|s| s.handed_off.load(Ordering::Relaxed)).sum();
    assert!(handed > 0, "some calls belong to the other shard");
    let mut per_call: HashMap<String, (u32, u32)> = HashMap::new();
    for p in &packets {
        let e = per_call.entry(call_id(p)).or_default();
        if p.src() == Some(me) {
            e.0 += 1;
        } else {
            assert_eq!(p.dst(), Some(me));
            e.1 += 1;
        }
    }
    assert_eq!(per_call.len(), burst as usize, "{:?} {} packets", counted(&dp), packets.len());
    assert!(per_call.values().all(|&v| v == (1, 1)), "{per_call:?}");
    assert_eq!(counted(&dp), (2 * u64::from(burst), 0));
    dp.stop();
}

#[test]
fn a_full_ring_drops_and_counts_captures_and_every_request_is_still_answered() {
    let c = Collector::start();
    let hep = c.addr;
    // Sixteen buffers: a batch of 32 requests and 32 answers cannot all be kept.
    let (dp, _table) = start(1, |_| Some(CaptureSettings { collector: hep, capture_id: 1, queue: 16 }));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = client.local_addr().unwrap();
    let burst = 150u32;
    for n in 0..burst {
        client.send_to(options_to(dp.bound[0], me, n).as_bytes(), dp.bound[0]).unwrap();
    }
    let mut buf = [0u8; 4096];
    for _ in 0..burst {
        client.recv_from(&mut buf).expect("every request answered");
    }
    let packets = c.take();
    let (sent, dropped) = counted(&dp);
    assert!(dropped > 0, "a burst past the ring drops captures");
    assert_eq!(sent + dropped, 2 * u64::from(burst), "each datagram is either captured or counted");
    assert_eq!(packets.len() as u64, sent);
    dp.stop();
}

#[test]
fn a_dead_collector_costs_only_captures_counted_as_dropped() {
    // Nothing listens there: loopback answers with ICMP port unreachable, which the connected
    // capture socket reports as refused sends.
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (dp, _table) = start(1, |_| Some(CaptureSettings { collector: dead, capture_id: 1, queue: 1024 }));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = client.local_addr().unwrap();
    let mut buf = [0u8; 4096];
    for n in 0..50 {
        client.send_to(options_to(dp.bound[0], me, n).as_bytes(), dp.bound[0]).unwrap();
        let (len, _) = client.recv_from(&mut buf).expect("answered while the collector is dead");
        assert!(buf[..len].starts_with(b"SIP/2.0 200"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (sent, dropped) = counted(&dp);
    assert!(dropped > 0, "the refusals are counted");
    assert_eq!(sent + dropped, 100);
    dp.stop();
}

#[test]
fn a_table_swap_moves_capture_and_turns_it_off_without_a_restart() {
    let (first, second) = (Collector::start(), Collector::start());
    let (a, b) = (first.addr, second.addr);
    let (dp, table) = start(1, |_| Some(CaptureSettings { collector: a, capture_id: 1, queue: 64 }));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = client.local_addr().unwrap();
    let mut buf = [0u8; 4096];
    let mut ask = |n: u32| {
        client.send_to(options_to(dp.bound[0], me, n).as_bytes(), dp.bound[0]).unwrap();
        client.recv_from(&mut buf).expect("answered");
    };
    ask(1);
    assert_eq!(first.take().len(), 2);

    table.store(Arc::new(listener_table(&dp.bound).with_capture(Some(CaptureSettings { collector: b, capture_id: 9, queue: 64 }))));
    ask(2);
    let moved = second.take();
    assert_eq!(moved.len(), 2, "the next batch goes to the new collector");
    assert!(moved.iter().all(|p| p.capture_id == Some(9)));
    assert!(first.take().is_empty());

    table.store(Arc::new(listener_table(&dp.bound)));
    ask(3);
    assert!(second.take().is_empty() && first.take().is_empty(), "off");
    assert_eq!(counted(&dp), (4, 0));
    dp.stop();
}
