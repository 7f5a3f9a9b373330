//! The pure routing-table builder: `(Config, Stats, AdminState) -> RoutingTable`. The control
//! plane calls [`build_table`] after a config load, a SIGHUP, a heartbeat, a probe result, a DNS
//! answer that changed or an admin command, then swaps the result in. Nothing here does I/O or
//! reads the clock, nor resolves a name: rows naming a host take the addresses in
//! `Stats::dns` (docs/DNS.md). The only state carried from one build to the next is the
//! [`CounterStore`], so destinations that survive a rebuild keep their counters.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use fsroute_dataplane::admission::{BoxAdmission, RateLog};
use fsroute_dataplane::dispatch::{Member, Selector};
use fsroute_dataplane::lb::{capacity_from_heartbeat, LbDestination, LbGroup, LbResource as DpLbResource, HUNDRED_PERCENT_MICRO};
use fsroute_dataplane::table::{
    Destination, DispatcherSet, FailoverSettings, LbWanted, ProxySettings, Route, RouteTarget, RoutingTable, XAuth,
};

use crate::config::{
    Capacity, CapacityModel, Config, ControlConfig, DestState, DispatcherRow, FsKey, LbResource as ConfigLbResource, LoadBalancerRow, RouteTo, Weight, XAuthMode,
};
use crate::dns::scaled_weight;
use crate::headroom::{self, CostSource, Headroom, Knobs};
use crate::state::{AdminState, BoxSnapshot, CounterStore, Freshness, FsStats, Stats};

/// Builds the routing table for `config` as the runtime sees it now. `generation` must grow
/// with every build. Counters for destinations that left the config are dropped from `counters`.
pub fn build_table(
    config: &Config,
    stats: &Stats,
    admin: &AdminState,
    counters: &mut CounterStore,
    generation: u64,
) -> RoutingTable {
    // Sets and groups are the written config's, so one whose only row names a host that has no
    // address now stays, empty, and its routes keep answering as for any set without a box.
    let written = config;
    let (expanded, _) = crate::dns::expand(written, &stats.dns);
    let config: &Config = &expanded;
    let mut live: HashSet<(i32, String)> = HashSet::new();
    let boxes = match config.control.capacity_model {
        CapacityModel::Headroom => box_admissions(config, stats, counters),
        CapacityModel::Opensips => HashMap::new(),
    };
    let setids = written.setids();
    let mut sets = Vec::with_capacity(setids.len());
    for &setid in &setids {
        let destinations: Vec<Destination> = config
            .dispatcher
            .iter()
            .filter(|r| r.setid == setid)
            .map(|r| {
                live.insert((setid, r.uri.clone()));
                let state = admin.state_of(r);
                // Inactive is an admin decision and sticks; otherwise a probe verdict, when there
                // is one, says whether the box answers.
                let active = match (state, stats.probes.get(&(setid, r.uri.clone()))) {
                    (DestState::Inactive, _) => false,
                    (_, Some(h)) => h.up,
                    (s, None) => s.is_active(),
                };
                // A stale box has no gate: its weight (stale_weight) decides, as it always has.
                let fs = match &r.weight {
                    Weight::Fs(fs) => boxes.get(&fs.key()).filter(|(_, s)| !s.is_stale()).map(|(b, _)| Arc::clone(b)),
                    Weight::Static(_) => None,
                };
                Destination {
                    uri: r.uri.clone(),
                    addr: r.addr,
                    weight: effective_weight(r, &config.control, stats),
                    priority: r.priority,
                    active,
                    counters: counters.get_or_create(setid, &r.uri),
                    fs,
                }
            })
            .collect();
        let mut destinations = destinations;
        if config.control.capacity_model == CapacityModel::Headroom {
            headroom_weights(config, setid, &mut destinations);
        }
        for (d, r) in destinations.iter_mut().zip(config.dispatcher.iter().filter(|r| r.setid == setid)) {
            if let Some(from) = &r.resolved {
                d.weight = scaled_weight(d.weight, from.share);
            }
        }
        let members: Vec<Member<'_>> = destinations
            .iter()
            .map(|d| Member {
                key: &d.uri,
                weight: d.weight,
                priority: d.priority,
                active: d.active,
            })
            .collect();
        let selector = Selector::new(&members);
        sets.push(DispatcherSet {
            setid,
            destinations,
            selector,
        });
    }
    counters.dispatcher.retain(|k, _| live.contains(k));
    let lb_groups = build_lb_groups(written, config, stats, admin, counters, &boxes);

    let routes = config
        .routes
        .iter()
        .filter_map(|r| match &r.target {
            RouteTo::Dispatcher {
                setid,
                algorithm,
                failover,
            } => match setids.iter().position(|s| s == setid) {
                Some(set) => Some(Route {
                    matcher: r.matcher.clone(),
                    target: RouteTarget::Dispatcher {
                        set,
                        algorithm: *algorithm,
                        failover: *failover,
                    },
                }),
                None => {
                    // Validation rejects this; a hand-built Config could still say it.
                    tracing::error!(
                        line = r.line,
                        setid,
                        "route names a dispatcher set with no destinations; skipped"
                    );
                    None
                }
            },
            RouteTo::LoadBalancer { group_id, resources, flags, failover } => {
                let group = lb_groups.iter().position(|g| g.group_id == *group_id);
                let Some((group, g)) = group.map(|i| (i, &lb_groups[i])) else {
                    tracing::error!(line = r.line, group_id, "route names a load_balancer group with no destinations; skipped");
                    return None;
                };
                let ids: Option<Vec<usize>> = resources.iter().map(|n| g.resource_id(n)).collect();
                let Some(wanted) = ids.as_deref().and_then(LbWanted::new) else {
                    tracing::error!(line = r.line, group_id, "route asks for resources the group lacks (or more than 4); skipped");
                    return None;
                };
                Some(Route { matcher: r.matcher.clone(), target: RouteTarget::LoadBalancer { group, wanted, flags: *flags, failover: *failover } })
            }
        })
        .collect();

    let f = &config.failover;
    let failover = FailoverSettings {
        codes: f.codes.clone(),
        no_answer_timeout: f.no_answer_timeout,
        max_attempts: usize::try_from(f.max_attempts).unwrap_or(usize::MAX),
        exhausted_reply: f.exhausted_reply,
        exhausted_retry_after: (!f.exhausted_retry_after.is_zero()).then_some(f.exhausted_retry_after),
        refused_cooldown: f.refused_cooldown,
    };
    let mut proxy = proxy_settings(config);
    if config.proxy.branch_secret.is_none() {
        proxy.branch_key = counters.branch_key;
    }
    proxy.host_ips = counters.host_ips.clone();
    let streams = config
        .dispatcher
        .iter()
        .map(|r| (&r.uri, r.addr))
        .chain(config.load_balancer.iter().map(|r| (&r.uri, r.addr)))
        .map(|(uri, a)| (a, crate::config::destination_transport(uri)))
        .filter(|(_, t)| t.is_stream())
        .collect();
    let mut t = RoutingTable::new(generation, proxy, sets, routes)
        .with_load_balancer(lb_groups, failover)
        .with_stream_destinations(streams)
        .with_capture(config.capture)
        // The certificates were read when the config was: a table build (every weight change)
        // reads no file, and a SIGHUP that re-read them brings new configs with the new table.
        .with_tls(config.tls.as_ref().map(|t| t.contexts.clone()).unwrap_or_default());
    // A former name that is now a destination's address is that destination's: a Route naming
    // it goes there, not to fsroute.
    let is_destination = |host: &str, port: u16| host.parse().is_ok_and(|ip| t.is_known_destination(&SocketAddr::new(ip, port)));
    let former: Vec<(String, u16)> = counters
        .former_names
        .iter()
        .map(|f| (f.host.clone(), f.port))
        .filter(|(h, p)| !is_destination(h, *p))
        .collect();
    for name in former {
        if !t.proxy.local_names.contains(&name) {
            t.proxy.local_names.push(name);
        }
    }
    t
}

/// Takes fsroute's current load as `p_hb` for every load_balancer resource whose box sent new
/// numbers since the last build. The control plane calls it right after a heartbeat is read, so
/// it is the load "when that heartbeat arrived"; between heartbeats `p_hb` stays fixed and every
/// call fsroute routes or ends moves availability by exactly one.
pub fn snapshot_p_hb(config: &Config, stats: &mut Stats, counters: &CounterStore) {
    for row in &config.load_balancer {
        for res in &row.resources {
            let Capacity::Fs(fs) = &res.capacity else { continue };
            let Some(seq) = stats.fs.get(&fs.key()).filter(|s| s.last_heartbeat.is_some()).map(|s| s.seq) else {
                continue;
            };
            let key = (row.group_id, row.uri.clone(), res.name.clone());
            if stats.p_hb.get(&key).map(|(s, _)| *s) != Some(seq) {
                let p = counters.lb_load(row.group_id, &row.uri, &res.name).map_or(0, |l| l.held());
                stats.p_hb.insert(key, (seq, p));
            }
        }
    }
}

/// The most calls fsroute may hold on one resource now: a fixed capacity as written; from the
/// box's heartbeat `capacity − others` (docs/OPENSIPS.md §7.1); `initial_capacity` before its first
/// numbers; 0 while it is stale (a stale box takes no new calls).
pub fn effective_capacity(row: &LoadBalancerRow, res: &ConfigLbResource, control: &ControlConfig, stats: &Stats) -> u32 {
    match &res.capacity {
        Capacity::Fixed(n) => *n,
        Capacity::Fs(fs) => match (stats.freshness(&fs.key()), stats.fs.get(&fs.key())) {
            (Freshness::Fresh, Some(s)) => {
                let p_hb = stats.p_hb.get(&(row.group_id, row.uri.clone(), res.name.clone())).map_or(0, |(_, p)| *p);
                capacity_from_heartbeat(
                    s.idle_cpu_micro,
                    u64::from(s.max_sessions),
                    u64::from(s.session_count),
                    control.channels_per_call,
                    p_hb,
                )
                .effective
            }
            (Freshness::AwaitingNumbers, _) => control.initial_capacity,
            _ => 0,
        },
    }
}

/// Per box, the CPU cost in use: learned from its heartbeats once they have spread, else the prior.
pub fn cpu_cost(control: &ControlConfig, s: &FsStats) -> (u64, CostSource) {
    match s.cpu_fit.cost_micro(control.cpu_cost_prior_micro, control.cpu_cost_floor_micro) {
        (cost, CostSource::Prior) if control.cpu_cost_prior_configured => (cost, CostSource::Configured),
        other => other,
    }
}

/// A box's headroom now, from its last numbers (docs/ADMISSION.md).
pub fn box_headroom(control: &ControlConfig, s: &FsStats, snap: Option<&BoxSnapshot>) -> Headroom {
    let knobs = Knobs { channels_per_call: control.channels_per_call, cpu_margin_micro: control.cpu_margin_micro };
    let others = snap.map_or(0, |b| b.others_sps);
    let predicted = s.cpu_fit.predict_idle_micro(u64::from(s.session_count));
    headroom::headroom(&s.report(), &knobs, cpu_cost(control, s), predicted, others)
}

/// The longest rate log kept per box: a budget beyond it is enforced as this many starts per window.
const RATE_LOG_MAX: usize = 1 << 16;

/// The headroom model's per-box admissions for this build, with the stats they came from. Each box
/// named anywhere in the config gets one, shared by every row that names it.
fn box_admissions(config: &Config, stats: &Stats, counters: &mut CounterStore) -> HashMap<FsKey, (Arc<BoxAdmission>, FsStats)> {
    let control = &config.control;
    let mut out = HashMap::new();
    let mut live = HashSet::new();
    for fs in config.fs_endpoints() {
        let key = fs.key();
        live.insert(key.clone());
        let s = stats.fs.get(&key).cloned().unwrap_or_default();
        let snap = stats.boxes.get(&key).filter(|b| b.boot == s.boot);
        let c = counters.box_counters(&key, s.boot);
        let gate = Arc::clone(&c.gate);
        let adm = match (stats.freshness(&key), s.draining()) {
            (Freshness::Fresh, None) => {
                let h = box_headroom(control, &s, snap);
                let base = snap.filter(|b| b.seq == s.seq).map_or_else(|| gate.used(), |b| b.used);
                let rate = h.rate.map(|budget| {
                    let capacity = (budget as usize).clamp(1, RATE_LOG_MAX);
                    let log = match &c.rate {
                        // A budget past the longest log keeps the longest log, rather than a new empty
                        // one at every reading (which would forget the window).
                        Some(l) if l.capacity() >= capacity => Arc::clone(l),
                        // A limit that grew (fsctl sps) needs a longer log; the new one starts empty.
                        _ => Arc::new(RateLog::new(capacity)),
                    };
                    c.rate = Some(Arc::clone(&log));
                    (budget, log)
                });
                BoxAdmission { gate, limit: base.saturating_add(h.calls), headroom: h.calls, rate, seq: s.seq, accepting: true }
            }
            (Freshness::AwaitingNumbers, None) => {
                // Before the first numbers: initial_capacity, as OpenSIPS's initial_freeswitch_load.
                let base = gate.used();
                let initial = u64::from(control.initial_capacity);
                BoxAdmission { gate, limit: base + initial, headroom: initial, rate: None, seq: s.seq, accepting: initial > 0 }
            }
            _ => BoxAdmission::closed(gate, s.seq),
        };
        out.insert(key, (Arc::new(adm), s));
    }
    counters.gates.retain(|k, _| live.contains(k));
    out
}

/// Dispatcher weights under the headroom model: each fresh box weighs in proportion to the calls it
/// can still take (the largest in the set weighs `max_freeswitch_weight`); a draining box weighs 0.
/// Shards then admit against the same headroom call by call, so the weights only spread the calls.
fn headroom_weights(config: &Config, setid: i32, dests: &mut [Destination]) {
    let max_w = u64::from(config.control.max_freeswitch_weight);
    let rows: Vec<&DispatcherRow> = config.dispatcher.iter().filter(|r| r.setid == setid).collect();
    let room = |d: &Destination| d.fs.as_ref().filter(|b| b.accepting).map(|b| b.headroom);
    let top = dests.iter().filter_map(room).max().unwrap_or(0);
    for (d, r) in dests.iter_mut().zip(rows) {
        if !matches!(r.weight, Weight::Fs(_)) {
            continue;
        }
        match d.fs.as_ref() {
            Some(b) if !b.accepting => d.weight = 0,
            Some(b) if top > 0 => {
                let w = (max_w * b.headroom + top / 2) / top;
                d.weight = u32::try_from(w.max(u64::from(b.headroom > 0))).unwrap_or(u32::MAX);
            }
            Some(_) => d.weight = 0,
            None => {}
        }
    }
}

/// After new numbers from a box: fsroute's counts at that moment, the base the new headroom is added
/// to, and the sessions others started there since the previous numbers.
pub fn snapshot_boxes(config: &Config, stats: &mut Stats, counters: &CounterStore, now: Instant) {
    for fs in config.fs_endpoints() {
        let key = fs.key();
        let Some(s) = stats.fs.get(&key).filter(|s| s.last_heartbeat.is_some()) else { continue };
        let Some(c) = counters.gates.get(&key).filter(|c| c.boot == s.boot) else { continue };
        let prev = stats.boxes.get(&key).copied().filter(|b| b.boot == s.boot);
        if prev.is_some_and(|b| b.seq == s.seq) {
            continue;
        }
        let started = c.gate.started();
        let others_sps = match (prev, prev.and_then(|b| b.since_startup), s.session_since_startup) {
            (Some(p), Some(before), Some(after)) => {
                let ms = u64::try_from(now.saturating_duration_since(p.at).as_millis()).unwrap_or(u64::MAX);
                // Too short an interval says nothing about a rate; keep the last estimate.
                if ms < 500 {
                    p.others_sps
                } else {
                    headroom::others_sps(after.saturating_sub(before), started.saturating_sub(p.started), config.control.channels_per_call, ms)
                }
            }
            _ => 0,
        };
        stats.boxes.insert(
            key,
            BoxSnapshot { seq: s.seq, boot: s.boot, used: c.gate.used(), started, since_startup: s.session_since_startup, at: now, others_sps },
        );
    }
    stats.boxes.retain(|k, _| stats.fs.contains_key(k));
}

/// The groups of `written` (so a group whose names have no address stays, with its resources and
/// no destination), with the rows of `config`, its expansion.
fn build_lb_groups(
    written: &Config,
    config: &Config,
    stats: &Stats,
    admin: &AdminState,
    counters: &mut CounterStore,
    boxes: &HashMap<FsKey, (Arc<BoxAdmission>, FsStats)>,
) -> Vec<LbGroup> {
    let mut live: HashSet<(i32, String, String)> = HashSet::new();
    let mut groups = Vec::new();
    for group_id in written.group_ids() {
        let rows: Vec<&LoadBalancerRow> = config.load_balancer.iter().filter(|r| r.group_id == group_id).collect();
        let mut names: Vec<String> = Vec::new();
        for r in written.load_balancer.iter().filter(|r| r.group_id == group_id) {
            for res in &r.resources {
                if !names.contains(&res.name) {
                    names.push(res.name.clone());
                }
            }
        }
        let destinations = rows
            .iter()
            .map(|r| {
                let resources = names
                    .iter()
                    .map(|n| {
                        let res = r.resources.iter().find(|x| &x.name == n)?;
                        live.insert((group_id, r.uri.clone(), n.clone()));
                        let load = counters.lb_load_or_create(group_id, &r.uri, n);
                        let fs = match &res.capacity {
                            Capacity::Fs(fs) => boxes.get(&fs.key()).map(|(b, _)| Arc::clone(b)),
                            Capacity::Fixed(_) => None,
                        };
                        Some(match fs {
                            Some(b) => DpLbResource { effective: u32::MAX, load, fs: Some(b) },
                            None => DpLbResource::fixed(effective_capacity(r, res, &config.control, stats), load),
                        })
                    })
                    .collect();
                LbDestination {
                    uri: r.uri.clone(),
                    addr: r.addr,
                    enabled: admin.lb_enabled(group_id, r.written_uri()).unwrap_or(r.state.is_active()),
                    resources,
                }
            })
            .collect();
        groups.push(LbGroup { group_id, resource_names: names, destinations });
    }
    counters.lb.retain(|k, _| live.contains(k));
    groups
}

/// fsroute's identity and behaviour as the data plane reads it.
pub fn proxy_settings(config: &Config) -> ProxySettings {
    let p = &config.proxy;
    let mut local_names: Vec<(String, u16)> = Vec::new();
    let mut add = |host: String, port: u16| {
        let entry = (host.to_ascii_lowercase(), port);
        if !local_names.contains(&entry) {
            local_names.push(entry);
        }
    };
    add(p.advertise.host.bare(), p.advertise.port);
    // No request names fsroute as 0.0.0.0 or ::, so wildcard listeners add no name.
    // A request reaching fsroute over TCP or TLS names a TCP or TLS listener.
    for l in p.listen.iter().chain(&p.listen_tcp).chain(&p.listen_tls).filter(|l| !l.ip().is_unspecified()) {
        add(l.ip().to_string(), l.port());
    }
    for a in &p.aliases {
        add(a.host.bare(), a.port);
    }
    ProxySettings {
        advertise_host: p.advertise.host.uri_form(),
        advertise_port: p.advertise.port,
        tcp_port: p.listen_tcp.first().map(SocketAddr::port),
        tls_port: p.listen_tls.first().map(SocketAddr::port),
        udp_max_message: p.udp_max_message,
        local_names,
        local_addrs: p.listen.clone(),
        record_route: p.record_route,
        max_forwards: u32::from(p.max_forwards),
        hash: p.hash,
        no_route_reply: p.no_route_reply,
        transaction_memory: p.transaction_memory,
        dialog_memory: p.dialog_memory,
        max_call_duration: p.max_call_duration,
        limits: config.limits,
        branch_key: p.branch_secret.as_ref().map(|s| branch_key_from(s.expose())).unwrap_or_default(),
        x_auth: x_auth(config),
        host_ips: Vec::new(),
    }
}

/// Where X-AUTH-IP goes: under `fs`, to the FreeSWITCH boxes, the destinations whose weight or
/// capacity is read over ESL.
fn x_auth(config: &Config) -> XAuth {
    match config.proxy.x_auth_ip {
        XAuthMode::Always => XAuth::Always,
        XAuthMode::Never => XAuth::Never,
        XAuthMode::Fs => {
            let dispatcher = config.dispatcher.iter().filter(|r| matches!(r.weight, Weight::Fs(_))).map(|r| r.addr);
            let lb = config
                .load_balancer
                .iter()
                .filter(|r| r.resources.iter().any(|res| matches!(res.capacity, Capacity::Fs(_))))
                .map(|r| r.addr);
            let mut boxes: Vec<SocketAddr> = dispatcher.chain(lb).collect();
            boxes.sort_unstable();
            boxes.dedup();
            XAuth::To(boxes)
        }
    }
}

/// The MAC key an operator's `proxy.branch_secret` stands for: instances that share it accept
/// each other's branches (two fsroutes behind one address, or a restart with calls in flight).
fn branch_key_from(secret: &str) -> fsroute_dataplane::table::BranchKey {
    use std::hash::Hasher;
    let half = |salt: u64| {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(salt, !salt);
        h.write(secret.as_bytes());
        h.finish()
    };
    fsroute_dataplane::table::BranchKey([half(0x6673_726f_7574_6531), half(0x6673_726f_7574_6532)])
}

/// A row's weight now: a static weight as written; an fs:// weight from the box's last
/// heartbeat (or `api status` seed); `max_freeswitch_weight` before the first numbers, while the
/// first connection is still being made; the row's `fallback_weight` (else `control.stale_weight`)
/// once the box is disconnected or silent — never a frozen last value.
pub fn effective_weight(row: &DispatcherRow, control: &ControlConfig, stats: &Stats) -> u32 {
    match &row.weight {
        Weight::Static(w) => *w,
        Weight::Fs(fs) => match (stats.freshness(&fs.key()), stats.fs.get(&fs.key())) {
            (Freshness::Fresh, Some(s)) => fs_weight(control.max_freeswitch_weight, s),
            // Not tried yet, or connected and waiting for its first numbers.
            (Freshness::AwaitingNumbers, _) => control.max_freeswitch_weight,
            _ => row.fallback_weight.unwrap_or(control.stale_weight),
        },
    }
}

/// OpenSIPS's `round(max_w × (1 − S/M) × Idle/100)`, in integers. A box reporting S ≥ M is full
/// and one reporting M = 0 has no capacity: both weigh 0.
pub fn fs_weight(max_weight: u32, s: &FsStats) -> u32 {
    let hundred = u128::from(HUNDRED_PERCENT_MICRO);
    if s.max_sessions == 0 || s.session_count >= s.max_sessions {
        return 0;
    }
    let idle = u128::from(s.idle_cpu_micro).min(hundred);
    let free = u128::from(s.max_sessions - s.session_count);
    let num = u128::from(max_weight) * free * idle;
    let den = u128::from(s.max_sessions) * hundred;
    // Round half up, as OpenSIPS's round() does for these non-negative values.
    let w = (2 * num + den) / (2 * den);
    u32::try_from(w).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::atomic::Ordering;

    use fsroute_dataplane::dispatch::{Algorithm, HashMode};
    use fsroute_dataplane::lb;

    use super::*;
    use crate::config::{self, Host, HostPort};

    fn cfg(text: &str) -> Config {
        config::parse(text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn build(c: &Config, admin: &AdminState, counters: &mut CounterStore) -> RoutingTable {
        build_table(c, &Stats::default(), admin, counters, 1)
    }

    const THREE: &str = r#"
[proxy]
listen = ["127.0.0.1:5060"]

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5071"
weight = 5
priority = 1

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5072"
weight = 0
priority = 0
state = 1

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5073"
weight = 3
priority = 2
state = 2

[[route]]
to_dispatcher = 1
algorithm = "round-robin"
"#;

    #[test]
    fn weights_priorities_and_row_states_end_up_in_the_table() {
        let t = build(
            &cfg(THREE),
            &AdminState::default(),
            &mut CounterStore::new(),
        );
        let set = &t.sets[0];
        assert_eq!(set.setid, 1);
        let got: Vec<(&str, u32, i32, bool)> = set
            .destinations
            .iter()
            .map(|d| (d.uri.as_str(), d.weight, d.priority, d.active))
            .collect();
        assert_eq!(
            got,
            [
                ("sip:127.0.0.1:5071", 5, 1, true),
                ("sip:127.0.0.1:5072", 0, 0, false),
                ("sip:127.0.0.1:5073", 3, 2, false),
            ]
        );
        assert_eq!(
            set.destinations[2].addr,
            "127.0.0.1:5073".parse::<SocketAddr>().unwrap()
        );
        // Only the active destination takes calls: inactive and probing ones are skipped.
        assert_eq!(set.selector.active_count(), 1);
        assert!((0..10).all(|c| set.selector.pick_round_robin(c) == Some(0)));
    }

    #[test]
    fn an_admin_override_wins_over_the_rows_state() {
        let c = cfg(THREE);
        let mut admin = AdminState::default();
        admin.set_dispatcher_state(1, "sip:127.0.0.1:5071", DestState::Inactive);
        admin.set_dispatcher_state(1, "sip:127.0.0.1:5072", DestState::Active);
        let t = build(&c, &admin, &mut CounterStore::new());
        let active: Vec<bool> = t.sets[0].destinations.iter().map(|d| d.active).collect();
        assert_eq!(active, [false, true, false]);
        assert_eq!(admin.state_name(1, "sip:127.0.0.1:5072"), Some("active"));
        assert_eq!(
            admin.state_name(1, "sip:127.0.0.1:5073"),
            None,
            "no override: the row's state applies"
        );
        assert_eq!(t.sets[0].selector.pick_first(), Some(1));

        admin.clear_dispatcher_state(1, "sip:127.0.0.1:5071");
        let t = build(&c, &admin, &mut CounterStore::new());
        assert!(
            t.sets[0].destinations[0].active,
            "without the override the row's state applies again"
        );
    }

    #[test]
    fn admin_overrides_for_removed_destinations_are_forgotten_on_retain() {
        let mut admin = AdminState::default();
        admin.set_dispatcher_state(1, "sip:127.0.0.1:5071", DestState::Inactive);
        admin.set_dispatcher_state(1, "sip:127.0.0.1:5999", DestState::Inactive);
        admin.retain_known(&cfg(THREE));
        assert_eq!(
            admin.dispatcher_state(1, "sip:127.0.0.1:5071"),
            Some(DestState::Inactive)
        );
        assert_eq!(admin.dispatcher_state(1, "sip:127.0.0.1:5999"), None);
    }

    #[test]
    fn counters_survive_a_rebuild_for_surviving_destinations_and_are_dropped_for_removed_ones() {
        let mut counters = CounterStore::new();
        let t1 = build(&cfg(THREE), &AdminState::default(), &mut counters);
        assert_eq!(counters.len(), 3);
        let kept = Arc::clone(&t1.sets[0].destinations[0].counters);
        kept.forwarded.fetch_add(7, Ordering::Relaxed);

        // Reload: 5071 stays, 5072 and 5073 go, 5074 arrives.
        let reloaded = cfg(r#"
[proxy]
listen = ["127.0.0.1:5060"]

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5074"

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5071"
"#);
        let t2 = build_table(
            &reloaded,
            &Stats::default(),
            &AdminState::default(),
            &mut counters,
            2,
        );
        let survivor = &t2.sets[0].destinations[1];
        assert_eq!(survivor.uri, "sip:127.0.0.1:5071");
        assert!(Arc::ptr_eq(&survivor.counters, &kept));
        assert_eq!(survivor.counters.forwarded.load(Ordering::Relaxed), 7);
        assert_eq!(
            t2.sets[0].destinations[0]
                .counters
                .forwarded
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(counters.len(), 2);
        assert!(counters.get(1, "sip:127.0.0.1:5072").is_none());
        assert!(counters.get(1, "sip:127.0.0.1:5073").is_none());
        assert_eq!(t2.generation, 2);
    }

    #[test]
    fn routes_map_to_the_index_of_their_set_in_file_order() {
        let c = cfg(r#"
[proxy]
listen = ["127.0.0.1:5060"]

[[dispatcher]]
setid = 20
destination = "sip:127.0.0.1:5081"

[[dispatcher]]
setid = 10
destination = "sip:127.0.0.1:5071"

[[dispatcher]]
setid = 20
destination = "sip:127.0.0.1:5082"

[[route]]
method = "INVITE"
to_dispatcher = 10
algorithm = 4

[[route]]
to_dispatcher = 20
"#);
        let t = build(&c, &AdminState::default(), &mut CounterStore::new());
        let setids: Vec<i32> = t.sets.iter().map(|s| s.setid).collect();
        assert_eq!(setids, [20, 10], "sets in order of their first row");
        assert_eq!(t.sets[0].destinations.len(), 2);
        assert_eq!(
            t.routes[0].target,
            RouteTarget::Dispatcher {
                set: 1,
                algorithm: Algorithm::RoundRobin,
                failover: false
            }
        );
        assert_eq!(t.routes[0].matcher.method.as_deref(), Some("INVITE"));
        assert_eq!(
            t.routes[1].target,
            RouteTarget::Dispatcher {
                set: 0,
                algorithm: Algorithm::HashCallId,
                failover: false
            }
        );
        assert!(t.is_known_destination(&"127.0.0.1:5082".parse().unwrap()));
        let src = "192.0.2.1".parse().unwrap();
        let route = t.match_route(b"INVITE", b"sip:+15551234@lb", src).unwrap();
        assert_eq!(
            t.sets[match route.target {
                RouteTarget::Dispatcher { set, .. } => set,
                RouteTarget::LoadBalancer { .. } => panic!("a dispatcher route"),
            }]
            .setid,
            10
        );
    }

    #[test]
    fn local_names_hold_advertise_listeners_and_aliases_lower_cased_without_brackets() {
        let c = cfg(r#"
[proxy]
listen = ["127.0.0.1:5060", "[::1]:5062", "0.0.0.0:5064"]
advertise = "LB1.Example.NET:5060"
aliases = ["lb.example.net", "Edge.Example.Net:5080", "[2001:db8::1]"]
hash = "opensips"
no_route_reply = 503
max_forwards = 30
record_route = false
"#);
        let px = build(&c, &AdminState::default(), &mut CounterStore::new()).proxy;
        assert_eq!(
            px.local_names,
            [
                ("lb1.example.net".to_string(), 5060),
                ("127.0.0.1".to_string(), 5060),
                ("::1".to_string(), 5062),
                ("lb.example.net".to_string(), 5060),
                ("edge.example.net".to_string(), 5080),
                ("2001:db8::1".to_string(), 5060),
            ]
        );
        assert!(px.is_local(b"EDGE.example.net", Some(5080)));
        assert!(px.is_local(b"[::1]", Some(5062)));
        assert_eq!(px.local_addrs.len(), 3);
        assert_eq!(
            (px.advertise_host.as_str(), px.advertise_port),
            ("lb1.example.net", 5060)
        );
        assert_eq!(
            (px.hash, px.no_route_reply, px.max_forwards, px.record_route),
            (HashMode::Opensips, 503, 30, false)
        );
    }

    /// An INVITE relayed under `t`, and the 180 its destination answers with: every Via of the
    /// relayed INVITE, in order (RFC 3261 §8.2.6.2).
    fn invite_and_its_ringing(r: &mut fsroute_dataplane::router::Router, t: &RoutingTable, caller: SocketAddr) -> (SocketAddr, Vec<u8>) {
        use fsroute_dataplane::router::Action;
        let invite = "INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-retire\r\n\
                      Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:1000@127.0.0.1>\r\nCall-ID: retire@test\r\n\
                      CSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:40000>\r\nContent-Length: 0\r\n\r\n";
        let mut out = Vec::new();
        let a = r.handle(t, caller, invite.as_bytes(), Instant::now(), &mut out);
        let Action::Forward(dest) = a else { panic!("not forwarded: {a:?} {}", String::from_utf8_lossy(&out)) };
        let relayed = String::from_utf8(out).unwrap();
        let vias: String = relayed.split("\r\n").filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
        let ringing = format!(
            "SIP/2.0 180 Ringing\r\n{vias}From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:1000@127.0.0.1>;tag=b\r\nCall-ID: retire@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        (dest, ringing.into_bytes())
    }

    #[test]
    fn a_response_to_a_request_sent_under_an_advertise_a_reload_replaced_is_still_relayed() {
        use fsroute_dataplane::router::{Action, Router};
        use fsroute_dataplane::stats::{DropReason, ShardStats};
        let conf = |adv: &str| cfg(&format!("[proxy]\nlisten = [\"127.0.0.1:5060\"]\nadvertise = \"{adv}\"\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:5099\"\n\n[[route]]\nto_dispatcher = 1\n"));
        let (old, new) = (conf("192.0.2.1:5060"), conf("198.51.100.7:5060"));
        let caller: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut counters = CounterStore::new();
        let before = build(&old, &AdminState::default(), &mut counters);
        let mut r = Router::new(0, 1, 42, Arc::new(ShardStats::default()));
        let (dest, ringing) = invite_and_its_ringing(&mut r, &before, caller);
        assert!(String::from_utf8_lossy(&ringing).contains("Via: SIP/2.0/UDP 192.0.2.1:5060;branch="));

        let now = Instant::now();
        counters.retire_names(&proxy_settings(&old).local_names, &proxy_settings(&new).local_names, now, now + new.proxy.dialog_memory);
        let after = build(&new, &AdminState::default(), &mut counters);
        assert!(after.own.via.windows(12).any(|w| w == b"198.51.100.7"), "new requests carry the new address");
        let mut out = Vec::new();
        assert_eq!(r.handle(&after, dest, &ringing, Instant::now(), &mut out), Action::Forward(caller));

        // What the old code did: the replaced name forgotten at once, the answer dropped.
        counters.former_names.clear();
        let forgetful = build(&new, &AdminState::default(), &mut counters);
        assert_eq!(r.handle(&forgetful, dest, &ringing, Instant::now(), &mut out), Action::Drop(DropReason::NotOurVia));
    }

    #[test]
    fn a_former_name_is_kept_until_its_time_and_given_up_when_named_again_or_taken_by_a_destination() {
        let t0 = Instant::now();
        let hour = std::time::Duration::from_secs(3600);
        let (a, b) = (("192.0.2.1".to_string(), 5060), ("198.51.100.7".to_string(), 5060));
        let mut c = CounterStore::new();
        c.retire_names(std::slice::from_ref(&a), std::slice::from_ref(&b), t0, t0 + hour);
        assert_eq!(c.former_names.len(), 1);
        // Moving back: the name is fsroute's own again, and b is the one retired.
        c.retire_names(std::slice::from_ref(&b), std::slice::from_ref(&a), t0 + hour / 2, t0 + hour * 2);
        assert_eq!(c.former_names.iter().map(|f| (f.host.as_str(), f.until)).collect::<Vec<_>>(), [("198.51.100.7", t0 + hour * 2)]);
        // Past its time, the next reload forgets it.
        c.retire_names(std::slice::from_ref(&a), std::slice::from_ref(&a), t0 + hour * 3, t0 + hour * 4);
        assert!(c.former_names.is_empty());
        // A former name that is now a destination's address is the destination's.
        let conf = cfg("[proxy]\nlisten = [\"127.0.0.1:5060\"]\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:5099\"\n");
        c.retire_names(&[("127.0.0.1".to_string(), 5099), ("192.0.2.9".to_string(), 5060)], &[], t0, t0 + hour);
        let t = build(&conf, &AdminState::default(), &mut c);
        assert!(!t.proxy.is_local(b"127.0.0.1", Some(5099)));
        assert!(t.proxy.is_local(b"192.0.2.9", None));
    }

    #[test]
    fn an_ipv6_advertise_is_bracketed_for_via_and_bare_in_local_names() {
        let c = cfg("[proxy]\nlisten = [\"[::1]:5060\"]\n");
        let px = proxy_settings(&c);
        assert_eq!(px.advertise_host, "[::1]");
        assert_eq!(px.local_names, [("::1".to_string(), 5060)]);
    }

    fn fs_config() -> Config {
        config::parse(
            r#"
[proxy]
listen = ["127.0.0.1:5060"]

[control]
capacity_model = "opensips"
stale_weight = 2
max_freeswitch_weight = 100

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5071"
weight = "fs://:ClueCon@127.0.0.1:8021"

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5072"
weight = "fs://:ClueCon@127.0.0.1:8022"
fallback_weight = 9
"#,
            Path::new("fs.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn key(port: u16) -> FsKey {
        HostPort {
            host: Host::Ip("127.0.0.1".parse().unwrap()),
            port,
        }
    }

    fn fresh(idle_cpu_micro: u32, session_count: u32, max_sessions: u32) -> FsStats {
        FsStats {
            connected: true,
            idle_cpu_micro,
            session_count,
            max_sessions,
            last_heartbeat: Some(Instant::now()),
            stale: false,
            seq: 1,
            ..FsStats::default()
        }
    }

    #[test]
    fn fs_weight_follows_opensips_formula_in_integers() {
        // 100 × (1 − 100/1000) × 78.4 % = 70.56 -> 71
        assert_eq!(fs_weight(100, &fresh(78_400_000, 100, 1000)), 71);
        // 100 × 1 × 50 % = exactly 50 (no float drift)
        assert_eq!(fs_weight(100, &fresh(50_000_000, 0, 20)), 50);
        // 0.5 rounds up: 1 × (1 − 1/2) × 100 % = 0.5 -> 1
        assert_eq!(fs_weight(1, &fresh(100_000_000, 1, 2)), 1);
        assert_eq!(fs_weight(100, &fresh(100_000_000, 20, 20)), 0, "full box");
        assert_eq!(
            fs_weight(100, &fresh(100_000_000, 30, 20)),
            0,
            "over-full box"
        );
        assert_eq!(fs_weight(100, &fresh(100_000_000, 0, 0)), 0, "no capacity");
        assert_eq!(
            fs_weight(100, &fresh(200_000_000, 0, 10)),
            100,
            "Idle-CPU above 100 % is clamped"
        );
    }

    #[test]
    fn before_the_first_numbers_a_box_weighs_max_then_its_heartbeat_then_its_fallback_when_stale() {
        let c = fs_config();
        let mut stats = Stats::default();
        let weights = |stats: &Stats| -> Vec<u32> {
            build_table(
                &c,
                stats,
                &AdminState::default(),
                &mut CounterStore::new(),
                1,
            )
            .sets[0]
                .destinations
                .iter()
                .map(|d| d.weight)
                .collect()
        };
        // Before the first connection settles: max_freeswitch_weight, as OpenSIPS starts.
        assert_eq!(weights(&stats), [100, 100]);
        // Connected, still waiting for the api status seed: the same.
        stats.fs.insert(key(8021), FsStats { connected: true, ..FsStats::default() });
        assert_eq!(weights(&stats)[0], 100);
        // A first attempt that failed: stale at once.
        stats.fs.insert(key(8021), FsStats { connected: false, stale: true, ..FsStats::default() });
        assert_eq!(weights(&stats)[0], 2);

        stats.fs.insert(key(8021), fresh(100_000_000, 0, 100));
        stats.fs.insert(key(8022), fresh(50_000_000, 50, 100));
        assert_eq!(weights(&stats), [100, 25]);

        stats.fs.get_mut(&key(8021)).unwrap().stale = true;
        stats.fs.get_mut(&key(8022)).unwrap().connected = false;
        assert_eq!(weights(&stats), [2, 9]);
    }

    fn lb_config() -> Config {
        config::parse(
            r#"
[proxy]
listen = ["127.0.0.1:5060"]

[control]
capacity_model = "opensips"
initial_capacity = 50
channels_per_call = 1

[[load_balancer]]
group_id = 1
dst_uri = "sip:127.0.0.1:5081"
resources = "ch=fs://:ClueCon@127.0.0.1:8021;conf=10"

[[load_balancer]]
group_id = 1
dst_uri = "sip:127.0.0.1:5082"
resources = "ch=7"

[[route]]
to_load_balancer = 1
resources = "ch"
lb_flags = "s"
"#,
            Path::new("lb.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn load_balancer_groups_keep_every_resource_with_fixed_fs_and_initial_capacities() {
        let c = lb_config();
        let mut counters = CounterStore::new();
        let t = build_table(&c, &Stats::default(), &AdminState::default(), &mut counters, 1);
        let g = &t.lb_groups[0];
        assert_eq!(g.resource_names, ["ch", "conf"]);
        let a = &g.destinations[0];
        assert_eq!(a.resources[0].as_ref().unwrap().effective, 50, "initial_capacity before the first heartbeat");
        assert_eq!(a.resources[1].as_ref().unwrap().effective, 10, "OpenSIPS drops conf=10; fsroute keeps it");
        let b = &g.destinations[1];
        assert_eq!(b.resources[0].as_ref().unwrap().effective, 7);
        assert!(b.resources[1].is_none());
        match t.routes[0].target {
            RouteTarget::LoadBalancer { group, wanted, flags, failover } => {
                assert_eq!((group, wanted.ids(), flags.random_tie, failover), (0, &[0usize][..], true, true));
            }
            other => panic!("{other:?}"),
        }
        assert!(t.is_known_destination(&"127.0.0.1:5082".parse().unwrap()));
    }

    #[test]
    fn x_auth_ip_goes_to_the_freeswitch_boxes_unless_configured_otherwise() {
        let c = lb_config();
        let t = build_table(&c, &Stats::default(), &AdminState::default(), &mut CounterStore::new(), 1);
        // 5081 has an fs:// capacity, 5082 only fixed ones.
        assert_eq!(t.proxy.x_auth, XAuth::To(vec!["127.0.0.1:5081".parse().unwrap()]));
        assert!(t.proxy.x_auth.removes_senders());
        let mut c = lb_config();
        c.proxy.x_auth_ip = XAuthMode::Never;
        assert_eq!(build_table(&c, &Stats::default(), &AdminState::default(), &mut CounterStore::new(), 1).proxy.x_auth, XAuth::Never);
        c.proxy.x_auth_ip = XAuthMode::Always;
        assert_eq!(build_table(&c, &Stats::default(), &AdminState::default(), &mut CounterStore::new(), 1).proxy.x_auth, XAuth::Always);
    }

    #[test]
    fn fs_capacity_uses_the_load_at_heartbeat_time_and_a_stale_box_takes_no_calls() {
        let c = lb_config();
        let mut counters = CounterStore::new();
        let mut stats = Stats::default();
        let admin = AdminState::default();
        build_table(&c, &stats, &admin, &mut counters, 1);
        let load = counters.lb_load(1, "sip:127.0.0.1:5081", "ch").unwrap().clone();
        // 40 of fsroute's calls are on the box when it reports 100 of 1000 sessions at 78.4 % idle.
        (0..40).for_each(|_| assert!(load.take(None)));
        let mut s = fresh(78_400_000, 100, 1000);
        s.seq = 1;
        stats.fs.insert(key(8021), s);
        snapshot_p_hb(&c, &mut stats, &counters);
        let effective = |stats: &Stats, counters: &mut CounterStore| {
            build_table(&c, stats, &admin, counters, 2).lb_groups[0].destinations[0].resources[0].as_ref().unwrap().effective
        };
        // capacity 784, others 100 - 40 = 60: fsroute may hold 724, i.e. 684 more than its 40.
        assert_eq!(effective(&stats, &mut counters), 724);
        // Ten more calls before the next heartbeat: p_hb stays, availability falls by ten.
        (0..10).for_each(|_| assert!(load.take(None)));
        snapshot_p_hb(&c, &mut stats, &counters);
        assert_eq!(effective(&stats, &mut counters), 724);
        stats.fs.get_mut(&key(8021)).unwrap().stale = true;
        assert_eq!(effective(&stats, &mut counters), 0);
    }

    #[test]
    fn load_counters_survive_a_rebuild_and_admin_disable_is_sticky() {
        let c = lb_config();
        let mut counters = CounterStore::new();
        let mut admin = AdminState::default();
        let t1 = build_table(&c, &Stats::default(), &admin, &mut counters, 1);
        (0..3).for_each(|_| assert!(t1.lb_groups[0].destinations[1].resources[0].as_ref().unwrap().load.take(None)));
        admin.set_lb_enabled(1, "sip:127.0.0.1:5082", false);
        let t2 = build_table(&c, &Stats::default(), &admin, &mut counters, 2);
        let b = &t2.lb_groups[0].destinations[1];
        assert_eq!(b.resources[0].as_ref().unwrap().load.held(), 3);
        assert!(!b.enabled);
    }

    fn headroom_config(extra_control: &str) -> Config {
        config::parse(
            &format!(
                r#"
[proxy]
listen = ["127.0.0.1:5060"]

[control]
cpu_cost_prior = 0.5
cpu_margin = 0
{extra_control}

[[load_balancer]]
group_id = 1
dst_uri = "sip:127.0.0.1:5081"
resources = "ch=fs://:ClueCon@127.0.0.1:8021"

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5081"
weight = "fs://:ClueCon@127.0.0.1:8021"

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5082"
weight = "fs://:ClueCon@127.0.0.1:8022"

[[route]]
to_load_balancer = 1
resources = "ch"
"#
            ),
            Path::new("headroom.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn lb_box(t: &RoutingTable) -> &fsroute_dataplane::lb::LbDestination {
        &t.lb_groups[0].destinations[0]
    }

    #[test]
    fn headroom_model_admits_exactly_the_box_headroom_between_heartbeats_counting_each_call_once() {
        let c = headroom_config("");
        let mut counters = CounterStore::new();
        let mut stats = Stats::default();
        let admin = AdminState::default();
        // 90 of 100 sessions at 60 % idle: OpenSIPS's floor(0.6 × 100) − 90 would say 0; sessions
        // leave 10, CPU (60 − 0) / 0.5 = 120: 10 calls.
        stats.fs.insert(key(8021), fresh(60_000_000, 90, 100));
        build_table(&c, &stats, &admin, &mut counters, 1);
        snapshot_boxes(&c, &mut stats, &counters, Instant::now());
        let t = build_table(&c, &stats, &admin, &mut counters, 2);
        let d = lb_box(&t);
        let now = Instant::now();
        let mut held: Vec<_> = (0..10).map(|_| lb::reserve_held(d, &[0], false, now).expect("room")).collect();
        assert!(lb::reserve_held(d, &[0], false, now).is_none(), "the 11th call would overfill the box");
        // The dispatcher row naming the same box sees the same headroom: nothing left.
        assert!(t.sets[0].destinations[0].admit(now).is_none());
        // The next heartbeat counts fsroute's 10 calls in Session-Count: still full, not 10 more.
        let mut s = fresh(55_000_000, 100, 100);
        s.seq = 2;
        stats.fs.insert(key(8021), s);
        snapshot_boxes(&c, &mut stats, &counters, Instant::now());
        let t = build_table(&c, &stats, &admin, &mut counters, 3);
        assert!(lb::reserve_held(lb_box(&t), &[0], false, now).is_none());
        // Three calls end: three more, at once, before any heartbeat.
        held.truncate(7);
        assert_eq!((0..5).filter(|_| lb::reserve_held(lb_box(&t), &[0], false, now).map(std::mem::forget).is_some()).count(), 3);
    }

    #[test]
    fn a_box_whose_cpu_binds_first_takes_what_its_cpu_allows() {
        let c = headroom_config("");
        let mut counters = CounterStore::new();
        let mut stats = Stats::default();
        // 10 of 1000 sessions but only 5 % idle above nothing: 5 / 0.5 = 10 calls.
        let mut s = fresh(5_000_000, 10, 1000);
        s.min_idle_cpu_micro = 0;
        stats.fs.insert(key(8021), s);
        let t = build_table(&c, &stats, &AdminState::default(), &mut counters, 1);
        let b = lb_box(&t).resources[0].as_ref().unwrap().fs.clone().unwrap();
        assert_eq!(b.headroom, 10);
        let h = box_headroom(&c.control, &stats.fs[&key(8021)], None);
        assert_eq!(h.binding, crate::headroom::Binding::Cpu);
    }

    #[test]
    fn a_rate_budget_past_the_longest_log_keeps_its_log_from_one_reading_to_the_next() {
        let c = headroom_config("");
        let mut counters = CounterStore::new();
        let mut stats = Stats::default();
        let mut s = fresh(100_000_000, 0, 1000);
        s.sps_limit = Some(100_000);
        stats.fs.insert(key(8021), s);
        let log = |t: &RoutingTable| Arc::clone(&lb_box(t).resources[0].as_ref().unwrap().fs.as_ref().unwrap().rate.as_ref().unwrap().1);
        let first = log(&build_table(&c, &stats, &AdminState::default(), &mut counters, 1));
        stats.fs.get_mut(&key(8021)).unwrap().seq = 2;
        let next = log(&build_table(&c, &stats, &AdminState::default(), &mut counters, 2));
        assert!(Arc::ptr_eq(&first, &next), "a new, empty log at every reading would forget the window");
        assert_eq!(next.capacity(), RATE_LOG_MAX);
    }

    #[test]
    fn a_box_whose_sps_limit_binds_gets_a_rate_window_of_sps_minus_one() {
        let c = headroom_config("");
        let mut counters = CounterStore::new();
        let mut stats = Stats::default();
        let mut s = fresh(100_000_000, 0, 1000);
        s.sps_limit = Some(5);
        stats.fs.insert(key(8021), s);
        let t = build_table(&c, &stats, &AdminState::default(), &mut counters, 1);
        let now = Instant::now();
        let admitted = (0..20).filter(|_| lb::reserve_held(lb_box(&t), &[0], false, now).map(std::mem::forget).is_some()).count();
        assert_eq!(admitted, 4, "FreeSWITCH lets sps − 1 through per second");
    }

    #[test]
    fn a_paused_or_shutting_down_box_drains_and_a_restart_resets_its_accounting() {
        let c = headroom_config("");
        let mut counters = CounterStore::new();
        let mut stats = Stats::default();
        let admin = AdminState::default();
        stats.fs.insert(key(8021), fresh(100_000_000, 0, 100));
        let t = build_table(&c, &stats, &admin, &mut counters, 1);
        let now = Instant::now();
        let held = lb::reserve_held(lb_box(&t), &[0], false, now).unwrap();
        assert_eq!(counters.box_gate(&key(8021)).unwrap().gate.used(), 1);
        for drain in ["paused", "shutdown"] {
            let mut s = stats.fs[&key(8021)].clone();
            s.paused = drain == "paused";
            s.shutdown_requested = drain == "shutdown";
            let mut st = stats.clone();
            st.fs.insert(key(8021), s);
            let t = build_table(&c, &st, &admin, &mut counters, 2);
            assert!(lb::reserve_held(lb_box(&t), &[0], false, now).is_none(), "{drain}");
            assert_eq!(t.sets[0].destinations[0].weight, 0, "{drain}");
        }
        // The box restarts: its old calls are gone; fsroute's count for it starts again at 0.
        let mut s = fresh(100_000_000, 0, 100);
        s.boot = 1;
        stats.fs.insert(key(8021), s);
        let t = build_table(&c, &stats, &admin, &mut counters, 3);
        assert_eq!(counters.box_gate(&key(8021)).unwrap().gate.used(), 0);
        drop(held);
        assert_eq!(counters.box_gate(&key(8021)).unwrap().gate.used(), 0, "an old call's end does not touch the new boot");
        assert!(lb::reserve_held(lb_box(&t), &[0], false, now).is_some());
    }

    #[test]
    fn dispatcher_fs_weights_follow_headroom_and_a_stale_box_keeps_its_stale_weight() {
        let c = headroom_config("stale_weight = 3");
        let mut counters = CounterStore::new();
        let mut stats = Stats::default();
        // Boxes whose Idle-CPU has not moved with their sessions: CPU costs the floor, sessions bind.
        let learned = |mut s: FsStats| {
            for n in 0..10 {
                s.cpu_fit.push(Instant::now() + std::time::Duration::from_secs(n), n * 10, 100_000_000, std::time::Duration::from_secs(1));
            }
            s
        };
        stats.fs.insert(key(8021), learned(fresh(100_000_000, 0, 100)));
        stats.fs.insert(key(8022), learned(fresh(100_000_000, 75, 100)));
        let t = build_table(&c, &stats, &AdminState::default(), &mut counters, 1);
        let w: Vec<u32> = t.sets[0].destinations.iter().map(|d| d.weight).collect();
        assert_eq!(w, [100, 25]);
        stats.fs.get_mut(&key(8022)).unwrap().connected = false;
        let t = build_table(&c, &stats, &AdminState::default(), &mut counters, 2);
        let d = &t.sets[0].destinations[1];
        assert_eq!((d.weight, d.fs.is_none()), (3, true));
    }

    #[test]
    fn dispatcher_routes_to_fs_sets_fail_over_by_default() {
        let c = cfg(r#"
[proxy]
listen = ["127.0.0.1:5060"]

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5081"
weight = "fs://:ClueCon@127.0.0.1:8021"

[[dispatcher]]
setid = 2
destination = "sip:127.0.0.1:5082"

[[route]]
method = "INVITE"
to_dispatcher = 1

[[route]]
to_dispatcher = 2
"#);
        let t = build(&c, &AdminState::default(), &mut CounterStore::new());
        assert!(matches!(t.routes[0].target, RouteTarget::Dispatcher { failover: true, .. }));
        assert!(matches!(t.routes[1].target, RouteTarget::Dispatcher { failover: false, .. }));
    }

    mod dns_names {
        use super::*;
        use crate::dns::{DnsAddr, SrvRank};
        use crate::config::DnsTarget;

        const NAMED: &str = r#"
[proxy]
listen = ["127.0.0.1:5060"]

[[dispatcher]]
setid = 1
destination = "sip:pool.example.net:5080"
weight = 7
priority = 3

[[dispatcher]]
setid = 1
destination = "sip:10.0.0.9:5060"
weight = 2

[[dispatcher]]
setid = 2
destination = "sip:srv.example.net"
weight = 100

[[dispatcher]]
setid = 3
destination = "sip:gone.example.net"

[[load_balancer]]
group_id = 1
dst_uri = "sip:pool.example.net:5080"
resources = "ch=10"

[[route]]
to_dispatcher = 1

[[route]]
to_dispatcher = 3

[[route]]
to_load_balancer = 1
resources = "ch"
"#;

        fn pool() -> DnsTarget {
            DnsTarget { host: "pool.example.net".into(), port: Some(5080) }
        }

        fn with_names(names: &[(DnsTarget, Vec<DnsAddr>)]) -> Stats {
            Stats { dns: names.iter().cloned().collect(), ..Stats::default() }
        }

        fn a(addr: &str) -> DnsAddr {
            DnsAddr { srv: None, addr: addr.parse().unwrap() }
        }

        fn uris(set: &DispatcherSet) -> Vec<(&str, String, u32, i32)> {
            set.destinations.iter().map(|d| (d.uri.as_str(), d.addr.to_string(), d.weight, d.priority)).collect()
        }

        #[test]
        fn a_named_row_becomes_one_destination_per_address_each_with_the_rows_weight() {
            let c = cfg(NAMED);
            let stats = with_names(&[(pool(), vec![a("10.0.0.1:5080"), a("10.0.0.2:5080")])]);
            let mut counters = CounterStore::new();
            let t = build_table(&c, &stats, &AdminState::default(), &mut counters, 1);
            assert_eq!(
                uris(&t.sets[0]),
                [
                    ("sip:pool.example.net:5080#10.0.0.1:5080", "10.0.0.1:5080".to_string(), 7, 3),
                    ("sip:pool.example.net:5080#10.0.0.2:5080", "10.0.0.2:5080".to_string(), 7, 3),
                    ("sip:10.0.0.9:5060", "10.0.0.9:5060".to_string(), 2, 0),
                ]
            );
            // Each address has its own counters (and hash key), so one that leaves moves only its calls.
            assert!(!Arc::ptr_eq(&t.sets[0].destinations[0].counters, &t.sets[0].destinations[1].counters));
            // The load_balancer row of the same name: one destination per address, each with the row's resources.
            let g = &t.lb_groups[0];
            let lb: Vec<(&str, bool)> = g.destinations.iter().map(|d| (d.uri.as_str(), d.resources[0].is_some())).collect();
            assert_eq!(lb, [("sip:pool.example.net:5080#10.0.0.1:5080", true), ("sip:pool.example.net:5080#10.0.0.2:5080", true)]);
            assert_eq!(g.destinations[0].resources[0].as_ref().unwrap().effective, 10);

            // The answer changes: the address that left goes with its counters, the one that stays keeps them.
            let kept = Arc::clone(&t.sets[0].destinations[1].counters);
            let stats = with_names(&[(pool(), vec![a("10.0.0.2:5080"), a("10.0.0.3:5080")])]);
            let t = build_table(&c, &stats, &AdminState::default(), &mut counters, 2);
            let got: Vec<String> = t.sets[0].destinations.iter().map(|d| d.addr.to_string()).collect();
            assert_eq!(got, ["10.0.0.2:5080", "10.0.0.3:5080", "10.0.0.9:5060"]);
            assert!(Arc::ptr_eq(&kept, &t.sets[0].destinations[0].counters));
            assert!(counters.get(1, "sip:pool.example.net:5080#10.0.0.1:5080").is_none());
        }

        #[test]
        fn an_admin_override_on_the_written_name_applies_to_every_address() {
            let c = cfg(NAMED);
            let stats = with_names(&[(pool(), vec![a("10.0.0.1:5080"), a("10.0.0.2:5080")])]);
            let mut admin = AdminState::default();
            admin.set_dispatcher_state(1, "sip:pool.example.net:5080", DestState::Inactive);
            admin.set_lb_enabled(1, "sip:pool.example.net:5080", false);
            let t = build_table(&c, &stats, &admin, &mut CounterStore::new(), 1);
            let active: Vec<bool> = t.sets[0].destinations.iter().map(|d| d.active).collect();
            assert_eq!(active, [false, false, true]);
            assert!(t.lb_groups[0].destinations.iter().all(|d| !d.enabled));
        }

        #[test]
        fn srv_answers_set_weights_in_proportion_priorities_in_order_and_backups_at_zero() {
            let c = cfg(NAMED);
            let srv = |priority, weight, addr: &str| DnsAddr { srv: Some(SrvRank { priority, weight }), addr: addr.parse().unwrap() };
            let name = DnsTarget { host: "srv.example.net".into(), port: None };
            let stats = with_names(&[(name, vec![srv(10, 60, "10.0.1.1:5060"), srv(10, 20, "10.0.1.2:5062"), srv(20, 50, "10.0.1.3:5060")])]);
            let t = build_table(&c, &stats, &AdminState::default(), &mut CounterStore::new(), 1);
            let set = &t.sets[1];
            let got: Vec<(String, u32, i32)> = set.destinations.iter().map(|d| (d.addr.to_string(), d.weight, d.priority)).collect();
            assert_eq!(got, [("10.0.1.1:5060".into(), 100, 10), ("10.0.1.2:5062".into(), 33, 10), ("10.0.1.3:5060".into(), 0, 20)]);
            // Weighted picks never reach the backup while a preferred target is active; `first` takes priority 10.
            assert!((0..200).all(|cursor| set.selector.pick_round_robin(cursor) != Some(2)));
            assert_eq!(set.selector.pick_first(), Some(0));
        }

        #[test]
        fn a_name_without_addresses_leaves_its_set_and_routes_in_place_with_no_destination() {
            let c = cfg(NAMED);
            let t = build_table(&c, &Stats::default(), &AdminState::default(), &mut CounterStore::new(), 1);
            let sets: Vec<(i32, usize)> = t.sets.iter().map(|s| (s.setid, s.destinations.len())).collect();
            assert_eq!(sets, [(1, 1), (2, 0), (3, 0)]);
            assert_eq!(t.routes.len(), 3, "every route stays: a name that comes back needs no reload");
            assert!(t.lb_groups[0].destinations.is_empty());
            assert_eq!(t.lb_groups[0].resource_names, ["ch"]);
        }

        #[test]
        fn resolved_addresses_that_loop_duplicate_a_row_or_lack_a_listener_family_are_skipped() {
            let c = cfg(NAMED);
            let name = pool();
            let stats = with_names(&[(
                name.clone(),
                vec![a("10.0.0.9:5060"), a("127.0.0.1:5060"), a("[2001:db8::1]:5080"), a("10.0.0.4:5080")],
            )]);
            let (expanded, skipped) = crate::dns::expand(&c, &stats.dns);
            let why: Vec<(String, &str)> = skipped.iter().filter(|s| s.name == name).map(|s| (s.addr.to_string(), s.why.as_str())).collect();
            assert_eq!(why[0], ("10.0.0.9:5060".to_string(), "set 1 already has a destination at 10.0.0.9:5060"));
            assert_eq!(why[1], ("127.0.0.1:5060".to_string(), "one of fsroute's own listeners: calls would loop"));
            assert_eq!(why[2], ("[2001:db8::1]:5080".to_string(), "fsroute has no IPv6 listener to send from"));
            let set1: Vec<SocketAddr> = expanded.dispatcher.iter().filter(|r| r.setid == 1).map(|r| r.addr).collect();
            assert_eq!(set1, ["10.0.0.4:5080".parse::<SocketAddr>().unwrap(), "10.0.0.9:5060".parse().unwrap()]);
            assert!(expanded.dispatcher.iter().all(|r| r.name.is_none()), "an expansion names no host");
            let t = build_table(&c, &stats, &AdminState::default(), &mut CounterStore::new(), 1);
            assert_eq!(t.sets[0].destinations.len(), 2);
        }
    }
}
