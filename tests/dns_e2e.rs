//! End-to-end specs of DNS destinations (docs/DNS.md): `fsroute run` whose dispatcher rows name a
//! host, a small DNS responder on 127.0.0.1 (hickory-proto's wire format, answers the test
//! changes while fsroute runs), SIPp backends and callers. A changed answer moves new calls to the
//! new address; a name that stops resolving keeps its address for `dns.grace`, then leaves.
//! Loopback only; a few seconds of grace.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The zone: records by (lower-case FQDN, type). A name with no record of any type is NXDOMAIN.
type Zone = HashMap<(String, RecordType), Vec<RData>>;

/// A one-thread authoritative responder for the test's zone, over UDP on 127.0.0.1.
struct Responder {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    fn start() -> Responder {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = sock.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let (stop, queries) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (z, s, q) = (Arc::clone(&zone), Arc::clone(&stop), Arc::clone(&queries));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                let Ok(req) = Message::from_vec(&buf[..n]) else { continue };
                q.fetch_add(1, Ordering::Relaxed);
                let answer = answer(&req, &z.lock().unwrap());
                if let Ok(bytes) = answer.to_vec() {
                    let _ = sock.send_to(&bytes, from);
                }
            }
        });
        Responder { addr, zone, queries, stop, thread: Some(thread) }
    }

    /// `_sip._udp.<name>` → one SRV target `box.<name>` at `port`, whose A record is 127.0.0.1.
    fn serve_srv(&self, name: &str, port: u16) {
        let target = format!("box.{name}.");
        let mut z = self.zone.lock().unwrap();
        z.clear();
        z.insert(
            (format!("_sip._udp.{name}."), RecordType::SRV),
            vec![RData::SRV(SRV::new(10, 50, port, Name::from_ascii(&target).unwrap()))],
        );
        z.insert((target, RecordType::A), vec![RData::A(A(Ipv4Addr::LOCALHOST))]);
    }

    /// Every name is gone: NXDOMAIN.
    fn forget_everything(&self) {
        self.zone.lock().unwrap().clear();
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The zone's answer to `req`, with a 1 s TTL so fsroute asks again at its `min_ttl`.
fn answer(req: &Message, zone: &Zone) -> Message {
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true);
    let Some(q) = req.queries().first() else {
        resp.set_response_code(ResponseCode::FormErr);
        return resp;
    };
    resp.add_query(q.clone());
    let name = q.name().to_ascii().to_ascii_lowercase();
    let exists = zone.keys().any(|(n, _)| *n == name);
    match zone.get(&(name, q.query_type())) {
        Some(rdata) => {
            for r in rdata {
                resp.add_answer(Record::from_rdata(q.name().clone(), 1, r.clone()));
            }
        }
        // The name exists without this type (an AAAA query for box.pool.test): NODATA.
        None if exists => {}
        None => {
            resp.set_response_code(ResponseCode::NXDomain);
        }
    }
    resp
}

fn config(dns: SocketAddr, rows: &str, algorithm: &str) -> String {
    format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = 1\n\n[control]\nadmin = \"{{ADMIN}}\"\n\n\
         [dns]\nservers = [\"{dns}\"]\nmin_ttl = \"1s\"\nmax_ttl = \"2s\"\ngrace = \"4s\"\ntimeout = \"500ms\"\n\n\
         {rows}\n[[route]]\nto_dispatcher = 1\nalgorithm = \"{algorithm}\"\n"
    )
}

/// Set 1's destinations as (uri, forwarded).
fn destinations(proxy: &Proxy) -> Vec<(String, u64)> {
    let st = proxy.status();
    st["dispatcher"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["uri"].as_str().unwrap().to_string(), d["forwarded"].as_u64().unwrap()))
        .collect()
}

fn dns_name(proxy: &Proxy, name: &str) -> serde_json::Value {
    let st = proxy.status();
    st["dns"]["names"].as_array().unwrap().iter().find(|n| n["name"] == name).cloned().unwrap_or_default()
}

/// Two SIPp backends, and a responder whose `_sip._udp.pool.test` points at the first.
fn two_backends_and_a_pool() -> (u16, u16, [Sipp; 2], Responder) {
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let uas = [Sipp::uas(p1, None, &[]), Sipp::uas(p2, None, &[])];
    let dns = Responder::start();
    dns.serve_srv("pool.test", p1);
    (p1, p2, uas, dns)
}

fn calls(proxy: &Proxy, n: u32) {
    let run = Sipp::uac(proxy.sip, None, n, 20, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
}

#[test]
fn a_dns_answer_that_changes_moves_new_calls_to_the_new_address() {
    let _g = serial();
    let (p1, p2, _uas, dns) = two_backends_and_a_pool();
    let rows = "[[dispatcher]]\nsetid = 1\ndestination = \"sip:pool.test\"\nweight = 10\n";
    let proxy = Proxy::start(&config(dns.addr, rows, "round-robin"));

    let first = format!("sip:pool.test#127.0.0.1:{p1}");
    assert!(wait_for(Duration::from_secs(5), || destinations(&proxy).iter().any(|(u, _)| *u == first)), "{:?}\n{}", proxy.status()["dns"], proxy.log());
    let n = dns_name(&proxy, "sip:pool.test");
    assert_eq!(n["state"], "resolved", "{n}");
    assert_eq!(n["addresses"][0]["address"], format!("127.0.0.1:{p1}"), "{n}");
    assert_eq!(n["addresses"][0]["srv_priority"], 10, "{n}");
    calls(&proxy, 10);
    assert_eq!(destinations(&proxy), [(first.clone(), 10)]);

    // The SRV record moves to the other backend: within a refresh (1-2 s) the table follows.
    dns.serve_srv("pool.test", p2);
    let second = format!("sip:pool.test#127.0.0.1:{p2}");
    assert!(
        wait_for(Duration::from_secs(6), || destinations(&proxy).iter().map(|(u, _)| u.as_str()).eq([second.as_str()])),
        "{:?}\n{}",
        destinations(&proxy),
        proxy.log()
    );
    calls(&proxy, 10);
    assert_eq!(destinations(&proxy), [(second, 10)], "every new call went to the new address");
    let n = dns_name(&proxy, "sip:pool.test");
    assert!(n["resolutions"].as_u64().unwrap() >= 2 && n["changes"].as_u64().unwrap() >= 2, "{n}");
    assert!(n["next_refresh_in_ms"].as_u64().is_some_and(|ms| ms <= 2000) || n["next_refresh_in_ms"].is_null(), "{n}");

    let (code, metrics) = http(proxy.admin, "GET", "/metrics", "");
    assert_eq!(code, 200);
    let resolutions = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fsroute_dns_resolutions_total{name=\"sip:pool.test\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(resolutions.is_some_and(|r| r >= 2), "{metrics}");
    assert!(dns.queries.load(Ordering::Relaxed) >= 4, "SRV and A per resolution");
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

#[test]
fn a_name_that_stops_resolving_keeps_its_address_for_the_grace_then_leaves() {
    let _g = serial();
    let (p1, p2, _uas, dns) = two_backends_and_a_pool();
    // "first": the name's address while it has one, the literal row behind it.
    let rows = format!(
        "[[dispatcher]]\nsetid = 1\ndestination = \"sip:pool.test\"\npriority = 0\n\n\
         [[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:{p2}\"\npriority = 100\n"
    );
    let proxy = Proxy::start(&config(dns.addr, &rows, "first"));
    let named = format!("sip:pool.test#127.0.0.1:{p1}");
    let literal = format!("sip:127.0.0.1:{p2}");
    assert!(wait_for(Duration::from_secs(5), || destinations(&proxy).len() == 2), "{:?}\n{}", proxy.status()["dns"], proxy.log());

    dns.forget_everything();
    assert!(
        wait_for(Duration::from_secs(4), || dns_name(&proxy, "sip:pool.test")["state"] == "failing"),
        "{}\n{}",
        dns_name(&proxy, "sip:pool.test"),
        proxy.log()
    );
    let n = dns_name(&proxy, "sip:pool.test");
    assert!(n["last_error"].as_str().is_some_and(|e| e.contains("NXDOMAIN")), "{n}");
    assert!(n["leaves_in_ms"].as_u64().is_some_and(|ms| ms <= 4000), "{n}");
    // Within the grace the last address still takes the calls.
    calls(&proxy, 5);
    assert_eq!(destinations(&proxy), [(named, 5), (literal.clone(), 0)], "{}", dns_name(&proxy, "sip:pool.test"));

    assert!(wait_for(Duration::from_secs(8), || destinations(&proxy).len() == 1), "{}\n{}", dns_name(&proxy, "sip:pool.test"), proxy.log());
    let n = dns_name(&proxy, "sip:pool.test");
    assert_eq!(n["state"], "expired", "{n}");
    assert!(n["addresses"].as_array().unwrap().is_empty(), "{n}");
    // fsroute's own clock: the address left no earlier than the grace after the first failure.
    assert!(n["failing_for_ms"].as_u64().is_some_and(|ms| ms >= 4000), "{n}");
    calls(&proxy, 5);
    assert_eq!(destinations(&proxy), [(literal, 5)]);

    // The name comes back: so does its destination, with no reload.
    dns.serve_srv("pool.test", p1);
    assert!(wait_for(Duration::from_secs(5), || destinations(&proxy).len() == 2), "{}", dns_name(&proxy, "sip:pool.test"));
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

#[test]
fn check_lists_names_without_dns_and_check_resolve_names_the_one_that_does_not_resolve() {
    let dns = Responder::start();
    dns.serve_srv("pool.test", 5071);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fsroute.toml");
    let rows = "[[dispatcher]]\nsetid = 1\ndestination = \"sip:pool.test\"\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:typo.test:5080\"\n";
    std::fs::write(&path, config(dns.addr, rows, "round-robin").replace("{SIP}", "127.0.0.1:5060").replace("{ADMIN}", "127.0.0.1:9060")).unwrap();
    let check = |extra: &[&str]| {
        let out = std::process::Command::new(fsroute_bin()).args(["check", "--config"]).arg(&path).args(extra).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let asked = dns.queries.load(Ordering::Relaxed);
    let (code, stdout, _) = check(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("SRV _sip._udp.pool.test, else A/AAAA pool.test (port 5060)") && stdout.contains("A/AAAA typo.test (port 5080)"), "{stdout}");
    assert_eq!(dns.queries.load(Ordering::Relaxed), asked, "check alone asks no DNS");
    let (code, stdout, stderr) = check(&["--resolve"]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("resolved    sip:pool.test: 127.0.0.1:5071 (SRV priority 10, weight 50)"), "{stdout}");
    assert!(stderr.contains("sip:typo.test:5080: does not resolve: A/AAAA typo.test: NXDOMAIN"), "{stderr}");
}
