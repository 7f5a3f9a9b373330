//! The header walk: start line, then one logical header at a time (folded continuation lines
//! joined by position, never by copying), dispatching on the header name, then UDP body framing.

use super::marks::Marks;
use super::params::{host_port, is_lws, name_addr_uri, parse_u16, parse_u32, split_list, trim, trim_bounds, ListIter, ParamIter};
use super::{CSeq, MaxForwards, Message, Method, NameAddr, NextRoute, ParseError, RouteEntry, Span, StartLine, Via, XAuthLines};

/// A header's name as the scanner and the router tell them apart (full or compact form, any
/// case); every other header is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderName {
    Via,
    CallId,
    CSeq,
    From,
    To,
    MaxForwards,
    Route,
    RecordRoute,
    ContentLength,
    ProxyAuthorization,
    Authorization,
    /// X-AUTH-IP or X-AUTH-PORT: FreeSWITCH's word for "the caller's real address", which only
    /// fsroute may write (docs/FREESWITCH.md, "X-AUTH-IP").
    XAuth,
    Other,
}

impl HeaderName {
    /// Whether a locally generated reply copies this header (§8.2.6.2).
    pub fn is_reply_copied(self) -> bool {
        matches!(self, HeaderName::Via | HeaderName::CallId | HeaderName::CSeq | HeaderName::From | HeaderName::To)
    }
}

/// Which header a header line's name is.
#[inline(always)]
pub fn header_name(name: &[u8]) -> HeaderName {
    // Compact forms first: a single byte (RFC 3261 §7.3.3).
    if name.len() == 1 {
        return match name[0] | 0x20 {
            b'v' => HeaderName::Via,
            b'i' => HeaderName::CallId,
            b'f' => HeaderName::From,
            b't' => HeaderName::To,
            b'l' => HeaderName::ContentLength,
            _ => HeaderName::Other,
        };
    }
    let eq = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if eq(b"to") => HeaderName::To,
        3 if eq(b"via") => HeaderName::Via,
        4 if eq(b"cseq") => HeaderName::CSeq,
        4 if eq(b"from") => HeaderName::From,
        5 if eq(b"route") => HeaderName::Route,
        7 if eq(b"call-id") => HeaderName::CallId,
        9 if eq(b"x-auth-ip") => HeaderName::XAuth,
        11 if eq(b"x-auth-port") => HeaderName::XAuth,
        12 if eq(b"max-forwards") => HeaderName::MaxForwards,
        12 if eq(b"record-route") => HeaderName::RecordRoute,
        13 if eq(b"authorization") => HeaderName::Authorization,
        14 if eq(b"content-length") => HeaderName::ContentLength,
        19 if eq(b"proxy-authorization") => HeaderName::ProxyAuthorization,
        _ => HeaderName::Other,
    }
}

/// Scans one datagram. Returns `Keepalive` for CRLF-only datagrams (RFC 5626), which callers
/// count but do not answer.
///
/// Ordinary messages take the fast walk: line feeds and colons from 64-byte bitmaps (`marks`),
/// comma lists that hold one value and parameters without quotes read straight. Anything unusual
/// (a folded line, a NUL, a line without a colon, a comma or quote where the fast walk does not
/// look for one, any defect or error) sends the datagram to [`parse_full`], which reads every case
/// RFC 3261 allows; the two give the same `Message` for every input (docs/SIP.md, "The fast
/// scanner", and the property tests in `sip/tests.rs`).
pub fn parse(buf: &[u8]) -> Result<Message<'_>, ParseError> {
    match parse_fast(buf) {
        Some(m) => Ok(m),
        None => parse_full(buf),
    }
}

/// The scanner that reads every case: the fallback of [`parse`], and its oracle in tests.
pub fn parse_full(buf: &[u8]) -> Result<Message<'_>, ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    let pos = skip_blank_lines(buf);
    if pos == buf.len() {
        return Err(ParseError::Keepalive);
    }
    let lf = memchr::memchr(b'\n', &buf[pos..]).ok_or(ParseError::BadStartLine)? + pos;
    let line = &buf[pos..line_end(buf, pos, lf)];
    if memchr::memchr(0, line).is_some() {
        return Err(ParseError::NulByte);
    }
    let (start, unsupported_version) = parse_start_line(line)?;
    let mut scan = Scan::new(buf, start, crlf_at(buf, pos, lf), lf + 1, unsupported_version, false);
    let mut headers = HeaderIter::new(buf, lf + 1);
    for h in headers.by_ref() {
        match h {
            Ok(h) => scan.header(h)?,
            Err(e @ ParseError::HeaderWithoutColon) => {
                scan.m.defect.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(frame_body(scan.m, headers.headers_end, headers.body_start))
}

/// The fast walk: the same `Message` as [`parse_full`], or `None` for anything it does not read.
pub(super) fn parse_fast(buf: &[u8]) -> Option<Message<'_>> {
    let pos = skip_blank_lines(buf);
    let mut marks = Marks::new(buf, pos);
    let (_, lf) = marks.next_line()?;
    let (start, unsupported_version) = parse_start_line(&buf[pos..line_end(buf, pos, lf)]).ok()?;
    let mut scan = Scan::new(buf, start, crlf_at(buf, pos, lf), lf + 1, unsupported_version, true);
    let mut at = lf + 1;
    let body_start = loop {
        match *buf.get(at)? {
            b'\n' => break at + 1,
            b'\r' if buf.get(at + 1) == Some(&b'\n') => break at + 2,
            b' ' | b'\t' | b'\r' => return None,
            _ => {}
        }
        let (colon, lf) = marks.next_line()?;
        let colon = colon?;
        if colon == at || is_lws(buf[colon - 1]) || matches!(buf.get(lf + 1), Some(b' ' | b'\t')) {
            return None;
        }
        let value_end = line_end(buf, at, lf);
        let (a, b) = trim_bounds(&buf[colon + 1..value_end]);
        let h = Header { line: Span::new(at, lf + 1), name: Span::new(at, colon), value: Span::new(colon + 1 + a, colon + 1 + b) };
        scan.header(h).ok()?;
        if scan.unusual {
            return None;
        }
        at = lf + 1;
    };
    // The header block ends at `at`; every byte before it has been through `marks`.
    if marks.first_nul < at || scan.m.defect.is_some() {
        return None;
    }
    Some(frame_body(scan.m, at, body_start))
}

/// Leading CRLFs before a message are keep-alive padding (RFC 5626 §4.4.1).
fn skip_blank_lines(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len())
}

/// The end of the line from `start` to the LF at `lf`, without its CR.
#[inline(always)]
fn line_end(buf: &[u8], start: usize, lf: usize) -> usize {
    if crlf_at(buf, start, lf) {
        lf - 1
    } else {
        lf
    }
}

#[inline(always)]
fn crlf_at(buf: &[u8], start: usize, lf: usize) -> bool {
    lf > start && buf[lf - 1] == b'\r'
}

/// UDP framing (§18.3): Content-Length bounds the body; without it the body runs to the end.
fn frame_body(mut m: Message<'_>, headers_end: usize, pos: usize) -> Message<'_> {
    m.headers_end = headers_end as u32;
    let available = m.raw.len() - pos;
    let body_len = match m.content_length {
        Some(cl) if cl > available => {
            // Still scanned, so a request can be answered 400; the router never forwards it.
            m.defect.get_or_insert(ParseError::TruncatedBody { declared: cl, actual: available });
            available
        }
        Some(cl) => cl,
        None => available,
    };
    m.body = Span::new(pos, pos + body_len);
    m
}

/// The header walk's state: the message being filled in, and what later headers depend on.
struct Scan<'a> {
    m: Message<'a>,
    /// Proxy-Authorization wins over Authorization for `auth_username`.
    proxy_auth_seen: bool,
    /// Route values seen so far: the router reads the first and whether a second follows.
    route_values: u32,
    /// The fast walk: NULs are found by `marks`, and a value it does not read straight sets
    /// `unusual` instead of being read the general way.
    fast: bool,
    unusual: bool,
}

impl<'a> Scan<'a> {
    fn new(buf: &'a [u8], start: StartLine<'a>, crlf: bool, headers_start: usize, unsupported_version: bool, fast: bool) -> Self {
        let m = Message {
            raw: buf,
            start,
            crlf,
            headers_start: headers_start as u32,
            headers_end: 0,
            body: Span::default(),
            via_count: 0,
            top_via: None,
            second_via: None,
            call_id: None,
            cseq: None,
            from: None,
            to: None,
            max_forwards: None,
            route: None,
            record_route: None,
            content_length: None,
            auth_username: None,
            x_auth: XAuthLines::default(),
            unsupported_version,
            defect: None,
        };
        Scan { m, proxy_auth_seen: false, route_values: 0, fast, unusual: false }
    }

    /// Records one header. Only a defect that leaves nobody to answer (an unusable top Via) is an
    /// error; anything else is noted in `defect` and the walk goes on.
    #[inline]
    fn header(&mut self, h: Header) -> Result<(), ParseError> {
        let buf = self.m.raw;
        let value = h.value.get(buf);
        if !self.fast && memchr::memchr(0, h.line.get(buf)).is_some() {
            self.defect(ParseError::NulByte);
        }
        match header_name(h.name.get(buf)) {
            HeaderName::Via => return self.via(h),
            HeaderName::CallId if value.is_empty() => self.defect(ParseError::Malformed("Call-ID")),
            HeaderName::CallId => {
                self.m.call_id.get_or_insert(value);
            }
            HeaderName::CSeq if self.m.cseq.is_none() => match parse_cseq(value) {
                Ok(c) => self.m.cseq = Some(c),
                Err(e) => self.defect(e),
            },
            HeaderName::From if self.m.from.is_none() => {
                self.m.from = parse_name_addr(value, self.fast);
                if self.m.from.is_none() {
                    self.defect(ParseError::Malformed("From"));
                }
            }
            HeaderName::To if self.m.to.is_none() => {
                self.m.to = parse_name_addr(value, self.fast);
                if self.m.to.is_none() {
                    self.defect(ParseError::Malformed("To"));
                }
            }
            HeaderName::MaxForwards if self.m.max_forwards.is_none() => match parse_u32(value) {
                Some(v) => self.m.max_forwards = Some(MaxForwards { value: v, digits: h.value }),
                None => self.defect(ParseError::Malformed("Max-Forwards")),
            },
            HeaderName::Route => self.route(h),
            HeaderName::RecordRoute if self.m.record_route.is_none() => {
                if let Some((a, b)) = self.elements(value).next() {
                    self.m.record_route = route_entry(value, h.value.start as usize, a, b, h.line);
                    if self.m.record_route.is_none() {
                        self.defect(ParseError::Malformed("Record-Route"));
                    }
                }
            }
            HeaderName::ContentLength => match parse_u32(value) {
                Some(v) if self.m.content_length.is_none_or(|old| old == v as usize) => self.m.content_length = Some(v as usize),
                _ => self.defect(ParseError::Malformed("Content-Length")),
            },
            HeaderName::ProxyAuthorization if !self.proxy_auth_seen => {
                self.proxy_auth_seen = true;
                if let Some(u) = digest_username(value) {
                    self.m.auth_username = Some(u);
                }
            }
            HeaderName::Authorization if !self.proxy_auth_seen && self.m.auth_username.is_none() => {
                self.m.auth_username = digest_username(value);
            }
            // The push is the point; only its refusal is a defect (clippy would move it into a guard).
            #[allow(clippy::collapsible_match)]
            HeaderName::XAuth => {
                if !self.m.x_auth.push(h.line) {
                    self.defect(ParseError::Malformed("X-AUTH-IP"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The elements of a comma list. The fast walk reads a value without a comma as its one
    /// element, splits one without quotes by memchr, and leaves the rest to the full scanner.
    fn elements(&mut self, value: &'a [u8]) -> ListIter<'a> {
        if !self.fast {
            return split_list(value);
        }
        if memchr::memchr(b',', value).is_none() {
            return ListIter::one(value);
        }
        if memchr::memchr(b'"', value).is_none() {
            return ListIter::unquoted(value);
        }
        self.unusual = true;
        split_list(value)
    }

    /// The first defect is the one reported.
    fn defect(&mut self, e: ParseError) {
        self.m.defect.get_or_insert(e);
    }

    /// Counts every Via value and reads the first two.
    fn via(&mut self, h: Header) -> Result<(), ParseError> {
        let (buf, vs) = (self.m.raw, h.value.start as usize);
        for (a, b) in self.elements(h.value.get(buf)) {
            self.m.via_count = self.m.via_count.saturating_add(1);
            if self.m.via_count > 2 {
                continue;
            }
            match parse_via(buf, vs + a, vs + b, self.fast) {
                Ok(via) if self.m.via_count == 1 => self.m.top_via = Some(via),
                Ok(via) => self.m.second_via = Some(via),
                // Without a usable top Via there is nobody to answer.
                Err(e) if self.m.via_count == 1 => return Err(e),
                Err(e) => self.defect(e),
            }
        }
        Ok(())
    }

    /// The first Route value, and whether (and where) a second one follows.
    fn route(&mut self, h: Header) {
        let (value, vs) = (h.value.get(self.m.raw), h.value.start as usize);
        for (a, b) in self.elements(value) {
            self.route_values += 1;
            if self.route_values == 1 {
                self.m.route = route_entry(value, vs, a, b, h.line);
                if self.m.route.is_none() {
                    self.defect(ParseError::Malformed("Route"));
                }
            } else if self.route_values == 2 {
                if let Some(r) = self.m.route.as_mut() {
                    r.more = true;
                    r.next_uri = name_addr_uri(&value[a..b]).map(|(u, _)| u);
                    if r.line == h.line {
                        r.next_on_line = Some((vs + a) as u32);
                    }
                    r.next = Some(NextRoute { value: Span::new(vs + a, vs + b), line: h.line, next_on_line: None, after_uri: None });
                }
            } else if self.route_values == 3 {
                if let Some(n) = self.m.route.as_mut().and_then(|r| r.next.as_mut()) {
                    n.after_uri = name_addr_uri(&value[a..b]).map(|(u, _)| u);
                    if n.line == h.line {
                        n.next_on_line = Some((vs + a) as u32);
                    }
                }
            }
        }
    }
}

/// The start line, and whether a request names a SIP version other than 2.0 (answered 505).
/// NULs are the caller's to look for.
fn parse_start_line(line: &[u8]) -> Result<(StartLine<'_>, bool), ParseError> {
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::BadStartLine)?;
    let first = &line[..sp1];
    let rest = &line[sp1 + 1..];
    if first.len() >= 4 && first[..4].eq_ignore_ascii_case(b"SIP/") {
        // RFC 3261 §7.1: the version string is case-insensitive (senders must use upper case).
        if !first.eq_ignore_ascii_case(b"SIP/2.0") {
            // A response in a version we do not speak: nothing to answer it with.
            return Err(ParseError::BadStartLine);
        }
        let (code, reason) = match memchr::memchr(b' ', rest) {
            Some(sp) => (&rest[..sp], &rest[sp + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        if code.len() != 3 {
            return Err(ParseError::BadStartLine);
        }
        let code = parse_u16(code).ok_or(ParseError::BadStartLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStartLine);
        }
        return Ok((StartLine::Response { code, reason }, false));
    }
    if first.is_empty() || !first.iter().all(|b| is_token_char(*b)) {
        return Err(ParseError::BadStartLine);
    }
    let sp2 = memchr::memrchr(b' ', rest).ok_or(ParseError::BadStartLine)?;
    let uri = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    if uri.is_empty() || uri.contains(&b' ') {
        return Err(ParseError::BadStartLine);
    }
    let unsupported = !version.eq_ignore_ascii_case(b"SIP/2.0");
    if unsupported && !(version.len() >= 4 && version[..4].eq_ignore_ascii_case(b"SIP/")) {
        return Err(ParseError::BadStartLine);
    }
    Ok((StartLine::Request { method: Method::from_bytes(first), method_raw: first, uri }, unsupported))
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// The route-list element `value[a..b]` (the header value starts at offset `vs` of the datagram).
fn route_entry(value: &[u8], vs: usize, a: usize, b: usize, line: Span) -> Option<RouteEntry<'_>> {
    let (uri, _) = name_addr_uri(&value[a..b])?;
    Some(RouteEntry { uri, value: Span::new(vs + a, vs + b), line, next_on_line: None, more: false, next_uri: None, next: None })
}

/// One Via value between `a` and `b` (offsets into the datagram).
fn parse_via(buf: &[u8], a: usize, b: usize, fast: bool) -> Result<Via<'_>, ParseError> {
    let v = &buf[a..b];
    let bad = ParseError::Malformed("Via");
    // sent-protocol: "SIP" / "2.0" / transport, with optional white space around the slashes.
    let mut parts = [&v[..0]; 3];
    let mut i = 0;
    for (k, part) in parts.iter_mut().enumerate() {
        while i < v.len() && is_lws(v[i]) {
            i += 1;
        }
        let s = i;
        while i < v.len() && !is_lws(v[i]) && v[i] != b'/' {
            i += 1;
        }
        *part = &v[s..i];
        while i < v.len() && is_lws(v[i]) {
            i += 1;
        }
        if k < 2 {
            if i >= v.len() || v[i] != b'/' {
                return Err(bad);
            }
            i += 1;
        }
    }
    if !parts[0].eq_ignore_ascii_case(b"SIP") || parts[1] != b"2.0" || parts[2].is_empty() {
        return Err(bad);
    }
    let transport = parts[2];
    let params_at = memchr::memchr(b';', &v[i..]).map(|p| p + i).unwrap_or(v.len());
    let (host, port) = host_port(&v[i..params_at]).ok_or(bad)?;
    let mut via = Via {
        transport,
        host,
        port,
        span: Span::new(a, b),
        ..Via::default()
    };
    let params = &v[params_at..];
    for (name, value, ps, pe) in params_of(params, fast) {
        let abs = a + params_at;
        if name.eq_ignore_ascii_case(b"branch") {
            via.branch = Some(value.ok_or(bad)?);
        } else if name.eq_ignore_ascii_case(b"rport") {
            via.rport = Some(match value {
                Some(p) if !p.is_empty() => Some(parse_u16(p).ok_or(bad)?),
                _ => None,
            });
            via.rport_span = Some(Span::new(abs + ps, abs + pe));
        } else if name.eq_ignore_ascii_case(b"received") {
            // An IP address (§18.2.1): fsroute overwrites this value, and anything else in it (a
            // '<' that hides a comma from the list split, say) would change what the rest of the
            // header means once it is gone (found by the `router` fuzz target).
            let ip = value.filter(|v| !v.is_empty() && v.iter().all(|c| c.is_ascii_hexdigit() || b".:[]".contains(c)));
            via.received = Some(ip.ok_or(bad)?);
            // Include the ';' before it so the parameter can be removed whole.
            let semi = params[..ps].iter().rposition(|&c| c == b';').unwrap_or(ps);
            via.received_span = Some(Span::new(abs + semi, abs + pe));
        }
    }
    Ok(via)
}

fn parse_cseq(v: &[u8]) -> Result<CSeq<'_>, ParseError> {
    let bad = ParseError::Malformed("CSeq");
    let mut it = v.split(|b| is_lws(*b)).filter(|s| !s.is_empty());
    let number = parse_u32(it.next().ok_or(bad)?).ok_or(bad)?;
    let method = it.next().ok_or(bad)?;
    if it.next().is_some() {
        return Err(bad);
    }
    Ok(CSeq { number, method })
}

/// A run of parameters: the fast walk reads one without a quote by `;` alone.
fn params_of(params: &[u8], fast: bool) -> ParamIter<'_> {
    if fast && memchr::memchr(b'"', params).is_none() {
        ParamIter::unquoted(params)
    } else {
        ParamIter::new(params)
    }
}

fn parse_name_addr(v: &[u8], fast: bool) -> Option<NameAddr<'_>> {
    let (uri, params_at) = name_addr_uri(v)?;
    let tag = params_of(&v[params_at..], fast)
        .find(|(n, ..)| n.eq_ignore_ascii_case(b"tag"))
        .and_then(|(_, v, ..)| v);
    Some(NameAddr { uri, tag })
}

/// `Digest username="alice", realm=...` -> `alice`.
fn digest_username(v: &[u8]) -> Option<&[u8]> {
    let sp = v.iter().position(|b| is_lws(*b))?;
    if !v[..sp].eq_ignore_ascii_case(b"Digest") {
        return None;
    }
    for (a, b) in split_list(&v[sp..]) {
        let item = &v[sp + a..sp + b];
        let eq = memchr::memchr(b'=', item)?;
        if trim(&item[..eq]).eq_ignore_ascii_case(b"username") {
            let val = trim(&item[eq + 1..]);
            let val = val.strip_prefix(b"\"").and_then(|s| s.strip_suffix(b"\"")).unwrap_or(val);
            return Some(val);
        }
    }
    None
}

/// One logical header: its whole line(s) including the final line break, its name and its
/// trimmed value (folded continuation lines included in place).
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub line: Span,
    pub name: Span,
    pub value: Span,
}

/// Walks logical headers from `pos` to the empty line. After it returns `None`, `headers_end` is the
/// offset of the empty line and `body_start` the first body byte.
pub struct HeaderIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
    pub headers_end: usize,
    pub body_start: usize,
}

impl<'a> HeaderIter<'a> {
    pub fn new(buf: &'a [u8], pos: usize) -> Self {
        HeaderIter { buf, pos, done: false, headers_end: 0, body_start: 0 }
    }
}

impl Iterator for HeaderIter<'_> {
    type Item = Result<Header, ParseError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let buf = self.buf;
        let pos = self.pos;
        let fail = |me: &mut Self, e| {
            me.done = true;
            Some(Err(e))
        };
        if pos >= buf.len() {
            return fail(self, ParseError::UnterminatedHeaders);
        }
        let blank = match buf[pos] {
            b'\n' => Some(pos + 1),
            b'\r' if buf.get(pos + 1) == Some(&b'\n') => Some(pos + 2),
            _ => None,
        };
        if let Some(body_start) = blank {
            self.done = true;
            self.headers_end = pos;
            self.body_start = body_start;
            return None;
        }
        if is_lws(buf[pos]) {
            // A continuation line with no header before it: the scan cannot tell where headers
            // resume, so it ends here (unlike a line without a colon, which is skipped).
            return fail(self, ParseError::BadContinuation);
        }
        // A logical header runs to a LF not followed by SP/HT.
        let mut search = pos;
        let end = loop {
            let Some(off) = memchr::memchr(b'\n', &buf[search..]) else {
                return fail(self, ParseError::UnterminatedHeaders);
            };
            let end = search + off;
            match buf.get(end + 1) {
                Some(b' ') | Some(b'\t') => search = end + 1,
                _ => break end,
            }
        };
        let next = end + 1;
        let value_end = if end > pos && buf[end - 1] == b'\r' { end - 1 } else { end };
        let hdr = &buf[pos..value_end];
        // A line without a name is reported but does not end the walk: the headers after it (the
        // Via among them) are still there, so a request carrying one can be answered 400.
        let skip = |me: &mut Self| {
            me.pos = next;
            Some(Err(ParseError::HeaderWithoutColon))
        };
        let Some(colon) = memchr::memchr(b':', hdr) else {
            return skip(self);
        };
        let (na, nb) = trim_bounds(&hdr[..colon]);
        if na == nb {
            return skip(self);
        }
        let vstart = pos + colon + 1;
        let (a, b) = trim_bounds(&buf[vstart..value_end]);
        self.pos = next;
        Some(Ok(Header {
            line: Span::new(pos, next),
            name: Span::new(pos + na, pos + nb),
            value: Span::new(vstart + a, vstart + b),
        }))
    }
}
