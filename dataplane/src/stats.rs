//! Per-shard counters. Each shard writes only its own block (cache-line aligned so two cores never
//! share a line); the control plane reads all of them for `/status` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a datagram was not forwarded or answered. Stable labels for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Could not be scanned, and no usable Via to answer a request.
    Malformed,
    /// CRLF keepalive (RFC 5626): counted, never answered.
    Keepalive,
    /// A response missing a mandatory header or carrying a defect.
    BadResponse,
    /// A response whose top Via is not fsroute's.
    NotOurVia,
    /// A response with no Via left after removing fsroute's.
    NoNextVia,
    /// A next hop named by a host name that fsroute does not resolve on the fast path.
    Unresolvable,
    /// An ACK fsroute cannot place (ACKs are never answered).
    UnroutableAck,
    /// The owning shard's hand-off queue was full.
    HandoffFull,
    /// The kernel refused to send.
    SendError,
    /// A request whose Max-Forwards ran out and that must not be answered (ACK).
    TooManyHops,
    /// A response whose branch looks like fsroute's but whose MAC does not match the address it
    /// would be relayed to: forged, or from an instance with another `branch_secret`.
    ForgedResponse,
    /// An ACK (never answered) that the relay policy does not let through.
    RelayDenied,
    /// A 2xx to an INVITE on a branch no INVITE of that call went out with, while the call is
    /// still being failed over: only the failover's own attempts may answer it.
    StrayAnswer,
    /// An ACK (never answered) whose next hop is fsroute itself: the 482 a request gets would
    /// be an answer.
    Loop,
    /// A message that must leave on a stream connection that has closed since its request came.
    ConnectionGone,
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        DropReason::Malformed,
        DropReason::Keepalive,
        DropReason::BadResponse,
        DropReason::NotOurVia,
        DropReason::NoNextVia,
        DropReason::Unresolvable,
        DropReason::UnroutableAck,
        DropReason::HandoffFull,
        DropReason::SendError,
        DropReason::TooManyHops,
        DropReason::ForgedResponse,
        DropReason::RelayDenied,
        DropReason::StrayAnswer,
        DropReason::Loop,
        DropReason::ConnectionGone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Keepalive => "keepalive",
            DropReason::BadResponse => "bad_response",
            DropReason::NotOurVia => "not_our_via",
            DropReason::NoNextVia => "no_next_via",
            DropReason::Unresolvable => "unresolvable",
            DropReason::UnroutableAck => "unroutable_ack",
            DropReason::HandoffFull => "handoff_full",
            DropReason::SendError => "send_error",
            DropReason::TooManyHops => "too_many_hops",
            DropReason::ForgedResponse => "forged_response",
            DropReason::StrayAnswer => "stray_answer",
            DropReason::RelayDenied => "relay_denied",
            DropReason::Loop => "loop",
            DropReason::ConnectionGone => "connection_gone",
        }
    }
}

/// Why fsroute answered a request itself instead of forwarding it, for the refusals an operator
/// must see (docs/SECURITY.md). Stable labels for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Refusal {
    /// 403: an in-dialog request from a stranger towards an address fsroute does not serve.
    RelayDenied,
    /// 482: the next hop is fsroute itself.
    Loop,
    /// 503: the shard's transaction memory is full.
    TransactionsFull,
    /// 503: the shard's dialog memory is full.
    DialogsFull,
    /// 503: the shard's failover transactions (count or stored bytes) are at their limit.
    ForksFull,
    /// 503: stopping.
    Draining,
}

impl Refusal {
    pub const ALL: [Refusal; 6] =
        [Refusal::RelayDenied, Refusal::Loop, Refusal::TransactionsFull, Refusal::DialogsFull, Refusal::ForksFull, Refusal::Draining];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::RelayDenied => "relay_denied",
            Refusal::Loop => "loop",
            Refusal::TransactionsFull => "transactions_full",
            Refusal::DialogsFull => "dialogs_full",
            Refusal::ForksFull => "forks_full",
            Refusal::Draining => "draining",
        }
    }
}

#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// Datagrams read from this shard's socket.
    pub received: AtomicU64,
    /// Messages this shard routed and sent, whichever shard received them.
    pub processed: AtomicU64,
    /// Replies fsroute generated itself (400, 404, 483, 503, 200 to OPTIONS...).
    pub replied: AtomicU64,
    /// Datagrams handed to the shard that owns their Call-ID.
    pub handed_off: AtomicU64,
    /// Sends the kernel refused with EAGAIN (the datagrams stayed queued and left later).
    pub send_blocked: AtomicU64,
    /// Calls-state entries currently held (transactions + dialogs).
    pub memory_entries: AtomicU64,
    /// INVITEs without a final response, published while draining.
    pub pending_invites: AtomicU64,
    /// Calls moved to another destination after a failure or silence.
    pub failovers: AtomicU64,
    /// Messages a stateful transaction consumed (the caller's ACK for a failure fsroute passed on,
    /// 100 Trying from a destination, responses to fsroute's own ACK/CANCEL...).
    pub absorbed: AtomicU64,
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Gauges of the call state this shard holds, published every tick.
    pub transactions: AtomicU64,
    pub dialogs: AtomicU64,
    /// Answered calls not yet ended (a graceful stop waits for them).
    pub established: AtomicU64,
    pub forks: AtomicU64,
    pub fork_bytes: AtomicU64,
    /// Answered calls that saw no BYE within `max_call_duration` (their units went back), ever.
    pub calls_timed_out: AtomicU64,
    /// New transactions or dialogs a full call-memory map refused (the message was still routed), ever.
    pub memory_full: AtomicU64,
    /// Expiry records queued for the call memory (bounded by 2 × transactions + 4 × dialogs + 3,072).
    pub expiry_records: AtomicU64,
    /// TCP: messages framed off this shard's connections, messages written to them, keep-alive
    /// pings answered, connections accepted and refused (per-source limit), and closed by reason.
    pub tcp_received: AtomicU64,
    pub tcp_sent: AtomicU64,
    pub tcp_keepalives: AtomicU64,
    pub tcp_accepted: AtomicU64,
    pub tcp_refused: AtomicU64,
    /// Connections to `;transport=tcp` destinations opened, and attempts that failed (refused or
    /// timed out; reported to the failover of the calls waiting on them).
    pub tcp_connected: AtomicU64,
    pub tcp_connect_failed: AtomicU64,
    /// Requests for UDP destinations above `udp_max_message` sent over TCP instead (RFC 3261
    /// §18.1.1), and of those the ones sent over UDP after all: the destination refused the
    /// connection (docs/TCP.md §6).
    pub udp_to_tcp: AtomicU64,
    pub udp_to_tcp_fallback: AtomicU64,
    pub tcp_closed: [AtomicU64; crate::conn::Closed::ALL.len()],
    /// Gauge: TCP connections this shard owns now.
    pub tcp_connections: AtomicU64,
    /// TLS (docs/TCP.md, "TLS"): handshakes completed, and TLS connections that ended before
    /// theirs did (a failed handshake, an alert, garbage, a peer that left or went idle).
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failed: AtomicU64,
    /// Gauge: the connections of `tcp_connections` that are TLS.
    pub tls_connections: AtomicU64,
    /// HEP packets the capture socket handed to the kernel (docs/CAPTURE.md).
    pub capture_sent: AtomicU64,
    /// Captures lost: the ring full, a datagram too large for HEP, the collector refusing
    /// (ICMP unreachable), or left waiting when capture was turned off or moved.
    pub capture_dropped: AtomicU64,
}

impl ShardStats {
    #[inline]
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn drop_reason(&self, r: DropReason) {
        self.dropped[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn refusal(&self, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }
    pub fn set(c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped[r as usize].load(Ordering::Relaxed)
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
