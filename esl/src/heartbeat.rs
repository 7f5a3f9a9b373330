//! Load figures a FreeSWITCH box reports about itself: from a HEARTBEAT event (docs/ESL.md §3.5)
//! or from the `api status` body used to seed a node before its first heartbeat (§4).
//! Numbers are parsed exactly as decimal text (Idle-CPU as fixed-point millionths of a
//! percent, never through `f64`) so that weights computed from them are reproducible.

use crate::frame::excerpt;
use crate::message::Event;

/// Idle-CPU is a percentage; this is 100 % in millionths. The data plane, which does not depend
/// on this crate, has the same figure (`fsroute_dataplane::lb::HUNDRED_PERCENT_MICRO`); the control
/// plane, which uses both, asserts at compile time that they agree.
pub const IDLE_CPU_MICRO_MAX: u32 = 100_000_000;

/// One load sample. The first three fields are what weighting needs and are always
/// present; the rest are informational and `None` when the source does not carry them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// Idle-CPU in millionths of a percent: `"78.400000"` is `78_400_000`.
    pub idle_cpu_micro: u32,
    /// Channels that exist now (a bridged call counts 2).
    pub session_count: u64,
    pub max_sessions: u64,
    /// Changes when FreeSWITCH restarts. Heartbeat only.
    pub core_uuid: Option<String>,
    pub hostname: Option<String>,
    /// Global event counter; gaps are normal. Heartbeat only.
    pub event_sequence: Option<u64>,
    /// Event-Date-Timestamp, microseconds since the Unix epoch. Heartbeat only.
    pub event_timestamp_us: Option<u64>,
    pub uptime_msec: Option<u64>,
    /// Session-Per-Sec: the *remaining* new-session budget of the current second, not a rate.
    pub session_per_sec: Option<u64>,
    pub session_per_sec_last: Option<u64>,
    pub session_per_sec_max: Option<u64>,
    pub session_per_sec_five_min: Option<u64>,
    pub session_since_startup: Option<u64>,
    pub session_peak_max: Option<u64>,
    pub session_peak_five_min: Option<u64>,
    /// Configured `sessions-per-second`. Only `api status` shows it.
    pub sessions_per_sec_limit: Option<u64>,
    /// Configured `min-idle-cpu`, millionths of a percent. Only `api status` shows it.
    pub min_idle_cpu_micro: Option<u32>,
}

/// Why a sample was rejected; names the offending field (the HEARTBEAT header name, also
/// used for the matching `api status` line).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("not a HEARTBEAT event (Event-Name {0:?})")]
    NotHeartbeat(Option<String>),
    #[error("{field} is missing")]
    Missing { field: &'static str },
    #[error("{field} is not a decimal number: {value:?}")]
    Unparsable { field: &'static str, value: String },
    #[error("{field} is negative: {value:?}")]
    Negative { field: &'static str, value: String },
    #[error("{field} is not finite: {value:?}")]
    NotFinite { field: &'static str, value: String },
    #[error("{field} is out of range: {value:?}")]
    OutOfRange { field: &'static str, value: String },
}

impl HeartbeatError {
    /// The field at fault, if the error is about one field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            HeartbeatError::NotHeartbeat(_) => None,
            HeartbeatError::Missing { field }
            | HeartbeatError::Unparsable { field, .. }
            | HeartbeatError::Negative { field, .. }
            | HeartbeatError::NotFinite { field, .. }
            | HeartbeatError::OutOfRange { field, .. } => Some(field),
        }
    }
}

pub const IDLE_CPU: &str = "Idle-CPU";
pub const SESSION_COUNT: &str = "Session-Count";
pub const MAX_SESSIONS: &str = "Max-Sessions";

/// Classifies a value that is not a plain decimal so the error says what is wrong with it.
fn reject(field: &'static str, value: &str) -> HeartbeatError {
    let v = excerpt(value.as_bytes());
    let t = value.trim().trim_start_matches('+');
    let unsigned = t.strip_prefix('-').unwrap_or(t).to_ascii_lowercase();
    if matches!(unsigned.as_str(), "nan" | "inf" | "infinity") || unsigned.starts_with("nan") {
        HeartbeatError::NotFinite { field, value: v }
    } else if t.starts_with('-') && t[1..].bytes().any(|b| b.is_ascii_digit()) {
        HeartbeatError::Negative { field, value: v }
    } else {
        HeartbeatError::Unparsable { field, value: v }
    }
}

/// Parses an unsigned decimal integer: ASCII digits only, no sign, no spaces (OpenSIPS
/// also rejects anything left over after the number).
pub fn parse_u64(field: &'static str, value: &str) -> Result<u64, HeartbeatError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reject(field, value));
    }
    value.parse().map_err(|_| HeartbeatError::OutOfRange {
        field,
        value: excerpt(value.as_bytes()),
    })
}

/// Parses a percentage such as `"87.633333"` or `"0.00"` into millionths of a percent,
/// exactly. Up to six decimals (FreeSWITCH prints `%f`); more are accepted only if the
/// extra digits are zeros, since anything else cannot be represented without rounding.
pub fn parse_percent_micro(field: &'static str, value: &str) -> Result<u32, HeartbeatError> {
    let (int, frac) = match value.split_once('.') {
        Some((i, f)) => (i, f),
        None => (value, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (value.contains('.') && frac.is_empty()) {
        return Err(reject(field, value));
    }
    let out_of_range = || HeartbeatError::OutOfRange {
        field,
        value: excerpt(value.as_bytes()),
    };
    let (kept, extra) = frac.split_at(frac.len().min(6));
    if extra.bytes().any(|b| b != b'0') {
        return Err(HeartbeatError::Unparsable {
            field,
            value: excerpt(value.as_bytes()),
        });
    }
    let int = int.trim_start_matches('0');
    if int.len() > 3 {
        return Err(out_of_range());
    }
    let int: u32 = if int.is_empty() { 0 } else { int.parse().map_err(|_| out_of_range())? };
    let mut micro: u32 = 0;
    for i in 0..6 {
        let d = kept.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        micro = micro * 10 + d;
    }
    let total = int * 1_000_000 + micro;
    if total > IDLE_CPU_MICRO_MAX {
        return Err(out_of_range());
    }
    Ok(total)
}

fn required<'a>(event: &'a Event, field: &'static str) -> Result<&'a str, HeartbeatError> {
    event.get(field).ok_or(HeartbeatError::Missing { field })
}

/// A present field must parse; absence is fine for informational fields.
fn optional_u64(event: &Event, field: &'static str) -> Result<Option<u64>, HeartbeatError> {
    event.get(field).map(|v| parse_u64(field, v)).transpose()
}

impl HeartbeatStats {
    /// Reads a HEARTBEAT event. Every field that is present must be well-formed: a
    /// malformed counter means the producer is broken, and its other figures are then not
    /// trusted either.
    pub fn from_event(event: &Event) -> Result<HeartbeatStats, HeartbeatError> {
        if event.name() != Some("HEARTBEAT") {
            return Err(HeartbeatError::NotHeartbeat(event.name().map(str::to_owned)));
        }
        Ok(HeartbeatStats {
            idle_cpu_micro: parse_percent_micro(IDLE_CPU, required(event, IDLE_CPU)?)?,
            session_count: parse_u64(SESSION_COUNT, required(event, SESSION_COUNT)?)?,
            max_sessions: parse_u64(MAX_SESSIONS, required(event, MAX_SESSIONS)?)?,
            core_uuid: event.get("Core-UUID").map(str::to_owned),
            hostname: event.get("FreeSWITCH-Hostname").map(str::to_owned),
            event_sequence: optional_u64(event, "Event-Sequence")?,
            event_timestamp_us: optional_u64(event, "Event-Date-Timestamp")?,
            uptime_msec: optional_u64(event, "Uptime-msec")?,
            session_per_sec: optional_u64(event, "Session-Per-Sec")?,
            session_per_sec_last: optional_u64(event, "Session-Per-Sec-Last")?,
            session_per_sec_max: optional_u64(event, "Session-Per-Sec-Max")?,
            session_per_sec_five_min: optional_u64(event, "Session-Per-Sec-FiveMin")?,
            session_since_startup: optional_u64(event, "Session-Since-Startup")?,
            session_peak_max: optional_u64(event, "Session-Peak-Max")?,
            session_peak_five_min: optional_u64(event, "Session-Peak-FiveMin")?,
            sessions_per_sec_limit: None,
            min_idle_cpu_micro: None,
        })
    }

    /// Reads the body of `api status` (docs/ESL.md §4). Lines are recognised by their wording,
    /// not position, because the version line's format varies by build. The session
    /// count, max sessions and idle CPU lines are required; the others fill the optional
    /// fields when present and well-formed.
    pub fn from_status(body: &[u8]) -> Result<HeartbeatStats, HeartbeatError> {
        let text = String::from_utf8_lossy(body);
        let mut s = HeartbeatStats::default();
        let (mut count, mut max, mut idle) = (None, None, None);
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(rest) = line.strip_prefix("UP ") {
                s.uptime_msec = parse_uptime_msec(rest);
            } else if let Some(n) = line.strip_suffix(" session(s) since startup") {
                s.session_since_startup = parse_u64("Session-Since-Startup", n).ok();
            } else if let Some(n) = line.strip_suffix(" session(s) max") {
                max = Some(parse_u64(MAX_SESSIONS, n)?);
            } else if let Some(rest) = line.strip_prefix("min idle cpu ") {
                let (min, cur) = rest
                    .split_once('/')
                    .ok_or_else(|| reject(IDLE_CPU, rest))?;
                s.min_idle_cpu_micro = parse_percent_micro("min-idle-cpu", min).ok();
                idle = Some(parse_percent_micro(IDLE_CPU, cur)?);
            } else if let Some((n, rest)) = line.split_once(" session(s) per Sec out of max ") {
                // "<last> session(s) per Sec out of max <limit>, peak <max>, last 5min <5min>"
                s.session_per_sec_last = parse_u64("Session-Per-Sec-Last", n).ok();
                let mut parts = rest.split(", ");
                s.sessions_per_sec_limit = parts.next().and_then(|v| parse_u64("sessions-per-second", v).ok());
                s.session_per_sec_max = parts
                    .next()
                    .and_then(|p| p.strip_prefix("peak "))
                    .and_then(|v| parse_u64("Session-Per-Sec-Max", v).ok());
                s.session_per_sec_five_min = parts
                    .next()
                    .and_then(|p| p.strip_prefix("last 5min "))
                    .and_then(|v| parse_u64("Session-Per-Sec-FiveMin", v).ok());
            } else if let Some((n, rest)) = line.split_once(" session(s) - peak ") {
                // "<count> session(s) - peak <max>, last 5min <5min>"
                count = Some(parse_u64(SESSION_COUNT, n)?);
                let (peak, five) = rest.split_once(", last 5min ").unwrap_or((rest, ""));
                s.session_peak_max = parse_u64("Session-Peak-Max", peak).ok();
                s.session_peak_five_min = parse_u64("Session-Peak-FiveMin", five).ok();
            }
        }
        s.session_count = count.ok_or(HeartbeatError::Missing { field: SESSION_COUNT })?;
        s.max_sessions = max.ok_or(HeartbeatError::Missing { field: MAX_SESSIONS })?;
        s.idle_cpu_micro = idle.ok_or(HeartbeatError::Missing { field: IDLE_CPU })?;
        Ok(s)
    }
}

/// "Y years, D days, H hours, M minutes, S seconds, MS milliseconds, US microseconds"
/// (units singular when 1). Years are 365 days, as FreeSWITCH's own breakdown uses.
fn parse_uptime_msec(text: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 6] = [
        ("year", 365 * 86_400_000),
        ("day", 86_400_000),
        ("hour", 3_600_000),
        ("minute", 60_000),
        ("second", 1_000),
        ("millisecond", 1),
    ];
    let mut parts = text.split(", ");
    let mut total: u64 = 0;
    for (unit, ms) in UNITS {
        let (n, u) = parts.next()?.split_once(' ')?;
        if u.strip_suffix('s').unwrap_or(u) != unit {
            return None;
        }
        total = total.checked_add(n.parse::<u64>().ok()?.checked_mul(ms)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_cpu_is_parsed_as_exact_fixed_point() {
        assert_eq!(parse_percent_micro(IDLE_CPU, "78.400000"), Ok(78_400_000));
        assert_eq!(parse_percent_micro(IDLE_CPU, "87.633333"), Ok(87_633_333));
        assert_eq!(parse_percent_micro(IDLE_CPU, "100.000000"), Ok(100_000_000));
        assert_eq!(parse_percent_micro(IDLE_CPU, "0.000000"), Ok(0));
        assert_eq!(parse_percent_micro(IDLE_CPU, "87.63"), Ok(87_630_000));
        assert_eq!(parse_percent_micro(IDLE_CPU, "42"), Ok(42_000_000));
        assert_eq!(parse_percent_micro(IDLE_CPU, "007.5000000"), Ok(7_500_000));
    }

    #[test]
    fn idle_cpu_rejections_name_the_field_and_the_reason() {
        let e = |v| parse_percent_micro(IDLE_CPU, v).unwrap_err();
        assert!(matches!(e("nan"), HeartbeatError::NotFinite { field: "Idle-CPU", .. }));
        assert!(matches!(e("-nan"), HeartbeatError::NotFinite { .. }));
        assert!(matches!(e("inf"), HeartbeatError::NotFinite { .. }));
        assert!(matches!(e("-1.000000"), HeartbeatError::Negative { .. }));
        assert!(matches!(e("100.000001"), HeartbeatError::OutOfRange { .. }));
        assert!(matches!(e("4294967296.0"), HeartbeatError::OutOfRange { .. }));
        assert!(matches!(e("1e2"), HeartbeatError::Unparsable { .. }));
        assert!(matches!(e(""), HeartbeatError::Unparsable { .. }));
        assert!(matches!(e("1."), HeartbeatError::Unparsable { .. }));
        assert!(matches!(e(".5"), HeartbeatError::Unparsable { .. }));
        assert!(matches!(e(" 5"), HeartbeatError::Unparsable { .. }));
        assert!(matches!(e("5.1234567"), HeartbeatError::Unparsable { .. }));
        assert_eq!(e("nan").field(), Some("Idle-CPU"));
    }

    #[test]
    fn integers_reject_sign_space_and_overflow() {
        assert_eq!(parse_u64(SESSION_COUNT, "37"), Ok(37));
        assert!(matches!(parse_u64(SESSION_COUNT, "-3"), Err(HeartbeatError::Negative { .. })));
        assert!(matches!(parse_u64(SESSION_COUNT, "+3"), Err(HeartbeatError::Unparsable { .. })));
        assert!(matches!(parse_u64(SESSION_COUNT, "3 "), Err(HeartbeatError::Unparsable { .. })));
        assert!(matches!(parse_u64(SESSION_COUNT, "0x10"), Err(HeartbeatError::Unparsable { .. })));
        assert!(matches!(
            parse_u64(SESSION_COUNT, "18446744073709551616"),
            Err(HeartbeatError::OutOfRange { .. })
        ));
    }

    #[test]
    fn uptime_text_converts_to_milliseconds_with_singular_units() {
        assert_eq!(
            parse_uptime_msec("0 years, 2 days, 3 hours, 14 minutes, 40 seconds, 512 milliseconds, 87 microseconds"),
            Some(184_480_512)
        );
        assert_eq!(
            parse_uptime_msec("1 year, 1 day, 1 hour, 1 minute, 1 second, 1 millisecond, 1 microsecond"),
            Some(365 * 86_400_000 + 86_400_000 + 3_600_000 + 60_000 + 1_000 + 1)
        );
        assert_eq!(parse_uptime_msec("garbage"), None);
    }
}
