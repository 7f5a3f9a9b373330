//! Fuzz target for the sans-IO proxy core (`dataplane::router::Router`): a session of datagrams
//! from callers and backends against a routing table with a stateless dispatcher set, a failover
//! set and a load_balancer group, with time advancing and `tick` run between datagrams. Whatever
//! arrives, the router must not panic, and everything it sends must be a SIP message that scans
//! and validates again, no larger than the largest datagram it was given plus a few header lines.
//!
//! Input format (the seeds in `corpus/router/` follow it): records separated by [`SEP`]; each
//! record is one control byte then the datagram. Control byte: bits 0-3 pick the source address
//! from [`SOURCES`], bits 4-6 the time step before the datagram ([`STEPS`]), and bit 7 asks the
//! harness to put on top of the datagram the Via fsroute wrote on the last request it sent to
//! that source, as the backend's answer would carry it, so that fuzzed responses reach the
//! response and failover paths (guessing a 64-bit branch is not what this target is for).
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsroute_dataplane::admission::{BoxAdmission, BoxGate};
use fsroute_dataplane::dispatch::{Algorithm, Member, Selector};
use fsroute_dataplane::lb::{LbDestination, LbFlags, LbGroup, LbResource};
use fsroute_dataplane::router::{Action, Router};
use fsroute_dataplane::sip;
use fsroute_dataplane::stats::ShardStats;
use fsroute_dataplane::table::{
    Cidr, Destination, DispatcherSet, FailoverSettings, LbWanted, Route, RouteMatch, RouteTarget, RoutingTable,
};
use fsroute_dataplane::testing::loopback_proxy;
use libfuzzer_sys::fuzz_target;

const SEP: &[u8] = b"\n--next--\n";

/// Callers (one behind a NAT port, one on IPv6), every backend, and fsroute's own address.
const SOURCES: [&str; 11] = [
    "127.0.0.7:5060",
    "127.0.0.7:40000",
    "127.0.0.8:5060",
    "127.0.0.1:5071",
    "127.0.0.1:5072",
    "127.0.0.1:5073",
    "127.0.0.1:5074",
    "127.0.0.1:5081",
    "127.0.0.1:5082",
    "[::1]:5060",
    "127.0.0.1:5060",
];

/// Time steps chosen around the timers that matter: no_answer_timeout (2 s), the 32 s kept after
/// a final response, transaction memory (190 s). Printable control bytes (0x20..0x7e) map to
/// steps 2..7, so hand-written seeds can say how long to wait.
const STEPS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_millis(10),
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(100),
    Duration::from_millis(2100),
    Duration::from_secs(33),
    Duration::from_secs(200),
];

/// fsroute adds at most its Via, its Record-Route and a Max-Forwards line (under 300 bytes), and
/// its own replies copy a request's Via/From/To/Call-ID/CSeq lines; this is a generous ceiling.
const GROWTH: usize = 4096;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

fn destination(a: &str, weight: u32, fs: Option<Arc<BoxAdmission>>) -> Destination {
    Destination {
        uri: format!("sip:{a}"),
        addr: addr(a),
        weight,
        priority: 0,
        active: true,
        counters: Default::default(),
        fs,
    }
}

fn set(setid: i32, destinations: Vec<Destination>) -> DispatcherSet {
    let members: Vec<Member<'_>> = destinations
        .iter()
        .map(|d| Member { key: &d.uri, weight: d.weight, priority: d.priority, active: d.active })
        .collect();
    let selector = Selector::new(&members);
    DispatcherSet { setid, destinations, selector }
}

/// Built the way `dataplane::testing` builds its tables, with every kind of route at once:
/// callers from 127.0.0.8 go stateless by Call-ID hash; numbers starting with 9 go to the
/// load_balancer group; calls to lb.example.net fail over across set 2 (one box behind a
/// headroom gate of 2 calls); anything else is hashed by From over set 1.
fn table() -> RoutingTable {
    let gate = Arc::new(BoxAdmission {
        gate: Arc::new(BoxGate::default()),
        limit: 2,
        headroom: 2,
        rate: None,
        seq: 1,
        accepting: true,
    });
    let sets = vec![
        set(1, vec![destination("127.0.0.1:5071", 1, None), destination("127.0.0.1:5072", 2, None)]),
        set(2, vec![destination("127.0.0.1:5073", 1, Some(gate)), destination("127.0.0.1:5074", 1, None)]),
    ];
    let lb_destination = |a: &str, cap: u32| LbDestination {
        uri: format!("sip:{a}"),
        addr: addr(a),
        enabled: true,
        resources: vec![Some(LbResource::fixed(cap, Default::default()))],
    };
    let group = LbGroup {
        group_id: 1,
        resource_names: vec!["ch".into()],
        destinations: vec![lb_destination("127.0.0.1:5081", 2), lb_destination("127.0.0.1:5082", 1)],
    };
    let dispatcher = |set, algorithm, failover| RouteTarget::Dispatcher { set, algorithm, failover };
    let routes = vec![
        Route {
            matcher: RouteMatch {
                source: Some(Cidr { addr: "127.0.0.8".parse().expect("literal"), prefix: 32 }),
                ..RouteMatch::default()
            },
            target: dispatcher(0, Algorithm::HashCallId, false),
        },
        Route {
            matcher: RouteMatch { ruri_user_prefix: Some("9".into()), ..RouteMatch::default() },
            target: RouteTarget::LoadBalancer {
                group: 0,
                wanted: LbWanted::new(&[0]).expect("one resource"),
                flags: LbFlags::default(),
                failover: true,
            },
        },
        Route {
            matcher: RouteMatch { ruri_domain: Some("lb.example.net".into()), ..RouteMatch::default() },
            target: dispatcher(1, Algorithm::RoundRobin, true),
        },
        Route { matcher: RouteMatch::default(), target: dispatcher(0, Algorithm::HashFrom, false) },
    ];
    let failover = FailoverSettings { max_attempts: 3, ..FailoverSettings::default() };
    RoutingTable::new(1, loopback_proxy(), sets, routes).with_load_balancer(vec![group], failover)
}

fn records(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                rest = Some(&r[i + SEP.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `datagram` with `via` (a Via value) as a new first header line.
fn with_top_via(datagram: &[u8], via: &[u8]) -> Vec<u8> {
    let at = memchr_lf(datagram).map_or(datagram.len(), |i| i + 1);
    let mut v = Vec::with_capacity(datagram.len() + via.len() + 8);
    v.extend_from_slice(&datagram[..at]);
    v.extend_from_slice(b"Via: ");
    v.extend_from_slice(via);
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(&datagram[at..]);
    v
}

fn memchr_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// What fsroute sends must scan, and be a message its peer (and fsroute itself) accepts, with
/// two exceptions: a reply to a malformed request copies that request's Via, From, To, Call-ID
/// and CSeq lines as they came (§8.2.6.2), defects included; and a relayed response keeps the
/// Vias below the caller's as they came, which fsroute never had reason to read (it reads two),
/// and a forwarded request keeps the Route values after the first as they came. Those need only
/// scan.
fn check_sent<'a>(bytes: &'a [u8], largest_input: usize, must_validate: bool, what: &str) -> sip::Message<'a> {
    let m = match sip::parse(bytes) {
        Ok(m) => m,
        Err(e) => panic!("{what} does not scan ({e}): {:?}", String::from_utf8_lossy(bytes)),
    };
    let valid = if m.is_request() { m.validate_request() } else { m.validate_response() };
    // fsroute reads only the first Route value (its own, popped, or the next hop) and passes the
    // rest as they came: once its own is popped, a malformed second value is on top.
    let valid = match valid {
        Err(sip::ParseError::Malformed("Route")) if m.is_request() => Ok(()),
        v => v,
    };
    if let (true, Err(e)) = (must_validate, valid) {
        panic!("{what} is not a valid SIP message ({e}): {:?}", String::from_utf8_lossy(bytes));
    }
    assert!(
        bytes.len() <= largest_input + GROWTH,
        "{what} is {} bytes, from inputs of at most {largest_input}",
        bytes.len()
    );
    m
}

/// An INVITE transaction as the caller knows it: Call-ID, CSeq number, the caller's branch.
type TxnId = (Vec<u8>, u32, Vec<u8>);

/// The caller's INVITE transaction a message belongs to: a response carries the caller's Via on
/// top once fsroute's is gone; a request fsroute sends on carries it second.
fn invite_txn(m: &sip::Message<'_>) -> Option<TxnId> {
    let cseq = m.cseq.filter(|c| c.method == b"INVITE")?;
    let via = if m.is_request() { m.second_via } else { m.top_via }?;
    Some((m.call_id?.to_vec(), cseq.number, via.branch?.to_vec()))
}

/// How a datagram left fsroute: relayed (a request or response passed on) or made by fsroute.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    Relayed,
    Own,
}

/// What made fsroute send: a caller's request it answers, or its own decision (a timer fired, a
/// backend's response moved a failover along).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Request,
    Decision,
}

struct Session {
    table: RoutingTable,
    router: Router,
    now: Instant,
    out: Vec<u8>,
    /// fsroute's Via value on the last request it sent to each backend.
    last_via: HashMap<SocketAddr, Vec<u8>>,
    largest_input: usize,
    /// INVITE transactions whose 2xx fsroute passed to the caller: the call is answered, so
    /// fsroute must neither answer it itself nor try another box for it (RFC 3261 §16.7 step 10).
    answered: HashSet<TxnId>,
    /// The caller's transaction of each INVITE fsroute sent, by the branch fsroute wrote on it. A
    /// response names its transaction by that branch: the Vias below it are the backend's to
    /// mangle, and a mangled one must not make the harness think another call was answered.
    sent_invites: HashMap<Vec<u8>, Option<TxnId>>,
    /// The branch on top of the datagram being handled (fsroute's, for a response).
    incoming_branch: Option<Vec<u8>>,
}

impl Session {
    fn new() -> Session {
        Session {
            table: table(),
            router: Router::new(0, 1, 7, Arc::new(ShardStats::default())),
            now: Instant::now(),
            out: Vec::new(),
            last_via: HashMap::new(),
            largest_input: 0,
            answered: HashSet::new(),
            sent_invites: HashMap::new(),
            incoming_branch: None,
        }
    }

    fn observe(&mut self, to: SocketAddr, bytes: &[u8], sent: Sent, trigger: Trigger, what: &str) {
        self.observe_checked(to, bytes, sent, trigger, true, what);
    }

    fn observe_checked(&mut self, to: SocketAddr, bytes: &[u8], sent: Sent, trigger: Trigger, must_validate: bool, what: &str) {
        let m = check_sent(bytes, self.largest_input, must_validate, what);
        if m.is_request() {
            // §16.3's loop check: a request never goes back to fsroute. (Responses follow the
            // Via their sender wrote, which may name anything.)
            assert_ne!(to, addr("127.0.0.1:5060"), "fsroute sent a request to itself");
            if let (true, Some(v)) = (self.table.is_known_destination(&to), m.top_via) {
                self.last_via.insert(to, v.span.get(bytes).to_vec());
            }
        }
        if m.method() == Some(sip::Method::Invite) {
            if let Some(b) = m.top_via.and_then(|v| v.branch) {
                self.sent_invites.insert(b.to_vec(), invite_txn(&m));
            }
        }
        let Some(txn) = invite_txn(&m) else { return };
        match (m.status(), sent) {
            (Some(200..=299), Sent::Relayed) => {
                // The INVITE fsroute sent with the branch this 2xx came back on; a caller's Via
                // without a usable branch names no transaction the harness can follow.
                match self.incoming_branch.as_ref().and_then(|b| self.sent_invites.get(b)) {
                    Some(Some(t)) => {
                        self.answered.insert(t.clone());
                    }
                    Some(None) => {}
                    None => {
                        self.answered.insert(txn);
                    }
                }
                return;
            }
            // fsroute took the INVITE on as a new transaction (after the old one was forgotten).
            (Some(100), Sent::Own) => {
                self.answered.remove(&txn);
                return;
            }
            _ => {}
        }
        if trigger != Trigger::Decision || !self.answered.contains(&txn) {
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        match m.status() {
            Some(code) if code >= 200 && sent == Sent::Own => {
                panic!("fsroute answered an INVITE {code} itself after passing on its 2xx: {text:?}")
            }
            None if m.method() == Some(sip::Method::Invite) => {
                panic!("fsroute tried another destination after the call was answered: {text:?}")
            }
            _ => {}
        }
    }

    fn drain(&mut self, trigger: Trigger) {
        while let Some((to, bytes)) = self.router.poll_transmit() {
            self.observe(to.addr, &bytes, Sent::Own, trigger, "a queued datagram");
            self.router.recycle(bytes);
        }
    }

    fn step(&mut self, record: &[u8]) {
        let Some((&ctrl, datagram)) = record.split_first() else {
            return;
        };
        let src = addr(SOURCES[usize::from(ctrl & 0x0f) % SOURCES.len()]);
        let step = STEPS[usize::from((ctrl >> 4) & 0x07)];
        if !step.is_zero() {
            self.now += step;
            self.router.tick(&self.table, self.now);
            self.drain(Trigger::Decision);
        }
        let spliced;
        let datagram = match (self.last_via.get(&src), ctrl & 0x80 != 0) {
            (Some(via), true) => {
                spliced = with_top_via(datagram, via);
                &spliced[..]
            }
            _ => datagram,
        };
        self.largest_input = self.largest_input.max(datagram.len());
        self.incoming_branch = sip::parse(datagram).ok().and_then(|m| m.top_via).and_then(|v| v.branch).map(<[u8]>::to_vec);
        let (trigger, valid_request, next_via) = match sip::parse(datagram) {
            Ok(m) if !m.is_request() => (Trigger::Decision, false, m.second_via.map(|v| v.span.get(datagram).to_vec())),
            Ok(m) => (Trigger::Request, m.validate_request().is_ok(), None),
            Err(_) => (Trigger::Request, false, None),
        };
        let mut out = std::mem::take(&mut self.out);
        match self.router.handle(&self.table, src, datagram, self.now, &mut out) {
            Action::Forward(to) => {
                // A failover's next INVITE is fsroute's own; anything else forwarded is relayed.
                let request = sip::parse(&out).is_ok_and(|m| m.is_request());
                let sent = if request && trigger == Trigger::Decision { Sent::Own } else { Sent::Relayed };
                self.observe_checked(to, &out, sent, trigger, request, "a forwarded message");
                if !request {
                    // fsroute takes its own Via off a response and changes nothing else in it.
                    let top = sip::parse(&out).ok().and_then(|m| m.top_via).map(|v| v.span.get(&out).to_vec());
                    assert_eq!(top, next_via, "a relayed response's top Via is not the one below fsroute's");
                }
            }
            Action::Reply(to) => {
                // fsroute's own answer after a backend's response (no box left) copies a valid INVITE.
                let must_validate = valid_request || trigger == Trigger::Decision;
                self.observe_checked(to, &out, Sent::Own, trigger, must_validate, "a local reply");
            }
            Action::HandOff(_) => panic!("a one-shard router handed a datagram off"),
            // Only a message that came on a stream carries a connection in fsroute's branch, and
            // the MAC binds it: nothing a datagram peer sends can aim at a connection.
            Action::ForwardOn(_) | Action::ReplyOn(_) => panic!("a datagram's exchange left on a stream connection"),
            Action::Drop(_) | Action::Absorbed => {}
        }
        self.out = out;
        self.drain(trigger);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Session::new();
    for record in records(data).take(64) {
        s.step(record);
    }
    // Whatever is still pending runs into its timers.
    for _ in 0..3 {
        s.now += Duration::from_secs(100);
        s.router.tick(&s.table, s.now);
        s.drain(Trigger::Decision);
    }
});
