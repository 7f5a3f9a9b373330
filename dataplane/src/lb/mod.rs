//! load_balancer core (OpenSIPS `load_balancer` + `freeswitch`, done right): groups of destinations that
//! each provide named resources with a capacity, selection by the best minimum availability over the
//! resources a call asks for (OpenSIPS `lb_start` with its `r`, `s`, `n` flags and `lb_next`'s tried mask),
//! and call accounting on shared per-(destination, resource) counters that every shard reserves with
//! compare-and-swap, so two shards never take the last unit twice. The control plane builds the
//! immutable [`LbGroup`]s, carrying each [`Load`] from one table to the next so counts survive reloads;
//! shards select, reserve and release on the fast path without locks and without allocating. Under
//! `capacity_model = "opensips"` capacities from heartbeats are computed in [`capacity`]; under the
//! default headroom model a box-backed resource has no cap of its own and is admitted against the
//! box's gate (`crate::admission`). Randomness comes in as an argument (sans-IO).
//!
//! A call whose end fsroute never sees (its BYE lost) would hold its units until its dialog memory
//! expires, hours later, while the box has long freed its sessions. The control plane therefore
//! reconciles each counter with the box's readings ([`LoadCounter::forgive`]): units the box no
//! longer counts move from `held` to a `forgiven` debt that a late release pays off first, so no
//! unit is ever given back twice.
//!
//! Memory ordering: a [`Load`] publishes no other memory, so its counts need no happens-before edge
//! for admission: what keeps admission exact is that `held` and `forgiven` share one word with a
//! single total modification order, and a read-modify-write (the CAS in `reserve`, the release in
//! `release`, the control plane's [`LoadCounter::forgive`]) always acts on the latest value in that
//! order. Two shards racing for the last unit therefore cannot both succeed, a release can never be
//! lost, and a release racing a write-off cannot pay twice. The one edge that matters is between a
//! reservation's `taken` count and the control plane's write-off, which must see every unit the
//! write-off can take (see [`LoadCounter::forgive`]): a reservation bumps `taken` before it takes its
//! unit with a `Release` CAS, and the write-off's `Acquire` reads of the word then see that bump.
//! Everything else is `Relaxed`. The plain reads in [`select`] are a ranking snapshot only;
//! `reserve` re-checks the limit atomically.

pub mod capacity;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::admission::{BoxAdmission, BoxGate};
use crate::candidates::{is_tried, select_with, Tried};

pub use capacity::{capacity_from_heartbeat, FsCapacity, HUNDRED_PERCENT_MICRO};

/// The live count of fsroute's calls holding one (destination, resource). Shared by every shard and
/// carried by the control plane from one routing table to the next (so it survives reloads).
pub type Load = Arc<LoadCounter>;

/// One (destination, resource)'s units, in two parts kept in one word: `held`, the units that count
/// against capacity, and `forgiven`, units written off because the box's own readings no longer
/// count their calls (see [`LoadCounter::forgive`]). Each outstanding [`Reservation`] owns one unit
/// of `held + forgiven`, and giving one back pays off `forgiven` first.
///
/// Why `held` never drops below the calls really live on the box: `held + forgiven` is the number
/// of outstanding reservations `O`, of which `live` are calls the box still has (or is about to
/// get) and `dead = O − live` are calls that ended unseen, so `held ≥ live` is `forgiven ≤ dead`.
/// A write-off keeps it by taking `held` no lower than what the box counts plus what may still be
/// on its way there ([`LoadCounter::forgive`]'s premise). Every other step keeps it too: a new call
/// adds to `held` and to `live`; a call that ends unseen moves from `live` to `dead`; a release of a
/// dead call takes one from `dead` and, while there is any, one from `forgiven`; a release of a live
/// call takes one from `forgiven` (held stays, live falls) or, with no debt, one from `held` and one
/// from `live`. Paying the debt first is what makes the last case safe: releasing from `held` while
/// debt remains could be a dead call's release taking a live call's unit.
#[derive(Debug, Default)]
pub struct LoadCounter {
    /// `held` in the low 32 bits, `forgiven` in the high 32: one compare-and-swap decides which part a
    /// release pays.
    state: AtomicU64,
    /// Reservations attempted here, ever: [`LoadCounter::forgive`] bounds the calls still on their way
    /// to the box with it.
    taken: AtomicU64,
}

/// What giving a unit back paid off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// A held unit: capacity comes back at once.
    Held,
    /// A written-off unit: the box's readings had already stopped counting the call.
    Forgiven,
    /// Nothing was outstanding (a stray release).
    Nothing,
}

fn split(state: u64) -> (u32, u32) {
    (state as u32, (state >> 32) as u32)
}

fn join(held: u32, forgiven: u32) -> u64 {
    u64::from(held) | (u64::from(forgiven) << 32)
}

impl LoadCounter {
    /// A counter already holding `held` units (a table built by hand, a test).
    pub fn new(held: u32) -> LoadCounter {
        LoadCounter { state: AtomicU64::new(join(held, 0)), taken: AtomicU64::new(u64::from(held)) }
    }

    /// Units that count against capacity now.
    pub fn held(&self) -> u32 {
        split(self.state.load(Ordering::Relaxed)).0
    }

    /// `held`, read with `order` (as `AtomicU32::load` read the counter before it had two parts).
    pub fn load(&self, order: Ordering) -> u32 {
        split(self.state.load(order)).0
    }

    /// Units written off and not yet paid back by a release.
    pub fn forgiven(&self) -> u32 {
        split(self.state.load(Ordering::Relaxed)).1
    }

    /// Reservations attempted here, ever (those refused included).
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Takes one held unit while `held < limit` (no limit: None); false when full or at `u32::MAX`.
    pub fn take(&self, limit: Option<u32>) -> bool {
        // Counted before the unit: every unit a write-off can see is then covered by its in-flight
        // bound (the Release below), and a refused attempt only makes that bound more cautious.
        self.taken.fetch_add(1, Ordering::Relaxed);
        self.state
            .fetch_update(Ordering::Release, Ordering::Relaxed, |s| {
                let (held, forgiven) = split(s);
                if limit.is_some_and(|l| held >= l) {
                    return None;
                }
                Some(join(held.checked_add(1)?, forgiven))
            })
            .is_ok()
    }

    /// Gives one unit back: a forgiven one while there is debt, else a held one; nothing at zero, so
    /// a stray release cannot wrap the counter.
    pub fn give_back(&self) -> Returned {
        let mut paid = Returned::Nothing;
        let _ = self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            let (held, forgiven) = split(s);
            if forgiven > 0 {
                paid = Returned::Forgiven;
                Some(join(held, forgiven - 1))
            } else if held > 0 {
                paid = Returned::Held;
                Some(join(held - 1, forgiven))
            } else {
                paid = Returned::Nothing;
                None
            }
        });
        paid
    }

    /// The control plane's reconciliation: writes off at most `max` held units as calls the box no
    /// longer has, and returns how many it wrote off. `held` never goes below `box_calls` (the calls the
    /// box's reading counts, all sources together) plus every reservation taken here since `taken_at`
    /// (a value of [`LoadCounter::taken`] read earlier).
    ///
    /// The premise that makes this safe (`held` stays at or above the calls really live, see
    /// [`LoadCounter`]): a call reserved before `taken_at` was read is, if it is still live, counted in
    /// the reading. The control plane reads `taken_at` long enough before the reading for the INVITE to
    /// have reached the box and the reading to have come back. Calls reserved since are all excluded,
    /// counted or not, and the count of them is read after the word this write-off changes, so a
    /// reservation racing it is never mistaken for an ended call.
    pub fn forgive(&self, max: u32, box_calls: u32, taken_at: u64) -> u32 {
        let mut done = 0;
        let _ = self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            let (held, forgiven) = split(s);
            // After the Acquire load of `s`: sees the `taken` bump of every unit `s` holds.
            let recent = self.taken.load(Ordering::Relaxed).saturating_sub(taken_at);
            let floor = u64::from(box_calls).saturating_add(recent);
            let x = u64::from(held).saturating_sub(floor).min(u64::from(max)).min(u64::from(u32::MAX - forgiven));
            done = x as u32;
            (done > 0).then(|| join(held - done, forgiven + done))
        });
        done
    }
}

/// The most resources one call may hold: [`Reservation`] keeps its counters in a fixed array so that
/// holding a call costs no allocation. A route asking for more is refused by [`reserve_held`] (the
/// table builder skips such a route and logs why).
pub const MAX_RESOURCES_PER_CALL: usize = 4;

/// The `tried` mask of [`select`] has one bit per destination, so only the first 64 destinations of a
/// group can be excluded by failover; past them, [`select_and_reserve`]'s iteration bound ends the
/// search.
pub const MAX_DESTINATIONS: usize = crate::candidates::TRIED_BITS;

/// One resource of one destination.
#[derive(Debug, Clone)]
pub struct LbResource {
    /// capacity − others, precomputed by the control plane (a static `name=N` value, `initial_capacity`
    /// before a box's first heartbeat, 0 for a stale box, or [`FsCapacity::effective`]): the most calls
    /// fsroute may hold here now.
    pub effective: u32,
    pub load: Load,
    /// For a resource whose capacity is a FreeSWITCH box under the headroom model: the box's live
    /// admission, shared with every other row naming the box. It replaces `effective` as the limit
    /// (which the control plane then sets to `u32::MAX`); `load` still counts this row's calls.
    pub fs: Option<Arc<BoxAdmission>>,
}

impl LbResource {
    /// A resource with a fixed capacity (or one computed by the `opensips` model).
    pub fn fixed(effective: u32, load: Load) -> LbResource {
        LbResource { effective, load, fs: None }
    }

    /// fsroute's calls holding this resource now and counting against it (a snapshot; units written
    /// off by reconciliation are not among them).
    pub fn current(&self) -> u32 {
        self.load.held()
    }
}

#[derive(Debug, Clone)]
pub struct LbDestination {
    pub uri: String,
    pub addr: SocketAddr,
    pub enabled: bool,
    /// Indexed by the group's resource id; None = this destination does not provide it.
    pub resources: Vec<Option<LbResource>>,
}

impl LbDestination {
    pub fn resource(&self, id: usize) -> Option<&LbResource> {
        self.resources.get(id).and_then(Option::as_ref)
    }

    /// Score per OpenSIPS `lb_route`: the minimum availability over `wanted`. None when the destination
    /// lacks one of them, or when `wanted` is empty (a route must ask for at least one resource).
    pub fn score(&self, wanted: &[usize], relative: bool, now: Instant) -> Option<i64> {
        let mut min: Option<i64> = None;
        for &id in wanted {
            let a = availability(self.resource(id)?, relative, now);
            min = Some(min.map_or(a, |m| m.min(a)));
        }
        min
    }
}

#[derive(Debug, Clone)]
pub struct LbGroup {
    pub group_id: i32,
    /// Resource names in id order; a destination's `resources` is indexed by the same ids.
    pub resource_names: Vec<String>,
    pub destinations: Vec<LbDestination>,
}

impl LbGroup {
    /// The id of a resource by its exact (case-sensitive, as OpenSIPS's profile names) name.
    pub fn resource_id(&self, name: &str) -> Option<usize> {
        self.resource_names.iter().position(|n| n == name)
    }
}

/// OpenSIPS `lb_start` flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbFlags {
    /// `r`: rank by relative availability (percent free) instead of absolute free units.
    pub relative: bool,
    /// `s`: break ties between equally good destinations at random instead of by config order.
    pub random_tie: bool,
    /// `n`: a score of zero or below may still be chosen, and reservation may go over `effective`.
    pub allow_negative: bool,
}

impl LbFlags {
    /// Parses an `lb_start` flags string such as `"rs"`. OpenSIPS silently ignores unknown letters;
    /// fsroute rejects them so a typo is caught when the config loads, not in production.
    pub fn parse(s: &str) -> Result<LbFlags, String> {
        let mut f = LbFlags::default();
        for c in s.chars() {
            match c {
                'r' => f.relative = true,
                's' => f.random_tie = true,
                'n' => f.allow_negative = true,
                other => {
                    return Err(format!(
                        "unknown load_balancer flag {other:?} in {s:?} (expected r, s or n)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// Availability of one resource now: absolute `effective − load`, or relative `100 − 100·load/effective`
/// (OpenSIPS's integer division; 0 when effective is 0). Computed in i64, so a resource holding more
/// calls than it may (after a heartbeat lowered `effective`, or under the `n` flag) is negative, never a
/// wrapped 4294967295 (OpenSIPS #3294). Keeping the sign lets `n` rank overloaded boxes by how far over
/// they are; the docs/OPENSIPS.md §7.1 `available = max(0, effective − p)` is [`available`].
pub fn availability(r: &LbResource, relative: bool, now: Instant) -> i64 {
    if let Some(b) = &r.fs {
        // A box closed by its rate window ranks as full: trying it would only cost a round trip.
        let free = if b.rate_open(now) { b.available(now) } else { 0 };
        let free = i64::try_from(free).unwrap_or(i64::MAX);
        return if !relative {
            free
        } else if b.headroom == 0 {
            0
        } else {
            100 * free / i64::try_from(b.headroom).unwrap_or(i64::MAX).max(1)
        };
    }
    let load = i64::from(r.current());
    let effective = i64::from(r.effective);
    if !relative {
        effective - load
    } else if effective == 0 {
        0
    } else {
        100 - 100 * load / effective
    }
}

/// `max(0, effective − load)`: the calls fsroute may still place on this resource (for `/status` and
/// metrics).
pub fn available(r: &LbResource, now: Instant) -> u32 {
    match &r.fs {
        Some(b) => u32::try_from(b.available(now)).unwrap_or(u32::MAX),
        None => r.effective.saturating_sub(r.current()),
    }
}

/// SplitMix64's finaliser: turns (r, tie number) into an independent-looking draw, so one caller-supplied
/// random value drives the whole reservoir sample.
fn mix(r: u64, n: u64) -> u64 {
    let mut z = r.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// OpenSIPS lb_route: among enabled destinations providing ALL `wanted` resources and not in `tried`
/// (bit i = destination i already tried), the highest score wins, score = min over wanted of
/// [`availability`]. The score must be > 0 unless `allow_negative`. Ties go to the first in config
/// order, or with `random_tie` to one chosen uniformly by `r` (reservoir sampling in one pass, so each
/// destination's loads are read once). No allocation, no lock; the result is advisory until
/// [`reserve_held`] succeeds.
pub fn select(
    group: &LbGroup,
    wanted: &[usize],
    flags: LbFlags,
    tried: Tried,
    r: u64,
    now: Instant,
) -> Option<usize> {
    let mut best: Option<(usize, i64)> = None;
    let mut ties = 0u64;
    for (i, d) in group.destinations.iter().enumerate() {
        if !d.enabled || is_tried(tried, i) {
            continue;
        }
        let Some(score) = d.score(wanted, flags.relative, now) else {
            continue;
        };
        if score <= 0 && !flags.allow_negative {
            continue;
        }
        match best {
            Some((_, b)) if score < b => {}
            Some((_, b)) if score == b => {
                ties += 1;
                // Keep the n-th tie with probability 1/n: uniform over all ties at the end.
                if flags.random_tie && mix(r, ties) % ties == 0 {
                    best = Some((i, score));
                }
            }
            _ => {
                best = Some((i, score));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Takes one unit unless the resource is exhausted (or the counter is at `u32::MAX`).
fn take_one(r: &LbResource, allow_negative: bool) -> bool {
    r.load.take((!allow_negative).then_some(r.effective))
}

/// A held call's units, detached from any table: it owns clones of the [`Load`] `Arc`s, so a reload that
/// drops or replaces the destination can neither leak the units nor make the call give them back to a
/// different counter. At most [`MAX_RESOURCES_PER_CALL`] resources, in a fixed array (no allocation;
/// cloning an `Arc` only bumps its count).
///
/// Release is explicit ([`Reservation::release`] when the call ends: final failure, completed CANCEL,
/// BYE, timeout, or the failover moving on), and `Drop` is the safety net: dropping a Reservation that
/// was not released (say, a shard discarding dialog state) gives its units back too. Each unit is taken
/// out of its slot before it is returned, so it is given back exactly once whichever path runs.
#[derive(Debug)]
#[must_use = "dropping a Reservation gives its units back at once"]
pub struct Reservation {
    /// Per resource: the row's counter (None for a dispatcher call, which has no row counter) and
    /// the box's gate (None for a fixed capacity).
    loads: [Option<Held>; MAX_RESOURCES_PER_CALL],
}

/// One resource a [`Reservation`] holds: the row's counter and the box's gate, either absent.
type Held = (Option<Load>, Option<Arc<BoxGate>>);

impl Reservation {
    /// The number of units this call holds.
    pub fn units(&self) -> usize {
        self.loads.iter().flatten().count()
    }

    /// One call held on a FreeSWITCH box (a dispatcher destination with fs:// headroom): None when
    /// the box has no room now.
    pub fn on_box(b: &BoxAdmission, now: Instant) -> Option<Reservation> {
        if !b.try_admit(now, false) {
            return None;
        }
        let mut held = Reservation { loads: Default::default() };
        held.loads[0] = Some((None, Some(Arc::clone(&b.gate))));
        Some(held)
    }

    /// Gives every unit back (the call has ended). Never underflows.
    pub fn release(mut self) {
        self.give_all_back();
    }

    fn give_all_back(&mut self) {
        for slot in &mut self.loads {
            if let Some((load, gate)) = slot.take() {
                let paid = load.map_or(Returned::Nothing, |l| l.give_back());
                // A paid debt means the box's readings had stopped counting a call of this row: its
                // gate unit is already outside the headroom the gate was re-based on, and giving it
                // back would offer the box a call more than it has room for until its next reading.
                // (Were this a live call, keeping its unit counted is only cautious until then.)
                if let Some(g) = gate.filter(|_| paid != Returned::Forgiven) {
                    g.release();
                }
            }
        }
    }

    /// The call's end cannot be seen (a stateless route): its units stay counted, and the box's next
    /// heartbeat re-bases its limit instead.
    pub fn keep_counted(mut self) {
        for slot in &mut self.loads {
            slot.take();
        }
    }

}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.give_all_back();
    }
}

/// `reserve`, keeping the units in a [`Reservation`] the call carries until it ends. None (and nothing
/// taken) when a resource is exhausted or missing, or when `wanted` has more than
/// [`MAX_RESOURCES_PER_CALL`] entries.
pub fn reserve_held(
    dest: &LbDestination,
    wanted: &[usize],
    allow_negative: bool,
    now: Instant,
) -> Option<Reservation> {
    if wanted.len() > MAX_RESOURCES_PER_CALL {
        return None;
    }
    let mut held = Reservation {
        loads: Default::default(),
    };
    for (slot, &id) in held.loads.iter_mut().zip(wanted) {
        let r = dest.resource(id)?;
        // `held` drops on any refusal below and gives back what it took so far.
        let gate = match &r.fs {
            // A box's gate is the limit; the row's own counter only shows its calls in `/status`.
            Some(b) if b.try_admit(now, allow_negative) => {
                // Only counts the row's calls: saturating at u32::MAX is harmless here.
                r.load.take(None);
                Some(Arc::clone(&b.gate))
            }
            Some(_) => return None,
            None if take_one(r, allow_negative) => None,
            None => return None,
        };
        *slot = Some((Some(Arc::clone(&r.load)), gate));
    }
    Some(held)
}

/// OpenSIPS `lb_route`: [`select`] then [`reserve_held`] through [`select_with`], moving on to
/// the next best destination when another shard took the last unit between the two (or a
/// reservation fails for any other reason). Returns the chosen index and its reservation; None
/// when no destination can take the call (fsroute answers 503).
pub fn select_and_reserve(
    group: &LbGroup,
    wanted: &[usize],
    flags: LbFlags,
    tried: Tried,
    r: u64,
    now: Instant,
) -> Option<(usize, Reservation)> {
    if wanted.len() > MAX_RESOURCES_PER_CALL {
        return None;
    }
    select_with(
        tried,
        group.destinations.len(),
        |skip| select(group, wanted, flags, skip, r, now),
        |i| reserve_held(&group.destinations[i], wanted, flags.allow_negative, now),
    )
}
