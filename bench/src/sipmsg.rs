//! Just enough SIP for a load generator and an auto-answering UAS: find the start line and
//! the handful of headers a UA needs (Call-ID, CSeq, To, Contact, Record-Route, Via, and our
//! `X-Seq` stamp), and build a response by copying the request's Via/From/To/Call-ID/CSeq
//! lines (RFC 3261 §8.2.6.2). It is not fsroute's scanner on purpose: the harness must not
//! share the code it measures, or a scanner bug would hide itself.

use std::io::Write;

#[derive(Default, Debug)]
pub struct Msg<'a> {
    /// Status code of a response; 0 for a request.
    pub status: u16,
    /// Request method; empty for a response.
    pub method: &'a [u8],
    pub call_id: &'a [u8],
    pub cseq_method: &'a [u8],
    pub to: &'a [u8],
    pub from: &'a [u8],
    /// URI inside the first Contact's angle brackets (or the bare value).
    pub contact: &'a [u8],
    /// Record-Route header values in message order (up to 4 lines; the harness never sees more).
    pub rr: [&'a [u8]; 4],
    pub rr_count: usize,
    pub x_seq: Option<u64>,
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(s.len());
    let b = s.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(a, |p| p + 1);
    &s[a..b.max(a)]
}

fn name_is(name: &[u8], long: &[u8], compact: Option<u8>) -> bool {
    name.eq_ignore_ascii_case(long) || (name.len() == 1 && compact.is_some_and(|c| name[0].eq_ignore_ascii_case(&c)))
}

/// Iterates header lines (name, value, whole line) until the blank line. Folded lines are
/// not joined: none of the peers in this harness fold.
pub fn headers(buf: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    let mut pos = memchr_nl(buf, 0).map_or(buf.len(), |p| p + 1);
    std::iter::from_fn(move || {
        if pos >= buf.len() {
            return None;
        }
        let end = memchr_nl(buf, pos).unwrap_or(buf.len());
        let mut line = &buf[pos..end];
        pos = end + 1;
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.is_empty() {
            pos = buf.len();
            return None;
        }
        let colon = line.iter().position(|&c| c == b':')?;
        Some((trim(&line[..colon]), trim(&line[colon + 1..]), line))
    })
}

fn memchr_nl(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..].iter().position(|&c| c == b'\n').map(|p| p + from)
}

pub fn parse(buf: &[u8]) -> Option<Msg<'_>> {
    let first_end = memchr_nl(buf, 0)?;
    let first = trim(&buf[..first_end]);
    let mut m = Msg::default();
    if first.starts_with(b"SIP/2.0 ") {
        let code = first.get(8..11)?;
        m.status = std::str::from_utf8(code).ok()?.parse().ok()?;
    } else {
        let sp = first.iter().position(|&c| c == b' ')?;
        m.method = &first[..sp];
    }
    for (name, value, _) in headers(buf) {
        if name_is(name, b"Call-ID", Some(b'i')) {
            m.call_id = value;
        } else if name.eq_ignore_ascii_case(b"CSeq") {
            m.cseq_method = trim(value.iter().position(|&c| c == b' ').map_or(value, |p| &value[p + 1..]));
        } else if name_is(name, b"To", Some(b't')) {
            m.to = value;
        } else if name_is(name, b"From", Some(b'f')) {
            m.from = value;
        } else if name_is(name, b"Contact", Some(b'm')) && m.contact.is_empty() {
            m.contact = angle_uri(value);
        } else if name.eq_ignore_ascii_case(b"Record-Route") && m.rr_count < 4 {
            m.rr[m.rr_count] = value;
            m.rr_count += 1;
        } else if name.eq_ignore_ascii_case(b"X-Seq") {
            m.x_seq = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
    }
    if m.call_id.is_empty() {
        return None;
    }
    Some(m)
}

/// The URI inside `<...>`, or the value up to the first `;` when there are no brackets.
pub fn angle_uri(v: &[u8]) -> &[u8] {
    if let Some(a) = v.iter().position(|&c| c == b'<') {
        if let Some(b) = v[a..].iter().position(|&c| c == b'>') {
            return &v[a + 1..a + b];
        }
    }
    trim(v.iter().position(|&c| c == b';').map_or(v, |p| &v[..p]))
}

/// `host:port` of a `sip:` URI as a socket address (IP literals only, as everywhere here).
pub fn uri_addr(uri: &[u8]) -> Option<std::net::SocketAddr> {
    let s = std::str::from_utf8(uri).ok()?;
    let s = s.strip_prefix("sip:").unwrap_or(s);
    let s = s.rsplit_once('@').map_or(s, |(_, h)| h);
    let s = s.split(';').next()?;
    let s = s.split('?').next()?;
    if s.contains(':') {
        s.parse().ok()
    } else {
        format!("{s}:5060").parse().ok()
    }
}

/// Whether the To value already carries a tag parameter.
pub fn has_tag(to: &[u8]) -> bool {
    to.windows(4).any(|w| w.eq_ignore_ascii_case(b"tag="))
}

/// The value of the `tag` parameter of a From/To value.
pub fn tag(v: &[u8]) -> Option<&[u8]> {
    let p = v.windows(4).position(|w| w.eq_ignore_ascii_case(b"tag="))?;
    let rest = &v[p + 4..];
    let end = rest.iter().position(|&c| c == b';' || c == b',' || c.is_ascii_whitespace()).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Writes a response to `req`: copies Via, From, To (adding `to_tag` if it has none), Call-ID
/// and CSeq, plus Record-Route when `copy_rr` (18x/2xx to INVITE, §12.1.1), then `extra`
/// header lines (each ending in CRLF) and the body.
#[allow(clippy::too_many_arguments)]
pub fn write_response(
    out: &mut Vec<u8>,
    req: &[u8],
    status: u16,
    reason: &str,
    to_tag: Option<&[u8]>,
    copy_rr: bool,
    extra: &[u8],
    body: Option<(&str, &[u8])>,
) {
    let _ = write!(out, "SIP/2.0 {status} {reason}\r\n");
    for (name, value, line) in headers(req) {
        if name_is(name, b"Via", Some(b'v'))
            || name_is(name, b"From", Some(b'f'))
            || name_is(name, b"Call-ID", Some(b'i'))
            || name.eq_ignore_ascii_case(b"CSeq")
            || (copy_rr && name.eq_ignore_ascii_case(b"Record-Route"))
        {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        } else if name_is(name, b"To", Some(b't')) {
            out.extend_from_slice(line);
            if let (false, Some(t)) = (has_tag(value), to_tag) {
                out.extend_from_slice(b";tag=");
                out.extend_from_slice(t);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(extra);
    match body {
        Some((ctype, b)) => {
            let _ = write!(out, "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n", b.len());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &[u8] = b"INVITE sip:x@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa\r\nv: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKb\r\nRecord-Route: <sip:127.0.0.1:5060;lr;fsd=x>\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\ni: abc@h\r\nCSeq: 1 INVITE\r\nm: <sip:a@127.0.0.1:5090>\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn parses_the_headers_a_ua_needs() {
        let m = parse(INV).unwrap();
        assert_eq!(m.method, b"INVITE");
        assert_eq!(m.call_id, b"abc@h");
        assert_eq!(m.cseq_method, b"INVITE");
        assert_eq!(m.contact, b"sip:a@127.0.0.1:5090");
        assert_eq!(m.rr_count, 1);
        assert_eq!(uri_addr(m.contact), Some("127.0.0.1:5090".parse().unwrap()));
    }

    #[test]
    fn response_copies_both_vias_and_adds_a_tag() {
        let mut out = Vec::new();
        write_response(&mut out, INV, 180, "Ringing", Some(b"t9"), true, b"X-Seq: 7\r\n", None);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.starts_with("SIP/2.0 180 Ringing\r\n"));
        assert_eq!(s.matches("Via").count() + s.matches("\nv:").count(), 2);
        assert!(s.contains("To: <sip:x@h>;tag=t9\r\n"));
        assert!(s.contains("Record-Route"));
        let r = parse(&out).unwrap();
        assert_eq!((r.status, r.x_seq, r.cseq_method), (180, Some(7), &b"INVITE"[..]));
        assert_eq!(tag(r.to), Some(&b"t9"[..]));
    }
}
