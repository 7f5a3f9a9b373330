//! What the control plane knows at runtime, apart from the config: per FreeSWITCH box what it last
//! said over ESL ([`FsStats`], with its freshness), per destination the probe verdicts ([`Stats`]),
//! the admin overrides ([`AdminState`]) and the shared counters kept from one table build to the
//! next ([`CounterStore`]). The ESL side, the prober and the admin commands write it; the table
//! builder and `/status` read it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use fsroute_dataplane::admission::{BoxGate, RateLog};
use fsroute_dataplane::lb::Load;
use fsroute_dataplane::table::DestCounters;

use crate::config::{Config, DestState, DispatcherRow, FsKey};
use crate::headroom::{BoxReport, CpuCostFit};
use crate::probe::ProbeHealth;

/// What one FreeSWITCH box last told us over ESL. The ESL side fills it; staleness is decided
/// there too (it owns the clock), so building stays pure: see [`FsStats::freshness`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsStats {
    pub connected: bool,
    /// `Idle-CPU` in millionths of a percent (`78.400000` -> 78_400_000), so weights and
    /// capacities are computed in integers.
    pub idle_cpu_micro: u32,
    pub session_count: u32,
    pub max_sessions: u32,
    pub last_heartbeat: Option<Instant>,
    /// Set when the box goes silent past `control.heartbeat_timeout`, and at once when its
    /// connection drops or fails; cleared by its next connection or numbers. Read it through
    /// [`FsStats::freshness`].
    pub stale: bool,
    /// Grows with every new set of numbers, so the load at heartbeat time (`p_hb`) is taken once
    /// per heartbeat.
    pub seq: u64,
    /// Configured `sessions-per-second` and `min-idle-cpu`, from `api status`.
    pub sps_limit: Option<u64>,
    pub min_idle_cpu_micro: u32,
    pub session_since_startup: Option<u64>,
    pub uptime_msec: Option<u64>,
    /// The last uptime of each kind of reading, for telling a restart from a late heartbeat.
    pub uptime: Uptimes,
    pub core_uuid: Option<String>,
    /// Grows each time the box restarts (new Core-UUID, or Uptime-msec going backwards): its
    /// accounting starts again.
    pub boot: u64,
    /// `SHUTDOWN_REQUESTED` seen (an elegant shutdown waits for the balancer to stop sending).
    pub shutdown_requested: bool,
    /// `fsctl pause_check inbound` said true.
    pub paused: bool,
    /// (Session-Count, Idle-CPU) history for the per-session CPU cost.
    pub cpu_fit: CpuCostFit,
}

/// Where a set of numbers came from: a HEARTBEAT event, or an `api status` reply (the seed at
/// connect and the periodic status readings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Heartbeat,
    Status,
}

/// The last Uptime-msec of each kind of reading. Each kind arrives in the order the box made it,
/// but the two kinds do not: FreeSWITCH stamps a HEARTBEAT when it creates the event and queues
/// it for the event thread, while an `api status` reply is computed and written by the
/// connection's own thread, so a heartbeat made before a status reading can arrive after it,
/// a few milliseconds "back in time". Taking that for a restart would reset the box's accounting
/// and forget that it drains (docs/ESL.md §6, item 9). So uptime going back within one kind is a
/// restart, and across kinds only by more than [`Uptimes::REORDER_SLACK_MS`]; a restart that the
/// slack hides is still seen by the Core-UUID of the box's next heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uptimes {
    pub heartbeat: Option<u64>,
    pub status: Option<u64>,
}

impl Uptimes {
    pub const REORDER_SLACK_MS: u64 = 10_000;

    /// Whether a reading of `kind` saying `up` ms means the box started again since.
    pub fn went_back(&self, kind: Reading, up: u64) -> bool {
        let (same, other) = match kind {
            Reading::Heartbeat => (self.heartbeat, self.status),
            Reading::Status => (self.status, self.heartbeat),
        };
        same.is_some_and(|last| up < last) || other.is_some_and(|last| up.saturating_add(Self::REORDER_SLACK_MS) < last)
    }

    pub fn record(&mut self, kind: Reading, up: u64) {
        match kind {
            Reading::Heartbeat => self.heartbeat = Some(up),
            Reading::Status => self.status = Some(up),
        }
    }
}

/// Whether a box's numbers may be used, as every reader of [`FsStats`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Connected, heard from, not silent past `heartbeat_timeout`: its numbers count.
    Fresh,
    /// Connected and waiting for its first numbers (or, in [`Stats::freshness`], not tried yet).
    AwaitingNumbers,
    /// Disconnected, never connected, or connected but silent past `heartbeat_timeout`.
    Stale,
}

impl FsStats {
    /// The one place a box's freshness is derived. The ESL pool owns the clock: it reports a
    /// silence past `heartbeat_timeout` as [`fsroute_esl::PoolEvent::Stale`], which sets `stale`,
    /// so building stays pure.
    pub fn freshness(&self) -> Freshness {
        match (self.connected && !self.stale, self.last_heartbeat) {
            (true, Some(_)) => Freshness::Fresh,
            (true, None) => Freshness::AwaitingNumbers,
            (false, _) => Freshness::Stale,
        }
    }

    /// New numbers arrived (a heartbeat or an `api status` reading): fresh.
    pub fn on_numbers(&mut self, now: Instant) {
        self.connected = true;
        self.stale = false;
        self.last_heartbeat = Some(now);
    }

    /// Connected (again): awaiting its first numbers on this connection.
    pub fn on_connected(&mut self) {
        self.connected = true;
        self.stale = false;
        self.last_heartbeat = None;
    }

    /// Connected but silent past `heartbeat_timeout`: stale until its next numbers.
    pub fn on_silence(&mut self) {
        self.stale = true;
    }

    /// The connection dropped or could not be made: stale at once. Whether that changed anything.
    pub fn on_disconnect(&mut self) -> bool {
        let was = (self.connected, self.stale);
        self.connected = false;
        self.stale = true;
        was != (false, true)
    }

    /// Whether the numbers may be used: connected, heard from, not stale.
    pub fn is_fresh(&self) -> bool {
        self.freshness() == Freshness::Fresh
    }

    /// Stale: disconnected, or silent past `heartbeat_timeout` (never while numbers are fresh).
    pub fn is_stale(&self) -> bool {
        self.freshness() == Freshness::Stale
    }

    /// Why the box takes no new calls although it is up: it is draining.
    pub fn draining(&self) -> Option<&'static str> {
        if self.shutdown_requested {
            Some("shutdown_requested")
        } else if self.paused {
            Some("paused")
        } else {
            None
        }
    }

    /// The box's lifecycle as `/status` names it.
    pub fn lifecycle(&self) -> &'static str {
        match (self.draining(), self.freshness()) {
            (Some(why), _) => why,
            (None, Freshness::Stale) => "stale",
            (None, Freshness::Fresh) => "running",
            (None, Freshness::AwaitingNumbers) => "connecting",
        }
    }

    pub fn report(&self) -> BoxReport {
        BoxReport {
            session_count: u64::from(self.session_count),
            max_sessions: u64::from(self.max_sessions),
            idle_cpu_micro: self.idle_cpu_micro,
            sps_limit: self.sps_limit,
            min_idle_cpu_micro: self.min_idle_cpu_micro,
        }
    }
}

/// fsroute's own counts on one box when its numbers for `seq` arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxSnapshot {
    pub seq: u64,
    pub boot: u64,
    /// The gate's `used` then: the base the new headroom is added to.
    pub used: u64,
    /// The gate's `started` and the box's Session-Since-Startup then, and when.
    pub started: u64,
    pub since_startup: Option<u64>,
    pub at: Instant,
    /// Sessions per second others start on the box, from the last two snapshots.
    pub others_sps: u64,
}

/// What the control plane has observed at runtime: per FreeSWITCH ESL endpoint, and per
/// dispatcher destination the OPTIONS probe verdict (absent while probing is off).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub fs: HashMap<FsKey, FsStats>,
    pub probes: HashMap<(i32, String), ProbeHealth>,
    /// Per load_balancer (group, destination, resource) on a FreeSWITCH box: fsroute's calls there
    /// when the box's last heartbeat arrived (`p_hb`), with that heartbeat's `seq` (`opensips` model).
    pub p_hb: HashMap<(i32, String, String), (u64, u32)>,
    /// Per box, the headroom model's base counts at its last numbers.
    pub boxes: HashMap<FsKey, BoxSnapshot>,
}

impl Stats {
    /// A box's freshness for building: one not tried yet counts as awaiting its first numbers.
    pub fn freshness(&self, key: &FsKey) -> Freshness {
        self.fs.get(key).map_or(Freshness::AwaitingNumbers, FsStats::freshness)
    }
}

/// Runtime admin overrides (`POST /dispatcher/state`), keyed by (setid, destination URI as
/// written in the config). An override wins over the row's `state`.
#[derive(Debug, Clone, Default)]
pub struct AdminState {
    dispatcher: HashMap<(i32, String), DestState>,
    /// `POST /load_balancer/status` (OpenSIPS lb_status): enabled or not, sticky (NOEN).
    load_balancer: HashMap<(i32, String), bool>,
}

impl AdminState {
    pub fn set_dispatcher_state(&mut self, setid: i32, uri: &str, state: DestState) {
        self.dispatcher.insert((setid, uri.to_string()), state);
    }

    pub fn dispatcher_state(&self, setid: i32, uri: &str) -> Option<DestState> {
        self.dispatcher.get(&(setid, uri.to_string())).copied()
    }

    /// The state in force for a row: the override, else the row's own `state`.
    pub fn state_of(&self, row: &DispatcherRow) -> DestState {
        self.dispatcher_state(row.setid, &row.uri).unwrap_or(row.state)
    }

    pub fn set_lb_enabled(&mut self, group_id: i32, uri: &str, enabled: bool) {
        self.load_balancer.insert((group_id, uri.to_string()), enabled);
    }

    pub fn lb_enabled(&self, group_id: i32, uri: &str) -> Option<bool> {
        self.load_balancer.get(&(group_id, uri.to_string())).copied()
    }

    /// The override's name (`active`, `inactive`, `probing`), for `/status`.
    pub fn state_name(&self, setid: i32, uri: &str) -> Option<&'static str> {
        self.dispatcher_state(setid, uri).map(DestState::name)
    }

    /// Forgets the override, so the row's `state` applies again.
    pub fn clear_dispatcher_state(&mut self, setid: i32, uri: &str) -> Option<DestState> {
        self.dispatcher.remove(&(setid, uri.to_string()))
    }

    /// Drops overrides for destinations `config` no longer has (after a reload), so one that is
    /// removed and later re-added starts from its row's state.
    pub fn retain_known(&mut self, config: &Config) {
        let known: HashSet<(i32, &str)> = config
            .dispatcher
            .iter()
            .map(|r| (r.setid, r.uri.as_str()))
            .collect();
        self.dispatcher
            .retain(|(setid, uri), _| known.contains(&(*setid, uri.as_str())));
        let lb: HashSet<(i32, &str)> = config.load_balancer.iter().map(|r| (r.group_id, r.uri.as_str())).collect();
        self.load_balancer.retain(|(g, uri), _| lb.contains(&(*g, uri.as_str())));
    }

    pub fn is_empty(&self) -> bool {
        self.dispatcher.is_empty() && self.load_balancer.is_empty()
    }
}

/// The per-destination counters, kept across builds by (setid, destination URI), and the parts
/// of fsroute's identity that come from the process and the host rather than the config.
#[derive(Debug)]
pub struct CounterStore {
    /// The branch MAC key when `proxy.branch_secret` is not set: random, for the process's life.
    pub branch_key: fsroute_dataplane::table::BranchKey,
    /// This host's addresses (for wildcard listeners); refreshed by the runtime.
    pub host_ips: Vec<std::net::IpAddr>,
    pub(crate) dispatcher: HashMap<(i32, String), Arc<DestCounters>>,
    /// load_balancer loads by (group, destination, resource): the calls fsroute holds there,
    /// shared with every shard and kept across reloads for destinations that stay.
    pub(crate) lb: HashMap<(i32, String, String), Load>,
    /// Per FreeSWITCH box: its admission gate for the current boot, and its rate log.
    pub(crate) gates: HashMap<FsKey, BoxCounters>,
    /// Names fsroute answered to before a reload changed its advertise or aliases.
    pub former_names: Vec<FormerName>,
}

/// A (host, port) a reload took out of fsroute's names. Requests already sent carry it in their
/// Via, and dialogs made under it carry it in their Record-Route: dropping it at once would drop
/// their responses as `not_our_via` and deny their in-dialog requests. It stays fsroute's own
/// until dialogs made under it can have ended (`until`: the reload plus `dialog_memory`); a
/// response still has to carry a valid branch MAC, so keeping a name opens nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormerName {
    pub host: String,
    pub port: u16,
    pub until: Instant,
}

/// The shared counters of one box (headroom model), kept across builds.
#[derive(Debug)]
pub struct BoxCounters {
    pub boot: u64,
    pub gate: Arc<BoxGate>,
    pub rate: Option<Arc<RateLog>>,
}

impl Default for CounterStore {
    fn default() -> Self {
        CounterStore {
            branch_key: fsroute_dataplane::table::BranchKey::random(),
            host_ips: Vec::new(),
            dispatcher: HashMap::new(),
            lb: HashMap::new(),
            gates: HashMap::new(),
            former_names: Vec::new(),
        }
    }
}

impl CounterStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A reload replaced the names `old` with `new` at `now`: what `old` had and `new` lacks is
    /// kept as a former name until `until`; a name `new` has again is no longer former. Former
    /// names past their time are forgotten.
    pub fn retire_names(&mut self, old: &[(String, u16)], new: &[(String, u16)], now: Instant, until: Instant) {
        self.former_names.retain(|f| f.until > now && !new.iter().any(|(h, p)| *h == f.host && *p == f.port));
        for (host, port) in old.iter().filter(|n| !new.contains(n)) {
            self.former_names.retain(|f| !(f.host == *host && f.port == *port));
            self.former_names.push(FormerName { host: host.clone(), port: *port, until });
        }
    }

    pub fn get(&self, setid: i32, uri: &str) -> Option<&Arc<DestCounters>> {
        self.dispatcher.get(&(setid, uri.to_string()))
    }

    pub fn len(&self) -> usize {
        self.dispatcher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dispatcher.is_empty()
    }

    pub fn lb_load(&self, group_id: i32, uri: &str, resource: &str) -> Option<&Load> {
        self.lb.get(&(group_id, uri.to_string(), resource.to_string()))
    }

    pub(crate) fn lb_load_or_create(&mut self, group_id: i32, uri: &str, resource: &str) -> Load {
        Arc::clone(self.lb.entry((group_id, uri.to_string(), resource.to_string())).or_default())
    }

    /// The box's counters for boot `boot`: a restarted box gets fresh ones, so the calls fsroute
    /// held on its previous boot can no longer count against (or be given back to) the new one.
    pub(crate) fn box_counters(&mut self, key: &FsKey, boot: u64) -> &mut BoxCounters {
        let fresh = || BoxCounters { boot, gate: Arc::new(BoxGate::default()), rate: None };
        let c = self.gates.entry(key.clone()).or_insert_with(fresh);
        if c.boot != boot {
            *c = fresh();
        }
        c
    }

    pub fn box_gate(&self, key: &FsKey) -> Option<&BoxCounters> {
        self.gates.get(key)
    }

    pub(crate) fn get_or_create(&mut self, setid: i32, uri: &str) -> Arc<DestCounters> {
        Arc::clone(self.dispatcher.entry((setid, uri.to_string())).or_default())
    }
}
