//! Instructions per forwarded message, for `valgrind --tool=callgrind` (stable on a noisy,
//! shared machine where wall-clock micro-benchmarks are not). Routes N distinct 900-byte
//! INVITEs (unique Call-ID and branch, so the per-shard call memory does its real inserts)
//! and then their N 180 responses through `fsroute_dataplane::router::Router` with a table
//! like the one in dataplane/benches/forward.rs. The two hot loops are separate non-inlined
//! functions so callgrind can count them alone:
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release -p fsroute-bench --bin callgrind_forward
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*route_invites*' \
//!     --callgrind-out-file=/tmp/cg.invites /work/target-bench/release/callgrind_forward 20000
//! # "Collected : N" / 20000 = instructions per INVITE (scan + route + rewrite)
//! ```
//! (and `--toggle-collect='*route_responses*'` for the 180s). The binary also prints the
//! count of forwarded messages, so a broken router cannot produce a plausible number.
//!
//! HEP capture (docs/CAPTURE.md) has two loops of its own: `capture_copies` records each INVITE
//! twice into a shard's capture ring (as received and as sent) and flushes the ring every batch
//! through a send function that takes everything (so the count is fsroute's user-space work per
//! copy, without the kernel's send), and `capture_off_checks` is the check a shard makes per
//! batch with capture off (a table load and a comparison).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsroute_dataplane::dispatch::{Algorithm, HashMode, Member, Selector};
use fsroute_dataplane::router::{Action, Router};
use fsroute_dataplane::stats::ShardStats;
use fsroute_dataplane::capture::CaptureRing;
use fsroute_dataplane::hep::WallTime;
use fsroute_dataplane::table::{
    ArcSwap, CaptureSettings, Destination, DispatcherSet, ProxySettings, Route, RouteMatch, RouteTarget, RoutingTable,
};

const INVITE: &str = include_str!("../../../dataplane/testdata/sip-corpus/01-invite-from-sbc.sip");
const RINGING: &str = include_str!("../../../dataplane/testdata/sip-corpus/03-180.sip");
const CALL_ID: &str = "8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e";
const BRANCH: &str = "4d7a1c9e8f2b3a61";

fn table() -> RoutingTable {
    let destinations: Vec<Destination> = (0..4u16)
        .map(|i| Destination {
            uri: format!("sip:127.0.0.1:{}", 5071 + i),
            addr: SocketAddr::from(([127, 0, 0, 1], 5071 + i)),
            weight: 1,
            priority: 0,
            active: true,
            counters: Default::default(),
            fs: None,
        })
        .collect();
    let members: Vec<Member<'_>> = destinations.iter().map(|d| Member { key: &d.uri, weight: 1, priority: 0, active: true }).collect();
    let selector = Selector::new(&members);
    RoutingTable::new(
        1,
        ProxySettings {
            advertise_host: "127.0.0.1".into(),
            advertise_port: 5060,
            tcp_port: None,
            tls_port: None,
            udp_max_message: 1300,
            local_names: vec![("127.0.0.1".into(), 5060)],
            local_addrs: vec!["127.0.0.1:5060".parse().unwrap()],
            record_route: true,
            max_forwards: 70,
            hash: HashMode::Rendezvous,
            no_route_reply: 404,
            transaction_memory: Duration::from_secs(190),
            dialog_memory: Duration::from_secs(3600),
            max_call_duration: Duration::from_secs(3600),
            limits: Default::default(),
            x_auth: Default::default(),
            branch_key: fsroute_dataplane::table::BranchKey([1, 2]),
            host_ips: Vec::new(),
        },
        vec![DispatcherSet { setid: 1, destinations, selector }],
        vec![Route { matcher: RouteMatch::default(), target: RouteTarget::Dispatcher { set: 0, algorithm: Algorithm::HashCallId, failover: false } }],
    )
}

/// The corpus files may use bare LF; SIP on the wire here is CRLF.
fn crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}

#[inline(never)]
fn route_invites(r: &mut Router, t: &RoutingTable, src: SocketAddr, msgs: &[Vec<u8>], now: Instant, out: &mut Vec<u8>) -> usize {
    let mut fwd = 0;
    for m in msgs {
        if let Action::Forward(_) = r.handle(t, src, black_box(m), now, out) {
            fwd += 1;
        }
    }
    fwd
}

#[inline(never)]
fn route_responses(r: &mut Router, t: &RoutingTable, msgs: &[(SocketAddr, Vec<u8>)], now: Instant, out: &mut Vec<u8>) -> usize {
    let mut fwd = 0;
    for (src, m) in msgs {
        if let Action::Forward(_) = r.handle(t, *src, black_box(m), now, out) {
            fwd += 1;
        }
    }
    fwd
}

/// Both copies of every message, a flush per `BATCH` of them; returns the packets the ring sent.
#[inline(never)]
fn capture_copies(ring: &mut CaptureRing, peer: SocketAddr, me: SocketAddr, msgs: &[Vec<u8>]) -> u64 {
    let mut sent = 0;
    let at = WallTime::now();
    for chunk in msgs.chunks(fsroute_dataplane::batch::BATCH / 2) {
        for m in chunk {
            ring.record(peer, me, at, fsroute_dataplane::conn::Transport::Udp, black_box(m));
            ring.record(me, peer, at, fsroute_dataplane::conn::Transport::Udp, black_box(m));
        }
        sent += ring.flush(|run| Ok(black_box(run).len())).sent;
    }
    sent
}

/// What a shard does per batch while capture is off (`Shard::sync_capture`'s first branch).
#[inline(never)]
fn capture_off_checks(table: &ArcSwap<RoutingTable>, running: Option<&CaptureSettings>, n: usize) -> usize {
    let mut on = 0;
    for _ in 0..n {
        let t = table.load();
        if black_box(t.capture.as_ref()) != running {
            on += 1;
        }
    }
    on
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let t = table();
    let src: SocketAddr = "127.0.0.7:5060".parse().unwrap();
    let now = Instant::now();
    let invite = crlf(INVITE);
    let ringing = crlf(RINGING);
    let invites: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            invite
                .replace(CALL_ID, &format!("{i:032x}"))
                .replace(BRANCH, &format!("{i:016x}"))
                .into_bytes()
        })
        .collect();
    // A pre-pass with its own router learns fsroute's Via and destination for each call (the
    // branch is a stateless function of the request), so the 180s can be built outside the
    // measured loop.
    let mut pre = Router::new(0, 1, 7, Arc::new(ShardStats::default()));
    let mut out = Vec::with_capacity(4096);
    let responses: Vec<(SocketAddr, Vec<u8>)> = invites
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let Action::Forward(dest) = pre.handle(&t, src, m, now, &mut out) else { return None };
            let text = String::from_utf8_lossy(&out).into_owned();
            let via = text.lines().find(|l| l.starts_with("Via:"))?.to_string();
            let r = ringing.replace(CALL_ID, &format!("{i:032x}")).replace(BRANCH, &format!("{i:016x}"));
            Some((dest, r.replacen("\r\nVia:", &format!("\r\n{via}\r\nVia:"), 1).into_bytes()))
        })
        .collect();
    let mut r = Router::new(0, 1, 7, Arc::new(ShardStats::default()));
    let a = route_invites(&mut r, &t, src, &invites, now, &mut out);
    let b = route_responses(&mut r, &t, &responses, now, &mut out);
    println!("forwarded {a} of {n} INVITEs and {b} of {} 180s", responses.len());
    if a != n || b != responses.len() || b == 0 {
        eprintln!("callgrind_forward: the router did not forward every message; the count would be meaningless");
        std::process::exit(1);
    }
    let collector: SocketAddr = "127.0.0.1:9060".parse().unwrap();
    let mut ring = CaptureRing::new(CaptureSettings { collector, capture_id: 2001, queue: 1024 });
    let captured = capture_copies(&mut ring, src, "127.0.0.1:5060".parse().unwrap(), &invites);
    let swap = ArcSwap::from_pointee(table());
    let off = capture_off_checks(&swap, None, n);
    println!("captured {captured} of {} copies; {off} of {n} off-checks saw capture on", 2 * n);
    if captured != 2 * n as u64 || off != 0 {
        eprintln!("callgrind_forward: capture did not record every copy; the count would be meaningless");
        std::process::exit(1);
    }
}
