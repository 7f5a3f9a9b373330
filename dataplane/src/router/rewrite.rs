//! Writing messages out: a forwarded request (fsroute's Via and Record-Route on top, Max-Forwards
//! decremented, its own Route popped, received/rport on the sender's Via), a forwarded response
//! (fsroute's Via removed), and locally generated replies. Every path is one pass over the
//! datagram into a reused per-shard buffer: a short sorted list of splices, then copies between them.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use crate::conn::{ConnId, Transport};
use crate::sip::{header_name, unbracket, HeaderIter, HeaderName, Message, Span, Via};
use crate::table::OwnLines;

/// The prefix of every branch fsroute writes: RFC 3261's magic cookie, then a marker that lets a
/// response be recognised as ours before anything else is looked at.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bK-fsr";

/// The highest Max-Forwards fsroute passes on (+1): a forwarded request leaves with at most 254.
pub const MAX_FORWARDS_CEILING: u32 = 255;

/// What replaces the `cut` bytes at `at`.
#[derive(Clone, Copy, Debug)]
enum Insert {
    Nothing,
    /// fsroute's own header lines ([`TopLines`], kept outside the edit list so every edit stays
    /// small), written just after the start line.
    TopLines,
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

/// Up to sixteen splices, kept on the stack.
struct Edits {
    items: [Edit; 16],
    len: usize,
}

impl Edits {
    fn new() -> Self {
        Edits { items: [Edit { at: 0, cut: 0, insert: Insert::Nothing }; 16], len: 0 }
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
        // At one offset an insert goes before a cut (fsroute's top lines before a popped Route
        // that was the first header line); stable, so two inserts keep the order they were
        // pushed in.
        items.sort_by_key(|e| (e.at, e.cut));
        items
    }
}

/// Copies `buf[from..to]` into `out`, applying the edits that fall inside it.
fn splice(buf: &[u8], from: usize, to: usize, edits: &[Edit], eol: &[u8], top: Option<&TopLines<'_>>, out: &mut Vec<u8>) {
    let mut cursor = from;
    for e in edits {
        if e.at < cursor || e.at > to {
            continue;
        }
        out.extend_from_slice(&buf[cursor..e.at]);
        render(e.insert, eol, top, out);
        cursor = (e.at + e.cut).min(to);
    }
    out.extend_from_slice(&buf[cursor..to]);
}

/// What fsroute writes on top of a request it sends: its Via, and Record-Route, Max-Forwards and
/// X-AUTH-IP/-PORT lines when they are due.
struct TopLines<'a> {
    own: &'a OwnLines,
    branch: u64,
    mac: u64,
    conn: Option<ConnId>,
    transport: Transport,
    record_route: Option<SocketAddr>,
    max_forwards: Option<u32>,
    x_auth: Option<SocketAddr>,
}

impl TopLines<'_> {
    fn write(&self, eol: &[u8], out: &mut Vec<u8>) {
        let own = self.own;
        push_own_via(out, own, self.branch, self.mac, self.conn, self.transport, eol);
        if let Some(dest) = self.record_route {
            // The callee's side first: its route set starts with it (§12.1.1). When the call
            // changes transport, a second entry names the caller's side, whose route set is the
            // list reversed (RFC 3261 §16.6 step 4, RFC 5658), so each side comes back on its own.
            let arrived = self.conn.map_or(Transport::Udp, ConnId::transport);
            for side in [self.transport, arrived].into_iter().take(if arrived == self.transport { 1 } else { 2 }) {
                out.extend_from_slice(own.record_route(side));
                push_token(out, dest);
                out.push(b'>');
                out.extend_from_slice(eol);
            }
        }
        if let Some(mf) = self.max_forwards {
            out.extend_from_slice(b"Max-Forwards: ");
            push_u32(out, mf);
            out.extend_from_slice(eol);
        }
        if let Some(sender) = self.x_auth {
            // FreeSWITCH reads the address bare, an IPv6 one without brackets.
            out.extend_from_slice(b"X-AUTH-IP: ");
            push_ip(out, sender.ip());
            out.extend_from_slice(eol);
            out.extend_from_slice(b"X-AUTH-PORT: ");
            push_u32(out, u32::from(sender.port()));
            out.extend_from_slice(eol);
        }
    }
}

fn render(insert: Insert, eol: &[u8], top: Option<&TopLines<'_>>, out: &mut Vec<u8>) {
    match insert {
        Insert::Nothing => {}
        Insert::TopLines => {
            if let Some(top) = top {
                top.write(eol, out);
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

/// `00` to `99`: decimal formatting takes two digits per lookup and division.
const DECIMAL_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// `00` to `ff`: a byte's two hex digits in one lookup.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// Each IPv4 octet in decimal, padded to three bytes, and its length.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut t = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i >= 100 {
            ([b'0' + (i / 100) as u8, b'0' + (i / 10 % 10) as u8, b'0' + (i % 10) as u8], 3)
        } else if i >= 10 {
            ([b'0' + (i / 10) as u8, b'0' + (i % 10) as u8, 0], 2)
        } else {
            ([b'0' + i as u8, 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// `n` in decimal, written into `buf` (20 digits hold any u64).
pub fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    while n >= 100 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DECIMAL_PAIRS[(n % 100) as usize]);
        n /= 100;
    }
    if n >= 10 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DECIMAL_PAIRS[n as usize]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    &buf[i..]
}

pub fn push_u32(out: &mut Vec<u8>, n: u32) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(format_u64(u64::from(n), &mut digits));
}

/// `v` as 16 lower-case hex digits.
pub(crate) fn push_hex16(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 16];
    for (pair, byte) in digits.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[byte as usize]);
    }
    out.extend_from_slice(&digits);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Three bytes copied per octet, then the length moved on by its digits: the
            // fourth octet starts at most at 12, so the buffer holds every copy.
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                let (digits, len) = OCTETS[o as usize];
                text[n..n + 3].copy_from_slice(&digits);
                n += len as usize;
            }
            out.extend_from_slice(&text[..n]);
        }
        // Rare on a carrier edge; the formatter does not allocate when writing into a Vec.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// fsroute's own Via line: on a request it forwards, and on the CANCEL it sends for a failover
/// attempt (which must repeat that request's branch, §9.1).
pub(super) fn push_own_via(out: &mut Vec<u8>, own: &OwnLines, branch: u64, mac: u64, conn: Option<ConnId>, transport: Transport, eol: &[u8]) {
    out.extend_from_slice(own.via(transport));
    push_branch(out, branch, mac, conn);
    out.extend_from_slice(eol);
}

/// RFC 3261 §18.1.1: a request larger than `limit` bytes (1300 unless the path MTU is known)
/// must not go over UDP; 0 turns the rule off. Responses follow their Via (§18.2.2) whatever
/// their size.
pub fn too_large_for_udp(buf: &[u8], limit: usize) -> bool {
    limit != 0 && buf.len() > limit && !buf.starts_with(b"SIP/2.0 ")
}

/// Turns fsroute's own Via in a request it wrote for a UDP destination (the first header line:
/// `forward_request` puts it there) into `SIP/2.0/TCP`, in place and of the same length, so no
/// span or Content-Length moves; false, and nothing written, when the line is not that Via.
/// [`via_back_to_udp`] undoes it when the destination takes no connection.
pub fn own_via_to_tcp(buf: &mut [u8]) -> bool {
    set_own_via_transport(buf, Transport::Udp, Transport::Tcp)
}

/// Writes fsroute's Via back to `SIP/2.0/UDP` (see [`own_via_to_tcp`]).
pub fn via_back_to_udp(buf: &mut [u8]) -> bool {
    set_own_via_transport(buf, Transport::Tcp, Transport::Udp)
}

fn set_own_via_transport(buf: &mut [u8], from: Transport, to: Transport) -> bool {
    const VIA: &[u8] = b"Via: SIP/2.0/";
    let Some(eol) = memchr::memchr(b'\n', buf) else { return false };
    let (from, to) = (from.via_name().as_bytes(), to.via_name().as_bytes());
    let name = eol + 1 + VIA.len();
    match buf.get(eol + 1..name + from.len()) {
        Some(line) if line.starts_with(VIA) && &line[VIA.len()..] == from && from.len() == to.len() => {
            buf[name..name + to.len()].copy_from_slice(to);
            true
        }
        _ => false,
    }
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
/// address responses go back to (`BranchKey::mac`), each as 16 hex digits; for a request that came
/// on a stream, then the connection its responses go back on (16 more), which the MAC binds too
/// (docs/TCP.md, "Responses find their connection").
pub fn push_branch(out: &mut Vec<u8>, key: u64, mac: u64, conn: Option<ConnId>) {
    out.extend_from_slice(BRANCH_PREFIX);
    push_hex16(out, key);
    push_hex16(out, mac);
    if let Some(c) = conn {
        push_hex16(out, c.to_bits());
    }
}

/// What one of fsroute's branches carries: the transaction key, the MAC and, for a request that
/// came on a stream, the connection its responses go back on.
pub fn parse_branch(branch: &[u8]) -> Option<(u64, u64, Option<ConnId>)> {
    let hex = branch.strip_prefix(BRANCH_PREFIX)?;
    let conn = match hex.len() {
        32 => None,
        48 => Some(ConnId::from_bits(parse_hex16(&hex[32..])?)?),
        _ => return None,
    };
    Some((parse_hex16(&hex[..16])?, parse_hex16(&hex[16..32])?, conn))
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
    /// The stream connection the request came on, written into the branch.
    pub conn: Option<ConnId>,
    /// The transport the request leaves on: fsroute's Via says so (RFC 3261 §18.1.1).
    pub transport: Transport,
    /// Destination named in a new Record-Route, if one is added.
    pub record_route: Option<SocketAddr>,
    /// Remove this many Routes from the top (they name fsroute): 0, 1 or 2.
    pub pop_routes: u8,
    pub default_max_forwards: u32,
    /// Remove the X-AUTH-IP / X-AUTH-PORT lines the sender wrote.
    pub strip_x_auth: bool,
    /// The sender's address, written as X-AUTH-IP / X-AUTH-PORT (the destination is a
    /// FreeSWITCH box that trusts fsroute for it).
    pub x_auth: Option<SocketAddr>,
}

pub fn forward_request(m: &Message<'_>, src: SocketAddr, own: &OwnLines, rw: &RequestRewrite, out: &mut Vec<u8>) {
    let mut edits = Edits::new();
    let max_forwards = request_edits(m, src, rw.pop_routes, rw.strip_x_auth, rw.default_max_forwards, &mut edits);
    let top = TopLines { own, branch: rw.branch, mac: rw.mac, conn: rw.conn, transport: rw.transport, record_route: rw.record_route, max_forwards, x_auth: rw.x_auth };
    edits.push(m.headers_start as usize, 0, Insert::TopLines);
    out.clear();
    splice(m.raw, 0, m.framed_len(), edits.sorted(), eol(m), Some(&top), out);
}

/// Everything [`forward_request`] changes in a request except fsroute's own top lines; returns the
/// Max-Forwards line to add among them when the request has none.
fn request_edits(m: &Message<'_>, src: SocketAddr, pop_routes: u8, strip_x_auth: bool, default_max_forwards: u32, edits: &mut Edits) -> Option<u32> {
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
    if let Some(r) = m.route.as_ref().filter(|_| pop_routes > 0) {
        // A value leaves with what follows it on its line up to the next value, or with its
        // whole line when it is the line's last. The first value is always its line's first.
        let pop = |edits: &mut Edits, value: Span, line: Span, next_on_line: Option<u32>| match next_on_line {
            Some(next) => edits.push(value.start as usize, next as usize - value.start as usize, Insert::Nothing),
            None => edits.push(line.start as usize, line.len(), Insert::Nothing),
        };
        match r.next.filter(|_| pop_routes > 1) {
            None => pop(edits, r.value, r.line, r.next_on_line),
            // Both on one line: from the first to the third value, or the whole line.
            Some(n) if n.line == r.line => pop(edits, r.value, r.line, n.next_on_line),
            Some(n) => {
                pop(edits, r.value, r.line, None);
                pop(edits, n.value, n.line, n.next_on_line);
            }
        }
    }
    if strip_x_auth {
        for line in m.x_auth.lines() {
            edits.push(line.start as usize, line.len(), Insert::Nothing);
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

pub fn forward_template(m: &Message<'_>, src: SocketAddr, pop_routes: u8, strip_x_auth: bool, default_max_forwards: u32, mut bytes: Vec<u8>) -> Template {
    let mut edits = Edits::new();
    let max_forwards = request_edits(m, src, pop_routes, strip_x_auth, default_max_forwards, &mut edits);
    bytes.clear();
    // Room for the received/rport values, so the copy grows once; the copy is kept for the whole
    // call, so it keeps only what it holds.
    bytes.reserve_exact(m.framed_len() + 64);
    splice(m.raw, 0, m.framed_len(), edits.sorted(), eol(m), None, &mut bytes);
    bytes.shrink_to_fit();
    // Nothing before the first header line is ever edited: the top lines go where they would in
    // `forward_request`, so both write the same bytes.
    Template { bytes, top_at: m.headers_start, max_forwards, crlf: m.crlf }
}

impl Template {
    /// The request for one attempt: the stored copy with fsroute's Via (and Record-Route) on top.
    #[allow(clippy::too_many_arguments)]
    pub fn write(&self, own: &OwnLines, branch: u64, mac: u64, conn: Option<ConnId>, transport: Transport, record_route: Option<SocketAddr>, x_auth: Option<SocketAddr>, out: &mut Vec<u8>) {
        let top_at = self.top_at as usize;
        out.clear();
        out.extend_from_slice(&self.bytes[..top_at]);
        let top = TopLines { own, branch, mac, conn, transport, record_route, max_forwards: self.max_forwards, x_auth };
        top.write(self.eol(), out);
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

/// Removes fsroute's top Via: its whole line, or just the value when other values share the line.
pub fn forward_response(m: &Message<'_>, out: &mut Vec<u8>) {
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
    splice(buf, 0, m.framed_len(), edits.sorted(), eol(m), None, out);
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
            splice(buf, ls, le, edits, eol, None, out);
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
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn table_driven_decimal_equals_std_formatting(n in prop_oneof![any::<u64>(), 0u64..1000, Just(u64::MAX)]) {
            let mut buf = [0u8; 20];
            let want = n.to_string();
            prop_assert_eq!(format_u64(n, &mut buf), want.as_bytes());
        }

        #[test]
        fn table_driven_hex_equals_std_formatting(v in any::<u64>()) {
            let mut out = b"x".to_vec();
            push_hex16(&mut out, v);
            prop_assert_eq!(out, format!("x{v:016x}").into_bytes());
        }

        #[test]
        fn table_driven_ipv4_equals_std_formatting(o in any::<[u8; 4]>()) {
            let ip = IpAddr::from(o);
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            prop_assert_eq!(out, ip.to_string().into_bytes());
        }
    }

    #[test]
    fn a_request_above_the_udp_limit_gets_a_tcp_via_in_place_and_can_get_its_udp_via_back() {
        let own = OwnLines::new("127.0.0.1", 5060, None, None);
        let mut req = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        req.extend_from_slice(own.via(Transport::Udp));
        req.extend_from_slice(b"z9hG4bK-fsr1\r\nCall-ID: x\r\n\r\n");
        let before = req.clone();
        assert!(!too_large_for_udp(&req, before.len()), "at the limit: stays UDP");
        assert!(!too_large_for_udp(&req, 0), "0: never");
        assert!(too_large_for_udp(&req, before.len() - 1) && own_via_to_tcp(&mut req));
        assert_eq!(req.len(), before.len());
        assert!(String::from_utf8_lossy(&req).contains("\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-fsr1\r\n"));
        assert!(!own_via_to_tcp(&mut req), "already switched");
        assert!(via_back_to_udp(&mut req));
        assert_eq!(req, before);
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n\r\n".to_vec();
        assert!(!too_large_for_udp(&response, 1), "responses follow their Via");
        let mut other = b"INVITE sip:a@b SIP/2.0\r\nMax-Forwards: 70\r\n\r\n".to_vec();
        assert!(!own_via_to_tcp(&mut other), "not a request fsroute wrote");
    }

    #[test]
    fn own_lines_are_the_via_and_record_route_fsroute_always_wrote() {
        let own = OwnLines::new("[::1]", 5060, None, None);
        assert_eq!(own.via, b"Via: SIP/2.0/UDP [::1]:5060;branch=");
        assert_eq!(own.record_route, b"Record-Route: <sip:[::1]:5060;lr;fsd=");
    }

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
        push_branch(&mut out, 0xdead_beef_0123_4567, 42, None);
        assert_eq!(parse_branch(&out), Some((0xdead_beef_0123_4567, 42, None)));
        let conn = ConnId::new(1, 9);
        out.clear();
        push_branch(&mut out, 7, 8, Some(conn));
        assert_eq!(parse_branch(&out), Some((7, 8, Some(conn))), "a stream request's branch names its connection");
        assert_eq!(parse_branch(b"z9hG4bK-fsr0123"), None);
        assert_eq!(parse_branch(b"z9hG4bKother"), None);
    }
}
