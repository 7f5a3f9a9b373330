//! The one place that refuses config features this build parses and validates but cannot run
//! yet. Each arrives with later work, which deletes its rule here and nothing else:
//! `[[load_balancer]]` rows,
//! `to_load_balancer` routes and route failover (the load_balancer work). A key that is accepted
//! but does nothing would be a silent lie to an operator, so each is refused by name.

use std::path::Path;

use super::error::{ConfigError, LineIndex};
use super::raw::RawConfig;

pub const LOAD_BALANCER_ROW: &str =
    "[[load_balancer]] rows need the load_balancer data plane, not available in this build";
pub const TO_LOAD_BALANCER: &str =
    "to_load_balancer routes need the load_balancer data plane, not available in this build";

pub const FAILOVER: &str = "route failover needs the load_balancer work, not available in this build";

pub(crate) fn reject(raw: &RawConfig, text: &str, path: &Path) -> Vec<ConfigError> {
    let lines = LineIndex::new(text);
    let mut errors = Vec::new();
    for (i, row) in raw.load_balancer.iter().enumerate() {
        let value = row.get_ref().dst_uri.as_ref().map_or_else(
            || "[[load_balancer]]".to_string(),
            |u| format!("{:?}", u.get_ref()),
        );
        errors.push(ConfigError::Unsupported {
            at: lines.position(path, text, row.span().start),
            field: format!("load_balancer[{i}]"),
            value,
            reason: LOAD_BALANCER_ROW,
        });
    }
    for (i, row) in raw.route.iter().enumerate() {
        if let Some(f) = &row.get_ref().failover {
            if *f.get_ref() {
                errors.push(ConfigError::Unsupported {
                    at: lines.position(path, text, f.span().start),
                    field: format!("route[{i}].failover"),
                    value: "true".to_string(),
                    reason: FAILOVER,
                });
            }
        }
        if let Some(to) = &row.get_ref().to_load_balancer {
            errors.push(ConfigError::Unsupported {
                at: lines.position(path, text, to.span().start),
                field: format!("route[{i}].to_load_balancer"),
                value: to.get_ref().to_string(),
                reason: TO_LOAD_BALANCER,
            });
        }
    }
    errors
}
