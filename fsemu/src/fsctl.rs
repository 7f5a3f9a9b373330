//! `api fsctl ...`: the runtime controls of mod_commands' `ctl_function` that bear on
//! admission (pause, resume, their checks, sps, max_sessions, min_idle_cpu, shutdown),
//! applied to the same state the SIP side admits against. Reply texts are mod_commands'
//! (1.10), byte for byte where the source was read: `+OK\n` for pause/resume/shutdown,
//! bare `true`/`false` with no newline for the checks, `+OK sessions per second: N\n`,
//! `+OK max sessions: N\n`, `+OK last sessions per second: N\n`, and the two-line
//! `-ERR INVALID COMMAND` with no final newline. Guessed: the exact `CTL_SYNTAX` list of
//! the release (taken from an older mod_commands, see [`CTL_SYNTAX`]), the `%` after the
//! min-idle-cpu figure (the C format `%0.2f%\n` is ill-formed; glibc prints the `%`), and
//! the `-ERR` for the shutdown flavours the emulator does not model.

use std::time::Instant;

use super::{lock, model, Shared, ShutdownMode};

/// mod_commands' usage text (an older release's list; newer ones add commands).
pub(crate) const CTL_SYNTAX: &str = "[recover|send_sighup|hupall|pause [inbound|outbound]|resume [inbound|outbound]|shutdown [cancel|elegant|asap|now|restart]|sps|sync_clock|sync_clock_when_idle|reclaim_mem|max_sessions|min_dtmf_duration [num]|max_dtmf_duration [num]|default_dtmf_duration [num]|min_idle_cpu|loglevel [level]|debug_level [level]]";

/// C's `atoi`: leading blanks, optional sign, digits; anything else stops it, nothing is 0.
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n = digits
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0i64, |acc, d| {
            acc.saturating_mul(10).saturating_add(i64::from(d - b'0'))
        });
    if neg {
        -n
    } else {
        n
    }
}

/// C's `atof` for the plain decimals `min_idle_cpu` takes; unparsable is 0.
fn atof(s: &str) -> f64 {
    let s = s.trim();
    let end = s
        .char_indices()
        .take_while(|(i, c)| {
            c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '-' || *c == '+'))
        })
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    // The longest prefix that is a number, as strtod stops at the first character that
    // cannot continue one ("1.2.3" reads as 1.2).
    (1..=end)
        .rev()
        .find_map(|e| s[..e].parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn truth(b: bool) -> Vec<u8> {
    if b {
        b"true".to_vec()
    } else {
        b"false".to_vec()
    }
}

/// Runs `fsctl <args>` and returns the api/response body.
pub(crate) fn run(shared: &Shared, args: &str) -> Vec<u8> {
    let argv: Vec<&str> = args.split(' ').filter(|a| !a.is_empty()).take(5).collect();
    let Some(first) = argv.first() else {
        return format!("-USAGE: {CTL_SYNTAX}\n").into_bytes();
    };
    let second = argv.get(1).map(|a| a.to_ascii_lowercase());
    let now = Instant::now();
    match first.to_ascii_lowercase().as_str() {
        cmd @ ("pause" | "resume") => {
            let on = cmd == "pause";
            let mut c = lock(&shared.counters);
            match second.as_deref() {
                Some("inbound") => c.no_new_inbound = on,
                Some("outbound") => c.no_new_outbound = on,
                _ => c.no_new_sessions = on,
            }
            b"+OK\n".to_vec()
        }
        "pause_check" => {
            let c = lock(&shared.counters);
            truth(match second.as_deref() {
                Some("inbound") => c.no_new_inbound,
                Some("outbound") => c.no_new_outbound,
                _ => c.no_new_sessions,
            })
        }
        "ready_check" => {
            let c = lock(&shared.counters);
            truth(!c.down && !c.no_new_sessions)
        }
        "shutdown_check" => truth(lock(&shared.counters).shutdown_requested.is_some()),
        "shutdown" => shutdown(shared, &argv[1..]),
        "sps" => {
            let n = argv.get(1).map_or(0, |a| atoi(a));
            let mut c = lock(&shared.counters);
            // As SCSC_SPS: a positive value replaces the limit (the budget refills to it
            // on the next tick); the reply always carries the limit in force.
            if let Ok(n) = u64::try_from(n) {
                if n > 0 {
                    c.sps_limit = n;
                }
            }
            format!("+OK sessions per second: {}\n", c.sps_limit).into_bytes()
        }
        "last_sps" => {
            let mut c = lock(&shared.counters);
            c.tick(now);
            format!("+OK last sessions per second: {}\n", c.sps_last).into_bytes()
        }
        "sps_peak_reset" => {
            lock(&shared.counters).sps_max = 0;
            b"+OK\n".to_vec()
        }
        "max_sessions" => {
            let n = argv.get(1).map_or(0, |a| atoi(a));
            let mut c = lock(&shared.counters);
            if let Ok(n) = u64::try_from(n) {
                if n > 0 {
                    c.model.max_sessions = n;
                }
            }
            format!("+OK max sessions: {}\n", c.model.max_sessions).into_bytes()
        }
        "min_idle_cpu" => {
            let mut c = lock(&shared.counters);
            // A negative value (and no value, -1 in mod_commands) only reads it.
            if let Some(d) = argv.get(1).map(|a| atof(a)).filter(|d| *d >= 0.0) {
                c.min_idle_cpu_micro = model::percent_to_micro(d);
            }
            if c.min_idle_cpu_micro == 0 {
                b"+OK min idle cpu: DISABLED\n".to_vec()
            } else {
                let pct = fsroute_esl::serialize::format_percent2(c.min_idle_cpu_micro);
                format!("+OK min idle cpu: {pct}%\n").into_bytes()
            }
        }
        _ => format!("-ERR INVALID COMMAND\nUSAGE: fsctl {CTL_SYNTAX}").into_bytes(),
    }
}

fn shutdown(shared: &Shared, flags: &[&str]) -> Vec<u8> {
    let mut mode = None;
    for f in flags {
        match f.to_ascii_lowercase().as_str() {
            "cancel" => {
                lock(&shared.counters).cancel_shutdown();
                return b"+OK\n".to_vec();
            }
            "elegant" => mode = Some(ShutdownMode::Elegant),
            "asap" => mode = Some(ShutdownMode::Asap),
            "now" => mode = None,
            // `restart` (and unknown words) change nothing here; a restart after the
            // shutdown is EmulatorHandle::restart's business.
            _ => {}
        }
    }
    match mode {
        Some(m) => {
            shared.request_shutdown(m);
            b"+OK\n".to_vec()
        }
        // `shutdown` and `shutdown now` tear calls down at once, which the UAS does not
        // model; say so rather than pretend.
        None => b"-ERR fsemu emulates only shutdown elegant|asap|cancel\n".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_and_atof_read_like_c() {
        assert_eq!(atoi("42"), 42);
        assert_eq!(atoi(" 7x"), 7);
        assert_eq!(atoi("-3"), -3);
        assert_eq!(atoi("x"), 0);
        assert_eq!(atoi("99999999999999999999999"), i64::MAX);
        assert_eq!(atof("12.5"), 12.5);
        assert_eq!(atof("3%"), 3.0);
        assert_eq!(atof("-1"), -1.0);
        assert_eq!(atof("abc"), 0.0);
        assert_eq!(atof("1.2.3"), 1.2);
    }
}
