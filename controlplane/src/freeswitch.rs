//! The control plane's view of the FreeSWITCH farm: one ESL connection per distinct host:port
//! named anywhere in the config (shared by every row that names it), kept in step with reloads,
//! and the translation of pool events into `Stats` for the table builder. A box is stale at once
//! when its connection drops or never comes up, and when it stays connected but silent for
//! `heartbeat_timeout`; a rejected heartbeat changes nothing, so the staleness clock keeps running.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fsroute_esl::{ConnId, EslPool, EslUrl, HeartbeatFormat, HeartbeatStats, PoolConfig, PoolEvent, Secret};

use fsroute_dataplane::lb::HUNDRED_PERCENT_MICRO;

// The ESL parser's bound on Idle-CPU and the data plane's 100 % are one figure. The two crates do
// not depend on each other; the control plane, which reads the one into the other, checks they agree.
const _: () = assert!(fsroute_esl::heartbeat::IDLE_CPU_MICRO_MAX == HUNDRED_PERCENT_MICRO);

use crate::state::{FsStats, Reading, Stats, Uptimes};
use crate::config::{Config, FsEndpoint, FsKey};

/// What `/status` and `/metrics` show about one box, besides its numbers in `Stats`.
#[derive(Clone, Debug, Default)]
pub struct FsInfo {
    pub url: String,
    pub rejected_heartbeats: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub core_uuid: Option<String>,
    /// Restarts seen (new Core-UUID or Uptime-msec going backwards).
    pub restarts: u64,
    /// Times Max-Sessions fell between two readings (`fsctl max_sessions`, or FreeSWITCH lowering
    /// it itself after a thread-launch failure).
    pub max_sessions_shrunk: u64,
    pub shutdown_requests: u64,
    /// Readings with a figure past what any real box reports, read as the bound instead.
    pub clamped: Clamped,
}

/// Per field, the readings in which a box reported more than fsroute believes: Max-Sessions,
/// Session-Count or sessions-per-second above `control.max_sessions_ceiling`, Idle-CPU above
/// 100 %. A box that claims a million free sessions (or 2^64 − 1, or an idle CPU of 400 %) would
/// otherwise look the emptiest by far and attract every call; a Session-Count of 2^64 − 1 would
/// overflow the CPU-cost fit's window sum and flatten its line for every later reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clamped {
    pub max_sessions: u64,
    pub session_count: u64,
    pub sessions_per_second: u64,
    pub idle_cpu: u64,
}

/// `value`, or `ceiling` when it is higher: counted in `count`, and logged the first time for the box.
fn bounded(value: u64, ceiling: u64, count: &mut u64, url: &str, field: &str) -> u64 {
    if value <= ceiling {
        return value;
    }
    if *count == 0 {
        tracing::warn!(box = %url, field, reported = value, read_as = ceiling, "a FreeSWITCH box reports more than any real box; read as the ceiling (logged once per box)");
    }
    *count += 1;
    ceiling
}

pub struct FsMonitor {
    pool: EslPool,
    conns: HashMap<FsKey, Conn>,
    by_id: HashMap<ConnId, FsKey>,
    events: Vec<PoolEvent>,
    /// Heartbeat arrival instants not yet visible in a table, for the latency figure.
    pub pending_visibility: Vec<Instant>,
    status_interval: Option<Duration>,
    idle_cpu_smoothing: u32,
    max_sessions_ceiling: u32,
}

struct Conn {
    id: ConnId,
    /// When `api status` and `fsctl pause_check inbound` are next due.
    next_status: Option<Instant>,
    /// Credentials as configured; a change reconnects.
    user: Option<String>,
    password: Secret,
    info: FsInfo,
}

fn url_of(fs: &FsEndpoint) -> EslUrl {
    EslUrl {
        host: fs.endpoint.host.bare(),
        port: fs.endpoint.port,
        user: fs.user.clone(),
        password: fs.password.clone(),
    }
}

/// The command whose answer says whether inbound calls are paused (docs/ESL.md §4; `true` = paused).
pub const PAUSE_CHECK: &str = "fsctl pause_check inbound";

/// Folds one set of numbers (a HEARTBEAT, or an `api status` reading) into a box's stats: figures
/// past what a real box reports are read as their bound (`ceiling` for Max-Sessions,
/// Session-Count and sessions-per-second, 100 % for Idle-CPU), a restart resets its accounting, a shrinking
/// Max-Sessions is counted, the CPU-cost history grows.
fn apply_numbers(entry: &mut FsStats, info: &mut FsInfo, h: &HeartbeatStats, reading: Reading, now: Instant, smoothing_s: u32, ceiling: u32) {
    let c = &mut info.clamped;
    let max_sessions = bounded(h.max_sessions, u64::from(ceiling), &mut c.max_sessions, &info.url, "Max-Sessions") as u32;
    let session_count = bounded(h.session_count, u64::from(ceiling), &mut c.session_count, &info.url, "Session-Count");
    let sps_limit = h.sessions_per_sec_limit.map(|v| bounded(v, u64::from(ceiling), &mut c.sessions_per_second, &info.url, "sessions-per-second"));
    let idle_cpu_micro = bounded(u64::from(h.idle_cpu_micro), u64::from(HUNDRED_PERCENT_MICRO), &mut c.idle_cpu, &info.url, "Idle-CPU") as u32;
    let new_uuid = matches!((&entry.core_uuid, &h.core_uuid), (Some(a), Some(b)) if a != b);
    let uptime_back = h.uptime_msec.is_some_and(|up| entry.uptime.went_back(reading, up));
    if new_uuid || uptime_back {
        info.restarts += 1;
        tracing::warn!(box = %info.url, new_uuid, uptime_back, "FreeSWITCH restarted: its accounting starts again");
        entry.boot += 1;
        entry.uptime = Uptimes::default();
        // Seen by its uptime, in a reading without Core-UUID (`api status`): the new boot's
        // UUID, in its next heartbeat, is the same restart, not another.
        if h.core_uuid.is_none() {
            entry.core_uuid = None;
        }
        entry.cpu_fit.clear();
        entry.shutdown_requested = false;
        entry.paused = false;
        entry.session_since_startup = None;
    }
    if entry.last_heartbeat.is_some() && max_sessions < entry.max_sessions && !(new_uuid || uptime_back) {
        info.max_sessions_shrunk += 1;
        tracing::warn!(box = %info.url, from = entry.max_sessions, to = max_sessions, "Max-Sessions shrank");
    }
    entry.seq += 1;
    entry.on_numbers(now);
    entry.idle_cpu_micro = idle_cpu_micro;
    entry.session_count = session_count as u32;
    entry.max_sessions = max_sessions;
    // A box younger than its smoothing depth still averages in the 100 % its ring started with.
    let settled = h.uptime_msec.or(entry.uptime_msec).is_none_or(|up| up >= u64::from(smoothing_s) * 1000);
    if settled {
        entry.cpu_fit.push(now, session_count, idle_cpu_micro, Duration::from_secs(u64::from(smoothing_s)));
    }
    // Only `api status` carries these; a heartbeat keeps the last reading.
    if sps_limit.is_some() {
        entry.sps_limit = sps_limit;
    }
    if let Some(m) = h.min_idle_cpu_micro {
        entry.min_idle_cpu_micro = m;
    }
    if h.session_since_startup.is_some() {
        entry.session_since_startup = h.session_since_startup;
    }
    if let Some(up) = h.uptime_msec {
        entry.uptime_msec = Some(up);
        entry.uptime.record(reading, up);
    }
    if h.core_uuid.is_some() {
        entry.core_uuid.clone_from(&h.core_uuid);
        info.core_uuid.clone_from(&h.core_uuid);
    }
}

impl FsMonitor {
    pub fn new(config: &Config) -> std::io::Result<FsMonitor> {
        let control = &config.control;
        let pool = EslPool::new(PoolConfig {
            heartbeat_timeout: control.heartbeat_timeout,
            recycle_after: Some(control.heartbeat_timeout * 2),
            format: HeartbeatFormat::Json,
            extra_events: vec!["SHUTDOWN_REQUESTED".to_owned()],
            ..PoolConfig::default()
        })?;
        let mut m = FsMonitor {
            pool,
            conns: HashMap::new(),
            by_id: HashMap::new(),
            events: Vec::new(),
            pending_visibility: Vec::new(),
            status_interval: Some(control.status_interval),
            idle_cpu_smoothing: control.idle_cpu_smoothing,
            max_sessions_ceiling: control.max_sessions_ceiling,
        };
        m.sync(config, &mut Stats::default());
        Ok(m)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Opens connections for new boxes, closes those for boxes the config no longer names, and
    /// keeps the rest (and their stats) as they are.
    pub fn sync(&mut self, config: &Config, stats: &mut Stats) {
        self.status_interval = Some(config.control.status_interval);
        self.idle_cpu_smoothing = config.control.idle_cpu_smoothing;
        self.max_sessions_ceiling = config.control.max_sessions_ceiling;
        let wanted: Vec<&FsEndpoint> = config.fs_endpoints();
        let keys: Vec<FsKey> = wanted.iter().map(|f| f.key()).collect();
        let gone: Vec<FsKey> = self.conns.keys().filter(|k| !keys.contains(k)).cloned().collect();
        for k in gone {
            if let Some(c) = self.conns.remove(&k) {
                self.pool.remove(c.id);
                self.by_id.remove(&c.id);
            }
            stats.fs.remove(&k);
            tracing::info!(box = %k, "FreeSWITCH box left the config; ESL connection closed");
        }
        for fs in wanted {
            let key = fs.key();
            let same = self
                .conns
                .get(&key)
                .is_some_and(|c| c.user == fs.user && c.password == fs.password);
            if same {
                continue;
            }
            if let Some(old) = self.conns.remove(&key) {
                self.pool.remove(old.id);
                self.by_id.remove(&old.id);
                stats.fs.remove(&key);
            }
            let url = url_of(fs);
            let masked = url.display_masked();
            let id = self.pool.add(url);
            self.by_id.insert(id, key.clone());
            self.conns.insert(
                key,
                Conn {
                    id,
                    next_status: None,
                    user: fs.user.clone(),
                    password: fs.password.clone(),
                    info: FsInfo { url: masked, ..FsInfo::default() },
                },
            );
        }
    }

    /// Drives every ESL connection for at most `timeout` and folds what happened into `stats`.
    /// Returns whether the routing table must be rebuilt.
    pub fn poll(&mut self, timeout: Duration, now: Instant, stats: &mut Stats) -> bool {
        self.poll_status(now, stats);
        self.events.clear();
        if let Err(e) = self.pool.poll(Some(timeout), now, &mut self.events) {
            tracing::warn!(error = %e, "ESL poll failed");
            std::thread::sleep(timeout);
            return false;
        }
        // The poll may have waited: stamp events with when they were read, not when it began.
        let now = Instant::now();
        let mut changed = false;
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            changed |= self.apply(ev, now, stats);
        }
        self.events = events;
        changed
    }

    /// Re-reads `api status` (limits change live: `fsctl sps`, `fsctl max_sessions`) and whether
    /// inbound calls are paused, every `status_interval`, on every connected box.
    fn poll_status(&mut self, now: Instant, stats: &Stats) {
        let Some(every) = self.status_interval.filter(|d| !d.is_zero()) else { return };
        for (key, c) in &mut self.conns {
            let connected = stats.fs.get(key).is_some_and(|s| s.connected);
            if !connected {
                c.next_status = None;
                continue;
            }
            match c.next_status {
                // The seed `api status` has just been read: the next one is a whole interval away.
                None => c.next_status = Some(now + every),
                Some(at) if at <= now => {
                    // At most two of ours unanswered: a box that stopped answering is not sent more.
                    self.pool.api(c.id, "status", 4);
                    self.pool.api(c.id, PAUSE_CHECK, 4);
                    c.next_status = Some(now + every);
                }
                Some(_) => {}
            }
        }
    }

    fn apply(&mut self, ev: &PoolEvent, now: Instant, stats: &mut Stats) -> bool {
        let id = match ev {
            PoolEvent::Connected(id)
            | PoolEvent::Seed(id, _)
            | PoolEvent::Heartbeat(id, _)
            | PoolEvent::Rejected(id, _)
            | PoolEvent::Stale(id)
            | PoolEvent::Disconnected(id, _)
            | PoolEvent::ConnectFailed(id, _)
            | PoolEvent::AuthFailed(id)
            | PoolEvent::Status(id, _)
            | PoolEvent::Api(id, _, _)
            | PoolEvent::Event(id, _, _) => *id,
        };
        let Some(key) = self.by_id.get(&id).cloned() else { return false };
        let Some(conn) = self.conns.get_mut(&key) else { return false };
        let entry = stats.fs.entry(key.clone()).or_default();
        match ev {
            PoolEvent::Connected(_) => {
                tracing::info!(box = %conn.info.url, "ESL connected");
                conn.info.last_error = None;
                conn.next_status = None;
                // Connected but no numbers yet: counts as "before the first heartbeat". What the box
                // said before (its boot, its limits, its CPU history) stays until it says otherwise.
                entry.on_connected();
                true
            }
            PoolEvent::Seed(_, h) | PoolEvent::Heartbeat(_, h) | PoolEvent::Status(_, h) => {
                let reading = if matches!(ev, PoolEvent::Heartbeat(..)) { Reading::Heartbeat } else { Reading::Status };
                // Always a rebuild: even with the same numbers, a capacity moves with fsroute's own
                // calls at heartbeat time.
                apply_numbers(entry, &mut conn.info, h, reading, now, self.idle_cpu_smoothing, self.max_sessions_ceiling);
                if !matches!(ev, PoolEvent::Status(..)) {
                    self.pending_visibility.push(now);
                }
                true
            }
            PoolEvent::Api(_, command, body) => {
                if command.strip_prefix("api ") != Some(PAUSE_CHECK) {
                    return false;
                }
                let text = String::from_utf8_lossy(body);
                let paused = match text.trim() {
                    t if t.starts_with("true") => true,
                    t if t.starts_with("false") => false,
                    other => {
                        tracing::debug!(box = %conn.info.url, reply = %other, "unreadable pause_check reply");
                        return false;
                    }
                };
                if paused != entry.paused {
                    tracing::warn!(box = %conn.info.url, paused, "inbound calls paused on the box: draining");
                    entry.paused = paused;
                    return true;
                }
                false
            }
            PoolEvent::Event(_, name, info) => {
                if name != "SHUTDOWN_REQUESTED" {
                    return false;
                }
                conn.info.shutdown_requests += 1;
                tracing::warn!(box = %conn.info.url, info = ?info, "FreeSWITCH shutdown requested: draining the box");
                let changed = !entry.shutdown_requested;
                entry.shutdown_requested = true;
                changed
            }
            PoolEvent::Rejected(_, e) => {
                conn.info.rejected_heartbeats += 1;
                tracing::warn!(box = %conn.info.url, error = %e, "heartbeat rejected; the previous numbers age on");
                false
            }
            PoolEvent::Stale(_) => {
                tracing::warn!(box = %conn.info.url, "no heartbeat within heartbeat_timeout: stale");
                entry.on_silence();
                true
            }
            PoolEvent::Disconnected(_, why) | PoolEvent::ConnectFailed(_, why) => {
                if matches!(ev, PoolEvent::Disconnected(..)) {
                    tracing::warn!(box = %conn.info.url, reason = %why, "ESL connection lost: stale");
                    conn.info.reconnects += 1;
                }
                conn.info.last_error = Some(why.to_string());
                entry.on_disconnect()
            }
            PoolEvent::AuthFailed(_) => {
                tracing::error!(box = %conn.info.url, "ESL authentication failed");
                conn.info.last_error = Some("authentication failed".into());
                entry.on_disconnect()
            }
        }
    }

    /// Per box: its masked URL and counters, for `/status` and `/metrics`.
    pub fn info(&self, key: &FsKey) -> Option<&FsInfo> {
        self.conns.get(key).map(|c| &c.info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(uuid: &str, uptime_ms: u64, s: u64, m: u64) -> HeartbeatStats {
        HeartbeatStats {
            idle_cpu_micro: 90_000_000,
            session_count: s,
            max_sessions: m,
            core_uuid: Some(uuid.to_owned()),
            uptime_msec: Some(uptime_ms),
            session_since_startup: Some(s),
            ..HeartbeatStats::default()
        }
    }

    #[test]
    fn a_new_core_uuid_or_uptime_going_backwards_is_a_restart_that_resets_the_accounting() {
        let (mut s, mut info) = (FsStats::default(), FsInfo::default());
        let t = Instant::now();
        apply_numbers(&mut s, &mut info, &hb("a", 40_000, 5, 100), Reading::Heartbeat, t, 30, 100_000);
        s.paused = true;
        apply_numbers(&mut s, &mut info, &hb("a", 41_000, 6, 100), Reading::Heartbeat, t, 30, 100_000);
        assert_eq!((s.boot, info.restarts, s.cpu_fit.len()), (0, 0, 2));
        apply_numbers(&mut s, &mut info, &hb("b", 500, 0, 100), Reading::Heartbeat, t, 30, 100_000);
        // The new boot's first readings average in the 100 % its ring started with: not learned from.
        assert_eq!((s.boot, info.restarts, s.cpu_fit.len(), s.paused), (1, 1, 0, false));
        // Same Core-UUID, uptime back to zero (a restart the UUID did not show).
        apply_numbers(&mut s, &mut info, &hb("b", 100, 0, 100), Reading::Heartbeat, t, 30, 100_000);
        assert_eq!((s.boot, info.restarts), (2, 2));
        assert_eq!(s.seq, 4);
    }

    #[test]
    fn a_heartbeat_arriving_after_a_later_status_reading_is_not_a_restart_and_the_box_keeps_draining() {
        let (mut s, mut info) = (FsStats::default(), FsInfo::default());
        let t = Instant::now();
        apply_numbers(&mut s, &mut info, &hb("a", 41_000, 5, 100), Reading::Heartbeat, t, 30, 100_000);
        s.paused = true;
        let mut status = hb("a", 42_010, 5, 100);
        status.core_uuid = None;
        apply_numbers(&mut s, &mut info, &status, Reading::Status, t, 30, 100_000);
        // Made at 42,000 ms, queued behind the status reply: 10 ms "back in time".
        apply_numbers(&mut s, &mut info, &hb("a", 42_000, 5, 100), Reading::Heartbeat, t, 30, 100_000);
        assert_eq!((s.boot, info.restarts, s.paused), (0, 0, true));
        // The box really restarted: its seed reading at reconnect is far back...
        apply_numbers(&mut s, &mut info, &{ let mut r = hb("a", 3_000, 0, 100); r.core_uuid = None; r }, Reading::Status, t, 30, 100_000);
        assert_eq!((s.boot, info.restarts, s.paused), (1, 1, false));
        // ...and the new boot's first heartbeat, with its new Core-UUID, is the same restart.
        apply_numbers(&mut s, &mut info, &hb("b", 3_500, 0, 100), Reading::Heartbeat, t, 30, 100_000);
        assert_eq!((s.boot, info.restarts), (1, 1));
        // Within one kind, any step back is a restart.
        apply_numbers(&mut s, &mut info, &hb("b", 3_400, 0, 100), Reading::Heartbeat, t, 30, 100_000);
        assert_eq!((s.boot, info.restarts), (2, 2));
    }

    #[test]
    fn a_shrinking_max_sessions_is_counted_and_status_limits_are_kept_across_heartbeats() {
        let (mut s, mut info) = (FsStats::default(), FsInfo::default());
        let t = Instant::now();
        let mut status = hb("a", 1_000, 0, 100);
        status.sessions_per_sec_limit = Some(30);
        status.min_idle_cpu_micro = Some(10_000_000);
        apply_numbers(&mut s, &mut info, &status, Reading::Status, t, 30, 100_000);
        apply_numbers(&mut s, &mut info, &hb("a", 2_000, 0, 60), Reading::Heartbeat, t, 30, 100_000);
        assert_eq!((info.max_sessions_shrunk, s.max_sessions), (1, 60));
        assert_eq!((s.sps_limit, s.min_idle_cpu_micro), (Some(30), 10_000_000), "a heartbeat does not carry them");
        apply_numbers(&mut s, &mut info, &hb("a", 3_000, 0, 80), Reading::Heartbeat, t, 30, 100_000);
        assert_eq!(info.max_sessions_shrunk, 1, "growing is not shrinking");
    }

    #[test]
    fn absurd_max_sessions_sps_and_idle_cpu_are_read_at_their_bound_and_counted_per_reading() {
        let (mut s, mut info) = (FsStats::default(), FsInfo::default());
        let t = Instant::now();
        let mut lying = hb("a", 1_000, 10, u64::MAX);
        lying.idle_cpu_micro = 400_000_000;
        lying.sessions_per_sec_limit = Some(u64::MAX);
        apply_numbers(&mut s, &mut info, &lying, Reading::Heartbeat, t, 0, 5_000);
        assert_eq!((s.max_sessions, s.sps_limit, s.idle_cpu_micro), (5_000, Some(5_000), HUNDRED_PERCENT_MICRO));
        assert_eq!(info.clamped, Clamped { max_sessions: 1, session_count: 0, sessions_per_second: 1, idle_cpu: 1 });
        // A heartbeat carries no sps limit: only its Max-Sessions is bounded again.
        apply_numbers(&mut s, &mut info, &hb("a", 2_000, 10, 1 << 40), Reading::Heartbeat, t, 0, 5_000);
        assert_eq!(info.clamped, Clamped { max_sessions: 2, session_count: 0, sessions_per_second: 1, idle_cpu: 1 });
        // Figures at the bound and below are the box's own, and nothing is counted.
        let mut honest = hb("a", 3_000, 10, 5_000);
        honest.sessions_per_sec_limit = Some(5_000);
        honest.idle_cpu_micro = HUNDRED_PERCENT_MICRO;
        apply_numbers(&mut s, &mut info, &honest, Reading::Heartbeat, t, 0, 5_000);
        assert_eq!((s.max_sessions, s.sps_limit, s.idle_cpu_micro), (5_000, Some(5_000), HUNDRED_PERCENT_MICRO));
        assert_eq!(info.clamped.max_sessions, 2);
        assert_eq!(info.max_sessions_shrunk, 0, "a bounded figure that stays is not a shrink");
    }

    #[test]
    fn a_session_count_past_the_ceiling_is_read_at_the_bound_and_leaves_the_cpu_fit_intact() {
        let (mut s, mut info) = (FsStats::default(), FsInfo::default());
        let t = Instant::now();
        // An honest box: 1 % of Idle-CPU per session, 0 to 40 sessions.
        for (i, n) in [0u64, 10, 20, 30, 40].into_iter().enumerate() {
            let mut h = hb("a", 1_000 * (i as u64 + 1), n, 1_000);
            h.idle_cpu_micro = HUNDRED_PERCENT_MICRO - (n as u32) * 1_000_000;
            apply_numbers(&mut s, &mut info, &h, Reading::Heartbeat, t + Duration::from_secs(i as u64), 0, 5_000);
        }
        let honest_cost = s.cpu_fit.cost_micro(0, 0).0;
        assert_eq!(honest_cost, 1_000_000);
        // Two readings of 2^64 − 1 sessions in one smoothing window: summed raw, they overflow.
        for i in 5..7u64 {
            let mut h = hb("a", 1_000 * (i + 1), u64::MAX, 1_000);
            h.idle_cpu_micro = 60_000_000;
            apply_numbers(&mut s, &mut info, &h, Reading::Heartbeat, t + Duration::from_secs(i), 30, 5_000);
        }
        assert_eq!(s.session_count, 5_000, "read at the ceiling, not u32::MAX");
        assert_eq!(info.clamped.session_count, 2);
        assert_eq!(info.clamped.max_sessions, 0, "only the field that lied is counted");
        let cost = s.cpu_fit.cost_micro(0, 0).0;
        assert!(cost > 0, "the line still slopes down: {cost}");
    }

    #[test]
    fn a_box_claiming_two_to_the_64_sessions_is_worth_the_ceiling_not_four_billion_calls() {
        use crate::state::{AdminState, CounterStore};
        use crate::table_builder::build_table;
        let c = crate::config::parse(
            "[proxy]\nlisten = [\"127.0.0.1:5060\"]\n\n[control]\ncapacity_model = \"opensips\"\nmax_sessions_ceiling = 2000\n\n\
             [[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:127.0.0.1:5081\"\nresources = \"ch=fs://:ClueCon@127.0.0.1:8021\"\n\n\
             [[route]]\nto_load_balancer = 1\nresources = \"ch\"\n",
            std::path::Path::new("ceiling.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (mut s, mut info) = (FsStats::default(), FsInfo::default());
        let mut lying = hb("a", 1_000, 0, u64::MAX);
        lying.idle_cpu_micro = HUNDRED_PERCENT_MICRO;
        apply_numbers(&mut s, &mut info, &lying, Reading::Heartbeat, Instant::now(), 0, c.control.max_sessions_ceiling);
        s.connected = true;
        let mut stats = Stats::default();
        stats.fs.insert(c.fs_endpoints()[0].key(), s);
        let t = build_table(&c, &stats, &AdminState::default(), &mut CounterStore::new(), 1);
        assert_eq!(t.lb_groups[0].destinations[0].resources[0].as_ref().unwrap().effective, 2000, "not 4294967295");
    }

    #[test]
    fn max_sessions_ceiling_defaults_to_100000_and_a_bad_one_is_an_error_naming_the_field() {
        let parse = |control: &str| {
            crate::config::parse(&format!("[proxy]\nlisten = [\"127.0.0.1:5060\"]\n\n[control]\n{control}\n"), std::path::Path::new("c.toml"))
        };
        assert_eq!(parse("").unwrap_or_else(|e| panic!("{e}")).control.max_sessions_ceiling, 100_000);
        assert_eq!(parse("max_sessions_ceiling = 5000").unwrap_or_else(|e| panic!("{e}")).control.max_sessions_ceiling, 5000);
        for bad in ["0", "-1", "4294967296"] {
            let e = parse(&format!("max_sessions_ceiling = {bad}")).expect_err(bad).to_string();
            assert!(e.contains("c.toml:5:") && e.contains("control.max_sessions_ceiling") && e.contains("between 1 and"), "{e}");
        }
    }
}
