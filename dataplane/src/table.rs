//! The routing table: one immutable value holding everything a shard reads to route a message:
//! proxy identity, limits and branch key, dispatcher sets with their precomputed selectors,
//! load_balancer groups, routes, failover settings, and the addresses of all destinations. The
//! control plane builds it with a pure function (`controlplane/src/table_builder.rs`) and swaps it
//! into one `ArcSwap`; shards load it once per datagram and never lock. Per-destination counters,
//! load_balancer loads and FreeSWITCH box gates live in `Arc`s that the control plane carries from
//! one table to the next, so they survive reloads.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::conn::Transport;
use crate::admission::BoxAdmission;
use crate::dispatch::{Algorithm, HashMode, Selector};
use crate::lb::{LbFlags, LbGroup};
use crate::sip::uri_host_port;

pub use arc_swap::ArcSwap;

/// Where a routed call may go. `counters` is shared with the previous and next tables.
#[derive(Debug)]
pub struct Destination {
    pub uri: String,
    pub addr: SocketAddr,
    /// Effective weight (after heartbeats, staleness, admin state).
    pub weight: u32,
    pub priority: i32,
    pub active: bool,
    pub counters: Arc<DestCounters>,
    /// For an fs:// weight under the headroom model: the box's live admission. A destination
    /// whose box has no room is passed over (docs/ADMISSION.md); None = no gate (static weight,
    /// a stale box, or the `opensips` model).
    pub fs: Option<Arc<BoxAdmission>>,
}

impl Destination {
    /// Whether the box behind this destination takes one more call now: None when it has no room;
    /// the call's hold on the box when it has a gate (give it back when the call ends).
    pub fn admit(&self, now: std::time::Instant) -> Option<Option<crate::lb::Reservation>> {
        match &self.fs {
            None => Some(None),
            Some(b) => crate::lb::Reservation::on_box(b, now).map(Some),
        }
    }

    /// Calls the destination may still take now; `u64::MAX` without a gate.
    pub fn available(&self, now: std::time::Instant) -> u64 {
        self.fs.as_ref().map_or(u64::MAX, |b| if b.rate_open(now) { b.available(now) } else { 0 })
    }
}

/// Counters that outlive table swaps, keyed by destination identity in the control plane.
#[derive(Debug, Default)]
pub struct DestCounters {
    pub forwarded: AtomicU64,
    /// Final responses >= 300 from this destination to a failover INVITE of a dispatcher route
    /// (stateless routes and load_balancer destinations do not count them).
    pub failed: AtomicU64,
}

impl DestCounters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct DispatcherSet {
    pub setid: i32,
    pub destinations: Vec<Destination>,
    pub selector: Selector,
}

/// An IPv4 or IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix.min(32))) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix.min(128))) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The match part of a `[[route]]`; every key is optional and all given keys must match.
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    pub ruri_user_prefix: Option<String>,
    /// Lower-cased.
    pub ruri_domain: Option<String>,
    pub method: Option<String>,
    pub source: Option<Cidr>,
}

/// The resources one call consumes on a load_balancer route (ids into the group's resource
/// names), in a fixed array so a route stays `Copy` and a pick allocates nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbWanted {
    ids: [usize; 4],
    len: u8,
}

impl LbWanted {
    /// The most resources one load_balancer route may ask for.
    pub const MAX: usize = 4;

    /// None when more than [`Self::MAX`] resources are asked for.
    pub fn new(ids: &[usize]) -> Option<LbWanted> {
        if ids.len() > Self::MAX {
            return None;
        }
        let mut w = LbWanted { ids: [0; 4], len: ids.len() as u8 };
        w.ids[..ids.len()].copy_from_slice(ids);
        Some(w)
    }
    pub fn ids(&self) -> &[usize] {
        &self.ids[..usize::from(self.len)]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Index into `RoutingTable::sets`.
    Dispatcher { set: usize, algorithm: Algorithm, failover: bool },
    /// Index into `RoutingTable::lb_groups`. INVITEs always become failover transactions (the
    /// call's units are held until it ends); `failover = false` allows one attempt only.
    LoadBalancer { group: usize, wanted: LbWanted, flags: LbFlags, failover: bool },
}

/// `[failover]`: what moves a call to the next destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverSettings {
    pub codes: Vec<u16>,
    pub no_answer_timeout: Duration,
    pub max_attempts: usize,
    /// What fsroute answers when no destination is left (all tried, all full): 503 or 500
    /// (RFC 3261 §16.7 step 6). A backend's own 503 is never relayed: its `Retry-After: 300` would
    /// make an upstream carrier avoid the whole balancer for five minutes.
    pub exhausted_reply: u16,
    /// `Retry-After` on fsroute's own 503 (None = no header).
    pub exhausted_retry_after: Option<Duration>,
    /// How long a box that answered 503 stays closed, unless its next heartbeat comes first.
    pub refused_cooldown: Duration,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            codes: vec![408, 500, 503],
            no_answer_timeout: Duration::from_secs(2),
            max_attempts: 3,
            exhausted_reply: 503,
            exhausted_retry_after: Some(Duration::from_secs(5)),
            refused_cooldown: Duration::from_secs(1),
        }
    }
}

impl FailoverSettings {
    /// The status line and `Retry-After` value (decimal seconds, in a fixed buffer) of fsroute's own
    /// answer when every destination is exhausted.
    pub fn exhausted(&self) -> (u16, &'static str, Option<u64>) {
        match self.exhausted_reply {
            500 => (500, "Server Internal Error", None),
            _ => (503, "Service Unavailable", self.exhausted_retry_after.map(|d| d.as_secs().max(1))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Route {
    pub matcher: RouteMatch,
    pub target: RouteTarget,
}

/// Which forwarded requests carry the sender's real address as `X-AUTH-IP` / `X-AUTH-PORT`, the
/// headers FreeSWITCH reads in place of the network address for traffic from a proxy it trusts
/// (`apply-proxy-acl`; docs/FREESWITCH.md, "X-AUTH-IP"). `[proxy] x_auth_ip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XAuth {
    /// Added to requests towards these destinations (sorted: the FreeSWITCH boxes, those with an
    /// `fs://` weight or capacity); any a sender wrote are removed from every request.
    To(Vec<SocketAddr>),
    /// Added to every forwarded request; any a sender wrote are removed.
    Always,
    /// Neither added nor removed (an SBC in front of fsroute writes them).
    Never,
}

impl Default for XAuth {
    fn default() -> Self {
        XAuth::To(Vec::new())
    }
}

impl XAuth {
    pub fn adds_for(&self, dest: SocketAddr) -> bool {
        match self {
            XAuth::To(boxes) => boxes.binary_search(&dest).is_ok(),
            XAuth::Always => true,
            XAuth::Never => false,
        }
    }

    pub fn removes_senders(&self) -> bool {
        !matches!(self, XAuth::Never)
    }
}

/// Identity and behaviour of the proxy itself.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Host and port written into Via and Record-Route.
    pub advertise_host: String,
    pub advertise_port: u16,
    /// The ports of the first `tcp:` and `tls:` listeners: a Record-Route for a TCP or TLS
    /// side names them (none: the advertised port).
    pub tcp_port: Option<u16>,
    pub tls_port: Option<u16>,
    /// A request larger than this leaves for a UDP destination over TCP (RFC 3261 §18.1.1);
    /// 0 = never (`[proxy] udp_max_message`).
    pub udp_max_message: usize,
    /// Every (host, port) by which a Request-URI or Route names fsroute: advertise, listeners,
    /// aliases. Hosts lower-cased; IPv6 without brackets.
    pub local_names: Vec<(String, u16)>,
    /// The socket addresses fsroute listens on; a destination equal to one of them is a loop.
    pub local_addrs: Vec<SocketAddr>,
    pub record_route: bool,
    pub max_forwards: u32,
    pub hash: HashMode,
    pub no_route_reply: u16,
    pub transaction_memory: Duration,
    pub dialog_memory: Duration,
    /// How long an answered call may hold its box's units without a BYE (a lost BYE must not
    /// hold capacity for `dialog_memory`); the dialog's route is still remembered after it.
    pub max_call_duration: Duration,
    /// Per-shard bounds on call state (docs/SECURITY.md, "Bounded call state").
    pub limits: MemoryLimits,
    pub x_auth: XAuth,
    /// The key of the MAC in fsroute's branches: kept for the life of the process (and
    /// configurable, so instances sharing an address can verify each other's).
    pub branch_key: BranchKey,
    /// This host's interface addresses, for the listeners on 0.0.0.0 / `::`: a request sent to any
    /// of them at such a listener's port would come straight back.
    pub host_ips: Vec<IpAddr>,
}

/// Per-shard caps on the state the router keeps. Past a cap, new calls that would need more state
/// are refused with 503 and counted; calls already admitted keep theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    pub transactions: usize,
    pub dialogs: usize,
    /// Failover (forked) INVITE transactions.
    pub forks: usize,
    /// Bytes of stored INVITEs over all forks.
    pub fork_bytes: usize,
}

impl Default for MemoryLimits {
    /// Sized for ~1,000 new calls/s per shard with 3-minute calls, in about 0.5 GB per shard at
    /// worst (docs/SECURITY.md, "Bounded call state"). Each count is 7/8 of a power of two: a
    /// hash map full to its cap then sits exactly at its load factor, not just past a doubling.
    fn default() -> Self {
        MemoryLimits { transactions: 458_752, dialogs: 917_504, forks: 57_344, fork_bytes: 128 << 20 }
    }
}

/// 128-bit SipHash key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BranchKey(pub [u64; 2]);

impl BranchKey {
    /// A fresh random key from the OS (std's hasher seeding reads getrandom).
    pub fn random() -> BranchKey {
        use std::hash::{BuildHasher, Hasher};
        let mut k = [0u64; 2];
        for (i, v) in k.iter_mut().enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            *v = h.finish();
        }
        BranchKey(k)
    }

    /// The MAC of a branch value, the address its responses go back to and the method they
    /// answer: a response is relayed only to where the request it answers came from, and only as
    /// an answer to that request's method. A CANCEL shares its INVITE's branch (§9.1), so it
    /// counts as INVITE; so does the ACK of a non-2xx response, which the router passes as
    /// INVITE itself (§17.1.1.3; an ACK for a 2xx is a transaction of its own). For a request
    /// that came on a stream, `conn` is the connection its responses go back on (written into
    /// the branch beside the MAC): bound too, so no one can aim a response at another connection.
    pub fn mac(&self, branch: u64, reply_to: SocketAddr, conn: Option<crate::conn::ConnId>, method: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.0[0], self.0[1]);
        h.write_u64(branch);
        h.write(match method {
            b"CANCEL" => b"INVITE",
            m => m,
        });
        match reply_to.ip() {
            IpAddr::V4(v4) => h.write(&v4.octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        h.write_u16(reply_to.port());
        if let Some(c) = conn {
            h.write_u64(c.to_bits());
        }
        h.finish()
    }
}

impl ProxySettings {
    /// Whether `host[:port]` names fsroute (port 5060 when absent).
    pub fn is_local(&self, host: &[u8], port: Option<u16>) -> bool {
        let host = crate::sip::unbracket(host);
        let port = port.unwrap_or(5060);
        self.local_names
            .iter()
            .any(|(h, p)| *p == port && h.as_bytes().eq_ignore_ascii_case(host))
    }

    pub fn is_local_uri(&self, uri: &[u8]) -> bool {
        uri_host_port(uri).is_some_and(|(h, p)| self.is_local(h, p))
    }

    /// Whether sending to `dest` would deliver the datagram back to fsroute: one of its listeners,
    /// an unspecified address (the kernel delivers those locally), or, for a wildcard listener, any
    /// loopback or interface address at its port.
    pub fn is_self(&self, dest: &SocketAddr) -> bool {
        let ip = dest.ip();
        if ip.is_unspecified() {
            return true;
        }
        self.local_addrs.iter().any(|l| {
            l.port() == dest.port()
                && (l.ip() == ip
                    || (l.ip().is_unspecified()
                        && l.is_ipv4() == dest.is_ipv4()
                        && (ip.is_loopback() || self.host_ips.contains(&ip))))
        })
    }
}

#[derive(Debug)]
pub struct RoutingTable {
    /// Increases with every build; shown as `table_generation` in `/status` and `/metrics`.
    /// Shards do not read it: they load the current table for every datagram.
    pub generation: u64,
    pub proxy: ProxySettings,
    pub sets: Vec<DispatcherSet>,
    pub routes: Vec<Route>,
    /// Sorted addresses of every destination of every set and group, for Record-Route tokens and
    /// for telling a request from a backend apart from one towards it.
    pub known_destinations: Vec<SocketAddr>,
    /// The destinations reached over a stream (`;transport=tcp`, later TLS), sorted by address:
    /// requests to them leave on a connection the sending shard opens (docs/TCP.md). Empty in a
    /// UDP-only config, so the UDP path pays one length check.
    pub stream_destinations: Vec<(SocketAddr, Transport)>,
    pub lb_groups: Vec<LbGroup>,
    pub failover: FailoverSettings,
    /// fsroute's own header prefixes, formatted once per table from `proxy`.
    pub own: OwnLines,
    /// `[capture]`: where shards mirror every SIP datagram as HEP3; None = off.
    pub capture: Option<CaptureSettings>,
    /// `[tls]`: the configs new TLS connections start with (docs/TCP.md, "TLS"); a reload swaps
    /// them with the table, and a connection keeps the session it started with.
    pub tls: crate::tls::TlsContexts,
}

/// `[capture]`, as the shards apply it (docs/CAPTURE.md). A shard compares it with what it runs
/// once per batch, so a reload turns capture on, off or elsewhere without a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureSettings {
    /// The HEP collector (heplify-server, sngrep), an IP literal.
    pub collector: SocketAddr,
    /// HEP capture agent id (chunk 0x000c).
    pub capture_id: u32,
    /// HEP packets one shard keeps waiting for its capture socket; past it captures are dropped
    /// and counted.
    pub queue: usize,
}

/// The start of the Via and Record-Route lines fsroute writes into every request it forwards:
/// they depend only on the advertised address, so the table formats them once instead of every
/// message doing it (issue 11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnLines {
    /// `Via: SIP/2.0/UDP host:port;branch=`; the branch follows.
    pub via: Vec<u8>,
    /// The same for a request that leaves on a TCP connection: `Via: SIP/2.0/TCP host:port;branch=`.
    pub via_tcp: Vec<u8>,
    /// And on a TLS connection: `Via: SIP/2.0/TLS host:port;branch=`.
    pub via_tls: Vec<u8>,
    /// `Record-Route: <sip:host:port;lr;fsd=`; the destination token and `>` follow.
    pub record_route: Vec<u8>,
    /// The same naming fsroute's TCP side: `<sip:host:tcp_port;transport=tcp;lr;fsd=`.
    pub record_route_tcp: Vec<u8>,
    /// And its TLS side: `<sip:host:tls_port;transport=tls;lr;fsd=`.
    pub record_route_tls: Vec<u8>,
}

impl OwnLines {
    /// For writers that never add fsroute's top lines (replies, stored templates).
    pub const NONE: OwnLines =
        OwnLines { via: Vec::new(), via_tcp: Vec::new(), via_tls: Vec::new(), record_route: Vec::new(), record_route_tcp: Vec::new(), record_route_tls: Vec::new() };

    /// `host` is already in URI form (an IPv6 address bracketed); `tcp_port` and `tls_port` are
    /// the stream listeners' ports, when they differ from `port`.
    pub fn new(host: &str, port: u16, tcp_port: Option<u16>, tls_port: Option<u16>) -> Self {
        let (tcp, tls) = (tcp_port.unwrap_or(port), tls_port.unwrap_or(port));
        OwnLines {
            via: format!("Via: SIP/2.0/UDP {host}:{port};branch=").into_bytes(),
            via_tcp: format!("Via: SIP/2.0/TCP {host}:{port};branch=").into_bytes(),
            via_tls: format!("Via: SIP/2.0/TLS {host}:{port};branch=").into_bytes(),
            record_route: format!("Record-Route: <sip:{host}:{port};lr;fsd=").into_bytes(),
            record_route_tcp: format!("Record-Route: <sip:{host}:{tcp};transport=tcp;lr;fsd=").into_bytes(),
            record_route_tls: format!("Record-Route: <sip:{host}:{tls};transport=tls;lr;fsd=").into_bytes(),
        }
    }

    /// fsroute's Record-Route prefix naming its side on `transport` (UDP: no transport
    /// parameter, the bytes fsroute always wrote).
    #[inline]
    pub fn record_route(&self, transport: Transport) -> &[u8] {
        match transport {
            Transport::Udp => &self.record_route,
            Transport::Tcp => &self.record_route_tcp,
            Transport::Tls => &self.record_route_tls,
        }
    }

    /// fsroute's Via prefix for a request leaving over `transport`.
    #[inline]
    pub fn via(&self, transport: Transport) -> &[u8] {
        match transport {
            Transport::Udp => &self.via,
            Transport::Tcp => &self.via_tcp,
            Transport::Tls => &self.via_tls,
        }
    }
}

impl RoutingTable {
    /// Sorts and deduplicates `known_destinations` from the sets.
    pub fn new(generation: u64, proxy: ProxySettings, sets: Vec<DispatcherSet>, routes: Vec<Route>) -> Self {
        let mut t = RoutingTable {
            generation,
            proxy,
            sets,
            routes,
            known_destinations: Vec::new(),
            stream_destinations: Vec::new(),
            lb_groups: Vec::new(),
            failover: FailoverSettings::default(),
            own: OwnLines::NONE,
            capture: None,
            tls: crate::tls::TlsContexts::default(),
        };
        t.own = OwnLines::new(&t.proxy.advertise_host, t.proxy.advertise_port, t.proxy.tcp_port, t.proxy.tls_port);
        t.index_destinations();
        t
    }

    /// Turns HEP capture on (Some) or leaves it off.
    pub fn with_capture(mut self, capture: Option<CaptureSettings>) -> Self {
        self.capture = capture;
        self
    }

    /// The TLS configs for `tls:` listeners and TLS destinations.
    pub fn with_tls(mut self, tls: crate::tls::TlsContexts) -> Self {
        self.tls = tls;
        self
    }

    /// Adds load_balancer groups and failover settings.
    pub fn with_load_balancer(mut self, lb_groups: Vec<LbGroup>, failover: FailoverSettings) -> Self {
        self.lb_groups = lb_groups;
        self.failover = failover;
        self.index_destinations();
        self
    }

    fn index_destinations(&mut self) {
        let sets = self.sets.iter().flat_map(|s| s.destinations.iter().map(|d| d.addr));
        let groups = self.lb_groups.iter().flat_map(|g| g.destinations.iter().map(|d| d.addr));
        let mut known: Vec<SocketAddr> = sets.chain(groups).collect();
        known.sort_unstable();
        known.dedup();
        self.known_destinations = known;
    }

    /// Marks destinations as reached over a stream transport; an address listed twice keeps its
    /// first transport (config validation refuses one address under two transports).
    pub fn with_stream_destinations(mut self, mut streams: Vec<(SocketAddr, Transport)>) -> Self {
        streams.retain(|(_, t)| t.is_stream());
        streams.sort_by_key(|(a, _)| *a);
        streams.dedup_by_key(|(a, _)| *a);
        self.stream_destinations = streams;
        self
    }

    /// The transport requests to `addr` leave over: UDP unless the destination says otherwise.
    #[inline]
    pub fn destination_transport(&self, addr: &SocketAddr) -> Transport {
        if self.stream_destinations.is_empty() {
            return Transport::Udp;
        }
        match self.stream_destinations.binary_search_by_key(addr, |(a, _)| *a) {
            Ok(i) => self.stream_destinations[i].1,
            Err(_) => Transport::Udp,
        }
    }

    pub fn is_known_destination(&self, addr: &SocketAddr) -> bool {
        self.known_destinations.binary_search(addr).is_ok()
    }

    /// Whether a request from `src` comes from one of the destinations. By IP and port: FreeSWITCH
    /// sends from its SIP profile's port, and matching the IP alone would mistake a caller that
    /// shares a host (or a NAT address) with a backend for the backend.
    pub fn is_from_destination(&self, src: &SocketAddr) -> bool {
        self.is_known_destination(src)
    }

    /// The first route whose match keys all hold.
    pub fn match_route(&self, method: &[u8], ruri: &[u8], src: IpAddr) -> Option<&Route> {
        self.routes.iter().find(|r| {
            let m = &r.matcher;
            if let Some(meth) = &m.method {
                if meth.as_bytes() != method {
                    return false;
                }
            }
            if let Some(net) = &m.source {
                if !net.contains(src) {
                    return false;
                }
            }
            if let Some(prefix) = &m.ruri_user_prefix {
                match crate::sip::uri_user(ruri) {
                    Some(u) if u.starts_with(prefix.as_bytes()) => {}
                    _ => return false,
                }
            }
            if let Some(domain) = &m.ruri_domain {
                match uri_host_port(ruri) {
                    Some((h, _)) if h.eq_ignore_ascii_case(domain.as_bytes()) => {}
                    _ => return false,
                }
            }
            true
        })
    }
}
