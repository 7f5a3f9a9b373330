//! Live per-box admission (docs/ADMISSION.md): the part of "can this FreeSWITCH box take one more
//! call?" that must move with every call, on every shard at once, between two heartbeats. The
//! control plane computes a box's headroom from its heartbeat and publishes it in the routing table
//! as a [`BoxAdmission`]; the counters it is checked against live in a [`BoxGate`] that every shard
//! and every table row naming the box share, and that survives table swaps. Shards admit a call
//! with compare-and-swap: no lock, no allocation, never over the published limit.
//!
//! Three limits meet here. Sessions and CPU arrive as one number, `limit`: the gate's `used` count
//! may grow to it (it is `headroom at the heartbeat + used at the heartbeat`, so each call routed
//! or ended since moves availability by exactly one). The rate limit is a sliding one-second
//! window ([`RateLog`]): FreeSWITCH resets its sessions-per-second budget on its own 1 s tick,
//! whose phase fsroute cannot see, and a sliding window of `sps − 1` starts is the only budget that
//! can never overrun a fixed window of unknown phase. A 503 from the box closes it until its next
//! heartbeat or a short cool-down, whichever comes first.
//!
//! Memory ordering: `used` and the refusal mark publish no other memory and are `Relaxed`, like the
//! load_balancer counters (see `lb`). The rate log's slots are written after the head moves;
//! a reader that finds a slot not yet written treats it as "just now" and refuses, so a race can
//! only make admission stricter, never looser.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How much longer than one second the rate window is: INVITEs that leave fsroute exactly one
/// second apart can reach the box a little closer together (scheduling, network jitter), and the
/// box counts them by arrival.
pub const RATE_WINDOW: Duration = Duration::from_millis(1050);

/// Counters of one FreeSWITCH box that every shard shares. The control plane keeps one per box
/// boot: a restarted box gets a fresh gate, so calls held on the old boot can never release units
/// of the new one.
#[derive(Debug)]
pub struct BoxGate {
    epoch: Instant,
    /// Calls counted against the box's headroom: +1 per call routed there (load_balancer and
    /// dispatcher), −1 when a load_balancer call ends. Dispatcher calls are not followed to their
    /// end, so they stay counted until the next heartbeat re-bases the limit.
    used: AtomicU64,
    /// INVITEs sent to the box, ever (every attempt: FreeSWITCH spends its sps budget on refused
    /// attempts too). The control plane takes deltas of it to tell fsroute's sessions from others'.
    started: AtomicU64,
    /// A 503 from the box: closed until this many ms after `epoch` (0 = open) ...
    refused_until_ms: AtomicU64,
    /// ... unless a heartbeat newer than this one has arrived.
    refused_seq: AtomicU64,
    /// 503s seen from the box.
    refusals: AtomicU64,
    /// Admissions refused by the rate window.
    rate_limited: AtomicU64,
}

impl Default for BoxGate {
    fn default() -> Self {
        BoxGate::new(Instant::now())
    }
}

impl BoxGate {
    pub fn new(epoch: Instant) -> BoxGate {
        BoxGate {
            epoch,
            used: AtomicU64::new(0),
            started: AtomicU64::new(0),
            refused_until_ms: AtomicU64::new(0),
            refused_seq: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Gives back one call (a load_balancer call ended). Never below zero.
    pub fn release(&self) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_sub(1));
    }

    fn take(&self, limit: u64, over_limit: bool) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (over_limit || u < limit).then(|| u.saturating_add(1))
            })
            .is_ok()
    }
}

/// The last `capacity` admission times of one box, as a lock-free ring: admission `h` writes slot
/// `h % capacity` with its lap `h / capacity` and its time, so a reader can tell a slot that is not
/// written yet from one that is.
#[derive(Debug)]
pub struct RateLog {
    head: AtomicU64,
    slots: Box<[AtomicU64]>,
}

const TS_BITS: u32 = 40;
const TS_MASK: u64 = (1 << TS_BITS) - 1;
const LAP_MASK: u64 = (1 << (64 - TS_BITS)) - 1;

fn pack(lap: u64, ts: u64) -> u64 {
    ((lap & LAP_MASK) << TS_BITS) | (ts & TS_MASK)
}

impl RateLog {
    /// A log that can enforce budgets of up to `capacity` starts per window. Empty: a new box's
    /// first second has its whole budget.
    pub fn new(capacity: usize) -> RateLog {
        let capacity = capacity.max(1);
        // Lap 0 is what admission 0..capacity write; an unwritten slot must not look like it.
        let unwritten = pack(LAP_MASK, 0);
        RateLog { head: AtomicU64::new(0), slots: (0..capacity).map(|_| AtomicU64::new(unwritten)).collect() }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Admissions ever made through this log.
    pub fn total(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Takes one start if fewer than `budget` (at most the capacity) were taken in the window
    /// ending at `now_ms`.
    fn try_take(&self, budget: u32, now_ms: u64, window_ms: u64) -> bool {
        let cap = self.slots.len() as u64;
        let n = u64::from(budget).min(cap);
        if n == 0 {
            return false;
        }
        loop {
            let h = self.head.load(Ordering::Acquire);
            if h >= n {
                // The n-th start before this one must have left the window.
                let j = h - n;
                let slot = self.slots[(j % cap) as usize].load(Ordering::Acquire);
                let (lap, ts) = (slot >> TS_BITS, slot & TS_MASK);
                if lap != (j / cap) & LAP_MASK || now_ms < ts.saturating_add(window_ms) {
                    return false;
                }
            }
            if self.head.compare_exchange_weak(h, h + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.slots[(h % cap) as usize].store(pack(h / cap, now_ms), Ordering::Release);
                return true;
            }
        }
    }

    /// Starts in the window ending at `now_ms` (for `/status`; an approximation while shards write).
    pub fn in_window(&self, now_ms: u64, window_ms: u64) -> usize {
        let cap = self.slots.len() as u64;
        let h = self.head.load(Ordering::Acquire);
        (h.saturating_sub(cap)..h)
            .filter(|&j| {
                let slot = self.slots[(j % cap) as usize].load(Ordering::Acquire);
                let (lap, ts) = (slot >> TS_BITS, slot & TS_MASK);
                lap != (j / cap) & LAP_MASK || ts.saturating_add(window_ms) > now_ms
            })
            .count()
    }
}

/// One box's admission as of one routing table: what the control plane computed, and the shared
/// counters it is checked against. Shared by every row that names the box.
#[derive(Debug, Clone)]
pub struct BoxAdmission {
    pub gate: Arc<BoxGate>,
    /// `gate.used` may grow to this many.
    pub limit: u64,
    /// The headroom this limit was computed from (calls), for relative ranking and `/status`.
    pub headroom: u64,
    /// Calls per [`RATE_WINDOW`] and the log that counts them; None = no rate limit known.
    pub rate: Option<(u32, Arc<RateLog>)>,
    /// The heartbeat (or status reading) the numbers came from.
    pub seq: u64,
    /// False while the box drains (shutdown requested, inbound paused) or is stale.
    pub accepting: bool,
}

impl BoxAdmission {
    /// A box that takes nothing.
    pub fn closed(gate: Arc<BoxGate>, seq: u64) -> BoxAdmission {
        let limit = gate.used();
        BoxAdmission { gate, limit, headroom: 0, rate: None, seq, accepting: false }
    }

    /// Whether a 503 from the box still holds it closed.
    pub fn refused(&self, now: Instant) -> bool {
        let g = &self.gate;
        let until = g.refused_until_ms.load(Ordering::Relaxed);
        until != 0 && g.millis(now) < until && g.refused_seq.load(Ordering::Relaxed) == self.seq
    }

    /// Calls the box may still take now by sessions and CPU (0 while closed or refused). The rate
    /// window is a gate, checked by [`BoxAdmission::try_admit`].
    pub fn available(&self, now: Instant) -> u64 {
        if !self.accepting || self.refused(now) {
            return 0;
        }
        self.limit.saturating_sub(self.gate.used())
    }

    /// Whether the rate window has room for one more start now.
    pub fn rate_open(&self, now: Instant) -> bool {
        match &self.rate {
            None => true,
            Some((budget, log)) => {
                let cap = log.capacity() as u64;
                let n = u64::from(*budget).min(cap);
                if n == 0 {
                    return false;
                }
                let h = log.total();
                if h < n {
                    return true;
                }
                let j = h - n;
                let slot = log.slots[(j % cap) as usize].load(Ordering::Acquire);
                let (lap, ts) = (slot >> TS_BITS, slot & TS_MASK);
                lap == (j / cap) & LAP_MASK && self.gate.millis(now) >= ts.saturating_add(window_ms())
            }
        }
    }

    /// Admits one call: takes a unit of headroom and a start of the rate window, or nothing. With
    /// `over_limit` (the load_balancer's `n` flag) the headroom may go negative, the rate may not:
    /// FreeSWITCH refuses an over-rate session whatever fsroute thinks.
    pub fn try_admit(&self, now: Instant, over_limit: bool) -> bool {
        if !self.accepting || self.refused(now) {
            return false;
        }
        if !self.gate.take(self.limit, over_limit) {
            return false;
        }
        if let Some((budget, log)) = &self.rate {
            if !log.try_take(*budget, self.gate.millis(now), window_ms()) {
                self.gate.release();
                self.gate.rate_limited.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        self.gate.started.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The box answered 503 although fsroute thought it had room: closed until its next heartbeat
    /// or `cooldown`, whichever comes first.
    pub fn mark_refused(&self, now: Instant, cooldown: Duration) {
        let g = &self.gate;
        g.refusals.fetch_add(1, Ordering::Relaxed);
        let until = g.millis(now).saturating_add(u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX)).max(1);
        g.refused_seq.store(self.seq, Ordering::Relaxed);
        g.refused_until_ms.store(until, Ordering::Relaxed);
    }

    /// Starts in the current window (for `/status`).
    pub fn rate_used(&self, now: Instant) -> Option<(u32, usize)> {
        self.rate.as_ref().map(|(b, log)| (*b, log.in_window(self.gate.millis(now), window_ms())))
    }
}

fn window_ms() -> u64 {
    RATE_WINDOW.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(limit: u64, rate: Option<u32>) -> BoxAdmission {
        let gate = Arc::new(BoxGate::default());
        BoxAdmission {
            limit,
            headroom: limit,
            rate: rate.map(|r| (r, Arc::new(RateLog::new(r as usize)))),
            seq: 1,
            accepting: true,
            gate,
        }
    }

    #[test]
    fn headroom_admits_exactly_limit_calls_and_each_release_admits_one_more() {
        let b = open(3, None);
        let now = Instant::now();
        assert!((0..3).all(|_| b.try_admit(now, false)));
        assert!(!b.try_admit(now, false));
        assert_eq!(b.available(now), 0);
        b.gate.release();
        assert_eq!(b.available(now), 1);
        assert!(b.try_admit(now, false));
        assert!(b.try_admit(now, true), "the n flag may go over the headroom");
        assert_eq!(b.gate.started(), 5);
    }

    #[test]
    fn rate_window_admits_budget_starts_per_sliding_window_whatever_its_phase() {
        let b = open(1000, Some(4));
        let t0 = b.gate.epoch + Duration::from_secs(10);
        let ms = Duration::from_millis;
        // Four starts spread over 600 ms, then the fifth waits until the first leaves the window.
        for k in 0..4 {
            assert!(b.try_admit(t0 + ms(200 * k), false), "start {k}");
        }
        assert!(!b.try_admit(t0 + ms(700), false));
        assert!(!b.try_admit(t0 + RATE_WINDOW - ms(1), false));
        assert!(b.try_admit(t0 + RATE_WINDOW, false));
        assert!(!b.try_admit(t0 + RATE_WINDOW + ms(100), false), "the second start is still inside");
        assert!(b.try_admit(t0 + RATE_WINDOW + ms(200), false));
        // A refused start gives its headroom unit back.
        assert_eq!(b.gate.used(), 6);
        assert_eq!(b.gate.rate_limited(), 3);
        // Any 1 s window holds at most 4 starts, so no fixed window of any phase sees 5.
        assert_eq!(b.rate_used(t0 + RATE_WINDOW + ms(200)), Some((4, 4)));
    }

    #[test]
    fn a_zero_rate_budget_admits_nothing() {
        let b = open(10, Some(0));
        assert!(!b.try_admit(Instant::now(), false));
        assert_eq!(b.gate.used(), 0);
    }

    #[test]
    fn a_refusal_closes_the_box_until_the_cooldown_or_the_next_heartbeat() {
        let b = open(10, None);
        let now = b.gate.epoch + Duration::from_secs(1);
        b.mark_refused(now, Duration::from_secs(2));
        assert!(!b.try_admit(now + Duration::from_millis(1500), false));
        assert_eq!(b.available(now), 0);
        assert!(b.try_admit(now + Duration::from_secs(2), false), "cool-down over");
        b.mark_refused(now, Duration::from_secs(60));
        let next_heartbeat = BoxAdmission { seq: 2, ..b.clone() };
        assert!(next_heartbeat.try_admit(now, false), "a newer heartbeat reopens it");
        assert_eq!(b.gate.refusals(), 2);
    }

    #[test]
    fn a_closed_box_admits_nothing() {
        let gate = Arc::new(BoxGate::default());
        let b = BoxAdmission::closed(gate, 3);
        assert!(!b.try_admit(Instant::now(), true));
        assert_eq!(b.available(Instant::now()), 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
        /// Real threads admit and end calls on one box at once: at no moment do the calls held exceed
        /// the published limit, the starts never exceed the rate budget, and every end is counted.
        #[test]
        fn shards_racing_for_one_box_never_hold_more_than_its_headroom_nor_start_more_than_its_rate(
            limit in 0u64..64,
            rate in proptest::option::of(0u32..48),
            threads in 2usize..5,
            ends_every in 1usize..6,
        ) {
            let b = Arc::new(open(limit, rate));
            let now = Instant::now();
            let held = Arc::new(AtomicU64::new(0));
            let started: u64 = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| {
                        let (b, held) = (Arc::clone(&b), Arc::clone(&held));
                        s.spawn(move || {
                            let mut mine = 0u64;
                            let mut started = 0u64;
                            for i in 0..300usize {
                                if b.try_admit(now, false) {
                                    started += 1;
                                    mine += 1;
                                    let h = held.fetch_add(1, Ordering::SeqCst) + 1;
                                    assert!(h <= limit, "{h} calls held on a box with room for {limit}");
                                }
                                if i % ends_every == 0 && mine > 0 {
                                    mine -= 1;
                                    held.fetch_sub(1, Ordering::SeqCst);
                                    b.gate.release();
                                }
                            }
                            started
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            if let Some(r) = rate {
                proptest::prop_assert!(started <= u64::from(r), "{started} starts in one window, budget {r}");
            }
            proptest::prop_assert_eq!(b.gate.used(), held.load(Ordering::SeqCst));
            proptest::prop_assert_eq!(b.gate.started(), started);
        }
    }
}
