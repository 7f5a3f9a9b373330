//! What the admin endpoints say: all of `/status` (JSON) and `/metrics` (OpenMetrics text),
//! assembled here from the control thread's state as [`ControlView`] lends it: the current routing
//! table, the per-shard counters, the reload record, each box's stats and ESL counters, probe
//! verdicts and admin overrides. Rendering is pure (tested without sockets); the HTTP listener
//! lives in `admin_http`, and `runtime` only hands each request its view.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fsroute_dataplane::conn::Closed;
use fsroute_dataplane::stats::{DropReason, Refusal, ShardStats};
use fsroute_dataplane::table::RoutingTable;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::config::{CapacityModel, Config, DestState, FsKey, Weight};
use crate::dns::{DnsBook, Skipped};
use crate::freeswitch::{Clamped, FsInfo, FsMonitor};
use crate::headroom::{Binding, CostSource};
use crate::probe::Prober;
use crate::reconcile::Reconciler;
use crate::state::{AdminState, CounterStore, FsStats, Stats};
use crate::table_builder::{box_headroom, cpu_cost};

/// What `/status` reports about configuration loads.
#[derive(Clone, Debug, Default)]
pub struct ReloadRecord {
    pub path: String,
    pub loaded_at: Option<SystemTime>,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_error: Option<String>,
}

/// OpenSIPS's three states as an operator reads them: inactive is an admin decision; otherwise a
/// destination that takes no calls is probing (waiting for probes or an admin to bring it back).
fn state_name(active: bool, state: Option<DestState>) -> &'static str {
    match state {
        Some(DestState::Inactive) => "inactive",
        _ if active => "active",
        _ => "probing",
    }
}

/// Per destination, what the table does not hold.
#[derive(Clone, Debug, Default)]
struct DestExtra {
    /// The admin state in force (an override, else the row's state).
    pub state: Option<DestState>,
    /// The OPTIONS probe verdict, when probing is on.
    pub probe: Option<Value>,
    pub configured_weight: Option<String>,
    /// `null` for static weights.
    pub fs: Option<Value>,
    /// The row as written, for an address of a name (docs/DNS.md).
    pub name: Option<String>,
}

/// How fast the control plane turns news into routing: heartbeat read -> table visible, and the
/// table build itself (microseconds).
#[derive(Debug)]
pub struct Timings {
    pub heartbeat_visible: Histogram<u64>,
    pub rebuild: Histogram<u64>,
}

impl Default for Timings {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds");
        Timings { heartbeat_visible: h(), rebuild: h() }
    }
}

impl Timings {
    pub fn record_rebuild(&mut self, d: std::time::Duration) {
        self.rebuild.saturating_record(d.as_micros().max(1) as u64);
    }
    pub fn record_heartbeat_visible(&mut self, d: std::time::Duration) {
        self.heartbeat_visible.saturating_record(d.as_micros().max(1) as u64);
    }
}

fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.5),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    })
}

/// The control thread's state as `/status` and `/metrics` read it, lent for one request.
pub struct ControlView<'a> {
    /// The config as written.
    pub config: &'a Config,
    /// Its rows with each name expanded into its addresses now (docs/DNS.md).
    pub routing: &'a Config,
    pub dns: &'a DnsBook,
    pub dns_skipped: &'a [Skipped],
    pub stats: &'a Stats,
    pub admin: &'a AdminState,
    pub counters: &'a CounterStore,
    /// The table the shards use now.
    pub table: &'a RoutingTable,
    pub shards: &'a [Arc<ShardStats>],
    pub fs: &'a FsMonitor,
    pub prober: &'a Prober,
    pub reconciler: &'a Reconciler,
    pub record: &'a ReloadRecord,
    pub timings: &'a Timings,
}

impl ControlView<'_> {
    /// `GET /status`.
    pub fn status(&self) -> Value {
        let (table, reload, timings) = (self.table, self.record, self.timings);
        let sets: Vec<Value> = table
            .sets
            .iter()
            .map(|s| {
                let dests: Vec<Value> = s
                    .destinations
                    .iter()
                    .map(|d| {
                        let x = self.dest_extra(s.setid, &d.uri);
                        json!({
                            "uri": d.uri,
                            "name": x.name,
                            "address": d.addr.to_string(),
                            "state": state_name(d.active, x.state),
                            "probe": x.probe,
                            "weight": d.weight,
                            "configured_weight": x.configured_weight,
                            "priority": d.priority,
                            "forwarded": d.counters.forwarded.load(Ordering::Relaxed),
                            "fs": x.fs,
                        })
                    })
                    .collect();
                json!({ "setid": s.setid, "destinations": dests })
            })
            .collect();
        let shard_values: Vec<Value> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let dropped: serde_json::Map<String, Value> =
                    DropReason::ALL.iter().map(|r| (r.label().to_string(), json!(st.dropped(*r)))).collect();
                let refused: serde_json::Map<String, Value> =
                    Refusal::ALL.iter().map(|r| (r.label().to_string(), json!(st.refused(*r)))).collect();
                json!({
                    "shard": i,
                    "received": ShardStats::get(&st.received),
                    "processed": ShardStats::get(&st.processed),
                    "replied": ShardStats::get(&st.replied),
                    "handed_off": ShardStats::get(&st.handed_off),
                    "send_blocked": ShardStats::get(&st.send_blocked),
                    "failovers": ShardStats::get(&st.failovers),
                    "absorbed": ShardStats::get(&st.absorbed),
                    "call_memory_entries": ShardStats::get(&st.memory_entries),
                    "call_state": {
                        "transactions": ShardStats::get(&st.transactions),
                        "dialogs": ShardStats::get(&st.dialogs),
                        "established": ShardStats::get(&st.established),
                        "forks": ShardStats::get(&st.forks),
                        "fork_bytes": ShardStats::get(&st.fork_bytes),
                        "calls_timed_out": ShardStats::get(&st.calls_timed_out),
                        "memory_full": ShardStats::get(&st.memory_full),
                        "expiry_records": ShardStats::get(&st.expiry_records),
                    },
                    "capture": {
                        "sent": ShardStats::get(&st.capture_sent),
                        "dropped": ShardStats::get(&st.capture_dropped),
                    },
                    "dropped": dropped,
                    "refused": refused,
                    "tcp": {
                        "connections": ShardStats::get(&st.tcp_connections),
                        "accepted": ShardStats::get(&st.tcp_accepted),
                        "refused_source_limit": ShardStats::get(&st.tcp_refused),
                        "connected": ShardStats::get(&st.tcp_connected),
                        "connect_failed": ShardStats::get(&st.tcp_connect_failed),
                        "udp_to_tcp": ShardStats::get(&st.udp_to_tcp),
                        "udp_to_tcp_fallback": ShardStats::get(&st.udp_to_tcp_fallback),
                        "received": ShardStats::get(&st.tcp_received),
                        "sent": ShardStats::get(&st.tcp_sent),
                        "keepalives": ShardStats::get(&st.tcp_keepalives),
                        "tls_connections": ShardStats::get(&st.tls_connections),
                        "tls_handshakes": ShardStats::get(&st.tls_handshakes),
                        "tls_handshake_failed": ShardStats::get(&st.tls_handshake_failed),
                        "closed": Closed::ALL
                            .iter()
                            .map(|r| (r.label().to_string(), json!(ShardStats::get(&st.tcp_closed[*r as usize]))))
                            .collect::<serde_json::Map<String, Value>>(),
                    },
                })
            })
            .collect();
        let loaded_at = reload
            .loaded_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string());
        let groups: Vec<Value> = table
            .lb_groups
            .iter()
            .map(|g| {
                let dests: Vec<Value> = g
                    .destinations
                    .iter()
                    .map(|d| {
                        let resources: Vec<Value> = g
                            .resource_names
                            .iter()
                            .zip(&d.resources)
                            .filter_map(|(name, r)| {
                                r.as_ref().map(|r| {
                                    let load = r.load.held();
                                    // A box-backed resource has no fixed max: its load plus what the box can still take.
                                    let max = match &r.fs {
                                        Some(b) => u64::from(load) + b.available(Instant::now()),
                                        None => u64::from(r.effective),
                                    };
                                    // Units written off by reconciliation whose calls have not ended yet.
                                    json!({ "name": name, "max": max, "load": load, "forgiven": r.load.forgiven() })
                                })
                            })
                            .collect();
                        let name = self
                            .routing
                            .load_balancer
                            .iter()
                            .find(|r| r.group_id == g.group_id && r.uri == d.uri)
                            .and_then(|r| r.resolved.as_ref())
                            .map(|f| f.uri.clone());
                        json!({ "uri": d.uri, "name": name, "address": d.addr.to_string(), "enabled": d.enabled, "resources": resources })
                    })
                    .collect();
                json!({ "group_id": g.group_id, "destinations": dests })
            })
            .collect();
        json!({
            "dispatcher": sets,
            "load_balancer": groups,
            "freeswitch": self.fs_metrics().iter().map(FsMetric::to_json).collect::<Vec<_>>(),
            "dns": self.dns_status(Instant::now()),
            "shards": shard_values,
            "table_generation": table.generation,
            "capture": table.capture.map(|c| json!({
                "hep": c.collector.to_string(),
                "capture_id": c.capture_id,
                "queue": c.queue,
            })),
            "control": {
                "heartbeat_to_table": summary(&timings.heartbeat_visible),
                "table_rebuild": summary(&timings.rebuild),
            },
            "config": {
                "path": reload.path,
                "loaded_at": loaded_at,
                "reloads": reload.reloads,
                "reload_failures": reload.reload_failures,
                "last_error": reload.last_error,
            },
        })
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        let mut text = metrics_text(self.table, self.shards, self.record, &self.fs_metrics(), self.timings);
        append_families(&mut text, &dns_metrics_text(self.dns));
        text
    }

    /// `/status`'s `dns`: per destination name what was asked, the addresses in force, the TTL and
    /// the next refresh, and since when it fails and when its addresses leave.
    fn dns_status(&self, now: Instant) -> Value {
        let c = &self.config.dns;
        let grace = self.dns.timers().grace;
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let names: Vec<Value> = self
            .dns
            .names()
            .map(|(n, s)| {
                let addrs: Vec<Value> = s
                    .addrs
                    .iter()
                    .map(|a| match a.srv {
                        Some(r) => json!({ "address": a.addr.to_string(), "srv_priority": r.priority, "srv_weight": r.weight }),
                        None => json!({ "address": a.addr.to_string() }),
                    })
                    .collect();
                let skipped: Vec<Value> = self
                    .dns_skipped
                    .iter()
                    .filter(|k| &k.name == n)
                    .map(|k| json!({ "address": k.addr.to_string(), "why": k.why }))
                    .collect();
                let state = match (s.addrs.is_empty(), s.failing_since.is_some()) {
                    (false, false) => "resolved",
                    (false, true) => "failing",
                    (true, _) if s.expired => "expired",
                    (true, _) if s.resolutions == 0 && s.failures == 0 => "pending",
                    (true, _) => "unresolved",
                };
                json!({
                    "name": n.uri(),
                    "query": n.query(),
                    "state": state,
                    "addresses": addrs,
                    "skipped": skipped,
                    "ttl_s": s.ttl.map(|t| t.as_secs()),
                    "refresh_s": s.refresh.map(|t| t.as_secs_f64()),
                    "next_refresh_in_ms": s.in_flight.is_none().then(|| ms(s.next_query.saturating_duration_since(now))),
                    "answered_ago_ms": s.answered_at.map(|t| ms(now.saturating_duration_since(t))),
                    "failing_for_ms": s.failing_since.map(|t| ms(now.saturating_duration_since(t))),
                    "leaves_in_ms": s.leaves_at(grace).map(|t| ms(t.saturating_duration_since(now))),
                    "last_error": s.last_error,
                    "resolutions": s.resolutions,
                    "failures": s.failures,
                    "changes": s.changes,
                })
            })
            .collect();
        json!({
            "servers": if c.servers.is_empty() { json!("system") } else { json!(c.servers.iter().map(ToString::to_string).collect::<Vec<_>>()) },
            "min_ttl_s": c.min_ttl.as_secs_f64(),
            "max_ttl_s": c.max_ttl.as_secs_f64(),
            "grace_s": c.grace.as_secs_f64(),
            "names": names,
        })
    }

    /// A box's stats and ESL counters (defaults before it has any).
    fn fs_box(&self, key: &FsKey) -> (FsStats, FsInfo) {
        (self.stats.fs.get(key).cloned().unwrap_or_default(), self.fs.info(key).cloned().unwrap_or_default())
    }

    fn fs_metrics(&self) -> Vec<FsMetric> {
        self.config
            .fs_endpoints()
            .into_iter()
            .map(|fs| {
                let key = fs.key();
                let (s, info) = self.fs_box(&key);
                FsMetric {
                    url: fs.to_string(),
                    connected: s.connected,
                    stale: s.is_stale(),
                    heartbeat_age: s.last_heartbeat.map(|t| t.elapsed()),
                    session_count: s.session_count,
                    max_sessions: s.max_sessions,
                    idle_cpu_micro: s.idle_cpu_micro,
                    rejected_heartbeats: info.rejected_heartbeats,
                    reconnects: info.reconnects,
                    lifecycle: s.lifecycle(),
                    headroom: self.box_headroom(&key, &s),
                    restarts: info.restarts,
                    max_sessions_shrunk: info.max_sessions_shrunk,
                    units_reconciled: self.reconciler.reconciled(&key),
                    clamped: info.clamped,
                }
            })
            .collect()
    }

    /// What the headroom model makes of one box now (None under the `opensips` model).
    fn box_headroom(&self, key: &FsKey, s: &FsStats) -> Option<BoxHeadroom> {
        if self.config.control.capacity_model != CapacityModel::Headroom {
            return None;
        }
        let control = &self.config.control;
        let gate = self.counters.box_gate(key)?;
        let table = self.table;
        // The admission the shards use now: any row naming the box carries the same one.
        let adm = table
            .lb_groups
            .iter()
            .flat_map(|g| &g.destinations)
            .flat_map(|d| d.resources.iter().flatten())
            .filter_map(|r| r.fs.as_ref())
            .chain(table.sets.iter().flat_map(|s| &s.destinations).filter_map(|d| d.fs.as_ref()))
            .find(|b| Arc::ptr_eq(&b.gate, &gate.gate))
            .cloned();
        let now = Instant::now();
        let (cost, source) = cpu_cost(control, s);
        let h = s.is_fresh().then(|| box_headroom(control, s, self.stats.boxes.get(key)));
        let binding = match (&adm, h) {
            (Some(b), _) if !b.accepting => Binding::Closed,
            (Some(b), _) if !b.rate_open(now) => Binding::Rate,
            (_, Some(h)) => h.binding,
            _ => Binding::Initial,
        };
        Some(BoxHeadroom {
            sessions: h.map_or(0, |h| h.sessions),
            cpu: h.map_or(0, |h| h.cpu),
            rate: adm.as_ref().and_then(|b| b.rate_used(now)),
            available: adm.as_ref().map_or(0, |b| b.available(now)),
            binding: binding.name(),
            cpu_cost_micro: cost,
            cost_source: match source {
                CostSource::Prior => "prior",
                CostSource::Configured => "configured",
                CostSource::Fit => "fit",
            },
            background_cpu_micro: s.cpu_fit.background_micro(),
            sps_limit: s.sps_limit,
            min_idle_cpu_micro: s.min_idle_cpu_micro,
            refusals: gate.gate.refusals(),
            rate_limited: gate.gate.rate_limited(),
            started: gate.gate.started(),
        })
    }

    /// What `/status` shows of a destination beyond the table: its configured weight and, for an
    /// fs:// weight, what its FreeSWITCH box last said.
    fn dest_extra(&self, setid: i32, uri: &str) -> DestExtra {
        let Some(row) = self.routing.dispatcher_row(setid, uri) else {
            return DestExtra::default();
        };
        let name = row.resolved.as_ref().map(|f| f.uri.clone());
        let state = self.admin.state_of(row);
        let probe = self.prober.health(&(setid, uri.to_string())).map(|h| {
            json!({ "up": h.up, "full": h.full, "last_status": h.last_status })
        });
        match &row.weight {
            Weight::Static(w) => DestExtra { configured_weight: Some(w.to_string()), fs: None, state: Some(state), probe, name },
            Weight::Fs(fs) => {
                let key = fs.key();
                let (s, info) = self.fs_box(&key);
                DestExtra {
                    name,
                    state: Some(state),
                    probe,
                    configured_weight: Some(fs.to_string()),
                    fs: Some(json!({
                        "url": fs.to_string(),
                        "connected": s.connected,
                        "idle_cpu": s.last_heartbeat.map(|_| f64::from(s.idle_cpu_micro) / 1e6),
                        "session_count": s.last_heartbeat.map(|_| s.session_count),
                        "max_sessions": s.last_heartbeat.map(|_| s.max_sessions),
                        "heartbeat_age_ms": s.last_heartbeat.map(|t| t.elapsed().as_millis() as u64),
                        "stale": s.is_stale(),
                        "lifecycle": s.lifecycle(),
                        "rejected_heartbeats": info.rejected_heartbeats,
                        "reconnects": info.reconnects,
                        "core_uuid": info.core_uuid,
                        "last_error": info.last_error,
                    })),
                }
            }
        }
    }
}


#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DestLabels {
    setid: i64,
    uri: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct LbLabels {
    group_id: i64,
    uri: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct QuantileLabels {
    what: String,
    quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ShardLabels {
    shard: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DropLabels {
    shard: u64,
    reason: String,
}

fn counter_from(c: &Counter, v: u64) {
    c.inc_by(v);
}

/// One counter per shard and reason (`shard_dropped`, `shard_refused`).
fn by_reason<R: Copy>(
    shards: &[Arc<ShardStats>],
    all: &[R],
    label: fn(R) -> &'static str,
    count: fn(&ShardStats, R) -> u64,
) -> Family<DropLabels, Counter> {
    let fam = Family::<DropLabels, Counter>::default();
    for (i, s) in shards.iter().enumerate() {
        for &r in all {
            let l = DropLabels { shard: i as u64, reason: label(r).to_string() };
            counter_from(&fam.get_or_create(&l), count(s, r));
        }
    }
    fam
}

/// One FreeSWITCH box as `/metrics` shows it.
#[derive(Clone, Debug, Default)]
pub struct FsMetric {
    /// `fs://host:port`, never the password.
    pub url: String,
    pub connected: bool,
    pub stale: bool,
    pub heartbeat_age: Option<std::time::Duration>,
    pub session_count: u32,
    pub max_sessions: u32,
    pub idle_cpu_micro: u32,
    pub rejected_heartbeats: u64,
    pub reconnects: u64,
    /// `running`, `connecting`, `stale`, `shutdown_requested` or `paused`.
    pub lifecycle: &'static str,
    /// The headroom model's view (None under `capacity_model = "opensips"`).
    pub headroom: Option<BoxHeadroom>,
    pub restarts: u64,
    pub max_sessions_shrunk: u64,
    /// Units on the box's load_balancer rows written off by reconciliation, ever.
    pub units_reconciled: u64,
    /// Readings whose figures were past what a real box reports, per field.
    pub clamped: Clamped,
}

/// One box's admission under the headroom model, for `/status` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct BoxHeadroom {
    /// Calls by each limit at the last numbers.
    pub sessions: u64,
    pub cpu: u64,
    /// Calls per rate window, and how many of them are taken now.
    pub rate: Option<(u32, usize)>,
    /// Calls the box may still take now (sessions and CPU, live).
    pub available: u64,
    /// `sessions`, `cpu`, `rate`, `initial` or `closed`.
    pub binding: &'static str,
    pub cpu_cost_micro: u64,
    /// `prior` or `fit`.
    pub cost_source: &'static str,
    pub background_cpu_micro: Option<u64>,
    pub sps_limit: Option<u64>,
    pub min_idle_cpu_micro: u32,
    /// 503s from the box, and admissions refused by its rate window.
    pub refusals: u64,
    pub rate_limited: u64,
    /// Calls fsroute routed there, ever (this boot).
    pub started: u64,
}

impl FsMetric {
    pub fn to_json(&self) -> Value {
        let h = self.headroom.as_ref().map(|h| {
            json!({
                "available": h.available,
                "binding": h.binding,
                "by_limit": { "sessions": h.sessions, "cpu": h.cpu, "rate_per_window": h.rate.map(|r| r.0) },
                "rate_window_used": h.rate.map(|r| r.1),
                "cpu_cost_per_session": h.cpu_cost_micro as f64 / 1e6,
                "cpu_cost_source": h.cost_source,
                "background_cpu": h.background_cpu_micro.map(|b| b as f64 / 1e6),
                "sps_limit": h.sps_limit,
                "min_idle_cpu": f64::from(h.min_idle_cpu_micro) / 1e6,
                "refusals": h.refusals,
                "rate_limited": h.rate_limited,
                "calls_started": h.started,
            })
        });
        json!({
            "url": self.url,
            "lifecycle": self.lifecycle,
            "connected": self.connected,
            "stale": self.stale,
            "session_count": self.session_count,
            "max_sessions": self.max_sessions,
            "idle_cpu": f64::from(self.idle_cpu_micro) / 1e6,
            "heartbeat_age_ms": self.heartbeat_age.map(|a| a.as_millis() as u64),
            "headroom": h,
            "restarts": self.restarts,
            "max_sessions_shrunk": self.max_sessions_shrunk,
            "units_reconciled": self.units_reconciled,
            "clamped": {
                "max_sessions": self.clamped.max_sessions,
                "session_count": self.clamped.session_count,
                "sessions_per_second": self.clamped.sessions_per_second,
                "idle_cpu": self.clamped.idle_cpu,
            },
            "rejected_heartbeats": self.rejected_heartbeats,
            "reconnects": self.reconnects,
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct FsLabels {
    fs: String,
}

fn register_fs(reg: &mut Registry, boxes: &[FsMetric]) {
    let gauge = |name: &str, help: &str, get: &dyn Fn(&FsMetric) -> Option<i64>, reg: &mut Registry| {
        let fam = Family::<FsLabels, Gauge>::default();
        for b in boxes {
            if let Some(v) = get(b) {
                fam.get_or_create(&FsLabels { fs: b.url.clone() }).set(v);
            }
        }
        reg.register(name, help, fam);
    };
    gauge("esl_connected", "1 while the ESL connection is up", &|b| Some(i64::from(b.connected)), reg);
    gauge("esl_stale", "1 while the box's numbers are not used (disconnected or silent)", &|b| Some(i64::from(b.stale)), reg);
    gauge("esl_heartbeat_age_ms", "Milliseconds since the last heartbeat", &|b| b.heartbeat_age.map(|a| a.as_millis() as i64), reg);
    gauge("fs_session_count", "Session-Count from the last heartbeat", &|b| Some(i64::from(b.session_count)), reg);
    gauge("fs_max_sessions", "Max-Sessions from the last heartbeat", &|b| Some(i64::from(b.max_sessions)), reg);
    gauge("fs_idle_cpu_millionths", "Idle-CPU from the last heartbeat, in millionths of a percent", &|b| Some(i64::from(b.idle_cpu_micro)), reg);
    let counter = |name: &str, help: &str, get: &dyn Fn(&FsMetric) -> u64, reg: &mut Registry| {
        let fam = Family::<FsLabels, Counter>::default();
        for b in boxes {
            fam.get_or_create(&FsLabels { fs: b.url.clone() }).inc_by(get(b));
        }
        reg.register(name, help, fam);
    };
    counter("esl_rejected_heartbeats", "Heartbeats with a missing or malformed field", &|b| b.rejected_heartbeats, reg);
    counter("esl_reconnects", "ESL connections lost after being established", &|b| b.reconnects, reg);
    counter("fs_restarts", "FreeSWITCH restarts seen (new Core-UUID or Uptime-msec going backwards)", &|b| b.restarts, reg);
    counter("fs_max_sessions_shrunk", "Times a box's Max-Sessions fell between two readings", &|b| b.max_sessions_shrunk, reg);
    counter("fs_units_reconciled", "load_balancer units written off because the box no longer counted their calls", &|b| b.units_reconciled, reg);
    let clamped = Family::<ClampLabels, Counter>::default();
    for b in boxes {
        let c = &b.clamped;
        for (field, n) in [("max_sessions", c.max_sessions), ("session_count", c.session_count), ("sessions_per_second", c.sessions_per_second), ("idle_cpu", c.idle_cpu)] {
            clamped.get_or_create(&ClampLabels { fs: b.url.clone(), field: field.to_string() }).inc_by(n);
        }
    }
    reg.register("fs_reports_clamped", "Readings with a figure past what any real box reports, read as the bound", clamped);
    gauge("fs_draining", "1 while the box drains (shutdown requested or inbound paused)", &|b| Some(i64::from(matches!(b.lifecycle, "shutdown_requested" | "paused"))), reg);
    let h = |f: fn(&BoxHeadroom) -> Option<i64>| move |b: &FsMetric| b.headroom.as_ref().and_then(f);
    gauge("fs_headroom_available", "Calls the box may still take now (headroom model)", &h(|h| i64::try_from(h.available).ok()), reg);
    gauge("fs_headroom_sessions", "Calls the box could take by Max-Sessions at its last numbers", &h(|h| i64::try_from(h.sessions).ok()), reg);
    gauge("fs_headroom_cpu", "Calls the box could take by CPU at its last numbers", &h(|h| i64::try_from(h.cpu).ok()), reg);
    gauge("fs_rate_budget", "Calls the box may start per rate window (sessions-per-second − 1 − others)", &h(|h| h.rate.map(|r| i64::from(r.0))), reg);
    gauge("fs_cpu_cost_millionths", "Idle-CPU one session costs the box, learned or prior (millionths of a percent)", &h(|h| i64::try_from(h.cpu_cost_micro).ok()), reg);
    let fam = Family::<BindingLabels, Gauge>::default();
    for b in boxes {
        if let Some(h) = &b.headroom {
            for limit in ["sessions", "cpu", "rate", "initial", "closed"] {
                fam.get_or_create(&BindingLabels { fs: b.url.clone(), limit: limit.to_string() }).set(i64::from(h.binding == limit));
            }
        }
    }
    reg.register("fs_binding_limit", "1 for the limit that binds the box now", fam);
    let hc = |f: fn(&BoxHeadroom) -> u64| move |b: &FsMetric| b.headroom.as_ref().map_or(0, f);
    counter("fs_refusals", "503s from the box although fsroute's numbers said it had room", &hc(|h| h.refusals), reg);
    counter("fs_rate_limited", "Calls kept from the box by its rate window", &hc(|h| h.rate_limited), reg);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ClampLabels {
    fs: String,
    field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BindingLabels {
    fs: String,
    limit: String,
}

pub fn metrics_text(
    table: &RoutingTable,
    shards: &[Arc<ShardStats>],
    reload: &ReloadRecord,
    boxes: &[FsMetric],
    timings: &Timings,
) -> String {
    let mut reg = Registry::with_prefix("fsroute");
    register_fs(&mut reg, boxes);
    let t = Family::<QuantileLabels, Gauge>::default();
    for (what, h) in [("heartbeat_to_table", &timings.heartbeat_visible), ("table_rebuild", &timings.rebuild)] {
        for q in ["0.5", "0.99"] {
            let v = h.value_at_quantile(q.parse().unwrap_or(0.5));
            t.get_or_create(&QuantileLabels { what: what.to_string(), quantile: q.to_string() }).set(v as i64);
        }
    }
    reg.register("control_latency_us", "Control-plane latency quantiles since start (microseconds)", t);
    let forwarded = Family::<DestLabels, Counter>::default();
    let failed = Family::<DestLabels, Counter>::default();
    let weight = Family::<DestLabels, Gauge>::default();
    let active = Family::<DestLabels, Gauge>::default();
    for s in &table.sets {
        for d in &s.destinations {
            let l = DestLabels { setid: i64::from(s.setid), uri: d.uri.clone() };
            counter_from(&forwarded.get_or_create(&l), d.counters.forwarded.load(Ordering::Relaxed));
            counter_from(&failed.get_or_create(&l), d.counters.failed.load(Ordering::Relaxed));
            weight.get_or_create(&l).set(i64::from(d.weight));
            active.get_or_create(&l).set(i64::from(d.active));
        }
    }
    reg.register("destination_forwarded", "Initial requests routed to a destination", forwarded);
    let lb_load = Family::<LbLabels, Gauge>::default();
    let lb_max = Family::<LbLabels, Gauge>::default();
    for g in &table.lb_groups {
        for d in &g.destinations {
            for (name, r) in g.resource_names.iter().zip(&d.resources) {
                let Some(r) = r else { continue };
                let l = LbLabels { group_id: i64::from(g.group_id), uri: d.uri.clone(), resource: name.clone() };
                lb_load.get_or_create(&l).set(i64::from(r.load.held()));
                lb_max.get_or_create(&l).set(i64::from(r.effective));
            }
        }
    }
    reg.register("lb_load", "Calls fsroute holds on a load_balancer resource", lb_load);
    reg.register("lb_capacity", "Calls fsroute may hold on a load_balancer resource now (capacity - others)", lb_max);
    reg.register("destination_failed", "INVITEs a destination answered with a final failure", failed);
    reg.register("destination_weight", "Effective dispatcher weight", weight);
    reg.register("destination_active", "1 when the destination takes new calls", active);

    let per_shard = |name: &str, help: &str, get: &dyn Fn(&ShardStats) -> &AtomicU64, reg: &mut Registry| {
        let fam = Family::<ShardLabels, Counter>::default();
        for (i, s) in shards.iter().enumerate() {
            counter_from(&fam.get_or_create(&ShardLabels { shard: i as u64 }), get(s).load(Ordering::Relaxed));
        }
        reg.register(name, help, fam);
    };
    per_shard("shard_received", "Datagrams read from the shard's socket", &|s| &s.received, &mut reg);
    per_shard("shard_processed", "Messages the shard routed and sent", &|s| &s.processed, &mut reg);
    per_shard("shard_replied", "Replies fsroute generated (404/483/503...)", &|s| &s.replied, &mut reg);
    per_shard("shard_handed_off", "Datagrams handed to the owning shard", &|s| &s.handed_off, &mut reg);
    per_shard("shard_send_blocked", "Sends the kernel refused with EAGAIN (the datagrams stayed queued and left later)", &|s| &s.send_blocked, &mut reg);
    per_shard("shard_failovers", "Calls moved to another destination after a failure or silence", &|s| &s.failovers, &mut reg);
    let dropped = by_reason(shards, &DropReason::ALL, DropReason::label, ShardStats::dropped);
    reg.register("shard_dropped", "Datagrams dropped, by reason", dropped);
    let refused = by_reason(shards, &Refusal::ALL, Refusal::label, ShardStats::refused);
    reg.register("shard_refused", "Requests fsroute answered itself instead of forwarding, by reason", refused);
    let gauge = |name: &str, help: &str, get: &dyn Fn(&ShardStats) -> &AtomicU64, reg: &mut Registry| {
        let fam = Family::<ShardLabels, Gauge>::default();
        for (i, s) in shards.iter().enumerate() {
            fam.get_or_create(&ShardLabels { shard: i as u64 }).set(ShardStats::get(get(s)) as i64);
        }
        reg.register(name, help, fam);
    };
    gauge("shard_call_memory_entries", "Remembered transactions and dialogs", &|s| &s.memory_entries, &mut reg);
    gauge("shard_transactions", "Remembered transactions (bounded by limits.transactions)", &|s| &s.transactions, &mut reg);
    gauge("shard_dialogs", "Remembered dialogs (bounded by limits.dialogs)", &|s| &s.dialogs, &mut reg);
    gauge("shard_established_calls", "Answered calls not yet ended", &|s| &s.established, &mut reg);
    gauge("shard_forks", "Failover INVITE transactions (bounded by limits.forks)", &|s| &s.forks, &mut reg);
    gauge("shard_fork_bytes", "Bytes of INVITEs the failover transactions hold (bounded by limits.fork_memory_mib)", &|s| &s.fork_bytes, &mut reg);
    per_shard("shard_calls_timed_out", "Answered calls with no BYE within max_call_duration (units returned)", &|s| &s.calls_timed_out, &mut reg);
    per_shard(
        "shard_call_memory_full",
        "New transactions or dialogs a full call-memory map refused (the message was still routed)",
        &|s| &s.memory_full,
        &mut reg,
    );
    per_shard("shard_tcp_received", "SIP messages framed off the shard's TCP connections", &|s| &s.tcp_received, &mut reg);
    per_shard("shard_tcp_sent", "SIP messages written to the shard's TCP connections", &|s| &s.tcp_sent, &mut reg);
    per_shard("shard_tcp_keepalives", "CRLF CRLF keep-alive pings answered on TCP (RFC 5626)", &|s| &s.tcp_keepalives, &mut reg);
    per_shard("shard_tcp_accepted", "TCP connections accepted", &|s| &s.tcp_accepted, &mut reg);
    per_shard("shard_tcp_refused", "TCP connections refused by proxy.tcp_connections_per_source", &|s| &s.tcp_refused, &mut reg);
    per_shard("shard_tcp_connected", "TCP connections opened to transport=tcp destinations", &|s| &s.tcp_connected, &mut reg);
    per_shard("shard_tcp_connect_failed", "Connections to transport=tcp destinations that failed (reported to failover)", &|s| &s.tcp_connect_failed, &mut reg);
    per_shard(
        "shard_udp_to_tcp",
        "Requests for UDP destinations above proxy.udp_max_message sent over TCP (RFC 3261 18.1.1)",
        &|s| &s.udp_to_tcp,
        &mut reg,
    );
    per_shard(
        "shard_udp_to_tcp_fallback",
        "Of those, requests sent over UDP after all: the destination refused the connection",
        &|s| &s.udp_to_tcp_fallback,
        &mut reg,
    );
    gauge("shard_tcp_connections", "TCP connections the shard owns now (TLS ones included)", &|s| &s.tcp_connections, &mut reg);
    per_shard("shard_tls_handshakes", "TLS handshakes completed (tls: listeners and TLS destinations)", &|s| &s.tls_handshakes, &mut reg);
    per_shard(
        "shard_tls_handshake_failed",
        "TLS connections that ended before their handshake completed (bad or no certificate, garbage, a peer that left)",
        &|s| &s.tls_handshake_failed,
        &mut reg,
    );
    gauge("shard_tls_connections", "TLS connections the shard owns now", &|s| &s.tls_connections, &mut reg);
    let closed = by_reason(shards, &Closed::ALL, Closed::label, |s, r| ShardStats::get(&s.tcp_closed[r as usize]));
    reg.register("shard_tcp_closed", "TCP and TLS connections closed, by reason (peer, idle, framing, too_large, stuck, tls)", closed);
    per_shard("shard_capture_sent", "HEP packets sent towards the capture collector", &|s| &s.capture_sent, &mut reg);
    per_shard(
        "shard_capture_dropped",
        "SIP datagrams not captured: HEP queue full, too large, or the collector refusing",
        &|s| &s.capture_dropped,
        &mut reg,
    );
    gauge("shard_expiry_records", "Call-memory expiry records queued (at most 2 x transactions + 4 x dialogs + 3072)", &|s| &s.expiry_records, &mut reg);

    let reloads: Counter = Counter::default();
    reloads.inc_by(reload.reloads);
    reg.register("config_reloads", "Successful SIGHUP reloads", reloads);
    let failures: Counter = Counter::default();
    failures.inc_by(reload.reload_failures);
    reg.register("config_reload_failures", "Rejected SIGHUP reloads", failures);
    let generation: Gauge = Gauge::default();
    generation.set(table.generation as i64);
    reg.register("table_generation", "Routing table builds so far", generation);

    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct NameLabels {
    name: String,
}

/// Joins a second registry's families to a scrape: one `# EOF`, at the end.
pub fn append_families(text: &mut String, more: &str) {
    text.truncate(text.strip_suffix("# EOF\n").map_or(text.len(), str::len));
    text.push_str(more);
}

/// The DNS families of `/metrics`: per destination name, resolutions, failures and
/// the addresses in force.
pub fn dns_metrics_text(dns: &DnsBook) -> String {
    let mut reg = Registry::with_prefix("fsroute");
    let resolutions = Family::<NameLabels, Counter>::default();
    let failures = Family::<NameLabels, Counter>::default();
    let addresses = Family::<NameLabels, Gauge>::default();
    for (n, s) in dns.names() {
        let l = NameLabels { name: n.uri() };
        resolutions.get_or_create(&l).inc_by(s.resolutions);
        failures.get_or_create(&l).inc_by(s.failures);
        addresses.get_or_create(&l).set(i64::try_from(s.addrs.len()).unwrap_or(i64::MAX));
    }
    reg.register("dns_resolutions", "Answers with addresses for a destination name", resolutions);
    reg.register("dns_failures", "Failed resolutions of a destination name (NXDOMAIN, SERVFAIL, timeout, no address)", failures);
    reg.register("dns_addresses", "Addresses of a destination name in force (kept through failures for dns.grace)", addresses);
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

#[cfg(test)]
mod metrics_tests {
    use std::collections::HashSet;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::state::{AdminState, CounterStore, Stats};
    use crate::table_builder::build_table;

    #[test]
    fn every_metric_family_is_registered_once_so_an_openmetrics_parser_accepts_the_scrape() {
        let c = crate::config::parse(
            "[proxy]\nlisten = [\"127.0.0.1:5060\"]\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:5071\"\nweight = \"fs://:ClueCon@127.0.0.1:8021\"\n",
            Path::new("metrics.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let t = build_table(&c, &Stats::default(), &AdminState::default(), &mut CounterStore::new(), 1);
        let shards = vec![Arc::new(ShardStats::default()), Arc::new(ShardStats::default())];
        let boxes = vec![FsMetric { url: "fs://127.0.0.1:8021".into(), lifecycle: "running", headroom: Some(BoxHeadroom::default()), ..FsMetric::default() }];
        let mut text = metrics_text(&t, &shards, &ReloadRecord::default(), &boxes, &Timings::default());
        let mut dns = crate::dns::DnsBook::new(crate::dns::DnsTimers::from_config(&c.dns));
        let names = [crate::config::DnsTarget { host: "a.example.net".into(), port: None }, crate::config::DnsTarget { host: "b.example.net".into(), port: Some(5080) }];
        dns.sync(&names, dns.timers(), Instant::now());
        append_families(&mut text, &dns_metrics_text(&dns));
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.contains("fsroute_dns_failures_total{name=\"sip:b.example.net:5080\"} 0"), "{text}");
        let mut seen = HashSet::new();
        for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()) {
            assert!(seen.insert(name.to_string()), "{name} is registered twice:\n{text}");
        }
        assert!(seen.contains("fsroute_shard_replied") && seen.contains("fsroute_fs_headroom_available"), "{text}");
        assert!(seen.contains("fsroute_shard_capture_sent") && seen.contains("fsroute_shard_capture_dropped"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
