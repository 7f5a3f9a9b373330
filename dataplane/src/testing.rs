//! Fixtures shared by the router's unit tests, the zero-allocation test and the benches: a loopback
//! proxy identity and a one-set routing table, built the way the control plane builds them. Not
//! part of the product's interface: hidden from docs, and compiled only for this crate's own unit
//! tests or with the `testing` feature (which the benches, the integration tests and the fuzz
//! targets turn on). Also the HEP side of the capture tests: a decoder written from the spec and a
//! collector socket that decodes what arrives.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dispatch::{Algorithm, HashMode, Member, Selector};
use crate::table::{Destination, DispatcherSet, ProxySettings, Route, RouteMatch, RouteTarget, RoutingTable};

/// fsroute at 127.0.0.1:5060, also known as `lb.example.net` (the corpus's proxy name).
pub fn loopback_proxy() -> ProxySettings {
    ProxySettings {
        advertise_host: "127.0.0.1".into(),
        advertise_port: 5060,
        tcp_port: None,
        tls_port: None,
        udp_max_message: 1300,
        local_names: vec![("127.0.0.1".into(), 5060), ("lb.example.net".into(), 5060)],
        local_addrs: vec!["127.0.0.1:5060".parse().expect("literal address")],
        record_route: true,
        max_forwards: 70,
        hash: HashMode::Rendezvous,
        no_route_reply: 404,
        transaction_memory: Duration::from_secs(190),
        dialog_memory: Duration::from_secs(12 * 3600),
        max_call_duration: Duration::from_secs(4 * 3600),
        limits: Default::default(),
        x_auth: Default::default(),
        branch_key: crate::table::BranchKey([0x6673_726f_7574_6531, 0x7465_7374_6b65_7931]),
        host_ips: Vec::new(),
    }
}

/// One dispatcher set with a destination per weight (127.0.0.1:5071, :5072, ...), all active, and
/// one catch-all route to it with `alg`.
pub fn one_set_table(weights: &[u32], alg: Algorithm, generation: u64) -> RoutingTable {
    let destinations: Vec<Destination> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let port = 5071 + i as u16;
            Destination {
                uri: format!("sip:127.0.0.1:{port}"),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                weight: w,
                priority: 0,
                active: true,
                counters: Default::default(),
                fs: None,
            }
        })
        .collect();
    let members: Vec<Member<'_>> = destinations
        .iter()
        .map(|d| Member { key: &d.uri, weight: d.weight, priority: d.priority, active: d.active })
        .collect();
    let selector = Selector::new(&members);
    let set = DispatcherSet { setid: 1, destinations, selector };
    let route = Route {
        matcher: RouteMatch::default(),
        target: RouteTarget::Dispatcher { set: 0, algorithm: alg, failover: false },
    };
    RoutingTable::new(generation, loopback_proxy(), vec![set], vec![route])
}

/// One load_balancer group (id 1, resource "ch") with a destination per capacity
/// (127.0.0.1:5081, :5082, ...), and one catch-all route asking for one "ch" per call.
pub fn one_group_table(capacities: &[u32], generation: u64) -> RoutingTable {
    use crate::lb::{LbDestination, LbFlags, LbGroup, LbResource};
    use crate::table::LbWanted;
    let destinations = capacities
        .iter()
        .enumerate()
        .map(|(i, &cap)| {
            let port = 5081 + i as u16;
            LbDestination {
                uri: format!("sip:127.0.0.1:{port}"),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                enabled: true,
                resources: vec![Some(LbResource::fixed(cap, Default::default()))],
            }
        })
        .collect();
    let group = LbGroup { group_id: 1, resource_names: vec!["ch".into()], destinations };
    let route = Route {
        matcher: RouteMatch::default(),
        target: RouteTarget::LoadBalancer { group: 0, wanted: LbWanted::new(&[0]).expect("one resource"), flags: LbFlags::default(), failover: true },
    };
    RoutingTable::new(generation, loopback_proxy(), Vec::new(), vec![route])
        .with_load_balancer(vec![group], crate::table::FailoverSettings::default())
}

/// A global allocator that counts allocations, for the tests and benches that prove the fast path
/// allocates nothing. A binary opts in with
/// `#[global_allocator] static GLOBAL: CountingAlloc = CountingAlloc;` and reads `allocations()`.
///
/// The count is per thread: the test harness's own threads (its main thread collecting results,
/// output capture) allocate while a test runs, and a process-wide counter saw those now and then
/// (`lb_no_alloc` failed about 1 run in 20 with "4 allocations").
pub struct CountingAlloc;

thread_local! {
    // `const` and `Cell<usize>`: no lazy initialisation and no destructor, so reading it from
    // inside the allocator never allocates or recurses.
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count_one() {
    // `try_with`: a thread being torn down may still free and allocate after its locals are gone.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations (and reallocations) so far on the calling thread, when `CountingAlloc` is the
/// allocator.
pub fn allocations() -> usize {
    ALLOCATIONS.try_with(std::cell::Cell::get).unwrap_or(0)
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        count_one();
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        count_one();
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}

/// A HEP3 packet as a collector reads it, decoded by [`decode_hep`] (written from the spec's
/// chunk table, github.com/sipcapture/HEP, independently of `hep.rs`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HepPacket {
    pub family: Option<u8>,
    pub protocol: Option<u8>,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub seconds: Option<u32>,
    pub micros: Option<u32>,
    pub proto_type: Option<u8>,
    pub capture_id: Option<u32>,
    pub payload: Option<Vec<u8>>,
    /// Vendor-0 chunk types in the order they came.
    pub order: Vec<u16>,
}

impl HepPacket {
    pub fn src(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.src_ip?, self.src_port?))
    }

    pub fn dst(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.dst_ip?, self.dst_port?))
    }

    /// Microseconds since the Unix epoch.
    pub fn time_us(&self) -> Option<u64> {
        Some(u64::from(self.seconds?) * 1_000_000 + u64::from(self.micros?))
    }
}

/// A chunk value of exactly `N` bytes.
fn exact<const N: usize>(kind: u16, v: &[u8]) -> Result<[u8; N], String> {
    <[u8; N]>::try_from(v).map_err(|_| format!("chunk {kind:#06x} has {} bytes, not {N}", v.len()))
}

/// HEP3 as the spec lays it out: `HEP3`, a 16-bit total length, then chunks of vendor (16 bits),
/// type (16), length (16, header included) and value, big-endian. Errors for anything a strict
/// collector (heplify-server) would refuse.
pub fn decode_hep(p: &[u8]) -> Result<HepPacket, String> {
    if p.len() < 6 || &p[..4] != b"HEP3" {
        return Err("no HEP3 header".into());
    }
    let total = usize::from(u16::from_be_bytes([p[4], p[5]]));
    if total != p.len() {
        return Err(format!("length field {total} but {} bytes", p.len()));
    }
    let mut d = HepPacket::default();
    let mut at = 6;
    while at < p.len() {
        let c = &p[at..];
        if c.len() < 6 {
            return Err("truncated chunk header".into());
        }
        let vendor = u16::from_be_bytes([c[0], c[1]]);
        let kind = u16::from_be_bytes([c[2], c[3]]);
        let len = usize::from(u16::from_be_bytes([c[4], c[5]]));
        if len < 6 || len > c.len() {
            return Err(format!("chunk {kind:#06x} length {len}"));
        }
        let v = &c[6..len];
        if vendor == 0 {
            d.order.push(kind);
            match kind {
                0x0001 => d.family = Some(exact::<1>(kind, v)?[0]),
                0x0002 => d.protocol = Some(exact::<1>(kind, v)?[0]),
                0x0003 => d.src_ip = Some(IpAddr::from(exact::<4>(kind, v)?)),
                0x0004 => d.dst_ip = Some(IpAddr::from(exact::<4>(kind, v)?)),
                0x0005 => d.src_ip = Some(IpAddr::from(exact::<16>(kind, v)?)),
                0x0006 => d.dst_ip = Some(IpAddr::from(exact::<16>(kind, v)?)),
                0x0007 => d.src_port = Some(u16::from_be_bytes(exact(kind, v)?)),
                0x0008 => d.dst_port = Some(u16::from_be_bytes(exact(kind, v)?)),
                0x0009 => d.seconds = Some(u32::from_be_bytes(exact(kind, v)?)),
                0x000a => d.micros = Some(u32::from_be_bytes(exact(kind, v)?)),
                0x000b => d.proto_type = Some(exact::<1>(kind, v)?[0]),
                0x000c => d.capture_id = Some(u32::from_be_bytes(exact(kind, v)?)),
                0x000f => d.payload = Some(v.to_vec()),
                _ => {}
            }
        }
        at += len;
    }
    Ok(d)
}

/// A HEP collector on loopback that reads as packets come (a collector reading late would lose
/// them to its socket buffer), decoding each with [`decode_hep`]; stops when dropped.
pub struct HepCollector {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<HepPacket>>>,
    stop: Arc<AtomicBool>,
}

impl HepCollector {
    pub fn start() -> HepCollector {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = sock.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    let p = decode_hep(&buf[..n]).unwrap_or_else(|e| panic!("not HEP3: {e}"));
                    g.lock().unwrap().push(p);
                }
            }
        });
        HepCollector { addr, got, stop }
    }

    /// What arrived, once nothing more has for 300 ms (10 s at most); emptied.
    pub fn take(&self) -> Vec<HepPacket> {
        let start = Instant::now();
        let mut seen = usize::MAX;
        while start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(300));
            let n = self.got.lock().unwrap().len();
            if n == seen {
                break;
            }
            seen = n;
        }
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

impl Drop for HepCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A table like [`one_set_table`] whose proxy identity is the listeners a test's data plane ended
/// up bound to.
pub fn listener_table(bound: &[SocketAddr]) -> RoutingTable {
    let mut t = one_set_table(&[1], Algorithm::RoundRobin, 2);
    t.proxy.local_names = bound.iter().map(|a| (a.ip().to_string(), a.port())).collect();
    t.proxy.local_addrs = bound.to_vec();
    t.proxy.advertise_host = bound[0].ip().to_string();
    t.proxy.advertise_port = bound[0].port();
    t
}

/// An OPTIONS addressed to fsroute itself (answered 200 by the shard), call `n`.
pub fn options_to(to: SocketAddr, from: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-probe-{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{from}>;tag=p{n}\r\nTo: <sip:{to}>\r\nCall-ID: probe-{n}@{from}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}
