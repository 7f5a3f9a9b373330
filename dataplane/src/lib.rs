//! fsroute's data plane: everything a SIP datagram touches between the socket and the wire. The
//! shard shell (`shard`) runs one glommio executor per core, each with its own UDP sockets in one
//! SO_REUSEPORT group (`socket`), and hands a datagram to the shard that owns its Call-ID. Each
//! shard runs the sans-IO router (`router`): it scans the datagram with the zero-copy scanner
//! (`sip`) and forwards it statelessly with a little per-shard call memory, or, for an INVITE on a
//! failover route, as a failover transaction, writing the message out in one pass. Destinations
//! come from the dispatcher algorithms (`dispatch`) and the load_balancer (`lb`), tried in one way
//! (`candidates`) and admitted against each FreeSWITCH box's live gate (`admission`); all of it is
//! read from the immutable routing table (`table`) that the control plane builds and swaps into one
//! `ArcSwap`. Per-shard counters are in `stats`, the fixed-seed hash for ownership, keys and
//! branches in `hash`. A copy of every SIP datagram can go to a HEP collector (`capture`, encoded by
//! `hep`), after the batch it belongs to has been sent. Nothing on the fast path blocks or takes a lock. Stream connections (`conn`,
//! `framing`) may be TLS (`tls`: a rustls session between the socket and the framer). The map:
//! docs/ARCHITECTURE.md.

pub mod admission;
pub mod batch;
pub mod candidates;
pub mod conn;
pub mod capture;
pub mod dispatch;
pub mod framing;
pub mod hash;
pub mod hep;
pub mod lb;
pub mod router;
pub mod shard;
pub mod sip;
pub mod socket;
pub mod stats;
pub mod table;
pub mod tls;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
