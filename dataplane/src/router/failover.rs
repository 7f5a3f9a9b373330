//! The failover state machine: one per INVITE on a route that fails over (a dispatcher route with
//! `failover = true`, and every load_balancer route), RFC 3261 §16.7 serial forking. Each attempt
//! is a new client transaction with its own branch; a final response in `codes`, or silence for
//! `no_answer_timeout`, moves the call to the next candidate not yet tried, up to `max_attempts`.
//! fsroute ACKs every non-2xx final response itself and absorbs the caller's ACK for the one it
//! passes on, so the caller sees provisionals and one final outcome. A destination that has sent a
//! provisional keeps the call until its final response. A CANCEL from the caller is answered here
//! and applied to the attempt in progress. Load_balancer units and box admissions are held from
//! the attempt's routing to the call's end.
//!
//! The router (`mod.rs`) only starts a failover and hands it the messages that belong to it
//! ([`Failovers::request`], [`Failovers::response`], [`Failovers::tick`]); everything a failover
//! needs from the caller's INVITE is taken from it once, when it starts ([`StoredInvite`]).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::memory::{CallMemory, IdentityHasher, AFTER_FINAL};
use super::outbox::Outbox;
use super::rewrite::{self, forward_response, local_reply, push_u32, reply_address, Template};
use super::{admit_in_set, answer, exhausted_reply, relay, Action, Rng};
use crate::conn::{ConnId, Hop};
use crate::candidates::{mark_tried, Tried};
use crate::lb::{self, LbFlags, Reservation};
use crate::sip::{self, HeaderName, Message, Span};
use crate::stats::{DropReason, ShardStats};
use crate::table::{DestCounters, Destination, LbWanted, RoutingTable};

/// Attempts are bounded by a small array; `max_attempts` is clamped to it.
pub const MAX_ATTEMPTS: usize = 8;

/// Spaces attempt branches apart; [`Failovers::attempt_of`] subtracts it to find the transaction.
const ATTEMPT_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

/// The branch of attempt `n`: attempt 0 keeps the stateless branch, so a call that never fails
/// over looks exactly like one on a stateless route.
fn attempt_branch(tkey: u64, n: u8) -> u64 {
    tkey.wrapping_add(u64::from(n).wrapping_mul(ATTEMPT_STRIDE))
}

/// What the call is being balanced over: identified by id, not index, so a reload that reorders
/// sets does not send a failover somewhere else.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    Dispatcher { setid: i32 },
    LoadBalancer { group_id: i32, wanted: LbWanted, flags: LbFlags, failover: bool },
}

/// What the router lends a failover for one step: the table, the call memory it keeps in step,
/// the outbox for fsroute's own datagrams, the shard's counters and random numbers.
pub(super) struct Ctx<'a> {
    pub t: &'a RoutingTable,
    pub memory: &'a mut CallMemory,
    pub outbox: &'a mut Outbox,
    pub stats: &'a ShardStats,
    pub rng: &'a mut Rng,
    pub now: Instant,
    /// The stream connection the message being handled came on.
    pub arrival: Option<ConnId>,
}

/// Why a failover did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NotStarted {
    /// `limits.forks` or `limits.fork_bytes` is reached.
    Full,
    /// No candidate can take the call.
    Exhausted,
}

/// A header line of the caller's INVITE that a reply, a CANCEL or an ACK copies.
#[derive(Clone, Copy, Debug)]
struct CopiedLine {
    name: HeaderName,
    line: Span,
    /// Where the value ends, for the To tag of fsroute's own reply.
    value_end: u32,
}

/// What every step of a failover needs from the caller's INVITE, taken once when it starts: the
/// INVITE as each attempt sends it (less fsroute's top lines), and where in it the Request-URI
/// and the lines that a CANCEL, an ACK and fsroute's own final reply copy are. The copy's Vias
/// already carry the received/rport a reply needs.
struct StoredInvite {
    template: Template,
    ruri: Span,
    cseq: u32,
    /// Via, From, To, Call-ID and CSeq lines, in the order they came.
    lines: Vec<CopiedLine>,
    /// Where the INVITE came from, and where replies to it go.
    src: SocketAddr,
    /// On its stream connection, when it came on one.
    reply_to: Hop,
    /// The call's key in the dialog memory.
    ckey: u64,
    /// The To tag of fsroute's own final reply.
    reply_tag: u64,
}

impl StoredInvite {
    #[allow(clippy::too_many_arguments)]
    fn new(m: &Message<'_>, src: SocketAddr, conn: Option<ConnId>, own_routes: u8, t: &RoutingTable, buf: Vec<u8>, ckey: u64, reply_tag: u64) -> Option<Self> {
        let template = rewrite::forward_template(m, src, own_routes, t.proxy.x_auth.removes_senders(), t.proxy.max_forwards, buf);
        // The one scan of the stored copy: its spans serve every later step.
        let copy = sip::parse(&template.bytes).ok()?;
        let sip::StartLine::Request { uri, .. } = copy.start else { return None };
        let raw = copy.raw;
        // The URI is a slice of the copy: where it starts is its distance from the copy's start.
        let at = uri.as_ptr() as usize - raw.as_ptr() as usize;
        let lines = sip::HeaderIter::new(raw, copy.headers_start as usize)
            .filter_map(Result::ok)
            .map(|h| CopiedLine { name: sip::header_name(h.name.get(raw)), line: h.line, value_end: h.value.end })
            .filter(|l| l.name.is_reply_copied())
            .collect();
        Some(StoredInvite {
            ruri: Span::new(at, at + uri.len()),
            cseq: copy.cseq.map_or(1, |c| c.number),
            lines,
            src,
            reply_to: Hop { addr: reply_address(m, src), conn },
            ckey,
            reply_tag,
            template,
        })
    }

    fn bytes(&self) -> usize {
        self.template.bytes.capacity() + self.lines.capacity() * std::mem::size_of::<CopiedLine>()
    }

    fn copied<'a>(&'a self, names: &'a [HeaderName]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let raw = &self.template.bytes;
        self.lines.iter().filter(move |l| names.contains(&l.name)).map(move |l| l.line.get(raw))
    }

    /// §9.1: the CANCEL for attempt `branch`: the INVITE's Request-URI, Call-ID, From, To and CSeq
    /// number, and a single Via with the attempt's branch (so the same MAC).
    fn write_cancel(&self, t: &RoutingTable, branch: u64, dest: SocketAddr, out: &mut Vec<u8>) {
        let px = &t.proxy;
        out.clear();
        out.extend_from_slice(b"CANCEL ");
        out.extend_from_slice(self.ruri.get(&self.template.bytes));
        out.extend_from_slice(b" SIP/2.0\r\n");
        let mac = px.branch_key.mac(branch, self.reply_to.addr, self.reply_to.conn, b"INVITE");
        rewrite::push_own_via(out, &t.own, branch, mac, self.reply_to.conn, t.destination_transport(&dest), b"\r\n");
        for line in self.copied(&[HeaderName::From, HeaderName::To, HeaderName::CallId]) {
            out.extend_from_slice(line);
        }
        self.push_cseq(b"CANCEL", out);
    }

    /// §17.1.1.3: the ACK for a non-2xx final response: the INVITE's Request-URI, Call-ID, From and
    /// CSeq number, the response's To (with its tag), and the attempt's Via. A response without a
    /// To (malformed, yet it must be ACKed to stop its retransmissions) gets the INVITE's, so the
    /// ACK is still a valid request: the box matches it to its transaction by the branch (§17.2.3).
    fn write_ack(&self, resp: &Message<'_>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"ACK ");
        out.extend_from_slice(self.ruri.get(&self.template.bytes));
        out.extend_from_slice(b" SIP/2.0\r\nVia: ");
        out.extend_from_slice(resp.top_via.map_or(&b""[..], |v| v.span.get(resp.raw)));
        out.extend_from_slice(b"\r\n");
        for line in self.copied(&[HeaderName::From, HeaderName::CallId]) {
            out.extend_from_slice(line);
        }
        let resp_to = sip::HeaderIter::new(resp.raw, resp.headers_start as usize)
            .filter_map(Result::ok)
            .find(|h| sip::header_name(h.name.get(resp.raw)) == HeaderName::To)
            .map(|h| h.line.get(resp.raw));
        if let Some(line) = resp_to.or_else(|| self.copied(&[HeaderName::To]).next()) {
            out.extend_from_slice(line);
        }
        self.push_cseq(b"ACK", out);
    }

    fn push_cseq(&self, method: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"CSeq: ");
        push_u32(out, self.cseq);
        out.push(b' ');
        out.extend_from_slice(method);
        out.extend_from_slice(b"\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    }

    /// fsroute's own final answer to the INVITE (§8.2.6), as `rewrite::local_reply` writes one.
    fn write_reply(&self, code: u16, reason: &str, extra: &[(&str, &str)], out: &mut Vec<u8>) {
        let (raw, eol) = (&self.template.bytes, self.template.eol());
        rewrite::reply_status(code, reason, eol, out);
        for l in &self.lines {
            let line = l.line.get(raw);
            if l.name == HeaderName::To {
                rewrite::push_tagged(line, (l.value_end - l.line.start) as usize, self.reply_tag, out);
            } else {
                out.extend_from_slice(line);
            }
        }
        rewrite::reply_tail(extra, eol, out);
    }
}

/// What one failover costs in its map, besides its stored INVITE.
#[cfg(test)]
pub(super) const ENTRY_SIZE: usize = std::mem::size_of::<(u64, Failover)>();

/// One INVITE being failed over.
struct Failover {
    invite: StoredInvite,
    target: Target,
    tried: [Option<SocketAddr>; MAX_ATTEMPTS],
    attempt: u8,
    dest: SocketAddr,
    reservation: Option<Reservation>,
    provisional: bool,
    canceled: bool,
    /// A final response went to the caller (or fsroute answered it).
    finished: bool,
    /// No-answer deadline of the current attempt; cleared by a provisional.
    deadline: Option<Instant>,
    /// When the memory of this transaction may go.
    expires: Instant,
}

/// A candidate a failover may send the call to, with its hold on the destination's capacity.
struct Pick {
    dest: SocketAddr,
    counters: Option<Arc<DestCounters>>,
    reservation: Option<Reservation>,
}

impl Failover {
    fn has_tried(&self, a: SocketAddr) -> bool {
        self.tried.iter().flatten().any(|t| *t == a)
    }

    fn branch(&self, tkey: u64) -> u64 {
        attempt_branch(tkey, self.attempt)
    }

    /// The attempt in progress, as sent to `self.dest`.
    fn write_invite(&self, t: &RoutingTable, tkey: u64, out: &mut Vec<u8>) {
        let branch = self.branch(tkey);
        let reply_to = self.invite.reply_to;
        let mac = t.proxy.branch_key.mac(branch, reply_to.addr, reply_to.conn, b"INVITE");
        let record_route = t.proxy.record_route.then_some(self.dest);
        let x_auth = t.proxy.x_auth.adds_for(self.dest).then_some(self.invite.src);
        self.invite.template.write(&t.own, branch, mac, reply_to.conn, t.destination_transport(&self.dest), record_route, x_auth, out);
    }

    fn finish(&mut self, now: Instant) {
        self.finished = true;
        self.deadline = None;
        self.expires = now + AFTER_FINAL;
    }

    /// Whether another attempt is allowed after the current one.
    fn may_retry(&self, t: &RoutingTable) -> bool {
        // A load_balancer route written `failover = false` keeps the call's state (its units)
        // but tries one box only.
        let max = match self.target {
            Target::LoadBalancer { failover: false, .. } => 1,
            _ => t.failover.max_attempts.clamp(1, MAX_ATTEMPTS),
        };
        !self.canceled && usize::from(self.attempt) + 1 < max
    }

    /// The next candidate for this call: the target's ranking over the candidates not yet tried,
    /// through [`crate::candidates::select_with`]. `hint` is the router's first pick (the set's
    /// algorithm), for attempt 0 of a dispatcher target.
    fn pick(&self, ctx: &mut Ctx<'_>, hint: Option<usize>) -> Option<Pick> {
        let (t, now) = (ctx.t, ctx.now);
        match self.target {
            Target::Dispatcher { setid, .. } => {
                let ds = t.sets.iter().find(|s| s.setid == setid)?;
                let first = self.tried.iter().all(Option::is_none);
                let excluded = |d: &Destination| self.has_tried(d.addr) || (!first && !d.active);
                let start = if first {
                    hint?
                } else {
                    // OpenSIPS ds_next_dst: the cyclic successor of the last one tried, in set
                    // order, skipping inactive ones and those already tried; a full box is passed
                    // over.
                    let last = self.tried.iter().flatten().last().copied();
                    let from = last.and_then(|a| ds.destinations.iter().position(|d| d.addr == a)).map_or(0, |i| i + 1);
                    let n = ds.destinations.len();
                    (0..n).map(|k| (from + k) % n).find(|&i| {
                        let d = &ds.destinations[i];
                        !excluded(d) && d.available(now) > 0
                    })?
                };
                let (idx, reservation) = admit_in_set(ds, start, now, excluded)?;
                let d = &ds.destinations[idx];
                Some(Pick { dest: d.addr, counters: Some(d.counters.clone()), reservation })
            }
            Target::LoadBalancer { group_id, wanted, flags, .. } => {
                let g = t.lb_groups.iter().find(|g| g.group_id == group_id)?;
                let tried: Tried = g.destinations.iter().enumerate().filter(|(_, d)| self.has_tried(d.addr)).fold(0, |m, (i, _)| mark_tried(m, i));
                let (idx, held) = lb::select_and_reserve(g, wanted.ids(), flags, tried, ctx.rng.next(), now)?;
                Some(Pick { dest: g.destinations[idx].addr, counters: None, reservation: Some(held) })
            }
        }
    }

    /// Moves to `pick` as attempt `attempt` (the call rings there until its no-answer timer).
    fn move_to(&mut self, ctx: &mut Ctx<'_>, pick: Pick, attempt: u8) {
        if let Some(c) = &pick.counters {
            DestCounters::bump(&c.forwarded);
        }
        self.attempt = attempt;
        self.tried[usize::from(attempt)] = Some(pick.dest);
        self.dest = pick.dest;
        self.reservation = pick.reservation;
        self.provisional = false;
        self.deadline = Some(ctx.now + ctx.t.failover.no_answer_timeout);
        let px = &ctx.t.proxy;
        ctx.memory.start_dialog(self.invite.ckey, pick.dest, self.invite.src, ctx.now, px.transaction_memory);
        if let Some(c) = self.invite.reply_to.conn {
            ctx.memory.set_caller_conn(self.invite.ckey, c);
        }
    }

    /// Moves to the next candidate and writes its INVITE into `out`. False when none is left.
    fn next_attempt(&mut self, ctx: &mut Ctx<'_>, tkey: u64, out: &mut Vec<u8>) -> bool {
        let Some(pick) = self.pick(ctx, None) else { return false };
        self.move_to(ctx, pick, self.attempt + 1);
        ShardStats::inc(&ctx.stats.failovers);
        self.write_invite(ctx.t, tkey, out);
        true
    }

    /// Queues fsroute's CANCEL for the attempt in progress.
    fn emit_cancel(&self, ctx: &mut Ctx<'_>, tkey: u64) {
        ctx.outbox.emit(Hop::udp(self.dest), |buf| self.invite.write_cancel(ctx.t, self.branch(tkey), self.dest, buf));
    }

    /// A box answered 503 although fsroute believed it had room: it is full until its next
    /// heartbeat or the cool-down (docs/ADMISSION.md, "When a box refuses anyway").
    fn mark_refused(&self, t: &RoutingTable, now: Instant) {
        let cooldown = t.failover.refused_cooldown;
        match self.target {
            Target::Dispatcher { setid, .. } => {
                let boxes = t.sets.iter().filter(|s| s.setid == setid).flat_map(|s| &s.destinations);
                for b in boxes.filter(|d| d.addr == self.dest).filter_map(|d| d.fs.as_ref()) {
                    b.mark_refused(now, cooldown);
                }
            }
            Target::LoadBalancer { group_id, .. } => {
                let dests = t.lb_groups.iter().filter(|g| g.group_id == group_id).flat_map(|g| &g.destinations);
                for d in dests.filter(|d| d.addr == self.dest) {
                    for b in d.resources.iter().flatten().filter_map(|r| r.fs.as_ref()) {
                        b.mark_refused(now, cooldown);
                    }
                }
            }
        }
    }

    fn count_failure(&self, t: &RoutingTable) {
        let Target::Dispatcher { setid, .. } = self.target else { return };
        let dests = t.sets.iter().filter(|s| s.setid == setid).flat_map(|s| &s.destinations);
        if let Some(d) = dests.into_iter().find(|d| d.addr == self.dest) {
            DestCounters::bump(&d.counters.failed);
        }
    }

    /// fsroute's own final answer when no candidate is left: `[failover] exhausted_reply`.
    fn answer_exhausted(&self, t: &RoutingTable, out: &mut Vec<u8>) -> Action {
        exhausted_reply(t, |code, reason, extra| self.invite.write_reply(code, reason, extra, out));
        answer(self.invite.reply_to)
    }

    /// A provisional response from attempt `n`.
    fn provisional(&mut self, ctx: &mut Ctx<'_>, m: &Message<'_>, tkey: u64, current: bool, next_hop: Hop, out: &mut Vec<u8>) -> Action {
        if !current || self.finished {
            if current && self.canceled && !self.provisional {
                // The caller's side is over (cancelled, or answered by an attempt given up on) but
                // this box only now may be cancelled (§9.1): it would ring on.
                self.provisional = true;
                self.emit_cancel(ctx, tkey);
            }
            return Action::Absorbed;
        }
        self.provisional = true;
        self.deadline = None;
        // Each provisional restarts Timer C.
        self.expires = ctx.now + ctx.t.proxy.transaction_memory;
        if self.canceled {
            // The CANCEL waited for this provisional (§9.1).
            self.emit_cancel(ctx, tkey);
        }
        if m.status() == Some(100) {
            return Action::Absorbed;
        }
        forward_response(m, out);
        relay(next_hop)
    }

    /// A 2xx from attempt `n`: it always reaches the caller, even from an attempt given up on.
    fn answered(&mut self, ctx: &mut Ctx<'_>, m: &Message<'_>, tkey: u64, n: u8, next_hop: Hop, out: &mut Vec<u8>) -> Action {
        let (px, now, ckey) = (&ctx.t.proxy, ctx.now, self.invite.ckey);
        if n == self.attempt {
            self.finish(now);
            ctx.memory.confirm_dialog(ckey, now, px.dialog_memory, px.max_call_duration, self.reservation.take());
        } else if !self.finished {
            // A late 2xx from an attempt given up on answers the call all the same: no further
            // attempt and no answer of fsroute's own may follow it (§16.7 step 10), and the attempt
            // in progress is cancelled. Its units go back: that box has no call; the one that
            // answered gets its calls counted by its next heartbeat.
            self.finish(now);
            self.canceled = true;
            drop(self.reservation.take());
            if self.provisional {
                self.emit_cancel(ctx, tkey);
            }
            let answered_by = self.tried[usize::from(n)].unwrap_or(self.dest);
            ctx.memory.start_dialog(ckey, answered_by, self.invite.src, now, px.dialog_memory);
            if let Some(c) = self.invite.reply_to.conn {
                ctx.memory.set_caller_conn(ckey, c);
            }
            ctx.memory.confirm_dialog(ckey, now, px.dialog_memory, px.max_call_duration, None);
        }
        forward_response(m, out);
        relay(next_hop)
    }

    /// A non-2xx final response from attempt `n`: ACKed here (§17.1.1.3), whoever it came from;
    /// from the attempt in progress it moves the call on, or ends it.
    #[allow(clippy::too_many_arguments)]
    fn failed(&mut self, ctx: &mut Ctx<'_>, m: &Message<'_>, tkey: u64, n: u8, code: u16, next_hop: Hop, out: &mut Vec<u8>) -> Action {
        let current = n == self.attempt;
        let ack_to = if current { self.dest } else { self.tried[usize::from(n)].unwrap_or(self.dest) };
        ctx.outbox.emit(Hop::udp(ack_to), |buf| self.invite.write_ack(m, buf));
        if !current || self.finished {
            return Action::Absorbed;
        }
        let t = ctx.t;
        self.count_failure(t);
        if code == 503 {
            self.mark_refused(t, ctx.now);
        }
        drop(self.reservation.take());
        if self.may_retry(t) && t.failover.codes.contains(&code) && self.next_attempt(ctx, tkey, out) {
            return Action::Forward(self.dest);
        }
        self.finish(ctx.now);
        ctx.memory.rearm_dialog(self.invite.ckey, ctx.now, AFTER_FINAL);
        if code == 503 && !self.canceled {
            // Never the box's own 503 and its Retry-After: 300 (docs/ADMISSION.md).
            return self.answer_exhausted(t, out);
        }
        forward_response(m, out);
        relay(next_hop)
    }

    /// The no-answer timer of the attempt in progress fired: the next candidate, or 408 (487
    /// after a CANCEL) to the caller.
    fn timed_out(&mut self, ctx: &mut Ctx<'_>, tkey: u64) {
        drop(self.reservation.take());
        let mut out = ctx.outbox.take_buffer();
        if self.may_retry(ctx.t) && self.next_attempt(ctx, tkey, &mut out) {
            ctx.outbox.push(Hop::udp(self.dest), out);
            return;
        }
        ctx.outbox.recycle(out);
        self.finish(ctx.now);
        let (code, reason) = if self.canceled { (487, "Request Terminated") } else { (408, "Request Timeout") };
        ctx.outbox.emit(self.invite.reply_to, |buf| self.invite.write_reply(code, reason, &[], buf));
        ctx.memory.rearm_dialog(self.invite.ckey, ctx.now, AFTER_FINAL);
    }
}

/// Every failover in progress on this shard, by the caller's transaction key.
#[derive(Default)]
pub(super) struct Failovers {
    map: HashMap<u64, Failover, BuildHasherDefault<IdentityHasher>>,
    /// What the stored INVITEs hold (bounded by `limits.fork_bytes`).
    bytes: usize,
}

impl Failovers {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Failovers waiting for a final response, for a graceful stop.
    pub fn pending(&self) -> usize {
        self.map.values().filter(|f| !f.finished).count()
    }

    /// Starts a failover for a new INVITE: the first candidate, the INVITE for it in `out`, and
    /// fsroute's 100 Trying in the outbox. Returns where `out` goes.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        ctx: &mut Ctx<'_>,
        m: &Message<'_>,
        src: SocketAddr,
        keys: (u64, u64, u64),
        own_routes: u8,
        target: Target,
        hint: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Result<SocketAddr, NotStarted> {
        let (tkey, ckey, reply_tag) = keys;
        let limits = ctx.t.proxy.limits;
        // Each failover keeps a copy of its INVITE until 32 s after its final response: a flood of
        // new calls at a failover route must meet a bound, not the OOM killer.
        let room = |bytes: usize| self.map.len() < limits.forks && self.bytes.saturating_add(bytes) <= limits.fork_bytes;
        if !room(m.framed_len()) {
            return Err(NotStarted::Full);
        }
        let buf = ctx.outbox.take_buffer();
        let Some(invite) = StoredInvite::new(m, src, ctx.arrival, own_routes, ctx.t, buf, ckey, reply_tag) else {
            return Err(NotStarted::Exhausted);
        };
        if !room(invite.bytes()) {
            ctx.outbox.recycle(invite.template.bytes);
            return Err(NotStarted::Full);
        }
        let mut f = Failover {
            invite,
            target,
            tried: [None; MAX_ATTEMPTS],
            attempt: 0,
            dest: src,
            reservation: None,
            provisional: false,
            canceled: false,
            finished: false,
            deadline: None,
            expires: ctx.now + ctx.t.proxy.transaction_memory,
        };
        let Some(pick) = f.pick(ctx, hint) else {
            ctx.outbox.recycle(std::mem::take(&mut f.invite.template.bytes));
            return Err(NotStarted::Exhausted);
        };
        f.move_to(ctx, pick, 0);
        // A stateful proxy answers 100 itself: the caller stops retransmitting at once.
        ctx.outbox.emit(f.invite.reply_to, |buf| local_reply(m, src, 100, "Trying", 0, &[], buf));
        f.write_invite(ctx.t, tkey, out);
        self.bytes += f.invite.bytes();
        let dest = f.dest;
        self.map.insert(tkey, f);
        Ok(dest)
    }

    /// A retransmitted INVITE or the caller's CANCEL/ACK for a failover. None when `tkey` is not
    /// one.
    pub fn request(&mut self, ctx: &mut Ctx<'_>, m: &Message<'_>, src: SocketAddr, tkey: u64, out: &mut Vec<u8>) -> Option<Action> {
        let method = m.method()?;
        let f = self.map.get_mut(&tkey)?;
        match method {
            // The caller did not hear our 100 yet: the attempt in progress gets it again.
            sip::Method::Invite if f.finished => Some(Action::Absorbed),
            sip::Method::Invite => {
                f.write_invite(ctx.t, tkey, out);
                Some(Action::Forward(f.dest))
            }
            // The ACK for the failure fsroute passed on: hop-by-hop, already sent downstream.
            sip::Method::Ack => Some(Action::Absorbed),
            sip::Method::Cancel => {
                let first = !f.canceled;
                f.canceled = true;
                // §16.10: the CANCEL is answered here; the attempt in progress gets fsroute's own.
                ctx.outbox.emit(Hop { addr: reply_address(m, src), conn: ctx.arrival }, |buf| local_reply(m, src, 200, "OK", 0, &[], buf));
                if f.finished || !first {
                    return Some(Action::Absorbed);
                }
                if !f.provisional {
                    // §9.1: no CANCEL before a provisional; the no-answer timer ends it instead.
                    f.deadline = Some(ctx.now.min(f.deadline.unwrap_or(ctx.now)));
                    return Some(Action::Absorbed);
                }
                f.invite.write_cancel(ctx.t, f.branch(tkey), f.dest, out);
                Some(Action::Forward(f.dest))
            }
            _ => None,
        }
    }

    /// The caller's reply address of the failover an attempt branch belongs to: what its MAC binds
    /// when the response has no Via below fsroute's (an answer to fsroute's own CANCEL).
    pub fn reply_to(&self, branch: u64) -> Option<Hop> {
        self.attempt_of(branch).and_then(|(k, _)| self.map.get(&k)).map(|f| f.invite.reply_to)
    }

    /// The failover and attempt number an attempt branch belongs to.
    fn attempt_of(&self, branch: u64) -> Option<(u64, u8)> {
        (0..MAX_ATTEMPTS as u8).find_map(|n| {
            let k = branch.wrapping_sub(u64::from(n).wrapping_mul(ATTEMPT_STRIDE));
            self.map.get(&k).filter(|f| f.attempt >= n).map(|_| (k, n))
        })
    }

    /// A response whose branch belongs to a failover. None when it does not.
    pub fn response(
        &mut self,
        ctx: &mut Ctx<'_>,
        m: &Message<'_>,
        src: SocketAddr,
        branch: u64,
        next_hop: Option<Hop>,
        out: &mut Vec<u8>,
    ) -> Option<Action> {
        // Stateless routes never start failovers: their responses skip the search.
        if self.map.is_empty() {
            return None;
        }
        let (tkey, n) = self.attempt_of(branch)?;
        let code = m.status()?;
        if m.cseq.map(|c| c.method) != Some(&b"INVITE"[..]) {
            // Responses to fsroute's own CANCELs end here.
            return Some(Action::Absorbed);
        }
        // An attempt is answered by the destination it was sent to, and only to the caller.
        let Some(next_hop) = next_hop else {
            return Some(Action::Drop(DropReason::NoNextVia));
        };
        let f = self.map.get_mut(&tkey)?;
        if f.tried[usize::from(n)] != Some(src) {
            return Some(Action::Drop(DropReason::ForgedResponse));
        }
        let current = n == f.attempt;
        Some(match code {
            ..=199 => f.provisional(ctx, m, tkey, current, next_hop, out),
            200..=299 => f.answered(ctx, m, tkey, n, next_hop, out),
            _ => f.failed(ctx, m, tkey, n, code, next_hop, out),
        })
    }

    /// A TCP destination refused or timed out a connection: every attempt in progress there that
    /// has not rung fails now, counted against the destination, and the call moves on as after
    /// silence (the next candidate, or 408), instead of waiting out the no-answer timer.
    pub fn unreachable(&mut self, ctx: &mut Ctx<'_>, dest: SocketAddr) {
        for (&tkey, f) in self.map.iter_mut() {
            if !f.finished && !f.provisional && f.dest == dest {
                f.count_failure(ctx.t);
                f.timed_out(ctx, tkey);
            }
        }
    }

    /// Runs the no-answer timers and forgets failovers whose time is up.
    pub fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        for (&tkey, f) in self.map.iter_mut() {
            if !f.finished && f.deadline.is_some_and(|d| d <= now) {
                f.timed_out(ctx, tkey);
            }
        }
        let bytes = &mut self.bytes;
        self.map.retain(|_, f| {
            if f.expires > now {
                return true;
            }
            *bytes -= f.invite.bytes();
            ctx.outbox.recycle(std::mem::take(&mut f.invite.template.bytes));
            false
        });
    }
}
