//! The control-plane thread of `fsroute run`: loads the config, starts the shards, then owns every
//! slow decision: SIGHUP reloads (parse -> validate -> build -> swap, or keep the running table),
//! admin requests, destination names (handed to the resolver thread, their results taken between
//! the loop's other tasks, docs/DNS.md), and the graceful stop on SIGTERM/SIGINT (new INVITEs get 503 + Retry-After while
//! transactions in flight finish, bounded by a timeout). Shards never wait on it: they read the
//! table it swaps in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use fsroute_dataplane::shard::{DataPlane, ShardSpec};
use fsroute_dataplane::stats::ShardStats;
use fsroute_dataplane::table::RoutingTable;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::admin::{ControlView, ReloadRecord, Timings};
use crate::admin_http::{AdminLimits, AdminMethod, AdminRequest, AdminResponse, AdminServer};
use crate::config::{self, Config, DestState};
use crate::dns::resolver::Resolver;
use crate::dns::{DnsBook, DnsTimers, Skipped};
use crate::freeswitch::FsMonitor;
use crate::probe::{Outgoing, ProbeSettings, ProbeSocket, Prober};
use crate::reconcile::Reconciler;
use crate::state::{AdminState, CounterStore, Stats};
use crate::table_builder::{build_table, proxy_settings, snapshot_boxes, snapshot_p_hb};

fn probe_settings(c: &Config) -> ProbeSettings {
    ProbeSettings {
        interval: c.control.probe_interval,
        failure_threshold: c.control.probe_failure_threshold,
        success_threshold: c.control.probe_success_threshold,
    }
}

/// Exit codes of `fsroute run` (docs/CONTRACT.md).
pub const EXIT_OK: i32 = 0;
pub const EXIT_CONFIG: i32 = 1;
pub const EXIT_RUNTIME: i32 = 2;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// How long a graceful stop waits for INVITE transactions in flight.
    pub drain_timeout: Duration,
}

/// Everything the control thread owns.
struct Control {
    path: PathBuf,
    /// The config as written (admin commands, ESL connections, `/status` of the file).
    config: Config,
    /// `config` with each named row expanded into its addresses now: what probes, snapshots and
    /// reconciliation follow, as the table builder sees it (docs/DNS.md).
    routing: Config,
    dns: DnsBook,
    /// Started while the config names a host; a reload that changes `[dns]` starts a new one.
    resolver: Option<Resolver>,
    /// Resolved addresses that did not become destinations, and why (for `/status`).
    dns_skipped: Vec<Skipped>,
    stats: Stats,
    admin: AdminState,
    counters: CounterStore,
    generation: u64,
    table: Arc<ArcSwap<RoutingTable>>,
    record: ReloadRecord,
    fs: FsMonitor,
    timings: Timings,
    prober: Prober,
    probe_sock: Option<ProbeSocket>,
    probe_out: Vec<Outgoing>,
    /// The admin listener actually bound: it moves only on restart, whatever a reload says.
    admin_bound: Option<SocketAddr>,
    reconciler: Reconciler,
}

/// What a reload cannot change because the shards (or the admin thread) bound it at start: each
/// field `new` changes, as the error that refuses the reload names it. The advertised address is not among them: when
/// written it is the operator's word for where peers reach fsroute (often a NAT address no socket
/// binds), and when not written it is the first listener, which this list already covers.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    let (r, n) = (&running.proxy, &new.proxy);
    let list = |a: &[SocketAddr]| format!("[{}]", a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    let mut out = Vec::new();
    if r.listen != n.listen {
        out.push(format!("proxy.listen: changes only on restart (running: {}, new: {})", list(&r.listen), list(&n.listen)));
    }
    if r.shards != n.shards {
        out.push(format!("proxy.shards: changes only on restart (running: {}, new: {})", r.shards, n.shards));
    }
    if r.listen_tcp != n.listen_tcp {
        out.push(format!("proxy.listen (tcp:): changes only on restart (running: {}, new: {})", list(&r.listen_tcp), list(&n.listen_tcp)));
    }
    if r.listen_tls != n.listen_tls {
        out.push(format!("proxy.listen (tls:): changes only on restart (running: {}, new: {})", list(&r.listen_tls), list(&n.listen_tls)));
    }
    // The shards read these once, at start: each one that changed is named, with both values.
    let (rs, ns) = (&r.stream, &n.stream);
    if rs.idle_timeout != ns.idle_timeout {
        out.push(format!("proxy.tcp_idle_timeout: changes only on restart (running: {:?}, new: {:?})", rs.idle_timeout, ns.idle_timeout));
    }
    if rs.max_message != ns.max_message {
        out.push(format!("proxy.tcp_max_message: changes only on restart (running: {}, new: {})", rs.max_message, ns.max_message));
    }
    if rs.connections_per_source != ns.connections_per_source {
        out.push(format!(
            "proxy.tcp_connections_per_source: changes only on restart (running: {}, new: {})",
            rs.connections_per_source, ns.connections_per_source
        ));
    }
    if r.ingress != n.ingress {
        out.push(format!("proxy.ingress: changes only on restart (running: {:?}, new: {:?})", r.ingress.name(), n.ingress.name()));
    }
    // The admin listener is bound once, at start; a reload reporting success while /status stays
    // on the old address would tell the operator the file is live when part of it is not.
    let admin = |a: &Option<SocketAddr>| a.map_or_else(|| "none".to_string(), |a| a.to_string());
    if running.control.admin != new.control.admin {
        out.push(format!(
            "control.admin: changes only on restart (running: {}, new: {})",
            admin(&running.control.admin),
            admin(&new.control.admin)
        ));
    }
    out
}

impl Control {
    fn rebuild(&mut self) {
        self.generation += 1;
        let started = Instant::now();
        // Before the snapshots: fsroute's load at a reading is what is left after reconciling with it.
        self.reconciler.on_readings(&self.stats, self.config.control.channels_per_call);
        snapshot_p_hb(&self.routing, &mut self.stats, &self.counters);
        snapshot_boxes(&self.routing, &mut self.stats, &self.counters, started);
        self.counters.former_names.retain(|f| f.until > started);
        let t = build_table(&self.config, &self.stats, &self.admin, &mut self.counters, self.generation);
        self.table.store(Arc::new(t));
        self.reconciler.sync(&self.routing, &self.counters, started);
        let visible = Instant::now();
        self.timings.record_rebuild(visible - started);
        for arrived in self.fs.pending_visibility.drain(..) {
            self.timings.record_heartbeat_visible(visible - arrived);
        }
    }

    /// SIGHUP: on any error the running table stays, and the error is logged and recorded.
    fn reload(&mut self) {
        match config::load(&self.path) {
            Ok(new) if self.public_admin_without(&new).is_some() => {
                let bound = self.public_admin_without(&new).map_or_else(String::new, |a| a.to_string());
                let e = format!(
                    "{}: control.admin_token: missing: the running admin listener {bound} is reachable from other \
                     hosts and keeps listening there until a restart, so a reload cannot remove its token",
                    self.path.display()
                );
                self.record.reload_failures += 1;
                self.record.last_error = Some(e.clone());
                tracing::error!("reload rejected, the running configuration stays:\n{e}");
            }
            Ok(new) if !restart_only_changes(&self.config, &new).is_empty() => {
                // Taking the rest of such a file would advertise, in Via and Record-Route, sockets no
                // shard listens on: its responses would be dropped and its requests never arrive.
                let e = restart_only_changes(&self.config, &new)
                    .iter()
                    .map(|why| format!("{}: {why}", self.path.display()))
                    .collect::<Vec<_>>()
                    .join("\n");
                self.record.reload_failures += 1;
                self.record.last_error = Some(e.clone());
                tracing::error!("reload rejected, the running configuration stays (restart fsroute to apply it):\n{e}");
            }
            Ok(new) => {
                let now = Instant::now();
                let (was, is) = (proxy_settings(&self.config).local_names, proxy_settings(&new).local_names);
                self.counters.retire_names(&was, &is, now, now + new.proxy.dialog_memory);
                self.config = new;
                self.admin.retain_known(&self.config);
                self.fs.sync(&self.config, &mut self.stats);
                self.sync_dns(Instant::now());
                self.refresh_routing();
                self.sync_probes();
                self.rebuild();
                self.record.reloads += 1;
                self.record.loaded_at = Some(SystemTime::now());
                self.record.last_error = None;
                tracing::info!(generation = self.generation, "configuration reloaded");
            }
            Err(e) => {
                self.record.reload_failures += 1;
                self.record.last_error = Some(e.to_string());
                tracing::error!("reload rejected, the running configuration stays:\n{e}");
            }
        }
    }

    /// The running admin listener when it is not loopback and `new` has no token for it.
    /// Validation refuses that for the address written in `new`; this covers the listener still
    /// bound from the config the process started with.
    fn public_admin_without(&self, new: &Config) -> Option<SocketAddr> {
        self.admin_bound.filter(|a| !a.ip().is_loopback() && new.control.admin_token.is_none())
    }

    /// The names of the config, after a load or reload: the book follows them, and the resolver
    /// runs while there is any (a new one when `[dns]` changed; queries in flight are asked again).
    fn sync_dns(&mut self, now: Instant) {
        let names = self.config.dns_names();
        self.dns.sync(&names, DnsTimers::from_config(&self.config.dns), now);
        if names.is_empty() {
            self.resolver = None;
        } else if self.resolver.as_ref().is_none_or(|r| r.settings != self.config.dns) {
            self.resolver = match Resolver::start(&self.config.dns) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the DNS resolver thread; destination names will not resolve");
                    None
                }
            };
            self.dns.requeue(now);
        }
        self.stats.dns = self.dns.resolved();
    }

    /// The rows the table is built from now: `config` with each name's addresses in force.
    fn refresh_routing(&mut self) {
        let (routing, skipped) = crate::dns::expand(&self.config, &self.stats.dns);
        for s in skipped.iter().filter(|s| !self.dns_skipped.contains(s)) {
            tracing::warn!(name = %s.name, address = %s.addr, why = %s.why, "resolved address not used");
        }
        self.routing = routing.into_owned();
        self.dns_skipped = skipped;
    }

    /// One turn of destination names: due queries to the resolver, its results into the book, the
    /// book's clock (graces). True when the addresses in force changed: routing, probes and the table
    /// follow.
    fn poll_dns(&mut self, now: Instant) -> bool {
        let Some(resolver) = &self.resolver else { return false };
        for name in self.dns.due(now) {
            resolver.ask(name);
        }
        let mut changed = false;
        while let Some((name, result)) = resolver.try_recv() {
            let was_failing = self.dns.get(&name).is_some_and(|s| s.failing_since.is_some());
            if let Err(e) = &result {
                if !was_failing {
                    tracing::warn!(name = %name, error = %e, grace = ?self.dns.timers().grace, "destination name does not resolve; its last addresses stay for the grace");
                }
            }
            let ok = result.is_ok();
            let moved = self.dns.on_result(&name, result, now);
            if let Some(s) = self.dns.get(&name) {
                if ok && was_failing && s.failing_since.is_none() {
                    tracing::info!(name = %name, "destination name resolves again");
                }
                if moved && s.expired {
                    tracing::warn!(name = %name, error = ?s.last_error, "destination name failed for its whole grace: its addresses left the table");
                } else if moved {
                    let addrs: Vec<String> = s.addrs.iter().map(|a| a.addr.to_string()).collect();
                    tracing::info!(name = %name, addresses = ?addrs, "destination name's addresses changed");
                }
            }
            changed |= moved;
        }
        for name in self.dns.tick(now) {
            let error = self.dns.get(&name).and_then(|s| s.last_error.clone());
            tracing::warn!(name = %name, error = ?error, "destination name failed for its whole grace: its addresses left the table");
            changed = true;
        }
        if changed {
            self.stats.dns = self.dns.resolved();
            self.refresh_routing();
            self.sync_probes();
        }
        changed
    }

    /// Probe targets follow the config; with probing off, verdicts are forgotten.
    fn sync_probes(&mut self) {
        self.prober.set_settings(probe_settings(&self.config));
        let wanted: Vec<_> = if self.prober.enabled() {
            self.routing
                .dispatcher
                .iter()
                .map(|r| ((r.setid, r.uri.clone()), r.addr, r.state == DestState::Probing))
                .collect()
        } else {
            Vec::new()
        };
        self.prober.sync(&wanted, Instant::now());
        if self.prober.enabled() && self.probe_sock.is_none() {
            let ip = self.config.proxy.listen.first().map(|a| a.ip()).unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
            let ip = if ip.is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { ip };
            match ProbeSocket::bind(ip) {
                Ok(s) => self.probe_sock = Some(s),
                Err(e) => tracing::error!(error = %e, "cannot bind the probe socket; probing is off"),
            }
        }
        if let Some(sock) = self.probe_sock.as_mut() {
            // A SIGHUP's new [tls] ca reaches the next probe connection; open ones keep theirs.
            sock.tls_client = self.config.tls.as_ref().and_then(|t| t.contexts.client.clone());
            sock.retain_streams(|a| wanted.iter().any(|(_, addr, _)| addr == a));
        }
        self.copy_probe_health();
    }

    fn copy_probe_health(&mut self) {
        self.stats.probes.clear();
        for r in &self.routing.dispatcher {
            let key = (r.setid, r.uri.clone());
            if let Some(h) = self.prober.health(&key) {
                self.stats.probes.insert(key, h);
            }
        }
    }

    /// Sends due probes, reads replies; true when a verdict changed.
    fn run_probes(&mut self) -> bool {
        let Some(sock) = self.probe_sock.as_mut() else { return false };
        if !self.prober.enabled() {
            return false;
        }
        let mut changed = sock.drain(&mut self.prober);
        let admin = &self.admin;
        let config = &self.routing;
        let inactive =
            |k: &(i32, String)| config.dispatcher_row(k.0, &k.1).map(|r| admin.state_of(r)) == Some(DestState::Inactive);
        self.probe_out.clear();
        changed |= self.prober.poll(Instant::now(), sock.local, &inactive, &mut self.probe_out);
        changed |= sock.send(&self.probe_out, &mut self.prober);
        if changed {
            self.copy_probe_health();
        }
        changed
    }

    /// At start, the names' first answers, for at most the resolver's timeout: calls arriving in
    /// the first milliseconds find their destinations, and a name that does not answer in time only
    /// joins the table when it does (fsroute starts either way; `/status` shows it).
    fn first_answers(&mut self) {
        let started = Instant::now();
        let limit = self.config.dns.timeout.min(Duration::from_secs(3));
        self.poll_dns(started);
        while self.dns.names().any(|(_, s)| s.in_flight.is_some()) && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(5));
            self.poll_dns(Instant::now());
        }
    }

    /// The state `/status` and `/metrics` render, with the table and shard counters of this moment.
    fn view<'a>(&'a self, table: &'a RoutingTable, shards: &'a [Arc<ShardStats>]) -> ControlView<'a> {
        ControlView {
            config: &self.config,
            routing: &self.routing,
            dns: &self.dns,
            dns_skipped: &self.dns_skipped,
            stats: &self.stats,
            admin: &self.admin,
            counters: &self.counters,
            table,
            shards,
            fs: &self.fs,
            prober: &self.prober,
            reconciler: &self.reconciler,
            record: &self.record,
            timings: &self.timings,
        }
    }
}

pub fn run(opts: RunOptions) -> i32 {
    let config = match config::load(&opts.config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    for w in check_warnings(&config) {
        tracing::warn!("{w}");
    }
    // Registered before the shards start, so a signal at any moment after this is seen.
    let mut signals = match Signals::new([SIGHUP, SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return EXIT_RUNTIME;
        }
    };
    let fs = match FsMonitor::new(&config) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the ESL poller");
            return EXIT_RUNTIME;
        }
    };
    let mut ctl = Control {
        fs,
        timings: Timings::default(),
        prober: Prober::new(probe_settings(&config)),
        probe_sock: None,
        probe_out: Vec::new(),
        admin_bound: None,
        reconciler: Reconciler::default(),
        path: opts.config_path.clone(),
        routing: config.clone(),
        dns: DnsBook::new(DnsTimers::from_config(&config.dns)),
        resolver: None,
        dns_skipped: Vec::new(),
        stats: Stats::default(),
        admin: AdminState::default(),
        counters: host_counters(&config),
        generation: 0,
        table: Arc::new(ArcSwap::from_pointee(RoutingTable::new(0, empty_proxy(&config), Vec::new(), Vec::new()))),
        record: ReloadRecord {
            path: opts.config_path.display().to_string(),
            loaded_at: Some(SystemTime::now()),
            ..ReloadRecord::default()
        },
        config,
    };
    ctl.sync_dns(Instant::now());
    ctl.first_answers();
    ctl.refresh_routing();
    ctl.sync_probes();
    ctl.rebuild();

    let spec = ShardSpec {
        listeners: ctl.config.proxy.listen.clone(),
        shards: ctl.config.proxy.shards,
        ingress: ctl.config.proxy.ingress,
        handoff_capacity: 8192,
        pin: true,
        tcp_listeners: ctl.config.proxy.listen_tcp.clone(),
        tls_listeners: ctl.config.proxy.listen_tls.clone(),
        stream: ctl.config.proxy.stream,
    };
    // The admin listener before the data plane: once fsroute answers SIP, /status answers too
    // (requests wait in the admin thread's queue until the control loop starts), so a supervisor
    // or a script that waits for SIP never meets a refused admin connection.
    let admin = match ctl.config.control.admin {
        Some(addr) => match AdminServer::start(addr, ctl.config.control.admin_token.clone(), AdminLimits::default()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, %addr, "cannot start the admin listener");
                return EXIT_RUNTIME;
            }
        },
        None => None,
    };
    let dp = match DataPlane::start(&spec, ctl.table.clone()) {
        Ok(dp) => dp,
        Err(e) => {
            tracing::error!(error = %e, listen = ?spec.listeners, "cannot start the data plane");
            return EXIT_RUNTIME;
        }
    };
    ctl.admin_bound = admin.as_ref().map(AdminServer::local_addr);
    tracing::info!(
        listen = ?dp.bound,
        listen_tcp = ?dp.bound_tcp,
        listen_tls = ?dp.bound_tls,
        shards = spec.shards,
        ingress = spec.ingress.name(),
        admin = ?ctl.admin_bound,
        admin_token = ctl.config.control.admin_token.is_some(),
        "fsroute running"
    );

    let mut stopping: Option<Instant> = None;
    let mut force_stop = false;
    loop {
        for sig in signals.pending() {
            match sig {
                SIGHUP => {
                    ctl.reload();
                    if let Some(a) = &admin {
                        a.set_token(ctl.config.control.admin_token.clone());
                    }
                }
                SIGTERM | SIGINT if stopping.is_none() => {
                    tracing::info!("stopping: new INVITEs get 503, calls in flight finish (a second signal stops at once)");
                    dp.drain();
                    stopping = Some(Instant::now());
                }
                SIGTERM | SIGINT => {
                    tracing::warn!(
                        pending_invites = dp.pending_invites(),
                        established = dp.established_calls(),
                        "second stop signal: stopping now"
                    );
                    force_stop = true;
                }
                _ => {}
            }
        }
        if let Some(since) = stopping {
            // Shards publish their counts on their next tick. A graceful stop lets the INVITEs in
            // flight get their final response and the answered calls their BYE.
            if force_stop
                || (since.elapsed() > Duration::from_millis(250) && dp.pending_invites() == 0 && dp.established_calls() == 0)
            {
                break;
            }
            if since.elapsed() > opts.drain_timeout {
                tracing::warn!(
                    pending_invites = dp.pending_invites(),
                    established = dp.established_calls(),
                    "drain timeout reached"
                );
                break;
            }
        }
        // ESL first: a heartbeat reaches the table within one turn of this loop.
        let wait = if admin.is_some() { Duration::from_millis(10) } else { Duration::from_millis(50) };
        let heard = ctl.fs.poll(wait, Instant::now(), &mut ctl.stats);
        ctl.reconciler.tick(Instant::now());
        let probed = ctl.run_probes();
        let resolved = ctl.poll_dns(Instant::now());
        if heard || probed || resolved {
            ctl.rebuild();
        }
        if let Some(a) = &admin {
            // At most a queue's worth per turn, so a flood of requests cannot starve signals and ESL.
            for _ in 0..a.queue_capacity() {
                let Some(req) = a.try_next() else { break };
                let answer = serve(&mut ctl, &dp, &req);
                // A reload over the API may change the token, as SIGHUP does.
                if req.path == "/reload" {
                    a.set_token(ctl.config.control.admin_token.clone());
                }
                req.respond(answer);
            }
        }
    }
    dp.stop();
    tracing::info!("fsroute stopped");
    EXIT_OK
}

/// A placeholder identity for the table that exists before the first build.
/// The counter store with this host's addresses, when a listener is a wildcard (a request to any
/// of them at its port would come straight back to fsroute).
fn host_counters(config: &Config) -> CounterStore {
    let mut c = CounterStore::default();
    if config.proxy.listen.iter().any(|l| l.ip().is_unspecified()) {
        match fsroute_dataplane::socket::host_addresses() {
            Ok(ips) => c.host_ips = ips,
            Err(e) => tracing::warn!(error = %e, "cannot list this host's addresses; only loopback counts as fsroute's own"),
        }
    }
    c
}

fn empty_proxy(config: &Config) -> fsroute_dataplane::table::ProxySettings {
    let t = build_table(config, &Stats::default(), &AdminState::default(), &mut CounterStore::default(), 0);
    t.proxy
}

/// Every admin endpoint's answer. The admin thread has already checked the token and read the body.
fn serve(ctl: &mut Control, dp: &DataPlane, req: &AdminRequest) -> AdminResponse {
    match (req.method, req.path.as_str()) {
        (AdminMethod::Get, "/status") => {
            let table = ctl.table.load();
            AdminResponse::json(200, ctl.view(&table, &dp.stats).status().to_string())
        }
        (AdminMethod::Get, "/metrics") => {
            let table = ctl.table.load();
            AdminResponse {
                status: 200,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: ctl.view(&table, &dp.stats).metrics(),
            }
        }
        (AdminMethod::Post, "/load_balancer/status") => post(ctl, &req.body, set_lb_status),
        (AdminMethod::Post, "/dispatcher/state") => post(ctl, &req.body, set_state),
        (AdminMethod::Post, "/reload") => reload_now(ctl, &req.body),
        _ => AdminResponse::json(404, r#"{"error":"not found"}"#),
    }
}

/// `POST /reload` (`fsroute ctl reload`, OpenSIPS `ds_reload`): the SIGHUP reload, answered with
/// its outcome: 200 with the reload count and table generation, or 422 with the error that kept
/// the running config. The body is empty or `{}`.
fn reload_now(ctl: &mut Control, body: &str) -> AdminResponse {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ReloadRequest {}
    if !body.trim().is_empty() {
        if let Err(e) = serde_json::from_str::<ReloadRequest>(body) {
            return AdminResponse::json(400, serde_json::json!({ "error": format!("bad request body: {e}") }).to_string());
        }
    }
    let failures = ctl.record.reload_failures;
    tracing::info!("reload requested over the admin API");
    ctl.reload();
    if ctl.record.reload_failures != failures {
        let e = ctl.record.last_error.clone().unwrap_or_default();
        return AdminResponse::json(422, serde_json::json!({ "error": format!("reload rejected, the running configuration stays: {e}") }).to_string());
    }
    let answer = serde_json::json!({ "ok": true, "path": ctl.record.path, "reloads": ctl.record.reloads, "generation": ctl.generation });
    AdminResponse::json(200, answer.to_string())
}

/// A POST endpoint's handler: the request read from its body in, an error status and message out.
type AdminCommand<T> = fn(&mut Control, T) -> Result<(), (u16, String)>;

/// An admin command: a JSON body in (400 when it does not read as `T`), `{"ok":true}` or
/// `{"error":...}` out.
fn post<T: serde::de::DeserializeOwned>(ctl: &mut Control, body: &str, handler: AdminCommand<T>) -> AdminResponse {
    let done = serde_json::from_str(body).map_err(|e| (400, format!("bad request body: {e}"))).and_then(|r| handler(ctl, r));
    match done {
        Ok(()) => AdminResponse::json(200, r#"{"ok":true}"#),
        Err((code, msg)) => AdminResponse::json(code, serde_json::json!({ "error": msg }).to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LbStatusRequest {
    group_id: i32,
    dst_uri: String,
    enabled: bool,
}

/// `POST /load_balancer/status` (OpenSIPS lb_status): disabling is sticky (NOEN) until an admin
/// enables the destination again.
fn set_lb_status(ctl: &mut Control, r: LbStatusRequest) -> Result<(), (u16, String)> {
    if !ctl.config.load_balancer.iter().any(|d| d.group_id == r.group_id && d.uri == r.dst_uri) {
        return Err((404, format!("destination {} not found in group {}", r.dst_uri, r.group_id)));
    }
    ctl.admin.set_lb_enabled(r.group_id, &r.dst_uri, r.enabled);
    tracing::info!(group_id = r.group_id, dst_uri = %r.dst_uri, enabled = r.enabled, "admin set load_balancer status");
    ctl.rebuild();
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateRequest {
    setid: i32,
    destination: String,
    state: String,
}

/// `POST /dispatcher/state` (OpenSIPS ds_set_state): sticky until changed again by an admin.
fn set_state(ctl: &mut Control, r: StateRequest) -> Result<(), (u16, String)> {
    if ctl.config.dispatcher_row(r.setid, &r.destination).is_none() {
        return Err((404, format!("destination {} not found in set {}", r.destination, r.setid)));
    }
    let state = DestState::from_name(&r.state)
        .ok_or_else(|| (400, format!("state must be active, inactive or probing, not {:?}", r.state)))?;
    ctl.admin.set_dispatcher_state(r.setid, &r.destination, state);
    // OpenSIPS: setting active clears the probing flags; setting probing makes the box earn its
    // way back through probes.
    // Every address of a name is the row's: the command applies to all of them.
    let keys: Vec<(i32, String)> = ctl
        .routing
        .dispatcher
        .iter()
        .filter(|d| d.setid == r.setid && d.written_uri() == r.destination)
        .map(|d| (d.setid, d.uri.clone()))
        .collect();
    for key in &keys {
        match state {
            DestState::Active => ctl.prober.force(key, true),
            DestState::Probing => ctl.prober.force(key, false),
            DestState::Inactive => {}
        }
    }
    ctl.copy_probe_health();
    tracing::info!(setid = r.setid, destination = %r.destination, state = %r.state, "admin set destination state");
    ctl.rebuild();
    Ok(())
}

/// What is valid but deserves a second look before it runs at a public edge.
pub fn check_warnings(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(addr) = c.control.admin.filter(|a| !a.ip().is_loopback()) {
        out.push(format!(
            "{}: control.admin: the admin listener {addr} is reachable from other hosts: /status, /metrics and the \
             admin commands are then guarded by the bearer token alone; keep it on loopback or a management \
             network behind a firewall",
            c.path.display()
        ));
    }
    out
}

/// One line of `fsroute check`'s answer on stdout. A reader that went away (`fsroute check | head`)
/// is not an error of the config: `println!` would panic on the broken pipe, this stops quietly.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Validates a config file for `fsroute check`: prints the summary (and warnings) or the errors.
/// With `resolve`, every destination name is resolved once and one that does not is an error.
pub fn check(path: &Path, resolve: bool) -> i32 {
    match config::load(path) {
        Ok(c) => {
            say(c.summary());
            for w in check_warnings(&c) {
                eprintln!("warning: {w}");
            }
            if resolve {
                return check_names(&c);
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_CONFIG
        }
    }
}

/// `fsroute check --resolve`: each name's addresses now, or why it has none.
fn check_names(c: &Config) -> i32 {
    let names = c.dns_names();
    if names.is_empty() {
        say("dns names   none to resolve");
        return EXIT_OK;
    }
    let outcomes = match crate::dns::resolver::resolve_all(&c.dns, &names) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{}: dns: {e}", c.path.display());
            return EXIT_CONFIG;
        }
    };
    let mut failed = 0;
    for (name, outcome) in outcomes {
        match outcome {
            Ok(a) => {
                let addrs: Vec<String> = a
                    .addrs
                    .iter()
                    .map(|x| match x.srv {
                        Some(r) => format!("{} (SRV priority {}, weight {})", x.addr, r.priority, r.weight),
                        None => x.addr.to_string(),
                    })
                    .collect();
                say(format_args!("resolved    {name}: {} (TTL {}s)", addrs.join(", "), a.ttl.as_secs()));
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: {name}: does not resolve: {e}", c.path.display());
            }
        }
    }
    if failed > 0 {
        EXIT_CONFIG
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(proxy: &str, control: &str) -> Config {
        let text = format!(
            "[proxy]\n{proxy}\n\n[control]\n{control}\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:5099\"\n"
        );
        config::parse(&text, Path::new("fsroute.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reload_that_changes_listen_shards_or_ingress_is_refused_naming_each_field() {
        let running = cfg("listen = [\"127.0.0.1:5060\"]\nshards = 2", "");
        assert!(restart_only_changes(&running, &running.clone()).is_empty());
        let moved = cfg("listen = [\"127.0.0.1:5070\", \"127.0.0.1:5071\"]\nshards = 2", "");
        assert_eq!(
            restart_only_changes(&running, &moved),
            ["proxy.listen: changes only on restart (running: [127.0.0.1:5060], new: [127.0.0.1:5070, 127.0.0.1:5071])"]
        );
        // The advertised address follows the first listener: a table built from `moved` would put
        // 127.0.0.1:5070 in Via, where nothing listens.
        assert_ne!(moved.proxy.advertise, running.proxy.advertise);
        let all = cfg("listen = [\"127.0.0.1:5070\"]\nshards = 3\ningress = \"random\"", "");
        let why = restart_only_changes(&running, &all);
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[1].starts_with("proxy.shards: changes only on restart (running: 2, new: 3)"), "{why:?}");
        assert!(why[2].starts_with("proxy.ingress:"), "{why:?}");
    }

    #[test]
    fn a_reload_that_changes_a_tcp_listener_or_a_stream_limit_is_refused_naming_each_field() {
        let running = cfg("listen = [\"127.0.0.1:5060\", \"tcp:127.0.0.1:5060\"]", "");
        assert!(restart_only_changes(&running, &running.clone()).is_empty());
        let moved = cfg("listen = [\"127.0.0.1:5060\", \"tcp:127.0.0.1:5070\"]", "");
        assert_eq!(
            restart_only_changes(&running, &moved),
            ["proxy.listen (tcp:): changes only on restart (running: [127.0.0.1:5060], new: [127.0.0.1:5070])"]
        );
        let limits = cfg(
            "listen = [\"127.0.0.1:5060\", \"tcp:127.0.0.1:5060\"]\ntcp_idle_timeout = \"30s\"\ntcp_max_message = 10000\ntcp_connections_per_source = 5",
            "",
        );
        assert_eq!(
            restart_only_changes(&running, &limits),
            [
                "proxy.tcp_idle_timeout: changes only on restart (running: 600s, new: 30s)",
                "proxy.tcp_max_message: changes only on restart (running: 65535, new: 10000)",
                "proxy.tcp_connections_per_source: changes only on restart (running: 64, new: 5)",
            ]
        );
    }

    #[test]
    fn a_reload_that_moves_the_admin_listener_is_refused_instead_of_reported_as_applied() {
        let running = cfg("listen = [\"127.0.0.1:5060\"]", "admin = \"127.0.0.1:9060\"");
        assert!(restart_only_changes(&running, &running.clone()).is_empty());
        let moved = cfg("listen = [\"127.0.0.1:5060\"]", "admin = \"127.0.0.1:9070\"");
        assert_eq!(
            restart_only_changes(&running, &moved),
            ["control.admin: changes only on restart (running: 127.0.0.1:9060, new: 127.0.0.1:9070)"]
        );
        let gone = cfg("listen = [\"127.0.0.1:5060\"]", "");
        assert_eq!(restart_only_changes(&running, &gone), ["control.admin: changes only on restart (running: 127.0.0.1:9060, new: none)"]);
        // The token is read per request: a reload may change it.
        let token = cfg("listen = [\"127.0.0.1:5060\"]", "admin = \"127.0.0.1:9060\"\nadmin_token = \"0123456789abcdef0123456789abcdef\"");
        assert!(restart_only_changes(&running, &token).is_empty());
    }

    #[test]
    fn a_reload_may_change_an_advertise_that_is_written_and_everything_a_table_holds() {
        let running = cfg("listen = [\"127.0.0.1:5060\"]\nshards = 2", "");
        let nat = cfg("listen = [\"127.0.0.1:5060\"]\nshards = 2\nadvertise = \"203.0.113.7:5060\"\nrecord_route = false", "stale_weight = 3");
        assert!(restart_only_changes(&running, &nat).is_empty());
    }

    #[test]
    fn check_warns_when_the_admin_listener_is_reachable_from_other_hosts() {
        let token = "admin_token = \"0123456789abcdef0123456789abcdef\"";
        let public = cfg("listen = [\"127.0.0.1:5060\"]", &format!("admin = \"0.0.0.0:9060\"\n{token}"));
        let w = check_warnings(&public);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("control.admin") && w[0].contains("0.0.0.0:9060") && w[0].contains("fsroute.toml"), "{w:?}");
        assert!(!w[0].contains("0123456789abcdef"), "never the token: {w:?}");
        let lan = cfg("listen = [\"127.0.0.1:5060\"]", &format!("admin = \"10.1.2.3:9060\"\n{token}"));
        assert_eq!(check_warnings(&lan).len(), 1);
        for quiet in ["admin = \"127.0.0.1:9060\"", "admin = \"[::1]:9060\"", ""] {
            assert!(check_warnings(&cfg("listen = [\"127.0.0.1:5060\"]", quiet)).is_empty(), "{quiet}");
        }
    }
}
