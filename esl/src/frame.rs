//! Wire framing (docs/ESL.md §0, §6.1–6.4): turns an arbitrary sequence of byte chunks into
//! frames, each a block of `Name: value` lines ended by an empty line plus, when the block
//! has `Content-Length: N`, exactly N body bytes. Owns the size limits, so a hostile or
//! desynchronised peer yields a typed [`FrameError`] instead of a panic or unbounded
//! buffering.

use std::fmt;

/// Largest body FreeSWITCH 1.11 accepts or libesl reads (16 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest header block we buffer while looking for its end. Real blocks are < 1 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Longest excerpt of peer data copied into an error, so errors stay loggable.
const ERROR_EXCERPT: usize = 80;

pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(ERROR_EXCERPT)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Size caps applied while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Cap on a header block, terminator included.
    pub max_header_bytes: usize,
    /// Cap on a declared `Content-Length`.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Why the byte stream cannot be framed. The stream is out of sync after any of these, so
/// the [`Decoder`] keeps returning the same error: drop the connection and reconnect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("header block exceeds the {max}-byte limit")]
    HeaderTooLarge { max: usize },
    #[error("Content-Length {declared} exceeds the {max}-byte body limit")]
    BodyTooLarge { declared: u64, max: usize },
    #[error("Content-Length {value:?} is not a non-negative decimal integer")]
    InvalidContentLength { value: String },
    #[error("conflicting Content-Length headers {first:?} and {second:?}")]
    ConflictingContentLength { first: String, second: String },
    #[error("malformed header line {line:?}")]
    MalformedHeader { line: String },
}

/// Ordered header list with case-insensitive lookup. Duplicates are kept in arrival order;
/// lookups return the first occurrence, as libesl's `esl_event_get_header` does.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// First value whose name matches `name` ignoring ASCII case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value whose name matches `name` ignoring ASCII case, in arrival order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl From<Vec<(String, String)>> for Headers {
    fn from(v: Vec<(String, String)>) -> Self {
        Headers(v)
    }
}

/// One decoded frame. Outer header values are kept exactly as sent (not percent-decoded):
/// FreeSWITCH never encodes them, and decoding would corrupt a `Reply-Text` holding `%XX`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("Content-Type")
    }

    pub fn reply_text(&self) -> Option<&str> {
        self.header("Reply-Text")
    }
}

/// Splits one header line at its first `:`; the value loses the spaces/tabs after the colon
/// and a trailing CR. `None` when the line has no colon or an empty name.
pub(crate) fn split_header_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let colon = memchr::memchr(b':', line)?;
    let name = &line[..colon];
    if name.is_empty() {
        return None;
    }
    let mut value = &line[colon + 1..];
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    Some((name, value))
}

/// Strict `Content-Length` parse: ASCII digits only, so `-1`, `+1`, ` 1x` and `1e3` are
/// all rejected rather than guessed at (docs/ESL.md §6.4).
pub(crate) fn parse_content_length(value: &str, max: usize) -> Result<usize, FrameError> {
    let v = value.trim_end_matches([' ', '\t']);
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FrameError::InvalidContentLength {
            value: excerpt(value.as_bytes()),
        });
    }
    let declared = v.parse::<u64>().unwrap_or(u64::MAX);
    match usize::try_from(declared) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FrameError::BodyTooLarge { declared, max }),
    }
}

/// Incremental frame decoder. Feed chunks as they arrive, then call
/// [`next_frame`](Decoder::next_frame) until it returns `Ok(None)`.
///
/// Memory stays bounded by the limits plus the size of the chunks fed between two drains:
/// a header block is rejected as soon as it outgrows its cap, and a body as soon as its
/// declared length does, before any of it is buffered.
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    /// True once the leading CR/LF run is skipped and a header block has started at `pos`.
    in_frame: bool,
    /// Start of the header line under scan; lets drip-fed input be scanned once, not
    /// from the top on every chunk.
    line_start: usize,
    scan: usize,
    /// Headers parsed, waiting for this many body bytes at `pos`.
    pending: Option<(Headers, usize)>,
    limits: Limits,
    failed: Option<FrameError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buffered())
            .field("awaiting_body", &self.pending.as_ref().map(|(_, n)| *n))
            .field("limits", &self.limits)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            buf: Vec::new(),
            pos: 0,
            in_frame: false,
            line_start: 0,
            scan: 0,
            pending: None,
            limits,
            failed: None,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes received but not yet returned as part of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The sticky error, if the stream has already been found out of sync.
    pub fn error(&self) -> Option<&FrameError> {
        self.failed.as_ref()
    }

    /// Appends received bytes. After a framing error input is discarded, since nothing
    /// after a desync can be trusted.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Compact only when the consumed prefix dominates, so a stream of small frames or a
        // drip-fed large one costs amortised O(1) per byte rather than O(buffer) per feed.
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.line_start -= self.pos.min(self.line_start);
            self.scan -= self.pos.min(self.scan);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.clone());
        self.buf = Vec::new();
        self.pos = 0;
        self.pending = None;
        e
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending.is_none() && !self.find_header_block()? {
            return Ok(None);
        }
        let Some((_, len)) = &self.pending else {
            return Ok(None);
        };
        let len = *len;
        if self.buf.len() - self.pos < len {
            return Ok(None);
        }
        let Some((headers, _)) = self.pending.take() else {
            return Ok(None);
        };
        let body = self.buf[self.pos..self.pos + len].to_vec();
        self.pos += len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(Frame { headers, body }))
    }

    /// Scans for the end of the header block at `pos`; on success parses it into
    /// `self.pending` and returns true.
    fn find_header_block(&mut self) -> Result<bool, FrameError> {
        if !self.in_frame {
            // Stray CR/LF between frames (keep-alive blank lines, CRLF tails) carry nothing.
            while self.pos < self.buf.len() && matches!(self.buf[self.pos], b'\r' | b'\n') {
                self.pos += 1;
            }
            if self.pos == self.buf.len() {
                return Ok(false);
            }
            self.in_frame = true;
            self.line_start = self.pos;
            self.scan = self.pos;
        }
        let max = self.limits.max_header_bytes;
        loop {
            let Some(off) = memchr::memchr(b'\n', &self.buf[self.scan..]) else {
                self.scan = self.buf.len();
                if self.buf.len() - self.pos > max {
                    return Err(self.fail(FrameError::HeaderTooLarge { max }));
                }
                return Ok(false);
            };
            let lf = self.scan + off;
            if lf + 1 - self.pos > max {
                return Err(self.fail(FrameError::HeaderTooLarge { max }));
            }
            let line = &self.buf[self.line_start..lf];
            if line.is_empty() || line == b"\r" {
                let block_end = self.line_start;
                let headers = match self.parse_block(self.pos, block_end) {
                    Ok(h) => h,
                    Err(e) => return Err(self.fail(e)),
                };
                let body_len = match body_length(&headers, self.limits.max_body_bytes) {
                    Ok(n) => n,
                    Err(e) => return Err(self.fail(e)),
                };
                self.pos = lf + 1;
                self.in_frame = false;
                self.pending = Some((headers, body_len));
                return Ok(true);
            }
            self.line_start = lf + 1;
            self.scan = lf + 1;
        }
    }

    fn parse_block(&self, start: usize, end: usize) -> Result<Headers, FrameError> {
        let mut headers = Headers::new();
        for line in self.buf[start..end].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let Some((name, value)) = split_header_line(line) else {
                return Err(FrameError::MalformedHeader {
                    line: excerpt(line),
                });
            };
            headers.push(
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
        }
        Ok(headers)
    }
}

fn body_length(headers: &Headers, max: usize) -> Result<usize, FrameError> {
    let mut found: Option<(&str, usize)> = None;
    for value in headers.get_all("Content-Length") {
        let n = parse_content_length(value, max)?;
        match found {
            Some((first, m)) if m != n => {
                return Err(FrameError::ConflictingContentLength {
                    first: excerpt(first.as_bytes()),
                    second: excerpt(value.as_bytes()),
                })
            }
            Some(_) => {}
            None => found = Some((value, n)),
        }
    }
    Ok(found.map_or(0, |(_, n)| n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn frame_without_content_length_has_empty_body() {
        let mut d = Decoder::new();
        d.feed(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n");
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.content_type(), Some("command/reply"));
        assert_eq!(f.reply_text(), Some("+OK accepted"));
        assert!(f.body.is_empty());
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_value_keeps_inner_colons() {
        let mut d = Decoder::new();
        d.feed(b"content-type: command/reply\nReply-Text: +OK Job-UUID: abc\n\n");
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.header("CONTENT-TYPE"), Some("command/reply"));
        assert_eq!(f.reply_text(), Some("+OK Job-UUID: abc"));
    }

    #[test]
    fn body_may_contain_blank_lines_and_is_delimited_only_by_content_length() {
        let mut d = Decoder::new();
        d.feed(b"Content-Type: api/response\nContent-Length: 5\n\n\n\na\n\nContent-Type: auth/request\n\n");
        let frames = decode_all(&mut d);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].body, b"\n\na\n\n");
        assert_eq!(frames[1].content_type(), Some("auth/request"));
    }

    #[test]
    fn crlf_line_endings_and_stray_blank_lines_between_frames_are_tolerated() {
        let mut d = Decoder::new();
        d.feed(b"\r\n\nContent-Type: auth/request\r\n\r\n\r\n\nContent-Type: command/reply\r\nReply-Text: +OK\r\n\n");
        let frames = decode_all(&mut d);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].content_type(), Some("auth/request"));
        assert_eq!(frames[1].reply_text(), Some("+OK"));
    }

    #[test]
    fn split_between_the_two_terminating_newlines_waits_for_the_second() {
        let mut d = Decoder::new();
        d.feed(b"Content-Type: auth/request\n");
        assert_eq!(d.next_frame().unwrap(), None);
        d.feed(b"\n");
        assert!(d.next_frame().unwrap().is_some());
    }

    #[test]
    fn oversized_content_length_is_rejected_before_buffering_the_body() {
        let mut d = Decoder::with_limits(Limits { max_header_bytes: 1024, max_body_bytes: 10 });
        d.feed(b"Content-Type: api/response\nContent-Length: 11\n\n");
        assert_eq!(d.next_frame(), Err(FrameError::BodyTooLarge { declared: 11, max: 10 }));
        // Sticky: the stream is out of sync, and later input is not buffered.
        d.feed(&[b'x'; 100]);
        assert_eq!(d.buffered(), 0);
        assert!(matches!(d.next_frame(), Err(FrameError::BodyTooLarge { .. })));
    }

    #[test]
    fn default_body_limit_is_16_mib() {
        let mut d = Decoder::new();
        d.feed(format!("Content-Length: {}\n\n", 16 * 1024 * 1024).as_bytes());
        assert_eq!(d.next_frame(), Ok(None));
        let mut d = Decoder::new();
        d.feed(format!("Content-Length: {}\n\n", 16 * 1024 * 1024 + 1).as_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::BodyTooLarge { .. })));
    }

    #[test]
    fn header_block_without_terminator_is_rejected_once_it_outgrows_the_cap() {
        let mut d = Decoder::with_limits(Limits { max_header_bytes: 64, max_body_bytes: 10 });
        d.feed(b"Content-Type: text/event-plain\n");
        assert_eq!(d.next_frame(), Ok(None));
        d.feed(&[b'A'; 40]);
        assert_eq!(d.next_frame(), Err(FrameError::HeaderTooLarge { max: 64 }));
    }

    #[test]
    fn negative_or_non_numeric_content_length_is_a_typed_error() {
        for bad in ["-1", "+1", "1x", "", "0x10", "1 2"] {
            let mut d = Decoder::new();
            d.feed(format!("Content-Type: api/response\nContent-Length: {bad}\n\n").as_bytes());
            assert!(
                matches!(d.next_frame(), Err(FrameError::InvalidContentLength { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn huge_content_length_does_not_overflow() {
        let mut d = Decoder::new();
        d.feed(b"Content-Length: 999999999999999999999999999999\n\n");
        assert!(matches!(d.next_frame(), Err(FrameError::BodyTooLarge { declared: u64::MAX, .. })));
    }

    #[test]
    fn conflicting_duplicate_content_lengths_are_rejected() {
        let mut d = Decoder::new();
        d.feed(b"Content-Length: 1\nContent-Length: 2\n\nxx");
        assert!(matches!(d.next_frame(), Err(FrameError::ConflictingContentLength { .. })));
        let mut d = Decoder::new();
        d.feed(b"Content-Length: 2\ncontent-length: 2\n\nxx");
        assert_eq!(d.next_frame().unwrap().unwrap().body, b"xx");
    }

    #[test]
    fn header_line_without_colon_is_malformed() {
        let mut d = Decoder::new();
        d.feed(b"Content-Type: command/reply\ngarbage\n\n");
        assert!(matches!(d.next_frame(), Err(FrameError::MalformedHeader { .. })));
    }

    #[test]
    fn drip_fed_frames_decode_identically() {
        let stream = b"Content-Type: api/response\nContent-Length: 3\n\nabcContent-Type: auth/request\n\n";
        let mut d = Decoder::new();
        let mut frames = Vec::new();
        for b in stream.iter() {
            d.feed(std::slice::from_ref(b));
            frames.extend(decode_all(&mut d));
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].body, b"abc");
    }
}
