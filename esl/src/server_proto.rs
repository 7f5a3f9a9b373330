//! Server side of command reading (docs/ESL.md §0, §1, §2), for a sans-IO emulator: splits the
//! client's byte stream into commands the way mod_event_socket's `read_packet` does, and
//! classifies each with `parse_command`'s prefix rules. Deciding replies (auth state,
//! subscriptions) is the emulator's job; the frames it sends are built with
//! [`crate::serialize`].

use std::fmt;

use crate::command::EventFormat;
use crate::frame::{excerpt, split_header_line, Headers, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandReadError {
    #[error("command block exceeds the {max}-byte limit")]
    TooLarge { max: usize },
    /// FreeSWITCH 1.11.2+ drops the connection for a Content-Length below 0 or above 16 MiB.
    #[error("command Content-Length {value:?} is negative or above {max} bytes")]
    BadContentLength { value: String, max: usize },
}

/// One command as read: the first line (cut at CR/LF), the header lines after it, and the
/// body when a `Content-Length` header announced one.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCommand {
    pub line: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl fmt::Debug for ServerCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The line of an `auth`/`userauth` command carries the password.
        let line = match self.request() {
            ServerRequest::Auth { .. } => "auth <redacted>".to_owned(),
            ServerRequest::UserAuth { user, domain, .. } => {
                format!("userauth {user}@{} <redacted>", domain.unwrap_or(""))
            }
            _ => self.line.clone(),
        };
        f.debug_struct("ServerCommand")
            .field("line", &line)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The `filter` forms `parse_command` distinguishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterOp<'a> {
    /// `filter <H> <v>` or `filter add <H> <v>`; `value` is `None` for `filter add <H>`.
    Add { header: &'a str, value: Option<&'a str> },
    /// `filter delete <H> [<v>]`.
    Delete { header: &'a str, value: Option<&'a str> },
    /// `filter delete all`.
    DeleteAll,
    /// Anything else: `-ERR invalid syntax`.
    Invalid,
}

/// What a command asks for, matched as FreeSWITCH does: case-insensitive prefixes in its
/// order, so quirks carry over (`exitfoo` exits, `events` is `event`, `logout` is `log`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerRequest<'a> {
    /// `exit...` or `......`: `+OK bye`, then the notice, then close. Works before auth.
    Exit,
    /// `auth <password>`: the password is everything after the one space, spaces included.
    Auth { password: &'a str },
    /// `userauth user@domain:password`.
    UserAuth { user: &'a str, domain: Option<&'a str>, password: Option<&'a str> },
    Filter(FilterOp<'a>),
    SendEvent { name: Option<&'a str> },
    Api { command: &'a str, arg: Option<&'a str> },
    /// `bgapi`; `job_uuid` comes from a `Job-UUID` header line when the client chose one.
    BgApi { command: &'a str, arg: Option<&'a str>, job_uuid: Option<&'a str> },
    Log { level: Option<&'a str> },
    NoLog,
    /// `event [<fmt>] <NAME> ...`; a format token only counts in first position.
    Event { format: Option<EventFormat>, names: Vec<&'a str> },
    NixEvent { names: Vec<&'a str> },
    NoEvents,
    /// `-ERR command not found`.
    Unknown,
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Tokens after the first space at or after byte `from`, as the `event`/`nixevent`
/// handlers walk them; empty tokens from doubled spaces name nothing.
fn tokens_after(line: &str, from: usize) -> Vec<&str> {
    let Some(rest) = line.get(from..) else { return Vec::new() };
    match rest.split_once(' ') {
        Some((_, names)) => names.split(' ').filter(|t| !t.is_empty()).collect(),
        None => Vec::new(),
    }
}

fn split_arg(s: &str) -> (&str, Option<&str>) {
    match s.split_once(' ') {
        Some((c, a)) => (c, Some(a)),
        None => (s, None),
    }
}

impl ServerCommand {
    /// First token of the line.
    pub fn verb(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }

    pub fn request(&self) -> ServerRequest<'_> {
        let cmd = self.line.as_str();
        if strip_prefix_ci(cmd, "exit").is_some() || cmd.starts_with("...") {
            return ServerRequest::Exit;
        }
        if let Some(password) = strip_prefix_ci(cmd, "auth ") {
            return ServerRequest::Auth { password };
        }
        if let Some(rest) = strip_prefix_ci(cmd, "userauth ") {
            let (mut user, domain) = match rest.split_once('@') {
                Some((u, d)) => (u, Some(d)),
                None => (rest, None),
            };
            let mut password = None;
            let domain = domain.map(|d| match d.split_once(':') {
                Some((d, p)) => {
                    password = Some(p);
                    d
                }
                None => d,
            });
            if let Some((u, p)) = user.split_once(':') {
                user = u;
                password = Some(p);
            }
            return ServerRequest::UserAuth { user, domain, password };
        }
        if let Some(rest) = strip_prefix_ci(cmd, "filter ") {
            return ServerRequest::Filter(parse_filter(rest.trim_start_matches(' ')));
        }
        if let Some(rest) = strip_prefix_ci(cmd, "sendevent") {
            let name = rest.trim_start_matches([' ', '\t']);
            return ServerRequest::SendEvent { name: (!name.is_empty()).then_some(name) };
        }
        if let Some(rest) = strip_prefix_ci(cmd, "api ") {
            let (command, arg) = split_arg(rest);
            return ServerRequest::Api { command, arg };
        }
        if let Some(rest) = strip_prefix_ci(cmd, "bgapi ") {
            let (command, arg) = split_arg(rest);
            return ServerRequest::BgApi { command, arg, job_uuid: self.headers.get("Job-UUID") };
        }
        if let Some(rest) = strip_prefix_ci(cmd, "log") {
            // FreeSWITCH skips exactly one byte after "log" to reach the level.
            let level = rest.get(1..).filter(|l| !l.is_empty());
            return ServerRequest::Log { level };
        }
        if strip_prefix_ci(cmd, "nolog").is_some() {
            return ServerRequest::NoLog;
        }
        if strip_prefix_ci(cmd, "event").is_some() {
            let mut tokens = tokens_after(cmd, 5);
            let format = tokens.first().and_then(|t| EventFormat::parse(t));
            if format.is_some() {
                tokens.remove(0);
            }
            return ServerRequest::Event { format, names: tokens };
        }
        if strip_prefix_ci(cmd, "nixevent").is_some() {
            return ServerRequest::NixEvent { names: tokens_after(cmd, 5) };
        }
        if strip_prefix_ci(cmd, "noevents").is_some() {
            return ServerRequest::NoEvents;
        }
        ServerRequest::Unknown
    }
}

fn parse_filter(args: &str) -> FilterOp<'_> {
    let (name, val) = split_arg(args);
    if name.eq_ignore_ascii_case("delete") {
        if let Some(val) = val {
            let (header, value) = split_arg(val);
            if header.eq_ignore_ascii_case("all") {
                return FilterOp::DeleteAll;
            }
            return FilterOp::Delete { header, value };
        }
        return FilterOp::Invalid;
    }
    match val {
        Some(val) if name.eq_ignore_ascii_case("add") => {
            let (header, value) = split_arg(val);
            FilterOp::Add { header, value }
        }
        Some(val) => FilterOp::Add { header: name, value: Some(val) },
        None => FilterOp::Invalid,
    }
}

/// Incremental command reader.
pub struct CommandReader {
    buf: Vec<u8>,
    pos: usize,
    /// Resume point of the terminator scan, and whether the last non-CR byte seen was LF.
    scan: usize,
    after_lf: bool,
    in_command: bool,
    pending: Option<(String, Headers, usize)>,
    max_block: usize,
    max_body: usize,
    failed: Option<CommandReadError>,
}

impl Default for CommandReader {
    fn default() -> Self {
        CommandReader::new()
    }
}

impl fmt::Debug for CommandReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandReader")
            .field("buffered", &(self.buf.len() - self.pos))
            .field("failed", &self.failed)
            .finish()
    }
}

impl CommandReader {
    pub fn new() -> CommandReader {
        CommandReader::with_limits(DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_BODY_BYTES)
    }

    pub fn with_limits(max_block: usize, max_body: usize) -> CommandReader {
        CommandReader {
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            after_lf: false,
            in_command: false,
            pending: None,
            max_block,
            max_body,
            failed: None,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.scan -= self.pos.min(self.scan);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn fail(&mut self, e: CommandReadError) -> CommandReadError {
        self.failed = Some(e.clone());
        self.buf = Vec::new();
        self.pos = 0;
        e
    }

    /// The next complete command, `Ok(None)` if more bytes are needed. An error is
    /// sticky: the emulator should drop the connection as FreeSWITCH does.
    pub fn next_command(&mut self) -> Result<Option<ServerCommand>, CommandReadError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending.is_none() {
            if !self.in_command {
                while self.pos < self.buf.len() && matches!(self.buf[self.pos], b'\r' | b'\n') {
                    self.pos += 1;
                }
                if self.pos == self.buf.len() {
                    return Ok(None);
                }
                self.in_command = true;
                self.scan = self.pos;
                self.after_lf = false;
            }
            // The block ends at two LFs with only CRs between them.
            let mut end = None;
            while self.scan < self.buf.len() {
                let b = self.buf[self.scan];
                self.scan += 1;
                match b {
                    b'\n' if self.after_lf => {
                        end = Some(self.scan);
                        break;
                    }
                    b'\n' => self.after_lf = true,
                    b'\r' => {}
                    _ => self.after_lf = false,
                }
            }
            let block_len = end.unwrap_or(self.scan) - self.pos;
            if block_len > self.max_block {
                let max = self.max_block;
                return Err(self.fail(CommandReadError::TooLarge { max }));
            }
            let Some(end) = end else { return Ok(None) };
            let block = &self.buf[self.pos..end];
            let mut lines = block.split(|&b| b == b'\n');
            let first = lines.next().unwrap_or(&[]);
            let cut = first.iter().position(|&b| b == b'\r').unwrap_or(first.len());
            let line = String::from_utf8_lossy(&first[..cut]).into_owned();
            let mut headers = Headers::new();
            for l in lines {
                // read_packet ignores lines without a colon.
                if let Some((n, v)) = split_header_line(l) {
                    headers.push(String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned());
                }
            }
            let mut body_len = 0;
            if let Some(v) = headers.get("Content-Length") {
                let n = atol(v);
                match usize::try_from(n) {
                    Ok(n) if n <= self.max_body => body_len = n,
                    _ => {
                        let e = CommandReadError::BadContentLength { value: excerpt(v.as_bytes()), max: self.max_body };
                        return Err(self.fail(e));
                    }
                }
            }
            self.pos = end;
            self.in_command = false;
            self.pending = Some((line, headers, body_len));
        }
        let Some((_, _, len)) = &self.pending else { return Ok(None) };
        if self.buf.len() - self.pos < *len {
            return Ok(None);
        }
        let Some((line, headers, len)) = self.pending.take() else { return Ok(None) };
        let body = self.buf[self.pos..self.pos + len].to_vec();
        self.pos += len;
        Ok(Some(ServerCommand { line, headers, body }))
    }
}

/// C `atol` as FreeSWITCH applies it to a command's Content-Length: leading blanks, an
/// optional sign, then digits until the first non-digit; no digits reads as 0. Saturates
/// instead of overflowing so huge values stay "above the cap".
fn atol(s: &str) -> i64 {
    let s = s.trim_start_matches([' ', '\t']);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    for b in digits.bytes().take_while(u8::is_ascii_digit) {
        n = n.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    if neg {
        -n
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<ServerCommand> {
        let mut r = CommandReader::new();
        r.feed(bytes);
        let mut out = Vec::new();
        while let Some(c) = r.next_command().unwrap() {
            out.push(c);
        }
        out
    }

    #[test]
    fn pipelined_commands_with_crlf_and_leading_blank_lines_are_split() {
        let cmds = read_all(b"\r\n\nauth ClueCon\r\n\r\nevent plain HEARTBEAT\n\napi status\n\n");
        let lines: Vec<_> = cmds.iter().map(|c| c.line.as_str()).collect();
        assert_eq!(lines, ["auth ClueCon", "event plain HEARTBEAT", "api status"]);
        assert_eq!(cmds[0].request(), ServerRequest::Auth { password: "ClueCon" });
    }

    #[test]
    fn a_cr_between_the_two_lfs_still_ends_the_command() {
        let cmds = read_all(b"exit\n\r\r\n");
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].request(), ServerRequest::Exit);
    }

    #[test]
    fn command_headers_and_body_are_read() {
        let cmds = read_all(b"bgapi status\nJob-UUID: abc\n\nsendevent CUSTOM\nContent-Length: 5\n\nhelloexit\n\n");
        assert_eq!(
            cmds[0].request(),
            ServerRequest::BgApi { command: "status", arg: None, job_uuid: Some("abc") }
        );
        assert_eq!(cmds[1].request(), ServerRequest::SendEvent { name: Some("CUSTOM") });
        assert_eq!(cmds[1].body, b"hello");
        assert_eq!(cmds[2].request(), ServerRequest::Exit);
    }

    #[test]
    fn negative_or_oversized_command_content_length_drops_the_connection() {
        let mut r = CommandReader::new();
        r.feed(b"sendevent X\nContent-Length: -1\n\n");
        assert!(matches!(r.next_command(), Err(CommandReadError::BadContentLength { .. })));
        let mut r = CommandReader::new();
        r.feed(b"sendevent X\nContent-Length: 16777217\n\n");
        assert!(matches!(r.next_command(), Err(CommandReadError::BadContentLength { .. })));
    }

    #[test]
    fn verbs_are_case_insensitive_and_password_keeps_spaces() {
        let cmd = |l: &str| ServerCommand { line: l.into(), headers: Headers::new(), body: vec![] };
        assert_eq!(cmd("AUTH  Clue Con ").request(), ServerRequest::Auth { password: " Clue Con " });
        assert_eq!(
            cmd("Event JSON heartbeat CUSTOM a::b").request(),
            ServerRequest::Event { format: Some(EventFormat::Json), names: vec!["heartbeat", "CUSTOM", "a::b"] }
        );
        assert_eq!(cmd("event plain").request(), ServerRequest::Event { format: Some(EventFormat::Plain), names: vec![] });
        assert_eq!(cmd("event HEARTBEAT").request(), ServerRequest::Event { format: None, names: vec!["HEARTBEAT"] });
        assert_eq!(cmd("nixevent HEARTBEAT").request(), ServerRequest::NixEvent { names: vec!["HEARTBEAT"] });
        assert_eq!(cmd("NoEvents").request(), ServerRequest::NoEvents);
        assert_eq!(cmd("api show calls count").request(), ServerRequest::Api { command: "show", arg: Some("calls count") });
        assert_eq!(cmd("api").request(), ServerRequest::Unknown);
        assert_eq!(cmd("...").request(), ServerRequest::Exit);
        assert_eq!(cmd("hello").request(), ServerRequest::Unknown);
        assert_eq!(cmd("log debug").request(), ServerRequest::Log { level: Some("debug") });
        assert_eq!(cmd("nolog").request(), ServerRequest::NoLog);
        assert_eq!(
            cmd("userauth 1000@example.com:secret").request(),
            ServerRequest::UserAuth { user: "1000", domain: Some("example.com"), password: Some("secret") }
        );
        assert_eq!(
            cmd("userauth 1000:secret").request(),
            ServerRequest::UserAuth { user: "1000", domain: None, password: Some("secret") }
        );
    }

    #[test]
    fn filter_forms_are_distinguished() {
        let f = |l: &str| ServerCommand { line: l.into(), headers: Headers::new(), body: vec![] };
        assert_eq!(f("filter Event-Name HEARTBEAT").request(), ServerRequest::Filter(FilterOp::Add { header: "Event-Name", value: Some("HEARTBEAT") }));
        assert_eq!(f("filter add Event-Name HEARTBEAT").request(), ServerRequest::Filter(FilterOp::Add { header: "Event-Name", value: Some("HEARTBEAT") }));
        assert_eq!(f("filter delete Event-Name").request(), ServerRequest::Filter(FilterOp::Delete { header: "Event-Name", value: None }));
        assert_eq!(f("filter delete all").request(), ServerRequest::Filter(FilterOp::DeleteAll));
        assert_eq!(f("filter Event-Name").request(), ServerRequest::Filter(FilterOp::Invalid));
    }

    #[test]
    fn debug_of_an_auth_command_hides_the_password() {
        let c = read_all(b"auth hunter2\n\nuserauth u@d:hunter2\n\n");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn oversized_command_block_is_an_error() {
        let mut r = CommandReader::with_limits(16, 16);
        r.feed(b"api aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(r.next_command(), Err(CommandReadError::TooLarge { max: 16 }));
    }
}
