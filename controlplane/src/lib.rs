//! fsroute's control plane: the config file and the pure builder that turns config, runtime
//! stats and admin overrides into the data plane's routing table.

pub mod admin;
pub mod admin_http;
pub mod build;
pub mod config;
pub mod freeswitch;
pub mod headroom;
pub mod probe;
pub mod reconcile;
pub mod runtime;

/// Parses `"250ms"`, `"3s"`, `"2m"`, `"12h"` as the config file does.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s)
}
