//! Small borrowing tokenizers shared by the scanner and the router: comma lists that respect
//! `<...>` and quoted strings, `;name=value` parameter runs, and `host[:port]` with IPv6 brackets.
//! Folded header values keep their line breaks in place, so CR and LF count as white space here.

#[inline]
/// A host without the brackets of an IPv6 reference (`[::1]` -> `::1`); any other host as it is.
pub fn unbracket(host: &[u8]) -> &[u8] {
    host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")).unwrap_or(host)
}

pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let (a, b) = trim_bounds(s);
    &s[a..b]
}

/// Start and end offsets of `s` without surrounding linear white space.
pub(crate) fn trim_bounds(s: &[u8]) -> (usize, usize) {
    let mut a = 0;
    let mut b = s.len();
    while a < b && is_lws(s[a]) {
        a += 1;
    }
    while b > a && is_lws(s[b - 1]) {
        b -= 1;
    }
    (a, b)
}

/// Splits a comma-separated header value into its elements, as (start, end) offsets into `value`
/// with white space trimmed. Commas inside `<...>` or a quoted string do not split.
pub fn split_list(value: &[u8]) -> ListIter<'_> {
    ListIter { value, pos: 0, kind: ListKind::Quoted }
}

pub struct ListIter<'a> {
    value: &'a [u8],
    pos: usize,
    kind: ListKind,
}

/// What the caller knows of a list value, so the split can skip what cannot be there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListKind {
    /// Anything: commas inside `<...>` and quoted strings do not split.
    Quoted,
    /// No `"`: a comma splits unless it is inside `<...>`.
    Unquoted,
    /// A trimmed value with no comma: its own single element.
    One,
}

impl<'a> ListIter<'a> {
    /// A trimmed value that holds no comma.
    pub(crate) fn one(value: &'a [u8]) -> Self {
        ListIter { value, pos: 0, kind: ListKind::One }
    }

    /// A value that holds no `"`.
    pub(crate) fn unquoted(value: &'a [u8]) -> Self {
        ListIter { value, pos: 0, kind: ListKind::Unquoted }
    }
}

impl Iterator for ListIter<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        let v = self.value;
        if self.pos > v.len() {
            return None;
        }
        let start = self.pos;
        let end = match self.kind {
            ListKind::One => {
                self.pos = v.len() + 1;
                return Some((0, v.len()));
            }
            ListKind::Unquoted => unquoted_element_end(v, start),
            ListKind::Quoted => quoted_element_end(v, start),
        };
        self.pos = end + 1;
        let (a, b) = trim_bounds(&v[start..end]);
        if a == b && self.pos > v.len() && start != 0 {
            // A trailing comma leaves nothing behind it; not an element.
            return None;
        }
        Some((start + a, start + b))
    }
}

/// Where the element from `start` ends: at the next comma outside `<...>` and quoted strings.
fn quoted_element_end(v: &[u8], start: usize) -> usize {
    let mut i = start;
    let mut in_quote = false;
    let mut in_angle = false;
    while i < v.len() {
        match v[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => in_angle = true,
            b'>' if !in_quote => in_angle = false,
            b',' if !in_quote && !in_angle => break,
            _ => {}
        }
        i += 1;
    }
    i.min(v.len())
}

/// `quoted_element_end` for a value without `"`, by memchr: a `<` skips to its `>`.
fn unquoted_element_end(v: &[u8], start: usize) -> usize {
    let mut i = start;
    while let Some(p) = memchr::memchr2(b',', b'<', &v[i..]) {
        let at = i + p;
        if v[at] == b',' {
            return at;
        }
        match memchr::memchr(b'>', &v[at..]) {
            Some(close) => i = at + close + 1,
            None => return v.len(),
        }
    }
    v.len()
}

/// Iterates `;name[=value]` parameters. Yields (name, value, start, end) where start..end covers
/// the parameter from its name to the end of its value, relative to the iterated slice.
pub struct ParamIter<'a> {
    s: &'a [u8],
    pos: usize,
    /// `s` may hold a quoted string, in which a `;` does not end a parameter.
    quoted: bool,
}

impl<'a> ParamIter<'a> {
    /// `s` starts at (or before) the first `;`.
    pub fn new(s: &'a [u8]) -> Self {
        ParamIter { s, pos: 0, quoted: true }
    }

    /// Like `new` for a run the caller knows holds no `"`: each parameter ends at the next `;`.
    pub(crate) fn unquoted(s: &'a [u8]) -> Self {
        ParamIter { s, pos: 0, quoted: false }
    }
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>, usize, usize);
    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        let semi = memchr::memchr(b';', &s[self.pos.min(s.len())..])? + self.pos;
        let mut start = semi + 1;
        while start < s.len() && is_lws(s[start]) {
            start += 1;
        }
        let end = if self.quoted {
            quoted_param_end(s, start)
        } else {
            memchr::memchr(b';', &s[start..]).map_or(s.len(), |p| start + p)
        };
        self.pos = end;
        let item = &s[start..end];
        let (name, value) = match memchr::memchr(b'=', item) {
            Some(eq) => (trim(&item[..eq]), Some(trim(&item[eq + 1..]))),
            None => (trim(item), None),
        };
        let (_, b) = trim_bounds(item);
        Some((name, value, start, start + b))
    }
}

/// Where the parameter from `start` ends: at the next `;` outside a quoted string.
fn quoted_param_end(s: &[u8], start: usize) -> usize {
    let mut i = start;
    let mut in_quote = false;
    while i < s.len() {
        match s[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b';' if !in_quote => break,
            _ => {}
        }
        i += 1;
    }
    i.min(s.len())
}

/// Value of parameter `name` (case-insensitive) in a `;a=b;c` run. `Some(None)` for a bare flag.
pub fn param_value<'a>(params: &'a [u8], name: &[u8]) -> Option<Option<&'a [u8]>> {
    ParamIter::new(params).find(|(n, ..)| n.eq_ignore_ascii_case(name)).map(|(_, v, ..)| v)
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 reference. The host keeps its brackets.
/// RFC 3261's COLON is `SWS ":" SWS`, so white space may stand on either side of the colon.
pub fn host_port(s: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let s = trim(s);
    if s.is_empty() {
        return None;
    }
    let (host, rest) = if s[0] == b'[' {
        let close = memchr::memchr(b']', s)?;
        (&s[..=close], &s[close + 1..])
    } else {
        match memchr::memchr(b':', s) {
            Some(c) => (trim(&s[..c]), &s[c..]),
            None => (s, &s[s.len()..]),
        }
    };
    let rest = trim(rest);
    if host.is_empty() || host.iter().any(|&b| is_lws(b)) {
        return None;
    }
    if rest.is_empty() {
        return Some((host, None));
    }
    if rest[0] != b':' {
        return None;
    }
    Some((host, Some(parse_u16(trim(&rest[1..]))?)))
}

pub(crate) fn parse_u16(s: &[u8]) -> Option<u16> {
    let v = parse_u32(s)?;
    u16::try_from(v).ok()
}

pub(crate) fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    u32::try_from(v).ok()
}

/// The URI of a name-addr or addr-spec (`"Name" <sip:x>;tag=1` or `sip:x;tag=1`), and the offset
/// where the header parameters begin (after `>` or after the URI).
pub(crate) fn name_addr_uri(v: &[u8]) -> Option<(&[u8], usize)> {
    // A display name may be a quoted string containing '<'; skip quotes before looking for '<'.
    let mut i = 0;
    let mut in_quote = false;
    while i < v.len() {
        match v[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => {
                let close = memchr::memchr(b'>', &v[i..])? + i;
                return Some((trim(&v[i + 1..close]), close + 1));
            }
            _ => {}
        }
        i += 1;
    }
    if in_quote {
        return None;
    }
    // addr-spec: the URI ends at the first ';' (those parameters belong to the header, §20.10).
    let end = memchr::memchr(b';', v).unwrap_or(v.len());
    let uri = trim(&v[..end]);
    if uri.is_empty() {
        return None;
    }
    Some((uri, end))
}

/// `user@host:port` of a SIP or SIPS URI: the scheme and any `;params` or `?headers` cut off.
fn uri_authority(uri: &[u8]) -> Option<&[u8]> {
    let rest = if uri.len() >= 4 && uri[..4].eq_ignore_ascii_case(b"sip:") {
        &uri[4..]
    } else if uri.len() >= 5 && uri[..5].eq_ignore_ascii_case(b"sips:") {
        &uri[5..]
    } else {
        return None;
    };
    let end = rest.iter().position(|&b| b == b';' || b == b'?').unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Host and port of a SIP URI (`sip:user@host:port;params?headers`), borrowing from it.
pub fn uri_host_port(uri: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let hp = uri_authority(uri)?;
    let hp = match memchr::memrchr(b'@', hp) {
        Some(at) => &hp[at + 1..],
        None => hp,
    };
    host_port(hp)
}

/// The user part of a SIP URI, if any.
pub fn uri_user(uri: &[u8]) -> Option<&[u8]> {
    let authority = uri_authority(uri)?;
    let at = memchr::memrchr(b'@', authority)?;
    let user = &authority[..at];
    // user:password
    Some(match memchr::memchr(b':', user) {
        Some(c) => &user[..c],
        None => user,
    })
}

/// The URI parameters (`;a=b;lr`) of a SIP URI, starting at the first `;` after the host.
pub fn uri_params(uri: &[u8]) -> &[u8] {
    let start = memchr::memrchr(b'@', uri).unwrap_or(0);
    match memchr::memchr(b';', &uri[start..]) {
        Some(p) => {
            let s = &uri[start + p..];
            let end = memchr::memchr(b'?', s).unwrap_or(s.len());
            &s[..end]
        }
        None => &[],
    }
}
