//! The config file exactly as written: a serde tree mirroring the TOML, every table closed with
//! `deny_unknown_fields`, every value wrapped in `Spanned` so validation can name the line.
//! Nothing here judges values; integers are read wide (`i64`) so range errors come from
//! validation with a useful message instead of from serde.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// An optional, located value.
pub(crate) type Opt<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub proxy: Opt<RawProxy>,
    pub control: Opt<RawControl>,
    pub failover: Opt<RawFailover>,
    pub limits: Opt<RawLimits>,
    pub dns: Opt<RawDns>,
    pub capture: Opt<RawCapture>,
    pub tls: Opt<RawTls>,
    #[serde(default)]
    pub dispatcher: Vec<Spanned<RawDispatcher>>,
    #[serde(default)]
    pub load_balancer: Vec<Spanned<RawLoadBalancer>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub listen: Opt<Vec<Spanned<String>>>,
    pub advertise: Opt<String>,
    pub aliases: Opt<Vec<Spanned<String>>>,
    pub shards: Opt<i64>,
    pub record_route: Opt<bool>,
    pub max_forwards: Opt<i64>,
    pub hash: Opt<String>,
    pub ingress: Opt<String>,
    pub no_route_reply: Opt<i64>,
    pub transaction_memory: Opt<IntOrStr>,
    pub dialog_memory: Opt<IntOrStr>,
    pub max_call_duration: Opt<IntOrStr>,
    pub branch_secret: Opt<String>,
    pub x_auth_ip: Opt<String>,
    pub tcp_idle_timeout: Opt<IntOrStr>,
    pub tcp_max_message: Opt<i64>,
    pub tcp_connections_per_source: Opt<i64>,
    pub udp_max_message: Opt<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub transactions: Opt<i64>,
    pub dialogs: Opt<i64>,
    pub forks: Opt<i64>,
    pub fork_memory_mib: Opt<i64>,
}

/// `[tls]` (docs/TCP.md, "TLS"): PEM file paths and the client-certificate policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub certificate: Opt<String>,
    pub private_key: Opt<String>,
    pub client_ca: Opt<String>,
    pub verify_client: Opt<String>,
    pub ca: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCapture {
    pub hep: Opt<String>,
    pub capture_id: Opt<i64>,
    pub queue: Opt<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub admin: Opt<IntOrStr>,
    pub admin_token: Opt<String>,
    pub heartbeat_timeout: Opt<IntOrStr>,
    pub stale_weight: Opt<i64>,
    pub max_freeswitch_weight: Opt<i64>,
    pub initial_capacity: Opt<i64>,
    pub channels_per_call: Opt<i64>,
    pub probe_interval: Opt<IntOrStr>,
    pub probe_failure_threshold: Opt<i64>,
    pub probe_success_threshold: Opt<i64>,
    pub capacity_model: Opt<String>,
    pub cpu_cost_prior: Opt<Number>,
    pub cpu_cost_floor: Opt<Number>,
    pub cpu_margin: Opt<Number>,
    pub status_interval: Opt<IntOrStr>,
    pub idle_cpu_smoothing: Opt<i64>,
    pub max_sessions_ceiling: Opt<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    pub servers: Opt<Vec<Spanned<String>>>,
    pub min_ttl: Opt<IntOrStr>,
    pub max_ttl: Opt<IntOrStr>,
    pub grace: Opt<IntOrStr>,
    pub timeout: Opt<IntOrStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFailover {
    pub codes: Opt<Vec<Spanned<i64>>>,
    pub no_answer_timeout: Opt<IntOrStr>,
    pub max_attempts: Opt<i64>,
    pub exhausted_reply: Opt<i64>,
    pub exhausted_retry_after: Opt<IntOrStr>,
    pub refused_cooldown: Opt<IntOrStr>,
}

/// A row of OpenSIPS's `dispatcher` table, plus fsroute's `fallback_weight`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDispatcher {
    pub setid: Opt<i64>,
    pub destination: Opt<String>,
    pub weight: Opt<IntOrStr>,
    pub priority: Opt<i64>,
    pub fallback_weight: Opt<i64>,
    // OpenSIPS provisioning columns.
    pub id: Opt<i64>,
    pub state: Opt<IntOrStr>,
    pub probe_mode: Opt<i64>,
    pub attrs: Opt<String>,
    pub description: Opt<String>,
    pub socket: Opt<String>,
}

/// A row of OpenSIPS's `load_balancer` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLoadBalancer {
    pub group_id: Opt<i64>,
    pub dst_uri: Opt<String>,
    pub resources: Opt<String>,
    // OpenSIPS provisioning columns.
    pub id: Opt<i64>,
    pub state: Opt<IntOrStr>,
    pub probe_mode: Opt<i64>,
    pub attrs: Opt<String>,
    pub description: Opt<String>,
    pub socket: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub ruri_user_prefix: Opt<String>,
    pub ruri_domain: Opt<String>,
    pub method: Opt<String>,
    pub source: Opt<String>,
    pub to_dispatcher: Opt<i64>,
    pub to_load_balancer: Opt<i64>,
    pub algorithm: Opt<IntOrStr>,
    pub failover: Opt<bool>,
    pub resources: Opt<String>,
    pub lb_flags: Opt<String>,
}

/// A value written either as an integer or as a string: weights (`50` or `"fs://..."`),
/// algorithms (`"round-robin"` or OpenSIPS's `4`), states (`0` or `"inactive"`). Also used for
/// durations and addresses so that a bare integer gets a pointed message rather than serde's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IntOrStr {
    Int(i64),
    Str(String),
}

/// A number written as an integer or a float (`cpu_margin = 2` or `2.5`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub fn value(&self) -> f64 {
        match self {
            Number::Int(i) => *i as f64,
            Number::Float(f) => *f,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(i) => write!(f, "{i}"),
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

impl fmt::Display for IntOrStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrStr::Int(i) => write!(f, "{i}"),
            IntOrStr::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrStr, E> {
                i64::try_from(v)
                    .map(IntOrStr::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
