//! Per-shard call memory: the little state a stateless proxy needs so that every later message of a
//! call reaches the INVITE's destination whatever the algorithm and whatever weights did since.
//! Transactions (Call-ID + CSeq number + caller's branch -> destination) serve INVITE
//! retransmissions, CANCEL and non-2xx ACK; dialogs (Call-ID -> destination) serve in-dialog
//! requests from UAs that ignore Record-Route. Keys are 64-bit hashes, so inserting allocates nothing
//! once the maps have grown; expiry runs from FIFO queues, one per lifetime, in O(1) amortised.
//! Both are bounded: the maps by `MemoryLimits` (a full map refuses new keys, counted in
//! `not_remembered`), the queues by compaction to at most 2 records per entry plus `SLACK`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::lb::Reservation;
use crate::table::MemoryLimits;

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
    /// A final response has passed: the transaction is only remembered for retransmissions now,
    /// and a graceful stop no longer waits for it.
    pub answered: bool,
    /// Scratch for `CallMemory::compact`: this entry's current record was already kept.
    kept: bool,
}

/// A call as the dialog memory knows it.
#[derive(Debug)]
pub struct DialogEntry {
    pub dest: SocketAddr,
    /// Where the INVITE came from: the only peer besides `dest` whose messages may steer or end the
    /// call (docs/SECURITY.md, "Relay policy").
    pub caller: SocketAddr,
    pub expires: Instant,
    /// Answered (2xx) and not yet ended by an answered BYE or `max_call_duration`.
    pub established: bool,
    /// When an established call's units go back if no BYE has ended it.
    pub release_at: Option<Instant>,
    /// The load_balancer units the call holds; dropped (released) when the call ends.
    pub reservation: Option<Reservation>,
    /// Scratch for `CallMemory::compact`: this entry's current record was already kept.
    kept: bool,
    /// The stream connection the INVITE came on: requests towards the caller reuse it (RFC 5923).
    pub caller_conn: Option<crate::conn::ConnId>,
}

/// What the router may look at of a remembered dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialogView {
    pub dest: SocketAddr,
    pub caller: SocketAddr,
    /// Answered (2xx) and not yet ended.
    pub established: bool,
    pub caller_conn: Option<crate::conn::ConnId>,
}

impl DialogEntry {
    fn view(&self) -> DialogView {
        DialogView { dest: self.dest, caller: self.caller, established: self.established, caller_conn: self.caller_conn }
    }
}

impl DialogView {
    /// Whether `src` is the call's caller: the IP its INVITE came from (a caller may answer or
    /// send from another port of its address).
    pub fn is_caller(&self, src: SocketAddr) -> bool {
        self.caller.ip() == src.ip()
    }
}

/// Which per-shard map is full, when a new call cannot be remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Transactions,
    Dialogs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Txn,
    Dialog,
    Release,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Txn, Kind::Dialog, Kind::Release];
}

/// Records of one kind a queue may hold beyond twice its map's entries before it is compacted:
/// keeps a small memory from compacting on every push.
pub const SLACK: usize = 1024;

/// Records (expiry or release time, key) in push order.
type Queue = VecDeque<(Instant, u64)>;

/// One FIFO of (expiry, key) per distinct lifetime: entries pushed with the same lifetime expire in
/// push order, so each queue only ever needs its front checked. Re-arming pushes a new record and
/// leaves the old one to be skipped; `CallMemory::bound` compacts, so the queues stay within a
/// constant factor of the maps.
struct Expiry {
    queues: Vec<(Duration, Kind, Queue)>,
    /// Records queued, by kind (`Kind as usize`).
    records: [usize; 3],
}

impl Expiry {
    fn push(&mut self, kind: Kind, ttl: Duration, at: Instant, key: u64) {
        let i = match self.queues.iter().position(|(t, k, _)| *t == ttl && *k == kind) {
            Some(i) => i,
            None => {
                self.queues.push((ttl, kind, VecDeque::with_capacity(SLACK)));
                self.queues.len() - 1
            }
        };
        self.queues[i].2.push_back((at, key));
        self.records[kind as usize] += 1;
    }

    fn records(&self) -> usize {
        self.records.iter().sum()
    }
}

pub struct CallMemory {
    txns: Map<TxnEntry>,
    dialogs: Map<DialogEntry>,
    expiry: Expiry,
    limits: MemoryLimits,
    established: usize,
    /// Established calls whose units went back at `max_call_duration` (no BYE seen), ever.
    pub timed_out: u64,
    /// New transactions or dialogs a full map refused, ever: the message was still routed, but its
    /// retransmissions and later messages are routed afresh. (New calls are refused earlier, with a
    /// 503 counted as `transactions_full` / `dialogs_full`; this counts what slips past that check:
    /// non-INVITE transactions, and failover dialogs.)
    pub not_remembered: u64,
}

impl CallMemory {
    pub fn new(limits: MemoryLimits) -> Self {
        CallMemory {
            txns: Map::default(),
            dialogs: Map::default(),
            expiry: Expiry { queues: Vec::new(), records: [0; 3] },
            limits,
            established: 0,
            timed_out: 0,
            not_remembered: 0,
        }
    }

    /// Takes the bounds of the current table (a reload may change them; entries already held stay).
    pub fn set_limits(&mut self, limits: MemoryLimits) {
        self.limits = limits;
    }

    pub fn len(&self) -> usize {
        self.txns.len() + self.dialogs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn transactions(&self) -> usize {
        self.txns.len()
    }

    pub fn dialogs(&self) -> usize {
        self.dialogs.len()
    }

    /// Answered calls not yet ended: what a graceful stop waits for.
    pub fn established(&self) -> usize {
        self.established
    }

    /// Expiry records queued: at most `2 * transactions + 4 * dialogs + 3 * SLACK` (see
    /// `CallMemory::bound`), so at most `2 * limits.transactions + 4 * limits.dialogs + 3 * SLACK`.
    pub fn expiry_records(&self) -> usize {
        self.expiry.records()
    }

    /// Whether a new call (an initial INVITE: one transaction and one dialog) can be remembered.
    pub fn room_for_call(&self) -> Result<(), Full> {
        if self.txns.len() >= self.limits.transactions {
            return Err(Full::Transactions);
        }
        if self.dialogs.len() >= self.limits.dialogs {
            return Err(Full::Dialogs);
        }
        Ok(())
    }

    /// INVITE transactions still waiting for a final response (a graceful stop waits for them).
    pub fn pending_invites(&self, now: Instant) -> usize {
        self.txns.values().filter(|t| t.initial_invite && !t.answered && t.expires > now).count()
    }

    pub fn txn(&self, key: u64, now: Instant) -> Option<TxnEntry> {
        self.txns.get(&key).filter(|e| e.expires > now).copied()
    }

    /// The dialog's destination and caller, while it is remembered.
    /// Notes the stream connection a remembered dialog's caller is on.
    pub fn set_caller_conn(&mut self, key: u64, conn: crate::conn::ConnId) {
        if let Some(e) = self.dialogs.get_mut(&key) {
            e.caller_conn = Some(conn);
        }
    }

    pub fn dialog(&self, key: u64, now: Instant) -> Option<DialogView> {
        self.dialogs.get(&key).filter(|e| e.expires > now).map(DialogEntry::view)
    }

    /// Remembers a transaction's destination for `ttl`. False (nothing stored) when the map is full.
    pub fn remember_txn(&mut self, key: u64, dest: SocketAddr, initial_invite: bool, now: Instant, ttl: Duration) -> bool {
        if self.txns.len() >= self.limits.transactions && !self.txns.contains_key(&key) {
            self.not_remembered += 1;
            return false;
        }
        let expires = now + ttl;
        self.txns.insert(key, TxnEntry { dest, expires, initial_invite, answered: false, kept: false });
        self.push(Kind::Txn, ttl, expires, key);
        true
    }

    /// Changes how long a known transaction is kept; unknown keys are ignored.
    pub fn rearm_txn(&mut self, key: u64, now: Instant, ttl: Duration) -> Option<TxnEntry> {
        let e = self.txns.get_mut(&key)?;
        e.expires = now + ttl;
        let copy = *e;
        self.push(Kind::Txn, ttl, copy.expires, key);
        Some(copy)
    }

    /// A final response passed: kept `AFTER_FINAL` for retransmissions, no longer pending.
    pub fn answer_txn(&mut self, key: u64, now: Instant) -> Option<TxnEntry> {
        self.txns.get_mut(&key)?.answered = true;
        self.rearm_txn(key, now, AFTER_FINAL)
    }

    /// Remembers a call while it rings (or moves it to the next failover destination). False when
    /// the dialog map is full and the call is new.
    pub fn start_dialog(&mut self, key: u64, dest: SocketAddr, caller: SocketAddr, now: Instant, ttl: Duration) -> bool {
        let expires = now + ttl;
        if let Some(e) = self.dialogs.get_mut(&key) {
            e.dest = dest;
            e.expires = expires;
        } else {
            if self.dialogs.len() >= self.limits.dialogs {
                self.not_remembered += 1;
                return false;
            }
            self.dialogs.insert(key, DialogEntry { dest, caller, expires, established: false, release_at: None, reservation: None, kept: false, caller_conn: None });
        }
        self.push(Kind::Dialog, ttl, expires, key);
        true
    }

    /// The call was answered: its route is kept for `ttl` (`dialog_memory`), its units (when it has
    /// any: `reservation`, else the ones it already holds) until an answered BYE or `max_call`.
    /// A call that cannot be remembered (its entry is gone) gives its units back at once rather
    /// than leak them.
    pub fn confirm_dialog(&mut self, key: u64, now: Instant, ttl: Duration, max_call: Duration, reservation: Option<Reservation>) {
        let Some(e) = self.dialogs.get_mut(&key) else {
            drop(reservation);
            return;
        };
        if reservation.is_some() {
            e.reservation = reservation;
        }
        e.expires = now + ttl;
        if !e.established {
            e.established = true;
            self.established += 1;
            let at = now + max_call;
            e.release_at = Some(at);
            self.push(Kind::Release, max_call, at, key);
        }
        let at = now + ttl;
        self.push(Kind::Dialog, ttl, at, key);
    }

    /// The call ended (its BYE was answered by `from`, one of its two peers): its units go back,
    /// and its route is kept `AFTER_FINAL` for retransmitted BYEs. False, and nothing changes,
    /// when `from` is neither the call's destination nor its caller (a forged answer).
    pub fn end_dialog(&mut self, key: u64, from: SocketAddr, now: Instant) -> bool {
        let Some(e) = self.dialogs.get_mut(&key) else { return true };
        if from != e.dest && !e.view().is_caller(from) {
            return false;
        }
        drop(e.reservation.take());
        if e.established {
            e.established = false;
            e.release_at = None;
            self.established -= 1;
        }
        e.expires = now + AFTER_FINAL;
        self.push(Kind::Dialog, AFTER_FINAL, now + AFTER_FINAL, key);
        true
    }

    pub fn rearm_dialog(&mut self, key: u64, now: Instant, ttl: Duration) {
        if let Some(e) = self.dialogs.get_mut(&key) {
            e.expires = now + ttl;
            let at = e.expires;
            self.push(Kind::Dialog, ttl, at, key);
        }
    }

    /// Queues an expiry record, then keeps the queues within their bound.
    fn push(&mut self, kind: Kind, ttl: Duration, at: Instant, key: u64) {
        self.expiry.push(kind, ttl, at, key);
        self.bound(kind);
    }

    /// Entries a kind's records can refer to.
    fn live(&self, kind: Kind) -> usize {
        match kind {
            Kind::Txn => self.txns.len(),
            Kind::Dialog | Kind::Release => self.dialogs.len(),
        }
    }

    /// Keeps `records(kind) <= 2 * live(kind) + SLACK`, checked after every push and expiry, so
    /// it holds whenever a method returns. Compaction leaves at most one record per entry, so it
    /// runs only when more than half the records it scans are stale and drops them: each record
    /// is dropped once after being pushed once, and the scan of the map is shorter than the scan of
    /// the queues, so the cost is O(1) amortised per push.
    fn bound(&mut self, kind: Kind) {
        if self.expiry.records[kind as usize] > 2 * self.live(kind) + SLACK {
            self.compact(kind);
        }
    }

    /// Keeps, of the records of `kind`, only the first one that matches its entry's current expiry
    /// (or release) time: the others were re-armed, belong to a key gone since, or repeat the
    /// current one (an entry re-armed to the same instant, or back to the instant of a stale record).
    fn compact(&mut self, kind: Kind) {
        match kind {
            Kind::Txn => self.txns.values_mut().for_each(|e| e.kept = false),
            Kind::Dialog | Kind::Release => self.dialogs.values_mut().for_each(|e| e.kept = false),
        }
        let (txns, dialogs) = (&mut self.txns, &mut self.dialogs);
        let mut records = 0;
        for (_, k, q) in self.expiry.queues.iter_mut().filter(|(_, k, _)| *k == kind) {
            q.retain(|&(at, key)| {
                let kept = match k {
                    Kind::Txn => txns.get_mut(&key).filter(|e| e.expires == at).map(|e| &mut e.kept),
                    Kind::Dialog => dialogs.get_mut(&key).filter(|e| e.expires == at).map(|e| &mut e.kept),
                    Kind::Release => dialogs.get_mut(&key).filter(|e| e.release_at == Some(at)).map(|e| &mut e.kept),
                };
                match kept {
                    Some(kept) if !*kept => {
                        *kept = true;
                        true
                    }
                    _ => false,
                }
            });
            q.shrink_to(q.len().max(SLACK));
            records += q.len();
        }
        self.expiry.records[kind as usize] = records;
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
                self.expiry.records[*kind as usize] -= 1;
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
                            if let Some(e) = self.dialogs.remove(&key) {
                                if e.established {
                                    self.established -= 1;
                                }
                            }
                        }
                    }
                    Kind::Release => {
                        if let Some(e) = self.dialogs.get_mut(&key).filter(|e| e.release_at.is_some_and(|r| r <= now)) {
                            // No BYE in max_call_duration: the call is taken as over (its route is
                            // still remembered until dialog_memory).
                            e.release_at = None;
                            if e.established {
                                e.established = false;
                                self.established -= 1;
                                self.timed_out += 1;
                            }
                            drop(e.reservation.take());
                        }
                    }
                }
            }
        }
        // Removals shrink `live`; a re-armed entry's stale records may still be far from due.
        for kind in Kind::ALL {
            self.bound(kind);
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
        let mut m = CallMemory::new(limits(1000));
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
        let mut m = CallMemory::new(limits(1000));
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

    /// docs/SECURITY.md sizes the default limits from these (plus the map's control byte and
    /// load factor): a change that grows an entry must update that table.
    #[test]
    fn entry_sizes_stay_within_the_documented_budget() {
        let txn = std::mem::size_of::<(u64, TxnEntry)>();
        let dialog = std::mem::size_of::<(u64, DialogEntry)>();
        let record = std::mem::size_of::<(Instant, u64)>();
        let fork = crate::router::failover::ENTRY_SIZE;
        eprintln!("sizes: transaction {txn} B, dialog {dialog} B, record {record} B, fork {fork} B");
        // 648: the stored INVITE's reply hop names the caller's stream connection (8 B).
        assert!(fork <= 648, "fork entry: {fork} B");
        assert!(txn <= 64, "transaction entry: {txn} B");
        assert!(dialog <= 224, "dialog entry: {dialog} B");
        assert!(record <= 24, "expiry record: {record} B");
    }

    fn limits(n: usize) -> MemoryLimits {
        MemoryLimits { transactions: n, dialogs: n, ..MemoryLimits::default() }
    }

    #[test]
    fn the_maps_never_grow_past_their_limits_and_say_which_is_full() {
        let t0 = Instant::now();
        let mut m = CallMemory::new(MemoryLimits { transactions: 3, dialogs: 2, ..MemoryLimits::default() });
        let stored = (0..5).filter(|&k| m.start_dialog(k, addr(1), addr(2), t0, Duration::from_secs(10))).count();
        assert_eq!((stored, m.dialogs()), (2, 2));
        assert_eq!(m.room_for_call(), Err(Full::Dialogs));
        let stored = (0..5).filter(|&k| m.remember_txn(k, addr(1), true, t0, Duration::from_secs(10))).count();
        assert_eq!((stored, m.transactions()), (3, 3));
        assert_eq!(m.room_for_call(), Err(Full::Transactions));
        // A known key is still updated when full.
        assert!(m.start_dialog(0, addr(3), addr(2), t0, Duration::from_secs(10)));
        assert_eq!(m.dialog(0, t0).unwrap().dest, addr(3));
    }

    /// The bound `CallMemory::bound` keeps, per kind, and the running counts agreeing with the
    /// queues.
    fn assert_bounded(m: &CallMemory) {
        for kind in Kind::ALL {
            let queued: usize = m.expiry.queues.iter().filter(|(_, k, _)| *k == kind).map(|(_, _, q)| q.len()).sum();
            assert_eq!(queued, m.expiry.records[kind as usize], "{kind:?} count");
            assert!(queued <= 2 * m.live(kind) + SLACK, "{kind:?}: {queued} records for {} entries", m.live(kind));
        }
        assert!(m.expiry_records() <= 2 * m.transactions() + 4 * m.dialogs() + 3 * SLACK);
    }

    /// After a compaction every entry has exactly its one current record left (none lost: each
    /// entry still expires), Release records only for calls with a release time.
    fn assert_compacts_to_one_record_per_entry(m: &mut CallMemory) {
        for kind in Kind::ALL {
            m.compact(kind);
        }
        assert_eq!(m.expiry.records[Kind::Txn as usize], m.transactions());
        assert_eq!(m.expiry.records[Kind::Dialog as usize], m.dialogs());
        assert_eq!(m.expiry.records[Kind::Release as usize], m.dialogs.values().filter(|e| e.release_at.is_some()).count());
    }

    #[test]
    fn rearming_many_times_keeps_the_expiry_queues_bounded() {
        let t0 = Instant::now();
        let mut m = CallMemory::new(limits(1000));
        m.remember_txn(1, addr(1), true, t0, Duration::from_secs(190));
        m.start_dialog(1, addr(1), addr(2), t0, Duration::from_secs(190));
        // A long ring with a provisional every few ms pushes a record each time.
        for i in 0..100_000u64 {
            m.rearm_txn(1, t0 + Duration::from_millis(i), Duration::from_secs(190));
            m.rearm_dialog(1, t0 + Duration::from_millis(i), Duration::from_secs(190));
            assert_bounded(&m);
        }
        assert!(m.expiry.records[Kind::Txn as usize] <= 2 + SLACK);
        assert!(m.txn(1, t0 + Duration::from_secs(200)).is_some());
        assert_compacts_to_one_record_per_entry(&mut m);
        m.expire(t0 + Duration::from_secs(291));
        assert!(m.is_empty());
        assert_eq!(m.expiry_records(), 0);
    }

    #[test]
    fn rearming_to_the_same_instant_does_not_pile_up_records() {
        // Every record matches the entry's expiry: only the duplicate check can drop them.
        let t0 = Instant::now();
        let mut m = CallMemory::new(limits(1000));
        m.remember_txn(1, addr(1), true, t0, Duration::from_secs(190));
        for _ in 0..10_000 {
            m.rearm_txn(1, t0, Duration::from_secs(190));
            // Back and forth between two lifetimes that end at the same instant.
            m.rearm_txn(1, t0 + Duration::from_secs(158), AFTER_FINAL);
            assert_bounded(&m);
        }
        assert_compacts_to_one_record_per_entry(&mut m);
        m.expire(t0 + Duration::from_secs(189));
        assert!(m.txn(1, t0 + Duration::from_secs(189)).is_some());
        m.expire(t0 + Duration::from_secs(190));
        assert!(m.is_empty());
    }

    #[test]
    fn a_flood_of_new_calls_and_rearms_keeps_records_bounded_and_counts_what_a_full_map_refused() {
        let t0 = Instant::now();
        let cap = 5_000;
        let mut m = CallMemory::new(limits(cap));
        let mut refused = 0u64;
        let mut most = 0;
        // 1 ms apart with 190 s lifetimes: the maps fill after 5 s and stay full.
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_millis(i);
            let ttl = Duration::from_secs(190);
            refused += u64::from(!m.remember_txn(i, addr(1), true, now, ttl));
            refused += u64::from(!m.start_dialog(i, addr(1), addr(2), now, ttl));
            // Earlier calls ring, get answered, some hang up: every re-arm and release kind.
            let k = i.wrapping_sub(7);
            m.rearm_txn(k, now, ttl);
            m.rearm_dialog(k, now, ttl);
            if i % 3 == 0 {
                m.answer_txn(k, now);
                m.confirm_dialog(k, now, Duration::from_secs(3600), Duration::from_secs(600), None);
            }
            if i % 5 == 0 {
                m.end_dialog(i.wrapping_sub(11), addr(1), now);
            }
            if i % 100 == 0 {
                m.expire(now);
            }
            assert_bounded(&m);
            most = most.max(m.expiry_records());
        }
        assert!(m.transactions() <= cap && m.dialogs() <= cap);
        assert!(refused > 90_000, "{refused}");
        assert_eq!(m.not_remembered, refused);
        assert!(most <= 2 * cap + 4 * cap + 3 * SLACK, "{most} records");
        eprintln!("flood: at most {most} expiry records for {cap} + {cap} entries");
        assert_compacts_to_one_record_per_entry(&mut m);
        m.expire(t0 + Duration::from_secs(100_000));
        assert!(m.is_empty());
        assert_eq!(m.expiry_records(), 0);
    }

    #[test]
    fn an_answered_invite_is_not_pending_and_an_established_call_is_counted_until_its_bye() {
        let t0 = Instant::now();
        let mut m = CallMemory::new(limits(1000));
        m.remember_txn(1, addr(5071), true, t0, Duration::from_secs(190));
        m.start_dialog(9, addr(5071), addr(7), t0, Duration::from_secs(190));
        assert_eq!(m.pending_invites(t0), 1);
        m.answer_txn(1, t0);
        m.confirm_dialog(9, t0, Duration::from_secs(3600), Duration::from_secs(600), None);
        assert_eq!((m.pending_invites(t0), m.established()), (0, 1));
        assert!(m.end_dialog(9, addr(5071), t0 + Duration::from_secs(5)));
        assert_eq!(m.established(), 0);
    }

    #[test]
    fn a_bye_answer_from_a_stranger_does_not_end_the_call() {
        let t0 = Instant::now();
        let mut m = CallMemory::new(limits(1000));
        m.start_dialog(9, addr(5071), addr(7), t0, Duration::from_secs(190));
        m.confirm_dialog(9, t0, Duration::from_secs(3600), Duration::from_secs(600), None);
        let stranger: SocketAddr = "127.0.0.99:5071".parse().unwrap();
        assert!(!m.end_dialog(9, stranger, t0));
        assert_eq!(m.established(), 1);
        // The caller may answer from another port of its address.
        assert!(m.end_dialog(9, addr(40000), t0));
    }

    #[test]
    fn a_call_without_bye_is_over_at_max_call_duration_but_its_route_is_kept() {
        let t0 = Instant::now();
        let mut m = CallMemory::new(limits(1000));
        m.start_dialog(9, addr(5071), addr(7), t0, Duration::from_secs(190));
        m.confirm_dialog(9, t0, Duration::from_secs(3600), Duration::from_secs(600), None);
        m.expire(t0 + Duration::from_secs(599));
        assert_eq!((m.established(), m.timed_out), (1, 0));
        m.expire(t0 + Duration::from_secs(601));
        assert_eq!((m.established(), m.timed_out), (0, 1));
        assert_eq!(m.dialog(9, t0 + Duration::from_secs(601)).unwrap().dest, addr(5071));
        m.expire(t0 + Duration::from_secs(3601));
        assert!(m.is_empty());
    }
}
