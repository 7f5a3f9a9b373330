//! Byte-exact producers of what a FreeSWITCH server sends (docs/ESL.md §1–§4), for the emulator:
//! the greeting, replies, notices, `api/response` frames, events in plain / JSON / XML the
//! way `switch_event_serialize`, cJSON 1.7.12 and `switch_xml` print them, the HEARTBEAT
//! event with its 27 headers, and the `api status` body.

use crate::command::EventFormat;
use crate::percent;

/// `Content-Type: auth/request\n\n`, 28 bytes.
pub const GREETING: &[u8] = b"Content-Type: auth/request\n\n";
/// Body of the usual disconnect notice, 67 bytes.
pub const GOODBYE: &[u8] = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";
/// Body of the notice sent on module unload or shutdown, 31 bytes.
pub const SHUTDOWN_NOTICE: &[u8] = b"The system is being shut down.\n";
/// Body of the notice after more than 500 consecutive dropped events, 39 bytes.
pub const LOST_EVENTS_NOTICE: &[u8] = b"killed listener because of lost events\n";
/// Body of the ACL rejection, 24 bytes.
pub const ACCESS_DENIED: &[u8] = b"Access Denied, go away.\n";
/// Body of `api` when the command produced no output.
pub const API_NO_REPLY: &[u8] = b"-ERR no reply\n";

/// `command/reply` with just a `Reply-Text`. FreeSWITCH formats replies into a 512-byte
/// buffer; callers emulating very long texts should truncate themselves.
pub fn command_reply(text: &str) -> Vec<u8> {
    format!("Content-Type: command/reply\nReply-Text: {text}\n\n").into_bytes()
}

/// `command/reply` with extra header lines after `Reply-Text`, as `userauth` and `bgapi`
/// send.
pub fn command_reply_with_headers(text: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("Content-Type: command/reply\nReply-Text: {text}\n");
    for (n, v) in headers {
        s.push_str(n);
        s.push_str(": ");
        s.push_str(v);
        s.push('\n');
    }
    s.push('\n');
    s.into_bytes()
}

/// The `userauth` success reply, with the allowed lists (`all` when unrestricted).
pub fn userauth_accepted(events: &str, api: &str, log: bool) -> Vec<u8> {
    command_reply_with_headers(
        "+OK accepted",
        &[("Allowed-Events", events), ("Allowed-API", api), ("Allowed-LOG", if log { "true" } else { "false" })],
    )
}

/// The `bgapi` acknowledgement.
pub fn bgapi_accepted(job_uuid: &str) -> Vec<u8> {
    command_reply_with_headers(&format!("+OK Job-UUID: {job_uuid}"), &[("Job-UUID", job_uuid)])
}

/// `text/disconnect-notice` with the given body ([`GOODBYE`], [`SHUTDOWN_NOTICE`], ...).
pub fn disconnect_notice(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Type: text/disconnect-notice\nContent-Length: {}\n\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// `text/rude-rejection` with [`ACCESS_DENIED`]. FreeSWITCH then sends
/// `disconnect_notice(GOODBYE)` and closes.
pub fn rude_rejection() -> Vec<u8> {
    let mut out = format!("Content-Type: text/rude-rejection\nContent-Length: {}\n\n", ACCESS_DENIED.len()).into_bytes();
    out.extend_from_slice(ACCESS_DENIED);
    out
}

/// `api/response` carrying exactly `body`.
pub fn api_response(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Type: api/response\nContent-Length: {}\n\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Body for an unknown `api` command.
pub fn api_not_found(command: &str) -> Vec<u8> {
    format!("-ERR {command} Command not found!\n").into_bytes()
}

/// Body of `show calls count` / `show channels count`.
pub fn show_count(n: u64) -> Vec<u8> {
    format!("\n{n} total.\n").into_bytes()
}

/// A header value: FreeSWITCH values are C strings, so bytes rather than `String` (JSON
/// bodies may legitimately carry invalid UTF-8, docs/ESL.md §3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Single(Vec<u8>),
    Array(Vec<Vec<u8>>),
}

/// An event to serialise, headers in the order they are sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutEvent {
    pub headers: Vec<(String, Value)>,
    pub body: Option<Vec<u8>>,
}

/// An event frame as FreeSWITCH writes it: two separate `send()` calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedEvent {
    /// `Content-Length: N\nContent-Type: text/event-...\n\n`
    pub envelope: Vec<u8>,
    pub body: Vec<u8>,
}

impl EncodedEvent {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.envelope.len() + self.body.len());
        out.extend_from_slice(&self.envelope);
        out.extend_from_slice(&self.body);
        out
    }
}

impl OutEvent {
    pub fn new() -> OutEvent {
        OutEvent::default()
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> OutEvent {
        self.push(name, value);
        self
    }

    pub fn push(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.headers.push((name.to_owned(), Value::Single(value.into())));
    }

    pub fn push_array(&mut self, name: &str, values: Vec<Vec<u8>>) {
        self.headers.push((name.to_owned(), Value::Array(values)));
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> OutEvent {
        self.body = Some(body.into());
        self
    }

    /// A single value as plain/XML carry it: arrays joined as `ARRAY::a|:b`.
    fn flat(value: &Value) -> Vec<u8> {
        match value {
            Value::Single(v) => v.clone(),
            Value::Array(items) => {
                let mut out = b"ARRAY::".to_vec();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b"|:");
                    }
                    out.extend_from_slice(item);
                }
                out
            }
        }
    }

    /// `text/event-plain` body (docs/ESL.md §3.2).
    pub fn plain_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            let flat = OutEvent::flat(value);
            if flat.is_empty() {
                out.extend_from_slice(b"_undef_");
            } else {
                percent::encode_into(&flat, &mut out);
            }
            out.push(b'\n');
        }
        match &self.body {
            Some(body) => {
                out.extend_from_slice(format!("Content-Length: {}\n\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            None => out.push(b'\n'),
        }
        out
    }

    /// `text/event-json` body (docs/ESL.md §3.3): compact cJSON, every value a string.
    pub fn json_body(&self) -> Vec<u8> {
        let mut out = vec![b'{'];
        let mut first = true;
        let mut key = |out: &mut Vec<u8>, k: &[u8]| {
            if !first {
                out.push(b',');
            }
            first = false;
            json_string(k, out);
            out.push(b':');
        };
        for (name, value) in &self.headers {
            key(&mut out, name.as_bytes());
            match value {
                Value::Single(v) => json_string(v, &mut out),
                Value::Array(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        json_string(item, &mut out);
                    }
                    out.push(b']');
                }
            }
        }
        if let Some(body) = &self.body {
            key(&mut out, b"Content-Length");
            json_string(body.len().to_string().as_bytes(), &mut out);
            key(&mut out, b"_body");
            json_string(body, &mut out);
        }
        out.push(b'}');
        out
    }

    /// `text/event-xml` body (docs/ESL.md §3.4).
    pub fn xml_body(&self) -> Vec<u8> {
        let mut out = b"<event>\n  <headers>\n".to_vec();
        for (name, value) in &self.headers {
            out.extend_from_slice(b"    <");
            out.extend_from_slice(name.as_bytes());
            out.push(b'>');
            xml_text(&percent::encode(&OutEvent::flat(value)), &mut out);
            out.extend_from_slice(b"</");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b">\n");
        }
        out.extend_from_slice(b"  </headers>\n");
        if let Some(body) = &self.body {
            out.extend_from_slice(format!("  <Content-Length>{}</Content-Length>\n  <body>", body.len()).as_bytes());
            xml_text(body, &mut out);
            out.extend_from_slice(b"</body>\n");
        }
        out.extend_from_slice(b"</event>\n");
        out
    }

    pub fn body_for(&self, format: EventFormat) -> Vec<u8> {
        match format {
            EventFormat::Plain => self.plain_body(),
            EventFormat::Json => self.json_body(),
            EventFormat::Xml => self.xml_body(),
        }
    }

    /// The full frame, envelope and body kept apart so an emulator can write them
    /// separately as FreeSWITCH does.
    pub fn encode(&self, format: EventFormat) -> EncodedEvent {
        let body = self.body_for(format);
        let envelope = format!("Content-Length: {}\nContent-Type: {}\n\n", body.len(), format.content_type()).into_bytes();
        EncodedEvent { envelope, body }
    }
}

/// cJSON 1.7.12 `print_string_ptr`: short escapes for `" \ \b \f \n \r \t`, `\u00xx`
/// (lowercase hex) for other controls, and every other byte, 0x80+ included, copied raw.
fn json_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1F => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Text-content escaping of `switch_xml_ampencode` (not in attribute mode).
fn xml_text(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            _ => out.push(b),
        }
    }
}

/// `Y years, D days, H hours, M minutes, S seconds, MS milliseconds, US microseconds` with
/// singular units for 1, as both HEARTBEAT's Up-Time and `api status` print it.
pub fn uptime_text(uptime_us: u64) -> String {
    let us = uptime_us % 1000;
    let total_ms = uptime_us / 1000;
    let ms = total_ms % 1000;
    let total_s = total_ms / 1000;
    let s = total_s % 60;
    let m = (total_s / 60) % 60;
    let h = (total_s / 3600) % 24;
    let days_total = total_s / 86_400;
    let d = days_total % 365;
    let y = days_total / 365;
    let unit = |n: u64, name: &str| format!("{n} {name}{}", if n == 1 { "" } else { "s" });
    [
        unit(y, "year"),
        unit(d, "day"),
        unit(h, "hour"),
        unit(m, "minute"),
        unit(s, "second"),
        unit(ms, "millisecond"),
        unit(us, "microsecond"),
    ]
    .join(", ")
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn split_time(unix_secs: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    (y, mo, d, sod / 3600, (sod / 60) % 60, sod % 60, days)
}

/// Event-Date-Local: `YYYY-MM-DD HH:MM:SS` in a zone `utc_offset_secs` east of UTC.
pub fn format_date_local(unix_secs: i64, utc_offset_secs: i32) -> String {
    let (y, mo, d, h, mi, s, _) = split_time(unix_secs + i64::from(utc_offset_secs));
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// Event-Date-GMT: RFC 822 with a two-digit day, e.g. `Fri, 14 Mar 2025 09:26:40 GMT`.
pub fn format_date_gmt(unix_secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, mo, d, h, mi, s, days) = split_time(unix_secs);
    let wd = DAYS[days.rem_euclid(7) as usize];
    let mon = MONTHS[(mo - 1) as usize];
    format!("{wd}, {d:02} {mon} {y:04} {h:02}:{mi:02}:{s:02} GMT")
}

/// Idle-CPU as `%f` prints it: six decimals.
pub fn format_percent6(micro: u32) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// `%.2f` of a percentage held in millionths, rounding half up. Idle-CPU is a mean of 30
/// whole percents, so its hundredths are never a tie and this matches printf.
pub fn format_percent2(micro: u32) -> String {
    let hundredths = (u64::from(micro) + 5_000) / 10_000;
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

/// Everything a HEARTBEAT carries. [`HeartbeatParams::to_event`] lays it out in
/// FreeSWITCH's order (docs/ESL.md §3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatParams {
    pub core_uuid: String,
    pub hostname: String,
    pub switchname: String,
    pub ipv4: String,
    pub ipv6: String,
    /// Event-Date-Timestamp, microseconds since the Unix epoch; the two date headers are
    /// derived from it.
    pub timestamp_us: u64,
    /// Offset of the emulated box's local time zone, for Event-Date-Local.
    pub utc_offset_secs: i32,
    /// Event-Calling-Line-Number: 95 in 1.10.10+, 94 in 1.10.7.
    pub calling_line: u32,
    pub sequence: u64,
    pub event_info: String,
    /// Microseconds since core start; Up-Time and Uptime-msec are both derived from it so
    /// they always agree.
    pub uptime_us: u64,
    pub version: String,
    pub session_count: u64,
    pub max_sessions: u64,
    pub session_per_sec: u64,
    pub session_per_sec_last: u64,
    pub session_per_sec_max: u64,
    pub session_per_sec_five_min: u64,
    pub session_since_startup: u64,
    pub session_peak_max: u64,
    pub session_peak_five_min: u64,
    pub idle_cpu_micro: u32,
}

impl HeartbeatParams {
    pub fn to_event(&self) -> OutEvent {
        let secs = i64::try_from(self.timestamp_us / 1_000_000).unwrap_or(i64::MAX / 2);
        let n = |v: u64| v.to_string();
        OutEvent::new()
            .header("Event-Name", "HEARTBEAT")
            .header("Core-UUID", self.core_uuid.as_str())
            .header("FreeSWITCH-Hostname", self.hostname.as_str())
            .header("FreeSWITCH-Switchname", self.switchname.as_str())
            .header("FreeSWITCH-IPv4", self.ipv4.as_str())
            .header("FreeSWITCH-IPv6", self.ipv6.as_str())
            .header("Event-Date-Local", format_date_local(secs, self.utc_offset_secs))
            .header("Event-Date-GMT", format_date_gmt(secs))
            .header("Event-Date-Timestamp", n(self.timestamp_us))
            .header("Event-Calling-File", "switch_core.c")
            .header("Event-Calling-Function", "send_heartbeat")
            .header("Event-Calling-Line-Number", self.calling_line.to_string())
            .header("Event-Sequence", n(self.sequence))
            .header("Event-Info", self.event_info.as_str())
            .header("Up-Time", uptime_text(self.uptime_us))
            .header("FreeSWITCH-Version", self.version.as_str())
            .header("Uptime-msec", n(self.uptime_us / 1000))
            .header("Session-Count", n(self.session_count))
            .header("Max-Sessions", n(self.max_sessions))
            .header("Session-Per-Sec", n(self.session_per_sec))
            .header("Session-Per-Sec-Last", n(self.session_per_sec_last))
            .header("Session-Per-Sec-Max", n(self.session_per_sec_max))
            .header("Session-Per-Sec-FiveMin", n(self.session_per_sec_five_min))
            .header("Session-Since-Startup", n(self.session_since_startup))
            .header("Session-Peak-Max", n(self.session_peak_max))
            .header("Session-Peak-FiveMin", n(self.session_peak_five_min))
            .header("Idle-CPU", format_percent6(self.idle_cpu_micro))
    }
}

/// Everything the `api status` body shows (docs/ESL.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusParams {
    pub uptime_us: u64,
    /// The "human" version, e.g. `1.10.12-release git a88d069 2024-08-02 21:02:27Z 64bit`.
    pub version_human: String,
    /// `switch_core_ready()`: prints `is ready`, otherwise `is not ready`.
    pub ready: bool,
    pub session_since_startup: u64,
    pub session_count: u64,
    pub session_peak_max: u64,
    pub session_peak_five_min: u64,
    pub session_per_sec_last: u64,
    /// Configured `sessions-per-second`.
    pub sessions_per_sec_limit: u64,
    pub session_per_sec_max: u64,
    pub session_per_sec_five_min: u64,
    pub max_sessions: u64,
    pub min_idle_cpu_micro: u32,
    pub idle_cpu_micro: u32,
    pub stack_size_kib: u64,
    pub stack_max_kib: u64,
}

impl StatusParams {
    /// The body; lines 4 and 5 keep FreeSWITCH's trailing space.
    pub fn body(&self) -> Vec<u8> {
        format!(
            "UP {}\nFreeSWITCH (Version {}) is {}\n{} session(s) since startup\n\
             {} session(s) - peak {}, last 5min {} \n\
             {} session(s) per Sec out of max {}, peak {}, last 5min {} \n\
             {} session(s) max\nmin idle cpu {}/{}\nCurrent Stack Size/Max {}K/{}K\n",
            uptime_text(self.uptime_us),
            self.version_human,
            if self.ready { "ready" } else { "not ready" },
            self.session_since_startup,
            self.session_count,
            self.session_peak_max,
            self.session_peak_five_min,
            self.session_per_sec_last,
            self.sessions_per_sec_limit,
            self.session_per_sec_max,
            self.session_per_sec_five_min,
            self.max_sessions,
            format_percent2(self.min_idle_cpu_micro),
            format_percent2(self.idle_cpu_micro),
            self.stack_size_kib,
            self.stack_max_kib,
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_follow_freeswitch_formats() {
        assert_eq!(format_date_gmt(1_741_944_400), "Fri, 14 Mar 2025 09:26:40 GMT");
        assert_eq!(format_date_local(1_741_944_400, 0), "2025-03-14 09:26:40");
        assert_eq!(format_date_local(1_741_944_400, 3600), "2025-03-14 10:26:40");
        assert_eq!(format_date_gmt(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format_date_gmt(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn uptime_text_uses_singular_for_one() {
        assert_eq!(
            uptime_text(184_480_512_087),
            "0 years, 2 days, 3 hours, 14 minutes, 40 seconds, 512 milliseconds, 87 microseconds"
        );
        let one = ((((365 + 1) * 24 + 1) * 60 + 1) * 60 + 1) * 1_000_000 + 1_001;
        assert_eq!(uptime_text(one), "1 year, 1 day, 1 hour, 1 minute, 1 second, 1 millisecond, 1 microsecond");
    }

    #[test]
    fn percent_formats_match_printf() {
        assert_eq!(format_percent6(87_633_333), "87.633333");
        assert_eq!(format_percent6(100_000_000), "100.000000");
        assert_eq!(format_percent2(87_633_333), "87.63");
        assert_eq!(format_percent2(96_733_333), "96.73");
        assert_eq!(format_percent2(96_666_667), "96.67");
        assert_eq!(format_percent2(0), "0.00");
    }

    #[test]
    fn json_escapes_like_cjson_and_copies_high_bytes_raw() {
        let mut out = Vec::new();
        json_string(b"a\"\\\x08\x0c\n\r\t\x01\x1f/\x7f\xe9", &mut out);
        assert_eq!(out, b"\"a\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f/\x7f\xe9\"".as_slice());
    }

    #[test]
    fn empty_plain_value_prints_as_undef() {
        let e = OutEvent::new().header("Event-Name", "X").header("Empty", "");
        assert_eq!(e.plain_body(), b"Event-Name: X\nEmpty: _undef_\n\n");
    }

    #[test]
    fn arrays_are_joined_in_plain_and_listed_in_json() {
        let mut e = OutEvent::new();
        e.push_array("L", vec![b"a".to_vec(), b"b c".to_vec()]);
        assert_eq!(e.plain_body(), b"L: ARRAY%3A%3Aa%7C%3Ab%20c\n\n");
        assert_eq!(e.json_body(), br#"{"L":["a","b c"]}"#);
    }
}
