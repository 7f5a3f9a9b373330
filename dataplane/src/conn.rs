//! Stream connections as the router and the shards see them, sans-IO: a connection's identity
//! ([`ConnId`]: the shard that owns it and a serial number there, written MAC-protected into
//! fsroute's branch so a stateless response finds the connection its request came on), where a
//! message goes ([`Hop`]: an address, and a connection when it must leave on one), and one shard's
//! table of the connections it owns ([`ConnTable`]: peers, idle clocks, output that the kernel did
//! not take yet, bounded). A connection lives on the shard that accepted it; any other shard
//! reaches it by handing the bytes to that owner (docs/TCP.md), so no table is ever shared.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How a message travels; what fsroute's Via and Record-Route name (RFC 3261 §18, §20.42).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// A connection-oriented transport: messages leave on a connection and are framed.
    #[inline]
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }

    /// As a Via's sent-protocol writes it (`SIP/2.0/TCP`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// As a URI's `transport=` parameter writes it.
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One stream connection: the owning shard in the top 16 bits, whether it is TLS in the next bit,
/// a serial number below. Serials are not reused while a shard lives (2^47 connections), so a
/// stale id never names a new connection. Serials start at 1, so an id is never zero and
/// `Option<ConnId>` costs no more than the id. The transport rides in the id so that whatever
/// holds only the id (a branch, the dialog memory) writes the right Via for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(std::num::NonZeroU64);

const SERIAL_BITS: u32 = 47;
const TLS_BIT: u64 = 1 << SERIAL_BITS;
const SHARD_SHIFT: u32 = SERIAL_BITS + 1;

impl ConnId {
    /// A TCP connection's id; serial 0 is taken as 1.
    pub fn new(shard: usize, serial: u64) -> ConnId {
        ConnId::with_transport(shard, serial, Transport::Tcp)
    }

    /// `transport` is TCP or TLS (UDP is taken as TCP: a connection is a stream).
    pub fn with_transport(shard: usize, serial: u64, transport: Transport) -> ConnId {
        let serial = (serial & (TLS_BIT - 1)).max(1);
        let tls = if transport == Transport::Tls { TLS_BIT } else { 0 };
        // Never zero: the serial is at least 1.
        let bits = ((shard as u64 & 0xffff) << SHARD_SHIFT) | tls | serial;
        ConnId(std::num::NonZeroU64::new(bits).unwrap_or(std::num::NonZeroU64::MIN))
    }
    pub fn shard(self) -> usize {
        (self.0.get() >> SHARD_SHIFT) as usize
    }
    /// TCP or TLS.
    pub fn transport(self) -> Transport {
        if self.0.get() & TLS_BIT != 0 {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }
    /// The 64 bits written into a branch.
    pub fn to_bits(self) -> u64 {
        self.0.get()
    }
    /// None for 0, which no connection has.
    pub fn from_bits(bits: u64) -> Option<ConnId> {
        std::num::NonZeroU64::new(bits).map(ConnId)
    }
}

/// Where a message goes: an address, and for a stream peer the connection it leaves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub addr: SocketAddr,
    pub conn: Option<ConnId>,
}

impl Hop {
    pub fn udp(addr: SocketAddr) -> Hop {
        Hop { addr, conn: None }
    }
}

/// Output a connection keeps while the kernel's send buffer is full; past it the peer is not
/// reading and the connection is closed (counted), so a stuck peer costs bounded memory.
pub const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// What a shard knows of one connection it owns; `io` is the shell's handle on its socket.
#[derive(Debug)]
pub struct Conn<T> {
    pub peer: SocketAddr,
    pub last_active: Instant,
    /// Bytes the kernel refused (EAGAIN), sent before anything newer.
    pub pending: Vec<u8>,
    /// A retry of `pending` is scheduled.
    pub retrying: bool,
    /// Set when fsroute decided to close it (the reader then ends it, counted by this reason);
    /// nothing more is sent on it.
    pub closing: Option<Closed>,
    pub io: T,
}

/// Why a connection was closed, for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed it, or it failed.
    Peer,
    /// Nothing arrived within the idle timeout.
    Idle,
    /// It could not be framed (garbage, no Content-Length).
    Framing,
    /// A message above the maximum size.
    TooLarge,
    /// The peer did not read what fsroute sent.
    Stuck,
    /// TLS failed: a handshake that failed (no or a bad certificate, garbage instead of a
    /// ClientHello), a bad record, or an alert from the peer.
    Tls,
}

impl Closed {
    pub const ALL: [Closed; 6] = [Closed::Peer, Closed::Idle, Closed::Framing, Closed::TooLarge, Closed::Stuck, Closed::Tls];

    /// Stable labels for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Closed::Peer => "peer",
            Closed::Idle => "idle",
            Closed::Framing => "framing",
            Closed::TooLarge => "too_large",
            Closed::Stuck => "stuck",
            Closed::Tls => "tls",
        }
    }
}

/// One shard's connections, by serial number. Only the owning shard touches it.
#[derive(Debug)]
pub struct ConnTable<T> {
    shard: usize,
    next: u64,
    conns: HashMap<u64, Conn<T>>,
}

impl<T> ConnTable<T> {
    pub fn new(shard: usize) -> ConnTable<T> {
        ConnTable { shard, next: 1, conns: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Registers a new connection to or from `peer`, over TCP or TLS.
    pub fn open(&mut self, peer: SocketAddr, transport: Transport, now: Instant, io: T) -> ConnId {
        let id = ConnId::with_transport(self.shard, self.next, transport);
        self.next += 1;
        self.conns.insert(id.to_bits(), Conn { peer, last_active: now, pending: Vec::new(), retrying: false, closing: None, io });
        id
    }

    /// The connection `id`, when this shard owns it and it is still open.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn<T>> {
        if id.shard() != self.shard {
            return None;
        }
        self.conns.get_mut(&id.to_bits())
    }

    pub fn close(&mut self, id: ConnId) -> Option<Conn<T>> {
        self.conns.remove(&id.to_bits())
    }

    /// Marks traffic on `id`: its idle clock starts again.
    pub fn touch(&mut self, id: ConnId, now: Instant) {
        if let Some(c) = self.get_mut(id) {
            c.last_active = now;
        }
    }

    /// The connections silent for `idle` or longer, not already closing.
    pub fn idle(&self, now: Instant, idle: Duration) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.closing.is_none() && now.saturating_duration_since(c.last_active) >= idle)
            .filter_map(|(&k, _)| ConnId::from_bits(k))
            .collect()
    }

    /// Queues `data` behind what is pending; false (and nothing queued) when that would pass
    /// [`MAX_PENDING_OUTPUT`]: the connection must be closed.
    pub fn queue(&mut self, id: ConnId, data: &[u8]) -> bool {
        match self.get_mut(id) {
            Some(c) if c.pending.len() + data.len() <= MAX_PENDING_OUTPUT => {
                c.pending.extend_from_slice(data);
                true
            }
            _ => false,
        }
    }

}

/// Connections per source address over all shards: taken at accept, given back at close, never
/// on a message's path (the one lock of the stream code, held for a map lookup).
#[derive(Debug, Default)]
pub struct SourceLimit {
    max: usize,
    counts: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl SourceLimit {
    pub fn new(max: usize) -> SourceLimit {
        SourceLimit { max, counts: Default::default() }
    }

    /// Takes one connection for `ip`; false when it already has `max`.
    pub fn take(&self, ip: std::net::IpAddr) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn give_back(&self, ip: std::net::IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn a_conn_id_names_its_owner_shard_and_survives_a_branch() {
        let id = ConnId::new(3, 77);
        assert_eq!(id.shard(), 3);
        assert_eq!(ConnId::from_bits(id.to_bits()), Some(id));
        assert_eq!(ConnId::from_bits(0), None);
        assert_ne!(ConnId::new(2, 77), id);
        assert_eq!(id.transport(), Transport::Tcp);
    }

    #[test]
    fn a_tls_conn_id_says_so_and_keeps_its_shard_and_serial_apart() {
        let tls = ConnId::with_transport(0xffff, u64::MAX, Transport::Tls);
        assert_eq!(tls.shard(), 0xffff);
        assert_eq!(tls.transport(), Transport::Tls);
        assert_ne!(tls, ConnId::with_transport(0xffff, u64::MAX, Transport::Tcp));
        assert_eq!(ConnId::from_bits(tls.to_bits()).map(ConnId::transport), Some(Transport::Tls));
    }

    #[test]
    fn ids_are_never_reused_and_a_closed_connection_is_gone() {
        let now = Instant::now();
        let mut t: ConnTable<()> = ConnTable::new(1);
        let a = t.open(peer(1), Transport::Tcp, now, ());
        assert!(t.close(a).is_some());
        let b = t.open(peer(1), Transport::Tcp, now, ());
        assert_ne!(a, b);
        assert!(t.get_mut(a).is_none(), "a stale id finds nothing");
        assert_eq!(t.get_mut(b).map(|c| c.peer), Some(peer(1)));
        assert!(t.get_mut(ConnId::new(0, 2)).is_none(), "another shard's id is not ours");
    }

    #[test]
    fn silent_connections_are_idle_and_traffic_restarts_the_clock() {
        let t0 = Instant::now();
        let mut t: ConnTable<()> = ConnTable::new(0);
        let a = t.open(peer(1), Transport::Tcp, t0, ());
        let b = t.open(peer(2), Transport::Tcp, t0, ());
        t.touch(b, t0 + Duration::from_secs(50));
        assert_eq!(t.idle(t0 + Duration::from_secs(60), Duration::from_secs(60)), [a]);
    }

    #[test]
    fn pending_output_is_bounded() {
        let mut t: ConnTable<()> = ConnTable::new(0);
        let a = t.open(peer(1), Transport::Tcp, Instant::now(), ());
        assert!(t.queue(a, &vec![0; MAX_PENDING_OUTPUT - 1]));
        assert!(!t.queue(a, b"xx"), "past the bound the connection must go");
        assert_eq!(t.get_mut(a).map(|c| c.pending.len()), Some(MAX_PENDING_OUTPUT - 1));
    }

    #[test]
    fn the_source_limit_counts_over_all_shards_and_frees_on_close() {
        let l = SourceLimit::new(2);
        let ip = peer(1).ip();
        assert!(l.take(ip) && l.take(ip));
        assert!(!l.take(ip), "a third connection from one source is refused");
        l.give_back(ip);
        assert!(l.take(ip));
    }
}
