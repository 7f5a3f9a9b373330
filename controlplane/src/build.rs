//! The pure routing-table builder: `(Config, Stats, AdminState) -> RoutingTable`. The control
//! plane calls [`build_table`] after a config load, a SIGHUP, a heartbeat, a probe result or an
//! admin command, then swaps the result in. Nothing here does I/O or reads the clock; the only
//! state carried from one build to the next is the [`CounterStore`], so destinations that survive
//! a rebuild keep their counters.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use fsroute_dataplane::dispatch::{Member, Selector};
use fsroute_dataplane::table::{
    DestCounters, Destination, DispatcherSet, ProxySettings, Route, RouteTarget, RoutingTable,
};

use crate::config::{Config, ControlConfig, DestState, DispatcherRow, FsKey, RouteTo, Weight};
use crate::probe::ProbeHealth;

/// What one FreeSWITCH box last told us over ESL. The ESL side fills it; staleness is decided
/// there too (it owns the clock), so building stays pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsStats {
    pub connected: bool,
    /// `Idle-CPU` in millionths of a percent (`78.400000` -> 78_400_000), so weights and
    /// capacities are computed in integers.
    pub idle_cpu_micro: u32,
    pub session_count: u32,
    pub max_sessions: u32,
    pub last_heartbeat: Option<Instant>,
    /// Connected but silent for longer than `control.heartbeat_timeout`.
    pub stale: bool,
}

impl FsStats {
    /// Whether the numbers may be used: connected, heard from, not stale.
    pub fn is_fresh(&self) -> bool {
        self.connected && !self.stale && self.last_heartbeat.is_some()
    }
}

/// What the control plane has observed at runtime: per FreeSWITCH ESL endpoint, and per
/// dispatcher destination the OPTIONS probe verdict (absent while probing is off).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub fs: HashMap<FsKey, FsStats>,
    pub probes: HashMap<(i32, String), ProbeHealth>,
}

/// Runtime admin overrides (`POST /dispatcher/state`), keyed by (setid, destination URI as
/// written in the config). An override wins over the row's `state`.
#[derive(Debug, Clone, Default)]
pub struct AdminState {
    dispatcher: HashMap<(i32, String), DestState>,
}

impl AdminState {
    pub fn set_dispatcher_state(&mut self, setid: i32, uri: &str, state: DestState) {
        self.dispatcher.insert((setid, uri.to_string()), state);
    }

    pub fn dispatcher_state(&self, setid: i32, uri: &str) -> Option<DestState> {
        self.dispatcher.get(&(setid, uri.to_string())).copied()
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
    }

    pub fn is_empty(&self) -> bool {
        self.dispatcher.is_empty()
    }
}

/// The per-destination counters, kept across builds by (setid, destination URI).
#[derive(Debug, Default)]
pub struct CounterStore {
    dispatcher: HashMap<(i32, String), Arc<DestCounters>>,
}

impl CounterStore {
    pub fn new() -> Self {
        Self::default()
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

    fn get_or_create(&mut self, setid: i32, uri: &str) -> Arc<DestCounters> {
        Arc::clone(self.dispatcher.entry((setid, uri.to_string())).or_default())
    }
}

/// Builds the routing table for `config` as the runtime sees it now. `generation` must grow
/// with every build. Counters for destinations that left the config are dropped from `counters`.
pub fn build_table(
    config: &Config,
    stats: &Stats,
    admin: &AdminState,
    counters: &mut CounterStore,
    generation: u64,
) -> RoutingTable {
    let mut live: HashSet<(i32, String)> = HashSet::new();
    let setids = config.setids();
    let mut sets = Vec::with_capacity(setids.len());
    for &setid in &setids {
        let destinations: Vec<Destination> = config
            .dispatcher
            .iter()
            .filter(|r| r.setid == setid)
            .map(|r| {
                live.insert((setid, r.uri.clone()));
                let state = admin.dispatcher_state(setid, &r.uri).unwrap_or(r.state);
                // Inactive is an admin decision and sticks; otherwise a probe verdict, when there
                // is one, says whether the box answers.
                let active = match (state, stats.probes.get(&(setid, r.uri.clone()))) {
                    (DestState::Inactive, _) => false,
                    (_, Some(h)) => h.up,
                    (s, None) => s.is_active(),
                };
                Destination {
                    uri: r.uri.clone(),
                    addr: r.addr,
                    weight: effective_weight(r, &config.control, stats),
                    priority: r.priority,
                    active,
                    counters: counters.get_or_create(setid, &r.uri),
                }
            })
            .collect();
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
            RouteTo::LoadBalancer { group_id, .. } => {
                // config::unsupported refuses these until the data plane has a load_balancer
                // target; whoever adds it adds the arm here.
                tracing::error!(
                    line = r.line,
                    group_id,
                    "load_balancer routes are not supported by this build; skipped"
                );
                None
            }
        })
        .collect();

    RoutingTable::new(generation, proxy_settings(config), sets, routes)
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
    for l in p.listen.iter().filter(|l| !l.ip().is_unspecified()) {
        add(l.ip().to_string(), l.port());
    }
    for a in &p.aliases {
        add(a.host.bare(), a.port);
    }
    ProxySettings {
        advertise_host: p.advertise.host.uri_form(),
        advertise_port: p.advertise.port,
        local_names,
        local_addrs: p.listen.clone(),
        record_route: p.record_route,
        max_forwards: u32::from(p.max_forwards),
        hash: p.hash,
        no_route_reply: p.no_route_reply,
        transaction_memory: p.transaction_memory,
        dialog_memory: p.dialog_memory,
    }
}

/// A row's weight now: a static weight as written; an fs:// weight from the box's last
/// heartbeat (or `api status` seed); `max_freeswitch_weight` before the first numbers, while the
/// first connection is still being made; the row's `fallback_weight` (else `control.stale_weight`)
/// once the box is disconnected or silent — never a frozen last value.
pub fn effective_weight(row: &DispatcherRow, control: &ControlConfig, stats: &Stats) -> u32 {
    match &row.weight {
        Weight::Static(w) => *w,
        Weight::Fs(fs) => match stats.fs.get(&fs.key()) {
            Some(s) if s.is_fresh() => fs_weight(control.max_freeswitch_weight, s),
            // Not tried yet, or connected and waiting for its first numbers.
            None => control.max_freeswitch_weight,
            Some(s) if s.connected && !s.stale && s.last_heartbeat.is_none() => control.max_freeswitch_weight,
            _ => row.fallback_weight.unwrap_or(control.stale_weight),
        },
    }
}

/// OpenSIPS's `round(max_w × (1 − S/M) × Idle/100)`, in integers. A box reporting S ≥ M is full
/// and one reporting M = 0 has no capacity: both weigh 0.
pub fn fs_weight(max_weight: u32, s: &FsStats) -> u32 {
    const HUNDRED_PERCENT_MICRO: u128 = 100_000_000;
    if s.max_sessions == 0 || s.session_count >= s.max_sessions {
        return 0;
    }
    let idle = u128::from(s.idle_cpu_micro).min(HUNDRED_PERCENT_MICRO);
    let free = u128::from(s.max_sessions - s.session_count);
    let num = u128::from(max_weight) * free * idle;
    let den = u128::from(s.max_sessions) * HUNDRED_PERCENT_MICRO;
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

    #[test]
    fn an_ipv6_advertise_is_bracketed_for_via_and_bare_in_local_names() {
        let c = cfg("[proxy]\nlisten = [\"[::1]:5060\"]\n");
        let px = proxy_settings(&c);
        assert_eq!(px.advertise_host, "[::1]");
        assert_eq!(px.local_names, [("::1".to_string(), 5060)]);
    }

    fn fs_config() -> Config {
        config::parse_ignoring_unsupported(
            r#"
[proxy]
listen = ["127.0.0.1:5060"]

[control]
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
}
