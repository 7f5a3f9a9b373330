//! fsroute's control plane: everything slow that decides where calls go, on one thread of its own.
//! Shards never wait on it; they read the routing table it swaps in.
//!
//! - [`runtime`]: the control thread of `fsroute run` and `fsroute check`: signals, reloads, the loop.
//! - [`admin`]: what `/status` and `/metrics` say, assembled from the control thread's state.
//! - [`admin_http`]: the admin HTTP listener (its own thread, limits, bearer token, hand-off).
//! - [`ctl`]: `fsroute ctl`, the operator's client for the admin API (tables or JSON).
//! - [`probe`]: OPTIONS probing of dispatcher destinations and their health verdicts.
//! - [`reconcile`]: writing off load_balancer units whose calls a box no longer counts.
//! - [`headroom`]: how many more calls one FreeSWITCH box can take, from its numbers.
//! - [`dns`]: destination names: resolved on a thread of their own, refreshed at their TTL, kept
//!   through failures for a grace, expanded into one destination per address.
//! - [`freeswitch`]: one ESL connection per box and the translation of its events into [`state`].
//! - [`state`]: what the control plane knows at runtime: box stats, probe verdicts, admin
//!   overrides, the counters kept across builds.
//! - [`table_builder`]: the pure `(Config, Stats, AdminState) -> RoutingTable` builder.
//! - [`config`]: the config file: loading, validation, the validated [`config::Config`].

pub mod admin;
pub mod admin_http;
pub mod config;
pub mod dns;
pub mod ctl;
pub mod freeswitch;
pub mod headroom;
pub mod probe;
pub mod reconcile;
pub mod runtime;
pub mod state;
pub mod table_builder;

/// Parses `"250ms"`, `"3s"`, `"2m"`, `"12h"` as the config file does.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s)
}
