//! The control plane's view of the FreeSWITCH farm: one ESL connection per distinct host:port
//! named anywhere in the config (shared by every row that names it), kept in step with reloads,
//! and the translation of pool events into `Stats` for the table builder. A box is stale at once
//! when its connection drops or never comes up, and when it stays connected but silent for
//! `heartbeat_timeout`; a rejected heartbeat changes nothing, so the staleness clock keeps running.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fsroute_esl::{ConnId, EslPool, EslUrl, HeartbeatFormat, HeartbeatStats, PoolConfig, PoolEvent, Secret};

use crate::build::{FsStats, Stats};
use crate::config::{Config, FsEndpoint, FsKey};

/// What `/status` and `/metrics` show about one box, besides its numbers in `Stats`.
#[derive(Clone, Debug, Default)]
pub struct FsInfo {
    pub url: String,
    pub rejected_heartbeats: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub core_uuid: Option<String>,
}

pub struct FsMonitor {
    pool: EslPool,
    conns: HashMap<FsKey, Conn>,
    by_id: HashMap<ConnId, FsKey>,
    events: Vec<PoolEvent>,
    /// Heartbeat arrival instants not yet visible in a table, for the latency figure.
    pub pending_visibility: Vec<Instant>,
}

struct Conn {
    id: ConnId,
    /// Credentials as configured; a change reconnects.
    user: Option<String>,
    password: String,
    info: FsInfo,
}

fn url_of(fs: &FsEndpoint) -> EslUrl {
    EslUrl {
        host: fs.endpoint.host.bare(),
        port: fs.endpoint.port,
        user: fs.user.clone(),
        password: Secret::new(fs.password.expose()),
    }
}

fn to_fs_stats(h: &HeartbeatStats, now: Instant, seq: u64) -> FsStats {
    FsStats {
        seq,
        connected: true,
        idle_cpu_micro: h.idle_cpu_micro,
        session_count: u32::try_from(h.session_count).unwrap_or(u32::MAX),
        max_sessions: u32::try_from(h.max_sessions).unwrap_or(u32::MAX),
        last_heartbeat: Some(now),
        stale: false,
    }
}

impl FsMonitor {
    pub fn new(config: &Config) -> std::io::Result<FsMonitor> {
        let control = &config.control;
        let pool = EslPool::new(PoolConfig {
            heartbeat_timeout: control.heartbeat_timeout,
            recycle_after: Some(control.heartbeat_timeout * 2),
            format: HeartbeatFormat::Json,
            ..PoolConfig::default()
        })?;
        let mut m = FsMonitor {
            pool,
            conns: HashMap::new(),
            by_id: HashMap::new(),
            events: Vec::new(),
            pending_visibility: Vec::new(),
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
                .is_some_and(|c| c.user == fs.user && c.password == fs.password.expose());
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
                    user: fs.user.clone(),
                    password: fs.password.expose().to_string(),
                    info: FsInfo { url: masked, ..FsInfo::default() },
                },
            );
        }
    }

    /// Drives every ESL connection for at most `timeout` and folds what happened into `stats`.
    /// Returns whether the routing table must be rebuilt.
    pub fn poll(&mut self, timeout: Duration, now: Instant, stats: &mut Stats) -> bool {
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

    fn apply(&mut self, ev: &PoolEvent, now: Instant, stats: &mut Stats) -> bool {
        let id = match ev {
            PoolEvent::Connected(id)
            | PoolEvent::Seed(id, _)
            | PoolEvent::Heartbeat(id, _)
            | PoolEvent::Rejected(id, _)
            | PoolEvent::Stale(id)
            | PoolEvent::Disconnected(id, _)
            | PoolEvent::ConnectFailed(id, _)
            | PoolEvent::AuthFailed(id) => *id,
        };
        let Some(key) = self.by_id.get(&id).cloned() else { return false };
        let Some(conn) = self.conns.get_mut(&key) else { return false };
        let entry = stats.fs.entry(key.clone()).or_default();
        match ev {
            PoolEvent::Connected(_) => {
                tracing::info!(box = %conn.info.url, "ESL connected");
                conn.info.last_error = None;
                // Connected but no numbers yet: counts as "before the first heartbeat".
                *entry = FsStats { connected: true, seq: entry.seq, ..FsStats::default() };
                true
            }
            PoolEvent::Seed(_, h) | PoolEvent::Heartbeat(_, h) => {
                if h.core_uuid.is_some() {
                    conn.info.core_uuid.clone_from(&h.core_uuid);
                }
                // Always a rebuild: even with the same numbers, a load_balancer capacity moves with
                // fsroute's own calls at heartbeat time (`p_hb`).
                *entry = to_fs_stats(h, now, entry.seq + 1);
                self.pending_visibility.push(now);
                true
            }
            PoolEvent::Rejected(_, e) => {
                conn.info.rejected_heartbeats += 1;
                tracing::warn!(box = %conn.info.url, error = %e, "heartbeat rejected; the previous numbers age on");
                false
            }
            PoolEvent::Stale(_) => {
                tracing::warn!(box = %conn.info.url, "no heartbeat within heartbeat_timeout: stale");
                entry.stale = true;
                true
            }
            PoolEvent::Disconnected(_, why) | PoolEvent::ConnectFailed(_, why) => {
                if matches!(ev, PoolEvent::Disconnected(..)) {
                    tracing::warn!(box = %conn.info.url, reason = %why, "ESL connection lost: stale");
                    conn.info.reconnects += 1;
                }
                conn.info.last_error = Some(why.clone());
                let was = (entry.connected, entry.stale);
                entry.connected = false;
                entry.stale = true;
                was != (false, true)
            }
            PoolEvent::AuthFailed(_) => {
                tracing::error!(box = %conn.info.url, "ESL authentication failed");
                conn.info.last_error = Some("authentication failed".into());
                let was = (entry.connected, entry.stale);
                entry.connected = false;
                entry.stale = true;
                was != (false, true)
            }
        }
    }

    /// Per box: its masked URL and counters, for `/status` and `/metrics`.
    pub fn info(&self, key: &FsKey) -> Option<&FsInfo> {
        self.conns.get(key).map(|c| &c.info)
    }
}
