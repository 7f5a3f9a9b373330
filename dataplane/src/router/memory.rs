//! Per-shard call memory: the little state a stateless proxy needs so that every later message of a
//! call reaches the INVITE's destination whatever the algorithm and whatever weights did since.
//! Transactions (Call-ID + CSeq number + caller's branch -> destination) serve INVITE
//! retransmissions, CANCEL and non-2xx ACK; dialogs (Call-ID -> destination) serve in-dialog
//! requests from UAs that ignore Record-Route. Keys are 64-bit hashes, so inserting allocates nothing
//! once the maps have grown; expiry runs from FIFO queues, one per lifetime, in O(1) amortised.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::lb::Reservation;

/// Keys are already well-mixed 64-bit hashes: hashing them again would only cost time.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// How long a transaction's destination is kept after its final response (64*T1, Timer B/F).
pub const AFTER_FINAL: Duration = Duration::from_secs(32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnEntry {
    pub dest: SocketAddr,
    pub expires: Instant,
    /// An initial (out-of-dialog) INVITE: its failure ends the dialog memory too.
    pub initial_invite: bool,
}

#[derive(Debug)]
pub struct DialogEntry {
    pub dest: SocketAddr,
    pub expires: Instant,
    /// The load_balancer units the call holds; dropped (released) when the entry goes.
    pub reservation: Option<Reservation>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Txn,
    Dialog,
}

/// One FIFO of (expiry, key) per distinct lifetime: entries pushed with the same lifetime expire in
/// push order, so each queue only ever needs its front checked.
struct Expiry {
    queues: Vec<(Duration, Kind, VecDeque<(Instant, u64)>)>,
}

impl Expiry {
    fn push(&mut self, kind: Kind, ttl: Duration, at: Instant, key: u64) {
        let q = match self.queues.iter_mut().position(|(t, k, _)| *t == ttl && *k == kind) {
            Some(i) => &mut self.queues[i].2,
            None => {
                self.queues.push((ttl, kind, VecDeque::with_capacity(1024)));
                &mut self.queues.last_mut().expect("just pushed").2
            }
        };
        q.push_back((at, key));
    }
}

pub struct CallMemory {
    txns: Map<TxnEntry>,
    dialogs: Map<DialogEntry>,
    expiry: Expiry,
    /// Upper bound per map, so a flood of INVITEs cannot exhaust memory; past it calls are still
    /// routed, only not remembered.
    pub capacity: usize,
}

impl CallMemory {
    pub fn new(capacity: usize) -> Self {
        CallMemory {
            txns: Map::default(),
            dialogs: Map::default(),
            expiry: Expiry { queues: Vec::new() },
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.txns.len() + self.dialogs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Transactions still waiting for a final response (used to finish a graceful stop).
    pub fn pending_invites(&self, now: Instant) -> usize {
        self.txns.values().filter(|t| t.initial_invite && t.expires > now).count()
    }

    pub fn txn(&self, key: u64, now: Instant) -> Option<TxnEntry> {
        self.txns.get(&key).filter(|e| e.expires > now).copied()
    }

    /// Where the dialog's requests go, while it is remembered.
    pub fn dialog(&self, key: u64, now: Instant) -> Option<SocketAddr> {
        self.dialogs.get(&key).filter(|e| e.expires > now).map(|e| e.dest)
    }

    /// Remembers (or re-arms) a transaction's destination for `ttl`.
    pub fn remember_txn(&mut self, key: u64, dest: SocketAddr, initial_invite: bool, now: Instant, ttl: Duration) {
        if self.txns.len() >= self.capacity && !self.txns.contains_key(&key) {
            return;
        }
        let expires = now + ttl;
        self.txns.insert(key, TxnEntry { dest, expires, initial_invite });
        self.expiry.push(Kind::Txn, ttl, expires, key);
    }

    /// Changes how long a known transaction is kept; unknown keys are ignored.
    pub fn rearm_txn(&mut self, key: u64, now: Instant, ttl: Duration) -> Option<TxnEntry> {
        let e = self.txns.get_mut(&key)?;
        e.expires = now + ttl;
        let copy = *e;
        self.expiry.push(Kind::Txn, ttl, copy.expires, key);
        Some(copy)
    }

    pub fn remember_dialog(&mut self, key: u64, dest: SocketAddr, now: Instant, ttl: Duration) {
        self.remember_dialog_with(key, dest, now, ttl, None);
    }

    /// Remembers a dialog that holds load_balancer units until it ends. A call that cannot be
    /// remembered (memory full) gives its units back at once rather than leak them.
    pub fn remember_dialog_with(&mut self, key: u64, dest: SocketAddr, now: Instant, ttl: Duration, reservation: Option<Reservation>) {
        if self.dialogs.len() >= self.capacity && !self.dialogs.contains_key(&key) {
            return;
        }
        let expires = now + ttl;
        let reservation = match self.dialogs.get_mut(&key) {
            Some(old) if reservation.is_none() => old.reservation.take(),
            _ => reservation,
        };
        self.dialogs.insert(key, DialogEntry { dest, expires, reservation });
        self.expiry.push(Kind::Dialog, ttl, expires, key);
    }

    /// The call ended (its BYE was answered): its load_balancer units go back now.
    pub fn release_dialog(&mut self, key: u64) {
        if let Some(e) = self.dialogs.get_mut(&key) {
            drop(e.reservation.take());
        }
    }

    pub fn rearm_dialog(&mut self, key: u64, now: Instant, ttl: Duration) {
        if let Some(e) = self.dialogs.get_mut(&key) {
            e.expires = now + ttl;
            let at = e.expires;
            self.expiry.push(Kind::Dialog, ttl, at, key);
        }
    }

    /// Drops what has expired by `now`. Cheap to call often: it stops at the first live entry of
    /// each queue.
    pub fn expire(&mut self, now: Instant) {
        for (_, kind, q) in &mut self.expiry.queues {
            while let Some(&(at, key)) = q.front() {
                if at > now {
                    break;
                }
                q.pop_front();
                // The entry may have been re-armed since this record was queued; only a record
                // that still matches its expiry removes it.
                match kind {
                    Kind::Txn => {
                        if self.txns.get(&key).is_some_and(|e| e.expires <= now) {
                            self.txns.remove(&key);
                        }
                    }
                    Kind::Dialog => {
                        if self.dialogs.get(&key).is_some_and(|e| e.expires <= now) {
                            self.dialogs.remove(&key);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn a_ringing_call_keeps_its_transaction_until_transaction_memory() {
        let t0 = Instant::now();
        let mut m = CallMemory::new(1000);
        m.remember_txn(1, addr(5071), true, t0, Duration::from_secs(190));
        m.expire(t0 + Duration::from_secs(189));
        assert_eq!(m.txn(1, t0 + Duration::from_secs(189)).unwrap().dest, addr(5071));
        m.expire(t0 + Duration::from_secs(191));
        assert!(m.txn(1, t0 + Duration::from_secs(191)).is_none());
        assert!(m.is_empty());
    }

    #[test]
    fn rearming_outlives_the_first_expiry_record() {
        let t0 = Instant::now();
        let mut m = CallMemory::new(1000);
        m.remember_txn(1, addr(5071), true, t0, Duration::from_secs(190));
        // A 180 at 100 s re-arms Timer C.
        m.rearm_txn(1, t0 + Duration::from_secs(100), Duration::from_secs(190));
        m.expire(t0 + Duration::from_secs(200));
        assert!(m.txn(1, t0 + Duration::from_secs(200)).is_some());
        // Final response at 250 s: kept 32 s more.
        m.rearm_txn(1, t0 + Duration::from_secs(250), AFTER_FINAL);
        m.expire(t0 + Duration::from_secs(281));
        assert!(m.txn(1, t0 + Duration::from_secs(281)).is_some());
        m.expire(t0 + Duration::from_secs(283));
        assert!(m.txn(1, t0 + Duration::from_secs(283)).is_none());
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn capacity_bounds_the_maps() {
        let t0 = Instant::now();
        let mut m = CallMemory::new(2);
        for k in 0..5 {
            m.remember_dialog(k, addr(1), t0, Duration::from_secs(10));
        }
        assert_eq!(m.len(), 2);
    }
}
