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
    let spec = ShardSpec { listeners, shards: 1, ingress: Ingress::Flow, handoff_capacity: 64, pin: false, tcp_listeners: vec![], tls_listeners: vec![], stream: Default::default() };
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
    let spec = ShardSpec { listeners, shards: 2, ingress: Ingress::Flow, handoff_capacity: 8192, pin: false, tcp_listeners: vec![], tls_listeners: vec![], stream: Default::default() };
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

fn tcp_spec(shards: usize) -> ShardSpec {
    ShardSpec {
        listeners: vec!["127.0.0.1:0".parse().unwrap()],
        shards,
        ingress: Ingress::Flow,
        handoff_capacity: 8192,
        pin: false,
        tcp_listeners: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listeners: vec![],
        stream: fsroute_dataplane::shard::StreamSettings { max_message: 4096, ..Default::default() },
    }
}

fn tcp_options(to: SocketAddr, from: SocketAddr, n: u32) -> String {
    options_to(to, from, n).replace("SIP/2.0/UDP", "SIP/2.0/TCP")
}

/// Reads from `s` until `want` replies (each ending with the empty line of a Content-Length: 0
/// reply) are in, or the read times out; CRLF pongs between them are left out.
fn read_replies(s: &mut std::net::TcpStream, want: usize) -> Vec<String> {
    use std::io::Read;
    const END: &str = "Content-Length: 0\r\n\r\n";
    let mut all = String::new();
    let mut buf = [0u8; 65536];
    while all.matches(END).count() < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    all.split_inclusive(END).map(|r| r.trim_start_matches("\r\n").to_string()).collect()
}

fn closed_by(dp: &DataPlane, reason: fsroute_dataplane::conn::Closed) -> u64 {
    dp.stats.iter().map(|s| s.tcp_closed[reason as usize].load(std::sync::atomic::Ordering::Relaxed)).sum()
}

#[test]
fn a_tcp_connection_is_answered_on_itself_even_for_calls_another_shard_owns() {
    use std::io::Write;
    let table = Arc::new(ArcSwap::from_pointee(listener_table(&["127.0.0.1:5060".parse().unwrap()])));
    let dp = DataPlane::start(&tcp_spec(2), table.clone()).expect("bind loopback listeners");
    let sip = dp.bound_tcp[0];
    table.store(Arc::new(listener_table(&[sip])));
    let mut s = std::net::TcpStream::connect(sip).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = s.local_addr().unwrap();
    // One write holding many messages and a keep-alive ping between them.
    let burst = 40;
    let mut stream = String::new();
    for n in 0..burst {
        stream.push_str(&tcp_options(sip, me, n));
        if n == 10 {
            stream.push_str("\r\n\r\n");
        }
    }
    s.write_all(stream.as_bytes()).unwrap();
    let replies = read_replies(&mut s, burst as usize);
    let oks: Vec<&String> = replies.iter().filter(|r| r.starts_with("SIP/2.0 200")).collect();
    assert_eq!(oks.len(), burst as usize, "every request answered on its connection: {replies:?}");
    let mut ids: Vec<&str> = oks.iter().map(|r| r.lines().find_map(|l| l.strip_prefix("Call-ID: ")).unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), burst as usize, "each answered once");
    let handed: u64 = dp.stats.iter().map(|s| s.handed_off.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert!(handed > 0, "some calls belong to the shard that does not own the connection");
    let pongs: u64 = dp.stats.iter().map(|s| s.tcp_keepalives.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert_eq!(pongs, 1);
    dp.stop();
}

#[test]
fn garbage_and_an_oversized_message_close_their_connection_and_are_counted() {
    use std::io::{Read, Write};
    use fsroute_dataplane::conn::Closed;
    let table = Arc::new(ArcSwap::from_pointee(listener_table(&["127.0.0.1:5060".parse().unwrap()])));
    let dp = DataPlane::start(&tcp_spec(1), table.clone()).expect("bind loopback listeners");
    let sip = dp.bound_tcp[0];
    table.store(Arc::new(listener_table(&[sip])));
    let closed = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 16];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    };
    let mut huge = std::net::TcpStream::connect(sip).unwrap();
    huge.write_all(b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 10485760\r\n\r\n").unwrap();
    assert!(closed(&mut huge), "a 10 MB Content-Length closes the connection");
    let mut junk = std::net::TcpStream::connect(sip).unwrap();
    junk.write_all(b"\x16\x03\x01 this is not SIP\r\n\r\n").unwrap();
    assert!(closed(&mut junk), "a message without Content-Length closes the connection");
    // Another connection is unaffected.
    let mut good = std::net::TcpStream::connect(sip).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = good.local_addr().unwrap();
    good.write_all(tcp_options(sip, me, 1).as_bytes()).unwrap();
    assert!(read_replies(&mut good, 1)[0].starts_with("SIP/2.0 200"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (closed_by(&dp, Closed::TooLarge), closed_by(&dp, Closed::Framing)) != (1, 1) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!((closed_by(&dp, Closed::TooLarge), closed_by(&dp, Closed::Framing)), (1, 1));
    dp.stop();
}
