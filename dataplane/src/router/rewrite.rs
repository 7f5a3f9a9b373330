//! Writing messages out: a forwarded request (fsroute's Via and Record-Route on top, Max-Forwards
//! decremented, its own Route popped, received/rport on the sender's Via), a forwarded response
//! (fsroute's Via removed), and locally generated replies. Every path is one pass over the
//! datagram into a reused per-shard buffer: a short sorted list of splices, then copies between them.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use crate::sip::{header_name, unbracket, HeaderIter, HeaderName, Message, Span, Via};
use crate::table::ProxySettings;

/// The prefix of every branch fsroute writes: RFC 3261's magic cookie, then a marker that lets a
/// response be recognised as ours before anything else is looked at.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bK-fsr";

/// The highest Max-Forwards fsroute passes on (+1): a forwarded request leaves with at most 254.
pub const MAX_FORWARDS_CEILING: u32 = 255;

/// What replaces the `cut` bytes at `at`.
#[derive(Clone, Copy, Debug)]
enum Insert {
    Nothing,
    /// fsroute's own header lines, written just after the start line.
    TopLines { branch: u64, mac: u64, record_route: Option<SocketAddr>, max_forwards: Option<u32> },
    /// `;received=<ip>`
    Received(IpAddr),
    /// `rport=<port>`
    Rport(u16),
    /// A decremented Max-Forwards value.
    Number(u32),
}

#[derive(Clone, Copy, Debug)]
struct Edit {
    at: usize,
    cut: usize,
    insert: Insert,
}

/// Up to eight splices, kept on the stack.
struct Edits {
    items: [Edit; 8],
    len: usize,
}

impl Edits {
    fn new() -> Self {
        Edits { items: [Edit { at: 0, cut: 0, insert: Insert::Nothing }; 8], len: 0 }
    }
    fn push(&mut self, at: usize, cut: usize, insert: Insert) {
        debug_assert!(self.len < self.items.len());
        if self.len < self.items.len() {
            self.items[self.len] = Edit { at, cut, insert };
            self.len += 1;
        }
    }
    fn sorted(&mut self) -> &[Edit] {
        let items = &mut self.items[..self.len];
        // Stable, so two inserts at one offset keep the order they were pushed in.
        items.sort_by_key(|e| e.at);
        items
    }
}

/// Copies `buf[from..to]` into `out`, applying the edits that fall inside it.
fn splice(buf: &[u8], from: usize, to: usize, edits: &[Edit], eol: &[u8], adv: (&str, u16), out: &mut Vec<u8>) {
    let mut cursor = from;
    for e in edits {
        if e.at < cursor || e.at > to {
            continue;
        }
        out.extend_from_slice(&buf[cursor..e.at]);
        render(e.insert, eol, adv, out);
        cursor = (e.at + e.cut).min(to);
    }
    out.extend_from_slice(&buf[cursor..to]);
}

fn render(insert: Insert, eol: &[u8], adv: (&str, u16), out: &mut Vec<u8>) {
    match insert {
        Insert::Nothing => {}
        Insert::TopLines { branch, mac, record_route, max_forwards } => {
            push_own_via(out, adv, branch, mac, eol);
            if let Some(dest) = record_route {
                out.extend_from_slice(b"Record-Route: <sip:");
                push_host_port(out, adv.0, adv.1);
                out.extend_from_slice(b";lr;fsd=");
                push_token(out, dest);
                out.push(b'>');
                out.extend_from_slice(eol);
            }
            if let Some(mf) = max_forwards {
                out.extend_from_slice(b"Max-Forwards: ");
                push_u32(out, mf);
                out.extend_from_slice(eol);
            }
        }
        Insert::Received(ip) => {
            out.extend_from_slice(b";received=");
            push_ip(out, ip);
        }
        Insert::Rport(p) => {
            out.extend_from_slice(b"rport=");
            push_u32(out, u32::from(p));
        }
        Insert::Number(n) => push_u32(out, n),
    }
}

/// `n` in decimal, written into `buf` (20 digits hold any u64).
pub fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

pub fn push_u32(out: &mut Vec<u8>, n: u32) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(format_u64(u64::from(n), &mut digits));
}

pub(crate) fn push_hex16(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            for (i, b) in o.iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u32(out, u32::from(*b));
            }
        }
        // Rare on a carrier edge; the formatter does not allocate when writing into a Vec.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// fsroute's own Via line: on a request it forwards, and on the CANCEL it sends for a failover
/// attempt (which must repeat that request's branch, §9.1).
pub(super) fn push_own_via(out: &mut Vec<u8>, adv: (&str, u16), branch: u64, mac: u64, eol: &[u8]) {
    out.extend_from_slice(b"Via: SIP/2.0/UDP ");
    push_host_port(out, adv.0, adv.1);
    out.extend_from_slice(b";branch=");
    push_branch(out, branch, mac);
    out.extend_from_slice(eol);
}

/// `host:port`, with the host already in URI form (IPv6 bracketed).
fn push_host_port(out: &mut Vec<u8>, host: &str, port: u16) {
    out.extend_from_slice(host.as_bytes());
    out.push(b':');
    push_u32(out, u32::from(port));
}

/// The Record-Route token naming the chosen destination: `127.0.0.1~5071` or `[::1]~5071`.
fn push_token(out: &mut Vec<u8>, dest: SocketAddr) {
    match dest.ip() {
        IpAddr::V4(_) => push_ip(out, dest.ip()),
        IpAddr::V6(_) => {
            out.push(b'[');
            push_ip(out, dest.ip());
            out.push(b']');
        }
    }
    out.push(b'~');
    push_u32(out, u32::from(dest.port()));
}

/// Reads back a token written by `push_token`.
pub fn parse_token(token: &[u8]) -> Option<SocketAddr> {
    let tilde = memchr::memrchr(b'~', token)?;
    let ip = host_ip(&token[..tilde])?;
    let port: u16 = std::str::from_utf8(&token[tilde + 1..]).ok()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// One of fsroute's branches: the prefix, the transaction key, and the MAC binding the key to the
/// address responses go back to (`BranchKey::mac`), each as 16 hex digits.
pub fn push_branch(out: &mut Vec<u8>, key: u64, mac: u64) {
    out.extend_from_slice(BRANCH_PREFIX);
    push_hex16(out, key);
    push_hex16(out, mac);
}

/// The transaction key and the MAC carried in one of fsroute's branches.
pub fn parse_branch(branch: &[u8]) -> Option<(u64, u64)> {
    let hex = branch.strip_prefix(BRANCH_PREFIX)?;
    if hex.len() != 32 {
        return None;
    }
    Some((parse_hex16(&hex[..16])?, parse_hex16(&hex[16..])?))
}

fn parse_hex16(hex: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in hex {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// An IP literal host (`127.0.0.1`, `[::1]`), or None for a name.
pub fn host_ip(host: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(unbracket(host)).ok()?.parse().ok()
}

/// RFC 3261 §18.2.1 and RFC 3581 on the received top Via: fill `rport` (and then always add
/// `received`), otherwise add `received` when the sent-by host is not the source address. A
/// `received` or an `rport` value the sender wrote itself is overwritten: the response goes back
/// to where the request came from ([`reply_address`]), never where the request claims.
fn via_edits(via: &Via<'_>, src: SocketAddr, edits: &mut Edits) {
    let host_is_src = host_ip(via.host) == Some(src.ip());
    let fill_rport = via.rport.is_some();
    if fill_rport {
        if let Some(rs) = via.rport_span {
            edits.push(rs.start as usize, rs.len(), Insert::Rport(src.port()));
        }
    }
    if fill_rport || !host_is_src || via.received_span.is_some() {
        match via.received_span {
            Some(r) => edits.push(r.start as usize, r.len(), Insert::Received(src.ip())),
            None => edits.push(via.span.end as usize, 0, Insert::Received(src.ip())),
        }
    }
}

fn eol(m: &Message<'_>) -> &'static [u8] {
    if m.crlf {
        b"\r\n"
    } else {
        b"\n"
    }
}

/// What `forward_request` writes besides the copy.
pub struct RequestRewrite {
    pub branch: u64,
    /// `BranchKey::mac` of `branch` and the request's reply address.
    pub mac: u64,
    /// Destination named in a new Record-Route, if one is added.
    pub record_route: Option<SocketAddr>,
    /// Remove the top Route (it names fsroute).
    pub pop_route: bool,
    pub default_max_forwards: u32,
}

pub fn forward_request(m: &Message<'_>, src: SocketAddr, px: &ProxySettings, rw: &RequestRewrite, out: &mut Vec<u8>) {
    let mut edits = Edits::new();
    let max_forwards = request_edits(m, src, rw.pop_route, rw.default_max_forwards, &mut edits);
    edits.push(
        m.headers_start as usize,
        0,
        Insert::TopLines { branch: rw.branch, mac: rw.mac, record_route: rw.record_route, max_forwards },
    );
    out.clear();
    splice(m.raw, 0, m.framed_len(), edits.sorted(), eol(m), advertised(px), out);
}

/// Everything [`forward_request`] changes in a request except fsroute's own top lines; returns the
/// Max-Forwards line to add among them when the request has none.
fn request_edits(m: &Message<'_>, src: SocketAddr, pop_route: bool, default_max_forwards: u32, edits: &mut Edits) -> Option<u32> {
    let max_forwards = match m.max_forwards {
        // RFC 3261 allows up to 2^32-1; anything above 255 only serves a loop, so it is clamped.
        Some(mf) => {
            let value = mf.value.min(MAX_FORWARDS_CEILING).saturating_sub(1);
            edits.push(mf.digits.start as usize, mf.digits.len(), Insert::Number(value));
            None
        }
        None => Some(default_max_forwards),
    };
    if let Some(via) = &m.top_via {
        via_edits(via, src, edits);
    }
    if pop_route {
        if let Some(r) = &m.route {
            match r.next_on_line {
                Some(next) => edits.push(r.value.start as usize, next as usize - r.value.start as usize, Insert::Nothing),
                None => edits.push(r.line.start as usize, r.line.len(), Insert::Nothing),
            }
        }
    }
    max_forwards
}

/// A request as [`forward_request`] writes it, less fsroute's top lines, which go at `top_at`:
/// what a failover keeps of its INVITE, so each attempt is one copy with a new branch and
/// Record-Route instead of another scan.
pub struct Template {
    pub bytes: Vec<u8>,
    top_at: u32,
    /// The Max-Forwards line fsroute adds (the request had none).
    max_forwards: Option<u32>,
    crlf: bool,
}

pub fn forward_template(m: &Message<'_>, src: SocketAddr, pop_route: bool, default_max_forwards: u32, mut bytes: Vec<u8>) -> Template {
    let mut edits = Edits::new();
    let max_forwards = request_edits(m, src, pop_route, default_max_forwards, &mut edits);
    bytes.clear();
    // Room for the received/rport values, so the copy grows once; the copy is kept for the whole
    // call, so it keeps only what it holds.
    bytes.reserve_exact(m.framed_len() + 64);
    splice(m.raw, 0, m.framed_len(), edits.sorted(), eol(m), ("", 0), &mut bytes);
    bytes.shrink_to_fit();
    // Nothing before the first header line is ever edited: the top lines go where they would in
    // `forward_request`, so both write the same bytes.
    Template { bytes, top_at: m.headers_start, max_forwards, crlf: m.crlf }
}

impl Template {
    /// The request for one attempt: the stored copy with fsroute's Via (and Record-Route) on top.
    pub fn write(&self, px: &ProxySettings, branch: u64, mac: u64, record_route: Option<SocketAddr>, out: &mut Vec<u8>) {
        let top_at = self.top_at as usize;
        out.clear();
        out.extend_from_slice(&self.bytes[..top_at]);
        let top = Insert::TopLines { branch, mac, record_route, max_forwards: self.max_forwards };
        render(top, self.eol(), advertised(px), out);
        out.extend_from_slice(&self.bytes[top_at..]);
    }

    /// The line break the request uses, for the lines fsroute writes into it.
    pub fn eol(&self) -> &'static [u8] {
        if self.crlf {
            b"\r\n"
        } else {
            b"\n"
        }
    }
}

fn advertised(px: &ProxySettings) -> (&str, u16) {
    (px.advertise_host.as_str(), px.advertise_port)
}

/// Removes fsroute's top Via: its whole line, or just the value when other values share the line.
pub fn forward_response(m: &Message<'_>, px: &ProxySettings, out: &mut Vec<u8>) {
    let buf = m.raw;
    let mut edits = Edits::new();
    if let Some(top) = &m.top_via {
        let (s, e) = (top.span.start as usize, top.span.end as usize);
        let mut i = e;
        while i < buf.len() && matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        if buf.get(i) == Some(&b',') {
            // "Via: ours, theirs": cut up to the next value.
            let next = m.second_via.map(|v| v.span.start as usize).unwrap_or(i + 1);
            edits.push(s, next - s, Insert::Nothing);
        } else {
            let line = line_around(buf, s, e);
            edits.push(line.start as usize, line.len(), Insert::Nothing);
        }
    }
    out.clear();
    splice(buf, 0, m.framed_len(), edits.sorted(), eol(m), advertised(px), out);
}

/// The physical header line(s) holding `s..e`, including the line break (and folded continuations).
fn line_around(buf: &[u8], s: usize, e: usize) -> Span {
    let mut start = s;
    loop {
        match memchr::memrchr(b'\n', &buf[..start]) {
            // A continuation line: keep walking back to the header's first line.
            Some(nl) if matches!(buf.get(nl + 1), Some(b' ') | Some(b'\t')) => start = nl,
            Some(nl) => {
                start = nl + 1;
                break;
            }
            None => {
                start = 0;
                break;
            }
        }
    }
    let mut end = e;
    loop {
        match memchr::memchr(b'\n', &buf[end..]) {
            Some(off) if matches!(buf.get(end + off + 1), Some(b' ') | Some(b'\t')) => end = end + off + 1,
            Some(off) => {
                end = end + off + 1;
                break;
            }
            None => {
                end = buf.len();
                break;
            }
        }
    }
    Span::new(start, end)
}

/// A reply fsroute sends itself (§8.2.6): the request's Vias (received/rport on the top one), From,
/// To (with a tag when the request had none and the reply is not 100), Call-ID and CSeq.
pub fn local_reply(
    m: &Message<'_>,
    src: SocketAddr,
    code: u16,
    reason: &str,
    to_tag: u64,
    extra: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    let buf = m.raw;
    let eol = eol(m);
    reply_status(code, reason, eol, out);
    let mut edits = Edits::new();
    if let Some(via) = &m.top_via {
        via_edits(via, src, &mut edits);
    }
    let add_tag = code != 100 && m.to_tag().is_none();
    let edits = edits.sorted();
    for h in HeaderIter::new(buf, m.headers_start as usize).filter_map(Result::ok) {
        let name = header_name(h.name.get(buf));
        if !name.is_reply_copied() {
            continue;
        }
        let (ls, le) = (h.line.start as usize, h.line.end as usize);
        if name == HeaderName::Via {
            splice(buf, ls, le, edits, eol, ("", 0), out);
        } else if add_tag && name == HeaderName::To {
            push_tagged(&buf[ls..le], h.value.end as usize - ls, to_tag, out);
        } else {
            out.extend_from_slice(&buf[ls..le]);
        }
    }
    reply_tail(extra, eol, out);
}

/// A reply's status line (the buffer is cleared first).
pub(super) fn reply_status(code: u16, reason: &str, eol: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"SIP/2.0 ");
    push_u32(out, u32::from(code));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(eol);
}

/// A To header line with fsroute's tag added after its value (`value_end` bytes into `line`).
pub(super) fn push_tagged(line: &[u8], value_end: usize, to_tag: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&line[..value_end]);
    out.extend_from_slice(b";tag=fsr");
    push_hex16(out, to_tag);
    out.extend_from_slice(&line[value_end..]);
}

/// What ends every reply of fsroute's own: the extra headers, Server, an empty body.
pub(super) fn reply_tail(extra: &[(&str, &str)], eol: &[u8], out: &mut Vec<u8>) {
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(b"Server: fsroute");
    out.extend_from_slice(eol);
    out.extend_from_slice(b"Content-Length: 0");
    out.extend_from_slice(eol);
    out.extend_from_slice(eol);
}

/// Where a reply to a request goes (§18.2.2, RFC 3581): the source address when `rport` was asked
/// for, else the source IP at the Via's port.
pub fn reply_address(m: &Message<'_>, src: SocketAddr) -> SocketAddr {
    match &m.top_via {
        Some(v) if v.rport.is_some() => src,
        Some(v) => SocketAddr::new(src.ip(), v.port.unwrap_or(5060)),
        None => src,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_for_v4_and_v6() {
        for a in ["127.0.0.1:5071", "[::1]:5080"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_token(&mut out, addr);
            assert_eq!(parse_token(&out), Some(addr));
        }
        assert_eq!(parse_token(b"nonsense"), None);
        assert_eq!(parse_token(b"10.0.0.1~99999"), None);
    }

    #[test]
    fn branches_round_trip() {
        let mut out = Vec::new();
        push_branch(&mut out, 0xdead_beef_0123_4567, 42);
        assert_eq!(parse_branch(&out), Some((0xdead_beef_0123_4567, 42)));
        assert_eq!(parse_branch(b"z9hG4bK-fsr0123"), None);
        assert_eq!(parse_branch(b"z9hG4bKother"), None);
    }
}
