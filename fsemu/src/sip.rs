//! A small, forgiving SIP message parser and response builder for the emulator's UAS.
//! It owns exactly what a UAS needs: the start line, headers in order (compact forms
//! expanded, folded lines joined, CRLF or bare LF), the body by Content-Length, tags,
//! CSeq, Contact and Record-Route URIs. Hostile input yields an error, never a panic.
//! (The product's zero-copy scanner lives in the data plane crate, which the emulator does not
//! depend on.)

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SipParseError {
    #[error("empty datagram")]
    Empty,
    #[error("malformed start line {0:?}")]
    StartLine(String),
    #[error("malformed header line {0:?}")]
    Header(String),
    #[error("missing mandatory header {0}")]
    Missing(&'static str),
    #[error("bad Content-Length {0:?}")]
    ContentLength(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    /// Canonical (long-form) names, values trimmed, in arrival order; one entry per line.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn short(s: &[u8]) -> String {
    String::from_utf8_lossy(&s[..s.len().min(80)]).into_owned()
}

/// RFC 3261 §7.3.3 compact forms.
fn canonical(name: &str) -> String {
    let long = match name.to_ascii_lowercase().as_str() {
        "i" | "call-id" => "Call-ID",
        "v" | "via" => "Via",
        "f" | "from" => "From",
        "t" | "to" => "To",
        "m" | "contact" => "Contact",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "k" | "supported" => "Supported",
        "s" | "subject" => "Subject",
        "e" | "content-encoding" => "Content-Encoding",
        "cseq" => "CSeq",
        "record-route" => "Record-Route",
        "route" => "Route",
        "max-forwards" => "Max-Forwards",
        _ => return name.to_owned(),
    };
    long.to_owned()
}

impl SipMessage {
    pub fn parse(buf: &[u8]) -> Result<SipMessage, SipParseError> {
        // Keep-alive CRLFs before a message carry nothing.
        let start = buf
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .ok_or(SipParseError::Empty)?;
        let buf = &buf[start..];
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut pos = 0;
        let mut body_start = None;
        while pos < buf.len() {
            let end = memchr::memchr(b'\n', &buf[pos..]).map_or(buf.len(), |i| pos + i);
            let line = buf[pos..end].strip_suffix(b"\r").unwrap_or(&buf[pos..end]);
            pos = (end + 1).min(buf.len());
            if line.is_empty() {
                body_start = Some(pos);
                break;
            }
            lines.push(line);
        }
        let (first, rest) = lines.split_first().ok_or(SipParseError::Empty)?;
        let first_s =
            std::str::from_utf8(first).map_err(|_| SipParseError::StartLine(short(first)))?;
        let start =
            parse_start_line(first_s).ok_or_else(|| SipParseError::StartLine(short(first)))?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in rest {
            let text = String::from_utf8_lossy(line);
            if line[0] == b' ' || line[0] == b'\t' {
                // Folded continuation (RFC 3261 §7.3.1).
                let Some(last) = headers.last_mut() else {
                    return Err(SipParseError::Header(short(line)));
                };
                last.1.push(' ');
                last.1.push_str(text.trim());
                continue;
            }
            let Some((name, value)) = text.split_once(':') else {
                return Err(SipParseError::Header(short(line)));
            };
            let name = name.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(SipParseError::Header(short(line)));
            }
            headers.push((canonical(name), value.trim().to_owned()));
        }
        let mut msg = SipMessage {
            start,
            headers,
            body: Vec::new(),
        };
        let available = body_start.map_or(&buf[buf.len()..], |s| &buf[s..]);
        msg.body = match msg.header("Content-Length") {
            Some(v) => {
                let n: usize = v
                    .parse()
                    .map_err(|_| SipParseError::ContentLength(v.to_owned()))?;
                if n > available.len() {
                    return Err(SipParseError::ContentLength(v.to_owned()));
                }
                available[..n].to_vec()
            }
            None => available.to_vec(),
        };
        for h in ["Call-ID", "CSeq", "From", "To", "Via"] {
            if msg.header(h).is_none() {
                return Err(SipParseError::Missing(h));
            }
        }
        if msg.cseq().is_none() {
            return Err(SipParseError::Missing("CSeq"));
        }
        Ok(msg)
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// First value of `name` (long form), case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn call_id(&self) -> &str {
        self.header("Call-ID").unwrap_or("")
    }

    /// (sequence number, method).
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = it.next()?.to_ascii_uppercase();
        Some((n, m))
    }

    pub fn from_tag(&self) -> Option<&str> {
        tag_param(self.header("From")?)
    }

    pub fn to_tag(&self) -> Option<&str> {
        tag_param(self.header("To")?)
    }

    /// Every Record-Route entry in order, comma-separated lists flattened.
    pub fn record_routes(&self) -> Vec<String> {
        self.headers_named("Record-Route")
            .flat_map(split_list)
            .map(str::to_owned)
            .collect()
    }

    /// The URI of the first Contact.
    pub fn contact_uri(&self) -> Option<String> {
        let first = split_list(self.header("Contact")?).next()?;
        Some(addr_uri(first).to_owned())
    }
}

fn parse_start_line(line: &str) -> Option<StartLine> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().ok().filter(|c| (100..700).contains(c))?;
        return Some(StartLine::Response {
            code,
            reason: reason.to_owned(),
        });
    }
    let mut parts = line.split(' ');
    let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "SIP/2.0" || method.is_empty() || uri.is_empty() {
        return None;
    }
    if !method
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
    {
        return None;
    }
    Some(StartLine::Request {
        method: method.to_owned(),
        uri: uri.to_owned(),
    })
}

/// Splits a header value at commas that are outside quotes and angle brackets.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(value.get(start..).unwrap_or("").trim());
    parts.into_iter().filter(|p| !p.is_empty())
}

/// The `tag` parameter of a From/To value (outside the `<...>` URI).
pub fn tag_param(value: &str) -> Option<&str> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map_or("", |(_, p)| p),
    };
    params.split(';').map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("tag").then_some(v.trim())
    })
}

/// The URI inside a name-addr (`"Bob" <sip:b@h>;x`) or an addr-spec (`sip:b@h;x`).
pub fn addr_uri(value: &str) -> &str {
    if let (Some(a), Some(b)) = (value.find('<'), value.find('>')) {
        if a < b {
            return &value[a + 1..b];
        }
    }
    value.split(';').next().unwrap_or(value).trim()
}

/// Host and port of a SIP URI (port 5060 when absent).
pub fn uri_host_port(uri: &str) -> Option<(String, u16)> {
    let lower = uri.to_ascii_lowercase();
    let rest = if lower.starts_with("sips:") {
        &uri[5..]
    } else if lower.starts_with("sip:") {
        &uri[4..]
    } else {
        return None;
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = rest.split([';', '?', '>']).next()?;
    if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 5060,
        };
        return Some((h.to_owned(), port));
    }
    let (h, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 5060),
    };
    (!h.is_empty()).then(|| (h.to_owned(), port))
}

/// Where to send a request for `uri`. Literal addresses need no lookup; names are looked
/// up by the system resolver (the emulator runs on loopback, where this is instant).
pub fn resolve_uri(uri: &str) -> Option<SocketAddr> {
    let (host, port) = uri_host_port(uri)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    (host.as_str(), port).to_socket_addrs().ok()?.next()
}

/// Whether a Route/Record-Route URI names a loose router.
pub fn is_loose(uri: &str) -> bool {
    uri.split(';').skip(1).any(|p| {
        p.trim().eq_ignore_ascii_case("lr") || p.trim().to_ascii_lowercase().starts_with("lr=")
    })
}

pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        481 => "Call/Transaction Does Not Exist",
        487 => "Request Terminated",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Builds a response to `req`: Via, From, To (plus `to_tag` if To has none), Call-ID and
/// CSeq copied; Record-Route copied when `record_route` (18x/2xx that make a dialog).
pub fn response(
    req: &SipMessage,
    code: u16,
    to_tag: Option<&str>,
    record_route: bool,
    extra: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    response_with_reason(req, code, reason_phrase(code), to_tag, record_route, extra, body)
}

/// [`response`] with a reason phrase of the caller's choosing (sofia's 503 says
/// `Maximum Calls In Progress`).
pub fn response_with_reason(
    req: &SipMessage,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    record_route: bool,
    extra: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for (name, value) in &req.headers {
        let copy = matches!(name.as_str(), "Via" | "From" | "Call-ID" | "CSeq")
            || (record_route && name == "Record-Route");
        if copy {
            s.push_str(&format!("{name}: {value}\r\n"));
        } else if name == "To" {
            match to_tag {
                Some(tag) if tag_param(value).is_none() => {
                    s.push_str(&format!("To: {value};tag={tag}\r\n"))
                }
                _ => s.push_str(&format!("To: {value}\r\n")),
            }
        }
    }
    for (n, v) in extra {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    let mut out = match body {
        Some((ct, b)) => {
            s.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                b.len()
            ));
            let mut out = s.into_bytes();
            out.extend_from_slice(b);
            out
        }
        None => {
            s.push_str("Content-Length: 0\r\n\r\n");
            s.into_bytes()
        }
    };
    out.shrink_to_fit();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:100@127.0.0.1:5071 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-p;rport, SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bK-a\r\n\
v: SIP/2.0/UDP 10.0.0.8;branch=z9hG4bK-b\r\n\
Record-Route: <sip:10.0.0.1;lr;ftag=x>, <sip:10.0.0.2:5070;lr>\r\n\
f: \"Al, ice\" <sip:a@x>;tag=from1\r\n\
t: <sip:100@y>\r\n\
i: abc@x\r\n\
CSeq: 7 INVITE\r\n\
m: <sip:a@10.0.0.9:5062;transport=udp>\r\n\
Subject: folded\r\n  line\r\n\
l: 4\r\n\r\nv=0\r\n";

    #[test]
    fn compact_forms_folding_and_body_length_are_understood() {
        let m = SipMessage::parse(INVITE).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.call_id(), "abc@x");
        assert_eq!(m.cseq(), Some((7, "INVITE".into())));
        assert_eq!(m.from_tag(), Some("from1"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.headers_named("Via").count(), 2);
        assert_eq!(m.header("Subject"), Some("folded line"));
        assert_eq!(m.body, b"v=0\r");
        assert_eq!(
            m.record_routes(),
            ["<sip:10.0.0.1;lr;ftag=x>", "<sip:10.0.0.2:5070;lr>"]
        );
        assert_eq!(
            m.contact_uri().as_deref(),
            Some("sip:a@10.0.0.9:5062;transport=udp")
        );
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_a_to_tag() {
        let m = SipMessage::parse(INVITE).unwrap();
        let r = response(&m, 180, Some("t1"), true, &[], None);
        let text = String::from_utf8(r.clone()).unwrap();
        assert!(text.starts_with("SIP/2.0 180 Ringing\r\n"));
        assert!(text.contains("To: <sip:100@y>;tag=t1\r\n"));
        assert!(text.contains("Record-Route: <sip:10.0.0.1;lr;ftag=x>, <sip:10.0.0.2:5070;lr>\r\n"));
        let back = SipMessage::parse(&r).unwrap();
        assert_eq!(back.status(), Some(180));
        assert_eq!(
            back.headers_named("Via").collect::<Vec<_>>(),
            m.headers_named("Via").collect::<Vec<_>>()
        );
        assert_eq!(back.to_tag(), Some("t1"));
        let r503 = String::from_utf8(response(&m, 503, Some("t2"), false, &[], None)).unwrap();
        assert!(!r503.contains("Record-Route"));
    }

    #[test]
    fn uris_yield_host_and_port() {
        assert_eq!(
            uri_host_port("sip:a@10.0.0.9:5062;transport=udp"),
            Some(("10.0.0.9".into(), 5062))
        );
        assert_eq!(
            uri_host_port("sip:10.0.0.1;lr"),
            Some(("10.0.0.1".into(), 5060))
        );
        assert_eq!(
            uri_host_port("sip:[::1]:5080;lr"),
            Some(("::1".into(), 5080))
        );
        assert_eq!(uri_host_port("tel:+123"), None);
        assert!(is_loose("sip:10.0.0.1;lr;ftag=x"));
        assert!(!is_loose("sip:10.0.0.1;ftag=x"));
        assert_eq!(tag_param("<sip:a;tag=no>;tag=yes"), Some("yes"));
        assert_eq!(tag_param("sip:a@b;tag=x"), Some("x"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"hello",
            b"INVITE sip:x SIP/2.0\r\nno colon\r\n\r\n",
            b"SIP/2.0 99999 x\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nVia: a\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: x INVITE\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nVia: a\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 99\r\n\r\nab",
            b" \r\n",
            b"\xff\xfe INVITE",
        ] {
            assert!(SipMessage::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
