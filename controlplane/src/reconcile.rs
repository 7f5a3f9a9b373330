//! Heartbeat reconciliation of load_balancer units (docs/ADMISSION.md, "Reconciliation"). A call
//! whose BYE never reaches fsroute keeps its units until its dialog memory expires, hours after the
//! box freed its sessions; under the `opensips` model that box then looks fuller than it is. After
//! each reading of a box, every load_balancer counter naming it that holds more calls than the box
//! counts, at this reading and at the one before, has the smaller of the two excesses written off
//! (`LoadCounter::forgive`), which can never give a unit back twice. Sans-IO: the control loop
//! passes the clock, the stats and the counters.
//!
//! Two guards keep calls that are live from being written off. Calls reserved in the last
//! [`IN_FLIGHT_WINDOW`] may not have reached the box (or its reading may not have come back), so
//! they are never compared with the reading. And an excess must be seen at two consecutive readings:
//! a call the box has just ended whose BYE or 200 is still on its way to fsroute shows up at one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsroute_dataplane::lb::Load;

use crate::state::{CounterStore, Stats};
use crate::config::{Capacity, Config, FsKey};

/// How long after fsroute reserves a call its INVITE has surely reached the box and a reading that
/// counts it has come back. Generous for one LAN round trip plus the box's event queue, and it covers
/// an INVITE retransmitted once (T1 = 500 ms) after a lost datagram.
pub const IN_FLIGHT_WINDOW: Duration = Duration::from_secs(1);

/// One load_balancer counter whose capacity is a FreeSWITCH box.
struct Track {
    fs: FsKey,
    load: Load,
    /// The box's numbers this counter was last compared with, and its boot.
    seq: u64,
    boot: u64,
    /// What the counter held over the box's count after the previous reading; None until there has
    /// been one in this stretch of fresh numbers.
    prev_excess: Option<u32>,
    /// `taken` as read at least [`IN_FLIGHT_WINDOW`] ago (0: since the counter was made): every call
    /// reserved after it counts as possibly in flight.
    base: u64,
    /// The newest reading of `taken`, which becomes `base` once it is old enough.
    next: (Instant, u64),
}

/// The control plane's reconciliation state, kept across builds and reloads.
#[derive(Default)]
pub struct Reconciler {
    tracks: HashMap<(i32, String, String), Track>,
    /// Units written off per box, ever.
    reconciled: HashMap<FsKey, u64>,
}

impl Reconciler {
    /// Follows the counters of `config`'s load_balancer resources that name a box. Called after every
    /// build, which may have made or dropped counters.
    pub fn sync(&mut self, config: &Config, counters: &CounterStore, now: Instant) {
        let mut old = std::mem::take(&mut self.tracks);
        for row in &config.load_balancer {
            for res in &row.resources {
                let Capacity::Fs(fs) = &res.capacity else { continue };
                let Some(load) = counters.lb_load(row.group_id, &row.uri, &res.name) else { continue };
                let key = (row.group_id, row.uri.clone(), res.name.clone());
                let fs = fs.key();
                let track = match old.remove(&key) {
                    Some(t) if t.fs == fs && Arc::ptr_eq(&t.load, load) => t,
                    _ => Track { fs, load: Arc::clone(load), seq: 0, boot: 0, prev_excess: None, base: 0, next: (now, load.taken()) },
                };
                self.tracks.insert(key, track);
            }
        }
        let boxes: Vec<FsKey> = config.fs_endpoints().iter().map(|f| f.key()).collect();
        self.reconciled.retain(|k, _| boxes.contains(k));
    }

    /// Every control-loop turn: ages the readings of `taken` that bound the calls in flight.
    pub fn tick(&mut self, now: Instant) {
        for t in self.tracks.values_mut() {
            if now.saturating_duration_since(t.next.0) >= IN_FLIGHT_WINDOW {
                t.base = t.next.1;
                t.next = (now, t.load.taken());
            }
        }
    }

    /// After new numbers: every counter on a box whose reading it has not seen compares what it holds
    /// (in calls) with what the box counts (`ceil(Session-Count / channels_per_call)`, every source's
    /// calls together), less the calls it reserved in the last [`IN_FLIGHT_WINDOW`], and writes off the
    /// smaller of this excess and the one left at the previous reading. Returns the units written off.
    pub fn on_readings(&mut self, stats: &Stats, channels_per_call: u32) -> u64 {
        let k = u64::from(channels_per_call.max(1));
        let mut total = 0;
        for ((group_id, uri, resource), t) in &mut self.tracks {
            let Some(s) = stats.fs.get(&t.fs).filter(|s| s.is_fresh()) else {
                // A gap in the box's numbers: the next reading starts a new comparison.
                t.prev_excess = None;
                continue;
            };
            if s.boot != t.boot {
                t.boot = s.boot;
                t.prev_excess = None;
            }
            if s.seq == t.seq {
                continue;
            }
            t.seq = s.seq;
            let box_calls = u32::try_from(u64::from(s.session_count).div_ceil(k)).unwrap_or(u32::MAX);
            let recent = t.load.taken().saturating_sub(t.base);
            let floor = u64::from(box_calls).saturating_add(recent);
            let excess = u32::try_from(u64::from(t.load.held()).saturating_sub(floor)).unwrap_or(u32::MAX);
            let written = t.prev_excess.map_or(0, |prev| t.load.forgive(excess.min(prev), box_calls, t.base));
            t.prev_excess = Some(excess.saturating_sub(written));
            if written > 0 {
                *self.reconciled.entry(t.fs.clone()).or_default() += u64::from(written);
                tracing::warn!(
                    box = %t.fs, group_id, uri = %uri, resource = %resource, units = written, box_calls,
                    "units reconciled: the box no longer counts these calls (their end never reached fsroute)"
                );
            }
            total += u64::from(written);
        }
        total
    }

    /// Units written off on a box's counters, ever.
    pub fn reconciled(&self, fs: &FsKey) -> u64 {
        self.reconciled.get(fs).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use fsroute_dataplane::lb::{self, Reservation};

    use super::*;
    use crate::state::AdminState;
    use crate::table_builder::build_table;
    use crate::config::{self, Host, HostPort};

    fn config(k: u32) -> Config {
        config::parse(
            &format!(
                r#"
[proxy]
listen = ["127.0.0.1:5060"]

[control]
capacity_model = "opensips"
channels_per_call = {k}

[[load_balancer]]
group_id = 1
dst_uri = "sip:127.0.0.1:5081"
resources = "ch=fs://:ClueCon@127.0.0.1:8021"

[[route]]
to_load_balancer = 1
resources = "ch"
"#
            ),
            Path::new("reconcile.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn fs_key() -> FsKey {
        HostPort { host: Host::Ip("127.0.0.1".parse().unwrap()), port: 8021 }
    }

    /// A box, its load_balancer row and the control plane's view of both.
    struct Farm {
        config: Config,
        stats: Stats,
        counters: CounterStore,
        reconciler: Reconciler,
        now: Instant,
        calls: Vec<Reservation>,
    }

    impl Farm {
        fn new(k: u32) -> Farm {
            let config = config(k);
            let mut f = Farm { config, stats: Stats::default(), counters: CounterStore::new(), reconciler: Reconciler::default(), now: Instant::now(), calls: Vec::new() };
            f.reading(0);
            f
        }

        fn load(&self) -> Load {
            Arc::clone(self.counters.lb_load(1, "sip:127.0.0.1:5081", "ch").unwrap())
        }

        /// The box reports `sessions`; the control plane rebuilds as `Control::rebuild` does.
        fn reading(&mut self, sessions: u32) -> u64 {
            let s = self.stats.fs.entry(fs_key()).or_default();
            s.on_numbers(self.now);
            s.idle_cpu_micro = 100_000_000;
            s.max_sessions = 1000;
            s.session_count = sessions;
            s.seq += 1;
            let written = self.reconciler.on_readings(&self.stats, self.config.control.channels_per_call);
            crate::table_builder::snapshot_p_hb(&self.config, &mut self.stats, &self.counters);
            build_table(&self.config, &self.stats, &AdminState::default(), &mut self.counters, self.stats.fs[&fs_key()].seq);
            self.reconciler.sync(&self.config, &self.counters, self.now);
            written
        }

        /// Time passes on the control loop (one turn per 100 ms).
        fn wait(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.now += Duration::from_millis(100);
                self.reconciler.tick(self.now);
            }
        }

        fn call(&mut self, n: usize) {
            let t = build_table(&self.config, &self.stats, &AdminState::default(), &mut self.counters, 0);
            for _ in 0..n {
                self.calls.push(lb::reserve_held(&t.lb_groups[0].destinations[0], &[0], false, self.now).expect("room"));
            }
        }
    }

    #[test]
    fn a_box_reporting_fewer_sessions_at_two_readings_gets_the_units_back_and_at_one_does_not() {
        let mut f = Farm::new(1);
        f.call(20);
        f.wait(IN_FLIGHT_WINDOW * 2);
        assert_eq!(f.reading(20), 0, "the box counts all twenty");
        // Their BYEs are lost: the box reports none, once. That may be a BYE whose 200 is on its way.
        assert_eq!(f.reading(0), 0);
        assert_eq!(f.load().held(), 20);
        // The box counts them again: nothing was ever written off.
        assert_eq!(f.reading(20), 0);
        assert_eq!(f.reading(0), 0);
        // Twice in a row: the twenty units are written off and counted for the box.
        assert_eq!(f.reading(0), 20);
        let l = f.load();
        assert_eq!((l.held(), l.forgiven(), f.reconciler.reconciled(&fs_key())), (0, 20, 20));
        assert_eq!(f.reading(0), 0, "nothing is written off twice");
        // The lost calls' dialog memory expires at last: they pay the debt, nothing wraps.
        f.calls.drain(..).for_each(Reservation::release);
        assert_eq!((l.held(), l.forgiven()), (0, 0));
    }

    #[test]
    fn only_the_excess_seen_at_both_readings_is_written_off() {
        let mut f = Farm::new(1);
        f.call(20);
        f.wait(IN_FLIGHT_WINDOW * 2);
        f.reading(12);
        assert_eq!(f.reading(5), 8, "min(20 − 12, 20 − 5)");
        assert_eq!(f.load().held(), 12);
        assert_eq!(f.reading(5), 7, "the rest of the excess, seen twice now");
        assert_eq!((f.load().held(), f.load().forgiven()), (5, 15));
    }

    #[test]
    fn calls_just_routed_are_never_written_off_even_when_no_reading_counts_them() {
        let mut f = Farm::new(1);
        f.wait(IN_FLIGHT_WINDOW * 2);
        // Ten calls leave for the box while it reports, again and again, that it has none: they may
        // all still be on their way.
        f.call(10);
        for _ in 0..5 {
            assert_eq!(f.reading(0), 0);
        }
        assert_eq!(f.load().held(), 10);
        // Once they are older than the in-flight window, a box that still counts none has lost them.
        f.wait(IN_FLIGHT_WINDOW * 2);
        f.reading(0);
        assert_eq!(f.reading(0), 10);
    }

    #[test]
    fn the_comparison_is_in_calls_with_channels_per_call() {
        let mut f = Farm::new(2);
        f.call(20);
        f.wait(IN_FLIGHT_WINDOW * 2);
        // 20 bridged calls are 40 sessions; 39 sessions are still 20 calls (one half set up).
        assert_eq!(f.reading(40), 0);
        assert_eq!(f.reading(39), 0);
        assert_eq!(f.reading(39), 0);
        // 10 sessions are 5 calls: 15 of the 20 have ended unseen.
        f.reading(10);
        assert_eq!(f.reading(10), 15);
        assert_eq!(f.load().held(), 5);
    }

    #[test]
    fn a_gap_in_the_numbers_or_a_restart_starts_the_comparison_again() {
        let mut f = Farm::new(1);
        f.call(6);
        f.wait(IN_FLIGHT_WINDOW * 2);
        f.reading(0);
        f.stats.fs.get_mut(&fs_key()).unwrap().stale = true;
        f.reconciler.on_readings(&f.stats, 1);
        assert_eq!(f.reading(0), 0, "the reading before the gap does not count");
        f.stats.fs.get_mut(&fs_key()).unwrap().boot += 1;
        assert_eq!(f.reading(0), 0, "nor one from the box's previous boot");
        // A restarted box has none of fsroute's calls: two readings of the new boot give them back.
        assert_eq!(f.reading(0), 6);
    }

    #[test]
    fn written_off_units_are_capacity_again_under_the_opensips_model() {
        let mut f = Farm::new(1);
        f.call(20);
        f.wait(IN_FLIGHT_WINDOW * 2);
        let available = |f: &mut Farm| {
            let t = build_table(&f.config, &f.stats, &AdminState::default(), &mut f.counters, 9);
            lb::available(t.lb_groups[0].destinations[0].resource(0).unwrap(), f.now)
        };
        f.reading(0);
        assert_eq!(available(&mut f), 980, "1000 sessions free, 20 units held by calls that ended unseen");
        f.reading(0);
        assert_eq!(available(&mut f), 1000);
    }
}
