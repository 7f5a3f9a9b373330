//! The zero-copy SIP scanner. It owns one job: find, in a received datagram, the few things a
//! load-balancing proxy routes on (start line, top Vias, Call-ID, CSeq, From/To, Max-Forwards,
//! Route, Record-Route, Content-Length, digest username), borrowing every value from the receive
//! buffer and recording byte offsets so the router can rewrite the message in one copy.
//! Nothing here allocates. Ordinary messages take a fast walk over 64-byte line-feed/colon
//! bitmaps (`marks`); anything unusual falls back to the full scanner, which reads compact forms,
//! folded lines, bare LF, several Via/Route values per line and UDP framing (RFC 3261 §18.3); the
//! two agree on every input (docs/SIP.md, "The fast scanner").

mod marks;
mod params;
mod scan;

pub use params::{host_port, param_value, split_list, unbracket, uri_host_port, uri_params, uri_user, ParamIter};
pub(crate) use params::is_lws;
pub use scan::{header_name, parse, parse_full, Header, HeaderIter, HeaderName};

use thiserror::Error;

/// A byte range inside the datagram; offsets, not slices, so the router can splice around them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start: start as u32, end: end as u32 }
    }
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Prack,
    Update,
    Info,
    Refer,
    Notify,
    Subscribe,
    Message,
    Publish,
    Other,
}

impl Method {
    pub fn from_bytes(b: &[u8]) -> Method {
        // Methods are case-sensitive (RFC 3261 §7.1).
        match b {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"PRACK" => Method::Prack,
            b"UPDATE" => Method::Update,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"NOTIFY" => Method::Notify,
            b"SUBSCRIBE" => Method::Subscribe,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: Method, method_raw: &'a [u8], uri: &'a [u8] },
    Response { code: u16, reason: &'a [u8] },
}

/// One Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Via<'a> {
    pub transport: &'a [u8],
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub branch: Option<&'a [u8]>,
    /// `Some(None)`: a bare `rport` asking to be filled in; `Some(Some(p))`: already filled.
    pub rport: Option<Option<u16>>,
    pub received: Option<&'a [u8]>,
    /// The whole value, from `SIP` to the end of its last parameter.
    pub span: Span,
    /// Where the `rport` parameter (name and any value) sits, to fill it in.
    pub rport_span: Option<Span>,
    /// Where the `;received=...` parameter (with its leading `;`) sits, to replace it.
    pub received_span: Option<Span>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub number: u32,
    pub method: &'a [u8],
}

/// From or To: the URI (without angle brackets) and the tag parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub uri: &'a [u8],
    pub tag: Option<&'a [u8]>,
}

/// The first value of a Route or Record-Route list and where it sits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteEntry<'a> {
    /// URI inside the angle brackets.
    pub uri: &'a [u8],
    /// The value (`<...>;params`).
    pub value: Span,
    /// The whole header line, name to line end included, for removing a line that held only this value.
    pub line: Span,
    /// Where the next value on the same line starts, if this value is followed by a comma.
    pub next_on_line: Option<u32>,
    /// Another Route value follows (on this line or a later one).
    pub more: bool,
    /// The URI of that second value, the next hop once fsroute pops its own Route.
    pub next_uri: Option<&'a [u8]>,
    /// Where that second value sits: fsroute pops it too when it is also its own (the two
    /// Record-Route entries it writes when a call changes transport, RFC 5658).
    pub next: Option<NextRoute<'a>>,
}

/// The second value of a Route list, for popping two of fsroute's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextRoute<'a> {
    pub value: Span,
    /// Its header line (the first's, when both share one).
    pub line: Span,
    /// Where a third value starts, if it follows on the same line.
    pub next_on_line: Option<u32>,
    /// The third value's URI: the next hop once two are popped.
    pub after_uri: Option<&'a [u8]>,
}

/// Where the X-AUTH-IP and X-AUTH-PORT lines of a message are (whole lines, name to line end).
/// A sender has no business writing one; more than `MAX` is a defect (a request is answered 400),
/// so removing them all stays a bounded number of splices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XAuthLines {
    lines: [Span; XAuthLines::MAX],
    len: u8,
}

impl XAuthLines {
    pub const MAX: usize = 4;

    /// Records one more line; false when `MAX` are already recorded.
    pub(crate) fn push(&mut self, line: Span) -> bool {
        let Some(slot) = self.lines.get_mut(usize::from(self.len)) else { return false };
        *slot = line;
        self.len += 1;
        true
    }

    pub fn lines(&self) -> &[Span] {
        &self.lines[..usize::from(self.len)]
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaxForwards {
    pub value: u32,
    /// Span of the digits, replaced in place when forwarding.
    pub digits: Span,
}

/// Everything the router needs from one datagram. All slices borrow from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub raw: &'a [u8],
    pub start: StartLine<'a>,
    /// The line ending the sender used (`\r\n` or `\n`), reused for lines fsroute inserts.
    pub crlf: bool,
    /// Offset where the first header line starts (just after the start line).
    pub headers_start: u32,
    /// Offset of the blank line that ends the headers.
    pub headers_end: u32,
    /// The body, framed per §18.3 (bytes past Content-Length are not part of it).
    pub body: Span,
    pub via_count: u16,
    pub top_via: Option<Via<'a>>,
    pub second_via: Option<Via<'a>>,
    pub call_id: Option<&'a [u8]>,
    pub cseq: Option<CSeq<'a>>,
    pub from: Option<NameAddr<'a>>,
    pub to: Option<NameAddr<'a>>,
    pub max_forwards: Option<MaxForwards>,
    pub route: Option<RouteEntry<'a>>,
    pub record_route: Option<RouteEntry<'a>>,
    pub content_length: Option<usize>,
    /// Digest username from Proxy-Authorization, else Authorization.
    pub auth_username: Option<&'a [u8]>,
    /// The X-AUTH-IP / X-AUTH-PORT lines the sender wrote, which fsroute removes.
    pub x_auth: XAuthLines,
    /// A request line naming a SIP version other than 2.0 (answered 505).
    pub unsupported_version: bool,
    /// The first defect found in a header that does not stop the scan (a request carrying one is
    /// answered 400, a response is dropped); the message is never forwarded.
    pub defect: Option<ParseError>,
}

impl<'a> Message<'a> {
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }
    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }
    /// The message as it should be forwarded: headers plus the framed body, nothing past it.
    pub fn framed_len(&self) -> usize {
        self.body.end as usize
    }
    pub fn to_tag(&self) -> Option<&'a [u8]> {
        self.to.and_then(|t| t.tag)
    }

    /// The checks of RFC 3261 §8.1.1 / §16.3 that make a request forwardable: mandatory headers
    /// present and a CSeq method that matches the request line.
    pub fn validate_request(&self) -> Result<(), ParseError> {
        let StartLine::Request { method_raw, .. } = self.start else {
            return Ok(());
        };
        if self.unsupported_version {
            return Err(ParseError::UnsupportedVersion);
        }
        if let Some(e) = self.defect {
            return Err(e);
        }
        if self.top_via.is_none() {
            return Err(ParseError::Missing("Via"));
        }
        if self.from.is_none() {
            return Err(ParseError::Missing("From"));
        }
        if self.to.is_none() {
            return Err(ParseError::Missing("To"));
        }
        if self.call_id.is_none() {
            return Err(ParseError::Missing("Call-ID"));
        }
        let Some(cseq) = self.cseq else {
            return Err(ParseError::Missing("CSeq"));
        };
        if cseq.method != method_raw {
            return Err(ParseError::CSeqMethodMismatch);
        }
        Ok(())
    }

    pub fn validate_response(&self) -> Result<(), ParseError> {
        if let Some(e) = self.defect {
            return Err(e);
        }
        if self.top_via.is_none() {
            return Err(ParseError::Missing("Via"));
        }
        if self.call_id.is_none() {
            return Err(ParseError::Missing("Call-ID"));
        }
        if self.cseq.is_none() {
            return Err(ParseError::Missing("CSeq"));
        }
        Ok(())
    }
}

/// Why a datagram could not be scanned. Each variant is a counted drop reason or a 400/505 cause.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("empty datagram")]
    Empty,
    #[error("keepalive (CRLF only)")]
    Keepalive,
    #[error("malformed start line")]
    BadStartLine,
    #[error("unsupported SIP version")]
    UnsupportedVersion,
    #[error("header line without a colon")]
    HeaderWithoutColon,
    #[error("continuation line with no header before it")]
    BadContinuation,
    #[error("NUL byte in the header block")]
    NulByte,
    #[error("headers not terminated by an empty line")]
    UnterminatedHeaders,
    #[error("datagram holds {actual} body bytes but Content-Length says {declared}")]
    TruncatedBody { declared: usize, actual: usize },
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("missing mandatory {0} header")]
    Missing(&'static str),
    #[error("CSeq method differs from the request method")]
    CSeqMethodMismatch,
}

impl ParseError {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::Keepalive => "keepalive",
            ParseError::BadStartLine => "bad_start_line",
            ParseError::UnsupportedVersion => "unsupported_version",
            ParseError::HeaderWithoutColon => "header_without_colon",
            ParseError::BadContinuation => "bad_continuation",
            ParseError::NulByte => "nul_byte",
            ParseError::UnterminatedHeaders => "unterminated_headers",
            ParseError::TruncatedBody { .. } => "truncated_body",
            ParseError::Malformed(_) => "malformed_header",
            ParseError::Missing(_) => "missing_header",
            ParseError::CSeqMethodMismatch => "cseq_method_mismatch",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
