//! The config file: loading, validation and the validated [`Config`] the rest of the control
//! plane works from. The file format is the contract in docs/CONTRACT.md; this module owns turning
//! it into typed values with defaults applied, and rejecting anything wrong with errors that name
//! the file, line, column and field. Layout: `raw` mirrors the TOML (serde, spans),
//! `validate` checks it and builds [`Config`], `value` parses the small string languages (`sip:`,
//! `fs://`, CIDR, durations), `summary` renders `fsroute check`'s screen.

mod error;
pub(crate) mod raw;
mod summary;
mod tls;
mod validate;
mod value;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fsroute_dataplane::dispatch::{Algorithm, HashMode};
use fsroute_dataplane::socket::Ingress;
use fsroute_dataplane::table::RouteMatch;

/// OpenSIPS `lb_start` flags, as the data plane routes by them: one type from the file to the table.
pub use fsroute_dataplane::lb::LbFlags;

pub use error::{redact, ConfigError, ConfigErrors, Position};
/// Passwords, the admin token and the branch secret: the ESL crate's never-printed string.
pub use fsroute_esl::Secret;
pub use value::{destination_transport, is_stream_destination, parse_duration, SIP_DEFAULT_PORT};
pub(crate) use validate::is_own_listener;
pub use tls::{CertificateInfo, TlsConfig, VerifyClient};

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Validates `text` as the config file `path` (the path only labels errors).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let raw = raw_from_str(text, path)?;
    let (config, mut errors) = validate::validate(&raw, text, path);
    if errors.is_empty() {
        Ok(config)
    } else {
        // Stable sort: file order, and for one spot the order the checks ran in.
        errors.sort_by_key(|e| e.position().map(|p| (p.line, p.column)));
        Err(ConfigErrors(errors))
    }
}


fn raw_from_str(text: &str, path: &Path) -> Result<raw::RawConfig, ConfigError> {
    toml::from_str::<raw::RawConfig>(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let lines = error::LineIndex::new(text);
        ConfigError::Syntax {
            at: lines.position(path, text, offset),
            field: error::field_at(text, offset),
            message: redact(e.message().trim_end()),
        }
    })
}

/// A validated config with every default applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages and `/status`).
    pub path: PathBuf,
    pub proxy: ProxyConfig,
    pub control: ControlConfig,
    pub failover: FailoverConfig,
    /// `[limits]`: per-shard bounds on call state.
    pub limits: fsroute_dataplane::table::MemoryLimits,
    /// `[dns]`: how destination names are resolved and kept (docs/DNS.md).
    pub dns: DnsConfig,
    /// `[capture]`: the HEP collector every SIP datagram is mirrored to; None = off (no `hep`).
    pub capture: Option<fsroute_dataplane::table::CaptureSettings>,
    /// `[tls]`, its files read and checked; None without the section.
    pub tls: Option<TlsConfig>,
    /// `[[dispatcher]]` rows in file order.
    pub dispatcher: Vec<DispatcherRow>,
    /// `[[load_balancer]]` rows in file order.
    pub load_balancer: Vec<LoadBalancerRow>,
    /// `[[route]]` rows in file order (first match wins).
    pub routes: Vec<RouteConfig>,
}

impl Config {
    /// The dispatcher setids in order of their first row.
    pub fn setids(&self) -> Vec<i32> {
        first_seen(self.dispatcher.iter().map(|r| r.setid))
    }

    /// The load_balancer group ids in order of their first row.
    pub fn group_ids(&self) -> Vec<i32> {
        first_seen(self.load_balancer.iter().map(|r| r.group_id))
    }

    /// The `[[dispatcher]]` row of `uri` (as written) in set `setid`.
    pub fn dispatcher_row(&self, setid: i32, uri: &str) -> Option<&DispatcherRow> {
        self.dispatcher.iter().find(|r| r.setid == setid && r.uri == uri)
    }

    /// Every distinct FreeSWITCH ESL endpoint named by a dispatcher weight or a load_balancer
    /// resource, first mention first: one ESL connection each.
    pub fn fs_endpoints(&self) -> Vec<&FsEndpoint> {
        let mut out: Vec<&FsEndpoint> = Vec::new();
        let weights = self.dispatcher.iter().filter_map(|r| match &r.weight {
            Weight::Fs(fs) => Some(fs),
            Weight::Static(_) => None,
        });
        let resources = self
            .load_balancer
            .iter()
            .flat_map(|r| &r.resources)
            .filter_map(|res| match &res.capacity {
                Capacity::Fs(fs) => Some(fs),
                Capacity::Fixed(_) => None,
            });
        for fs in weights.chain(resources) {
            if !out.iter().any(|o| o.key() == fs.key()) {
                out.push(fs);
            }
        }
        out
    }

    /// Every distinct destination name of the dispatcher and load_balancer rows, first mention first:
    /// what the control plane's resolver keeps resolved (docs/DNS.md).
    pub fn dns_names(&self) -> Vec<DnsTarget> {
        let rows = self.dispatcher.iter().filter_map(|r| r.name.as_ref());
        let lb = self.load_balancer.iter().filter_map(|r| r.name.as_ref());
        let mut out: Vec<DnsTarget> = Vec::new();
        for n in rows.chain(lb) {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }

    /// The one-screen summary printed by `fsroute check`. Never shows a password.
    pub fn summary(&self) -> String {
        summary::render(self)
    }
}

/// Each distinct id once, in order of its first appearance.
fn first_seen(ids: impl Iterator<Item = i32>) -> Vec<i32> {
    let mut out: Vec<i32> = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// UDP listeners, at least one (`udp:IP:PORT` or a bare `IP:PORT`).
    pub listen: Vec<SocketAddr>,
    /// TCP listeners (`tcp:IP:PORT`), each shard with one socket per address (docs/TCP.md).
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS listeners (`tls:IP:PORT`): TCP listeners whose connections are TLS (`[tls]`).
    pub listen_tls: Vec<SocketAddr>,
    /// Limits of stream connections (`tcp_idle_timeout`, `tcp_max_message`,
    /// `tcp_connections_per_source`).
    pub stream: fsroute_dataplane::shard::StreamSettings,
    /// A request larger than this leaves for a UDP destination over TCP (RFC 3261 §18.1.1);
    /// 0 = never.
    pub udp_max_message: usize,
    /// Written into Via and Record-Route; default: the first listener.
    pub advertise: HostPort,
    /// Further names by which requests may address fsroute (port defaults to advertise's).
    pub aliases: Vec<HostPort>,
    /// Data-plane cores; default: the available CPUs.
    pub shards: usize,
    pub record_route: bool,
    /// Inserted when a request has none; 1..=255.
    pub max_forwards: u8,
    pub hash: HashMode,
    /// How datagrams spread over the shards' sockets (per flow + hand-off, or per packet).
    pub ingress: Ingress,
    /// 404 or 503: the reply when no route matches.
    pub no_route_reply: u16,
    pub transaction_memory: Duration,
    pub dialog_memory: Duration,
    /// How long an answered call holds its units without a BYE.
    pub max_call_duration: Duration,
    /// Key material for the MAC in fsroute's branches; None = a random key per process.
    pub branch_secret: Option<Secret>,
    /// Which forwarded requests carry the caller's address as X-AUTH-IP / X-AUTH-PORT.
    pub x_auth_ip: XAuthMode,
}

/// `[proxy] x_auth_ip`: FreeSWITCH's `apply-proxy-acl` trusts X-AUTH-IP / X-AUTH-PORT from a
/// proxy to name the caller (docs/FREESWITCH.md, "X-AUTH-IP").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XAuthMode {
    /// Added towards destinations with an `fs://` weight or capacity; removed from every request.
    #[default]
    Fs,
    /// Added to every forwarded request; removed from every request.
    Always,
    /// Neither added nor removed.
    Never,
}

impl XAuthMode {
    pub fn from_name(s: &str) -> Option<XAuthMode> {
        match s {
            "fs" => Some(XAuthMode::Fs),
            "always" => Some(XAuthMode::Always),
            "never" => Some(XAuthMode::Never),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            XAuthMode::Fs => "fs",
            XAuthMode::Always => "always",
            XAuthMode::Never => "never",
        }
    }
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// HTTP admin/metrics listener; `None` = off.
    pub admin: Option<SocketAddr>,
    /// Bearer token every admin request must carry; required when `admin` is not loopback.
    pub admin_token: Option<Secret>,
    pub heartbeat_timeout: Duration,
    pub stale_weight: u32,
    pub max_freeswitch_weight: u32,
    pub initial_capacity: u32,
    pub channels_per_call: u32,
    /// OPTIONS probing interval; zero = probing off.
    pub probe_interval: Duration,
    pub probe_failure_threshold: u32,
    pub probe_success_threshold: u32,
    /// How a FreeSWITCH box's numbers become capacity (docs/ADMISSION.md).
    pub capacity_model: CapacityModel,
    /// Idle-CPU (millionths of a percent) one session costs a box before its own heartbeats have
    /// told (`cpu_cost_prior`, in percent points).
    pub cpu_cost_prior_micro: u64,
    /// Whether `cpu_cost_prior` was written in the config (operator knowledge) rather than defaulted.
    pub cpu_cost_prior_configured: bool,
    /// The least a session is ever taken to cost (`cpu_cost_floor`).
    pub cpu_cost_floor_micro: u64,
    /// Idle-CPU kept free above the box's `min-idle-cpu` (`cpu_margin`).
    pub cpu_margin_micro: u32,
    /// How often each box's `api status` and `fsctl pause_check inbound` are re-read; zero = never.
    pub status_interval: Duration,
    /// The boxes' `cpu-idle-smoothing-depth` (FreeSWITCH's default 30): Idle-CPU is the mean of that
    /// many one-second samples, and a box's first that-many seconds report a ring that started at
    /// 100 %, so they teach nothing about what a session costs.
    pub idle_cpu_smoothing: u32,
    /// The most sessions, and sessions per second, a box is believed to report: higher figures are
    /// read as this (`max_sessions_ceiling`), so one broken or hostile box cannot attract every call.
    pub max_sessions_ceiling: u32,
}

/// `control.capacity_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CapacityModel {
    /// Per-box headroom by sessions, CPU and rate, live between heartbeats (the default).
    #[default]
    Headroom,
    /// OpenSIPS's arithmetic: `floor(Idle × M / k) − sessions` for load_balancer capacities and
    /// `round(max_w × (1 − S/M) × Idle)` for dispatcher weights. Counts each call twice; kept for
    /// operators whose numbers depend on it.
    Opensips,
}

impl CapacityModel {
    pub fn from_name(s: &str) -> Option<CapacityModel> {
        match s {
            "headroom" => Some(CapacityModel::Headroom),
            "opensips" => Some(CapacityModel::Opensips),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CapacityModel::Headroom => "headroom",
            CapacityModel::Opensips => "opensips",
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            admin: None,
            admin_token: None,
            heartbeat_timeout: Duration::from_secs(60),
            stale_weight: 0,
            max_freeswitch_weight: 100,
            initial_capacity: 1000,
            channels_per_call: 1,
            probe_interval: Duration::ZERO,
            probe_failure_threshold: 3,
            probe_success_threshold: 1,
            capacity_model: CapacityModel::Headroom,
            cpu_cost_prior_micro: 100_000,
            cpu_cost_prior_configured: false,
            cpu_cost_floor_micro: 5_000,
            cpu_margin_micro: 2_000_000,
            status_interval: Duration::from_secs(5),
            idle_cpu_smoothing: 30,
            max_sessions_ceiling: 100_000,
        }
    }
}

/// `[failover]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverConfig {
    /// Final responses that move a call to the next destination.
    pub codes: Vec<u16>,
    pub no_answer_timeout: Duration,
    pub max_attempts: u32,
    /// fsroute's own answer when no destination is left: 503 or 500 (RFC 3261 §16.7 step 6).
    pub exhausted_reply: u16,
    /// `Retry-After` on that 503; zero = none.
    pub exhausted_retry_after: Duration,
    /// How long a box that answered 503 is skipped, unless its next heartbeat comes first.
    pub refused_cooldown: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            codes: vec![408, 500, 503],
            no_answer_timeout: Duration::from_secs(2),
            max_attempts: 3,
            exhausted_reply: 503,
            exhausted_retry_after: Duration::from_secs(5),
            refused_cooldown: Duration::from_secs(1),
        }
    }
}

/// `[dns]`: the resolver of destination names (docs/DNS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask (UDP, then TCP for a truncated answer); empty = /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// The shortest time an answer is kept before it is asked again (a TTL of 0 never spins).
    pub min_ttl: Duration,
    /// The longest: a name with a day-long TTL is still re-read this often.
    pub max_ttl: Duration,
    /// How long a name that stops resolving keeps its last addresses before they leave the table.
    pub grace: Duration,
    /// How long one query may take (per attempt; the resolver tries twice per server).
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
        }
    }
}

/// A destination host name and the port written after it: what the resolver is asked. Without a
/// port, `_sip._udp.<host>` SRV first, then A/AAAA on 5060 (RFC 3263 §4.2); with one, A/AAAA only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsTarget {
    /// Lower-case, without a trailing dot.
    pub host: String,
    pub port: Option<u16>,
}

impl DnsTarget {
    /// The URI spelling, `sip:host[:port]`, as `/status` and the logs name the name.
    pub fn uri(&self) -> String {
        match self.port {
            Some(p) => format!("sip:{}:{p}", self.host),
            None => format!("sip:{}", self.host),
        }
    }

    /// What is asked, for `/status` and `fsroute check`.
    pub fn query(&self) -> String {
        match self.port {
            Some(p) => format!("A/AAAA {} (port {p})", self.host),
            None => format!("SRV _sip._udp.{0}, else A/AAAA {0} (port {SIP_DEFAULT_PORT})", self.host),
        }
    }
}

impl fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// On a row expanded from a resolved name (docs/DNS.md, "One name, several destinations"): the
/// row as written, which admin commands and overrides name, and its share of the row's weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFrom {
    /// The row's `destination` / `dst_uri` as written.
    pub uri: String,
    /// The destination weighs `weight × share.0 / share.1` (an SRV target's weight against the
    /// heaviest of its priority; `(0, 1)` for a backup priority; `(1, 1)` for an A/AAAA address).
    pub share: (u32, u32),
}

/// A host as written in config: an IP literal or a lower-cased DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// Without brackets, lower-case (how `local_names` and map keys spell it).
    pub fn bare(&self) -> String {
        match self {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }

    /// As written inside a URI: IPv6 bracketed.
    pub fn uri_form(&self) -> String {
        match self {
            Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            other => other.bare(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri_form())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A FreeSWITCH box's Event Socket address: one ESL connection per distinct key.
pub type FsKey = HostPort;

/// `fs://[user]:password@host[:port]`: where to read a FreeSWITCH box's heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEndpoint {
    pub user: Option<String>,
    pub password: Secret,
    pub endpoint: HostPort,
}

impl FsEndpoint {
    pub fn key(&self) -> FsKey {
        self.endpoint.clone()
    }
}

/// `fs://host:port`, the password-free spelling used in `/status`, logs and the summary.
impl fmt::Display for FsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fs://{}", self.endpoint)
    }
}

/// A dispatcher row's weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weight {
    Static(u32),
    /// Computed from the box's heartbeats (OpenSIPS `fetch_freeswitch_stats`).
    Fs(FsEndpoint),
}

/// Admin state of a destination: OpenSIPS's `state` column (0 active, 1 inactive, 2 probing)
/// at load, `POST /dispatcher/state` at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DestState {
    #[default]
    Active,
    Inactive,
    Probing,
}

impl DestState {
    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            0 => Some(DestState::Active),
            1 => Some(DestState::Inactive),
            2 => Some(DestState::Probing),
            _ => None,
        }
    }

    /// `active`, `inactive`, `probing` (ASCII case-insensitive), or the number as a string.
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(n) = s.parse::<i64>() {
            return Self::from_number(n);
        }
        [DestState::Active, DestState::Inactive, DestState::Probing]
            .into_iter()
            .find(|st| st.name().eq_ignore_ascii_case(s))
    }

    pub fn name(self) -> &'static str {
        match self {
            DestState::Active => "active",
            DestState::Inactive => "inactive",
            DestState::Probing => "probing",
        }
    }

    /// Whether selection may pick it: only active destinations take calls.
    pub fn is_active(self) -> bool {
        self == DestState::Active
    }
}

impl fmt::Display for DestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// OpenSIPS's provisioning columns that fsroute keeps but does not route by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowInfo {
    /// 1-based line of the row's `[[...]]` header, for runtime messages.
    pub line: usize,
    pub id: Option<i64>,
    pub probe_mode: Option<u8>,
    pub attrs: Option<String>,
    pub description: Option<String>,
    /// The listener this destination is reached through (must be one of `proxy.listen`).
    pub socket: Option<SocketAddr>,
}

/// One `[[dispatcher]]` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherRow {
    pub setid: i32,
    /// As written: the destination's identity in `/status`, admin commands and counters. A row
    /// expanded from a name is `<as written>#<address>` (`#` never appears in a written URI).
    pub uri: String,
    /// Where to send: the IP literal as written, or (expanded rows) one resolved address.
    /// Meaningless while `name` is set: such a row goes to the table only as its expansions.
    pub addr: SocketAddr,
    /// A host name to resolve (docs/DNS.md); None for an IP literal and for expanded rows.
    pub name: Option<DnsTarget>,
    /// Set on rows expanded from a name.
    pub resolved: Option<ResolvedFrom>,
    pub weight: Weight,
    pub priority: i32,
    /// Weight while an fs:// destination is stale (overrides `control.stale_weight`).
    pub fallback_weight: Option<u32>,
    /// Initial admin state.
    pub state: DestState,
    pub info: RowInfo,
}

impl DispatcherRow {
    /// The row as written: what admin commands and overrides name (one name, all its addresses).
    pub fn written_uri(&self) -> &str {
        self.resolved.as_ref().map_or(&self.uri, |r| &r.uri)
    }
}

/// One `[[load_balancer]]` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancerRow {
    pub group_id: i32,
    /// As written (`<as written>#<address>` on rows expanded from a name, as for dispatcher rows).
    pub uri: String,
    /// As for [`DispatcherRow::addr`].
    pub addr: SocketAddr,
    pub name: Option<DnsTarget>,
    pub resolved: Option<ResolvedFrom>,
    /// Every resource of the row, in order.
    pub resources: Vec<LbResource>,
    pub state: DestState,
    pub info: RowInfo,
}

impl LoadBalancerRow {
    /// As [`DispatcherRow::written_uri`].
    pub fn written_uri(&self) -> &str {
        self.resolved.as_ref().map_or(&self.uri, |r| &r.uri)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbResource {
    pub name: String,
    pub capacity: Capacity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capacity {
    /// A fixed number of concurrent calls.
    Fixed(u32),
    /// Learnt from the box's heartbeats.
    Fs(FsEndpoint),
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// 1-based line of the row's header.
    pub line: usize,
    /// Match keys, already normalised (domain lower-cased, CIDR parsed).
    pub matcher: RouteMatch,
    pub target: RouteTo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTo {
    Dispatcher {
        setid: i32,
        algorithm: Algorithm,
        failover: bool,
    },
    LoadBalancer {
        group_id: i32,
        resources: Vec<String>,
        flags: LbFlags,
        failover: bool,
    },
}
