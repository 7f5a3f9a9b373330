//! Transaction-stateful INVITE handling for the routes that fail over (a dispatcher route with
//! `failover = true`, and every load_balancer route), RFC 3261 §16.7 serial forking: each attempt
//! is a new client transaction with its own branch; a final response in `codes`, or silence for
//! `no_answer_timeout`, moves the call to the next destination not yet tried, up to
//! `max_attempts`; fsroute ACKs every non-2xx final response itself and absorbs the caller's ACK
//! for the one it passes on, so the caller sees provisionals and one final outcome. A destination
//! that has sent a provisional keeps the call until its final response. A CANCEL from the caller
//! is answered here and applied to the attempt in progress. Load_balancer units are held from the
//! attempt's routing to the call's end. Everything else stays stateless (see `mod.rs`).

use std::net::SocketAddr;
use std::time::Instant;

use super::rewrite::{forward_request, forward_response, local_reply, push_u32, RequestRewrite};
use super::{Action, Router, AFTER_FINAL};
use crate::stats::{DropReason, Refusal};
use crate::dispatch::Algorithm;
use crate::lb::{self, LbFlags, Reservation};
use crate::table::LbWanted;
use crate::sip::{self, Message};
use crate::table::{DestCounters, RoutingTable};

/// Attempts are bounded by a small array (and `tried` bit masks); `max_attempts` is clamped to it.
pub const MAX_ATTEMPTS: usize = 8;

/// What the call is being balanced over: identified by id, not index, so a reload that reorders
/// sets does not send a failover somewhere else.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ForkTarget {
    Dispatcher { setid: i32, algorithm: Algorithm },
    LoadBalancer { group_id: i32, wanted: LbWanted, flags: LbFlags },
}

pub(crate) struct Fork {
    /// The caller's INVITE as it arrived, re-sent to each destination.
    request: Vec<u8>,
    src: SocketAddr,
    /// Where responses go back to (the caller's reply address): every attempt's branch, and
    /// fsroute's CANCELs that must repeat it, carry its MAC.
    reply_to: SocketAddr,
    target: ForkTarget,
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

/// The branch of attempt `n`: attempt 0 keeps the stateless branch, so a call that never fails
/// over looks exactly like one on a stateless route.
pub(crate) fn attempt_branch(tkey: u64, n: u8) -> u64 {
    tkey.wrapping_add(u64::from(n).wrapping_mul(ATTEMPT_STRIDE))
}

/// Spaces attempt branches apart; `fork_response` subtracts it to find the transaction.
const ATTEMPT_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

impl Fork {
    fn tried_contains(&self, a: SocketAddr) -> bool {
        self.tried.iter().flatten().any(|t| *t == a)
    }
}

impl Router {
    /// Starts a forked INVITE: picks the first destination, forwards, answers 100 Trying.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fork_start(
        &mut self,
        t: &RoutingTable,
        src: SocketAddr,
        m: &Message<'_>,
        tkey: u64,
        target: ForkTarget,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Action {
        let limits = t.proxy.limits;
        let size = m.framed_len();
        // Each fork keeps a copy of its INVITE until 32 s after its final response: a flood of
        // new calls at a failover route must meet a bound, not the OOM killer.
        if self.forks.len() >= limits.forks || self.fork_bytes.saturating_add(size.max(2048)) > limits.fork_bytes {
            return self.refuse(m, src, Refusal::ForksFull, out);
        }
        let mut fork = Fork {
            request: self.take_buffer(),
            src,
            reply_to: super::reply_address(m, src),
            target,
            tried: [None; MAX_ATTEMPTS],
            attempt: 0,
            dest: src,
            reservation: None,
            provisional: false,
            canceled: false,
            finished: false,
            deadline: None,
            expires: now + t.proxy.transaction_memory,
        };
        fork.request.extend_from_slice(&m.raw[..size]);
        let Some((dest, counters, reservation)) = self.fork_pick(t, &fork, now) else {
            self.recycle(std::mem::take(&mut fork.request));
            return self.reply_exhausted(t, m, src, out);
        };
        if let Some(c) = counters {
            DestCounters::bump(&c.forwarded);
        }
        fork.dest = dest;
        fork.tried[0] = Some(dest);
        fork.reservation = reservation;
        fork.deadline = Some(now + t.failover.no_answer_timeout);
        // A stateful proxy answers 100 itself: the caller stops retransmitting at once.
        let trying_to = super::reply_address(m, src);
        self.emit(trying_to, |buf| local_reply(m, src, 100, "Trying", 0, &[], buf));
        self.memory.start_dialog(self.dialog_key(m), dest, src, now, t.proxy.transaction_memory);
        self.fork_forward(t, &fork, tkey, out);
        // Counted by capacity: that is what the allocator holds.
        self.fork_bytes += fork.request.capacity();
        self.forks.insert(tkey, fork);
        Action::Forward(dest)
    }

    /// The next destination for `fork`, reserving load_balancer units when that is the target. A
    /// destination whose FreeSWITCH box has no room now is passed over like one already tried.
    fn fork_pick(
        &mut self,
        t: &RoutingTable,
        fork: &Fork,
        now: Instant,
    ) -> Option<(SocketAddr, Option<std::sync::Arc<DestCounters>>, Option<Reservation>)> {
        match fork.target {
            ForkTarget::Dispatcher { setid, algorithm } => {
                let set = t.sets.iter().position(|s| s.setid == setid)?;
                let ds = &t.sets[set];
                let first = fork.tried.iter().all(Option::is_none);
                let (idx, held) = if first {
                    let m = sip::parse(&fork.request).ok()?;
                    let idx = self.dispatch_pick(t, set, algorithm, &m)?;
                    super::admit_in_set(ds, idx, now, |_| false)?
                } else {
                    // OpenSIPS ds_next_dst: the cyclic successor of the last one tried, in set order,
                    // skipping inactive ones and those already tried; a full box is passed over.
                    let last = fork.tried.iter().flatten().last().copied();
                    let start = last
                        .and_then(|a| ds.destinations.iter().position(|d| d.addr == a))
                        .map_or(0, |i| i + 1);
                    let n = ds.destinations.len();
                    let next = (0..n).map(|k| (start + k) % n).find(|&i| {
                        let d = &ds.destinations[i];
                        d.active && !fork.tried_contains(d.addr) && d.available(now) > 0
                    });
                    super::admit_in_set(ds, next?, now, |d| !d.active || fork.tried_contains(d.addr))?
                };
                let d = &ds.destinations[idx];
                Some((d.addr, Some(d.counters.clone()), held))
            }
            ForkTarget::LoadBalancer { group_id, wanted, flags } => {
                let g = t.lb_groups.iter().find(|g| g.group_id == group_id)?;
                let mut tried_mask = 0u64;
                for (i, d) in g.destinations.iter().enumerate().take(lb::MAX_DESTINATIONS) {
                    if fork.tried_contains(d.addr) {
                        tried_mask |= 1 << i;
                    }
                }
                let r = self.next_random();
                let (idx, held) = lb::select_and_reserve(g, wanted.ids(), flags, tried_mask, r, now)?;
                Some((g.destinations[idx].addr, None, Some(held)))
            }
        }
    }

    /// A box answered 503 although fsroute believed it had room: it is full until its next
    /// heartbeat or the cool-down (docs/ADMISSION.md, "When a box refuses anyway").
    fn mark_refused(&self, t: &RoutingTable, fork: &Fork, now: Instant) {
        let cooldown = t.failover.refused_cooldown;
        match fork.target {
            ForkTarget::Dispatcher { setid, .. } => {
                let boxes = t.sets.iter().filter(|s| s.setid == setid).flat_map(|s| &s.destinations);
                for d in boxes.filter(|d| d.addr == fork.dest) {
                    if let Some(b) = &d.fs {
                        b.mark_refused(now, cooldown);
                    }
                }
            }
            ForkTarget::LoadBalancer { group_id, .. } => {
                let dests = t.lb_groups.iter().filter(|g| g.group_id == group_id).flat_map(|g| &g.destinations);
                for d in dests.filter(|d| d.addr == fork.dest) {
                    for b in d.resources.iter().flatten().filter_map(|r| r.fs.as_ref()) {
                        b.mark_refused(now, cooldown);
                    }
                }
            }
        }
    }

    /// Writes the caller's INVITE for the current attempt into `out`.
    fn fork_forward(&self, t: &RoutingTable, fork: &Fork, tkey: u64, out: &mut Vec<u8>) {
        let Ok(m) = sip::parse(&fork.request) else { return };
        let own_route = m.route.filter(|r| t.proxy.is_local_uri(r.uri)).is_some();
        let branch = attempt_branch(tkey, fork.attempt);
        let rw = RequestRewrite {
            branch,
            mac: Self::branch_mac(&t.proxy, branch, &m, fork.src),
            record_route: t.proxy.record_route.then_some(fork.dest),
            pop_route: own_route,
            default_max_forwards: t.proxy.max_forwards,
        };
        forward_request(&m, fork.src, &t.proxy, &rw, out);
    }

    /// A retransmitted INVITE or the caller's CANCEL/ACK for a forked transaction. None when `tkey`
    /// is not a fork.
    pub(super) fn fork_request(&mut self, t: &RoutingTable, m: &Message<'_>, src: SocketAddr, tkey: u64, now: Instant, out: &mut Vec<u8>) -> Option<Action> {
        let method = m.method()?;
        let fork = self.forks.get_mut(&tkey)?;
        match method {
            sip::Method::Invite => {
                if fork.finished {
                    return Some(Action::Absorbed);
                }
                // The caller did not hear our 100 yet: the attempt in progress gets it again.
                let dest = fork.dest;
                let fork = self.forks.remove(&tkey)?;
                self.fork_forward(t, &fork, tkey, out);
                self.forks.insert(tkey, fork);
                Some(Action::Forward(dest))
            }
            // The ACK for the failure fsroute passed on: hop-by-hop, already sent downstream.
            sip::Method::Ack => Some(Action::Absorbed),
            sip::Method::Cancel => {
                let first = !fork.canceled;
                fork.canceled = true;
                let (dest, attempt, provisional, finished) = (fork.dest, fork.attempt, fork.provisional, fork.finished);
                // §16.10: the CANCEL is answered here; the attempt in progress gets fsroute's own.
                let reply_to = super::reply_address(m, src);
                self.emit(reply_to, |buf| local_reply(m, src, 200, "OK", 0, &[], buf));
                if finished || !first {
                    return Some(Action::Absorbed);
                }
                if !provisional {
                    // §9.1: no CANCEL before a provisional; the no-answer timer ends it instead.
                    if let Some(f) = self.forks.get_mut(&tkey) {
                        f.deadline = Some(now.min(f.deadline.unwrap_or(now)));
                    }
                    return Some(Action::Absorbed);
                }
                let fork = self.forks.get(&tkey)?;
                debug_assert_eq!(fork.attempt, attempt);
                build_cancel(fork, &t.proxy, tkey, out).then_some(Action::Forward(dest))
            }
            _ => None,
        }
    }

    /// The caller's reply address of the fork an attempt branch belongs to: what its MAC binds
    /// when the response has no Via below fsroute's (an answer to fsroute's own CANCEL).
    pub(super) fn fork_reply_to(&self, branch: u64) -> Option<SocketAddr> {
        self.fork_of(branch).and_then(|(k, _)| self.forks.get(&k)).map(|f| f.reply_to)
    }

    /// The fork transaction and attempt number an attempt branch belongs to.
    fn fork_of(&self, branch: u64) -> Option<(u64, u8)> {
        (0..MAX_ATTEMPTS as u8).find_map(|n| {
            let k = branch.wrapping_sub(u64::from(n).wrapping_mul(ATTEMPT_STRIDE));
            self.forks.get(&k).filter(|f| f.attempt >= n).map(|_| (k, n))
        })
    }

    /// A response whose branch belongs to a fork. None when it does not.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fork_response(
        &mut self,
        t: &RoutingTable,
        m: &Message<'_>,
        src: SocketAddr,
        branch: u64,
        next_hop: Option<SocketAddr>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<Action> {
        // Stateless routes never create forks: their responses skip the search.
        if self.forks.is_empty() {
            return None;
        }
        let (tkey, n) = self.fork_of(branch)?;
        let code = m.status()?;
        if m.cseq.map(|c| c.method) != Some(&b"INVITE"[..]) {
            // Responses to fsroute's own CANCELs end here.
            return Some(Action::Absorbed);
        }
        // An attempt is answered by the destination it was sent to, and only to the caller.
        let Some(next_hop) = next_hop else {
            return Some(Action::Drop(DropReason::NoNextVia));
        };
        if self.forks.get(&tkey)?.tried[usize::from(n)] != Some(src) {
            return Some(Action::Drop(DropReason::ForgedResponse));
        }
        let mut fork = self.forks.remove(&tkey)?;
        let from_current = n == fork.attempt;
        let action = if code < 200 {
            if from_current && !fork.finished {
                fork.provisional = true;
                fork.deadline = None;
                // Each provisional restarts Timer C.
                fork.expires = now + t.proxy.transaction_memory;
                if fork.canceled {
                    // The CANCEL waited for this provisional (§9.1).
                    self.emit_cancel(t, &fork, tkey);
                }
                if code == 100 {
                    Action::Absorbed
                } else {
                    forward_response(m, &t.proxy, out);
                    Action::Forward(next_hop)
                }
            } else {
                if from_current && fork.canceled && !fork.provisional {
                    // The caller's side is over (cancelled, or answered by an attempt given up
                    // on) but this box only now may be cancelled (§9.1): it would ring on.
                    fork.provisional = true;
                    self.emit_cancel(t, &fork, tkey);
                }
                Action::Absorbed
            }
        } else if code < 300 {
            // A 2xx always reaches the caller, even from an attempt given up on.
            if from_current {
                fork.finished = true;
                fork.deadline = None;
                fork.expires = now + AFTER_FINAL;
                let ckey = self.dialog_key(m);
                let px = &t.proxy;
                self.memory.confirm_dialog(ckey, now, px.dialog_memory, px.max_call_duration, fork.reservation.take());
            } else if !fork.finished {
                // A late 2xx from an attempt given up on answers the call all the same: no
                // further attempt and no answer of fsroute's own may follow it (§16.7 step 10),
                // and the attempt in progress is cancelled. Its units go back: that box has no
                // call; the one that answered gets its calls counted by its next heartbeat.
                fork.finished = true;
                fork.canceled = true;
                fork.deadline = None;
                fork.expires = now + AFTER_FINAL;
                drop(fork.reservation.take());
                if fork.provisional {
                    self.emit_cancel(t, &fork, tkey);
                }
                let answered_by = fork.tried[usize::from(n)].unwrap_or(fork.dest);
                let (ckey, px) = (self.dialog_key(m), &t.proxy);
                self.memory.start_dialog(ckey, answered_by, fork.src, now, px.dialog_memory);
                self.memory.confirm_dialog(ckey, now, px.dialog_memory, px.max_call_duration, None);
            }
            forward_response(m, &t.proxy, out);
            Action::Forward(next_hop)
        } else {
            // Every non-2xx final response is ACKed here (§17.1.1.3), whoever it came from.
            let ack_to = fork.dest;
            if let Ok(inv) = sip::parse(&fork.request) {
                let to = if from_current { ack_to } else { fork.tried[usize::from(n)].unwrap_or(ack_to) };
                self.emit(to, |buf| build_ack(&inv, m, buf));
            }
            if !from_current || fork.finished {
                Action::Absorbed
            } else {
                if let Some(c) = self.dest_counters(t, &fork) {
                    DestCounters::bump(&c.failed);
                }
                if code == 503 {
                    self.mark_refused(t, &fork, now);
                }
                drop(fork.reservation.take());
                let may_retry = !fork.canceled
                    && t.failover.codes.contains(&code)
                    && usize::from(fork.attempt) + 1 < t.failover.max_attempts.clamp(1, MAX_ATTEMPTS);
                if may_retry && self.fork_next(t, &mut fork, tkey, now, out) {
                    Action::Forward(fork.dest)
                } else {
                    fork.finished = true;
                    fork.deadline = None;
                    fork.expires = now + AFTER_FINAL;
                    self.memory.rearm_dialog(self.dialog_key(m), now, AFTER_FINAL);
                    if code == 503 && !fork.canceled {
                        // Never the box's own 503 and its Retry-After: 300 (docs/ADMISSION.md).
                        self.answer_exhausted(t, &fork, out)
                    } else {
                        forward_response(m, &t.proxy, out);
                        Action::Forward(next_hop)
                    }
                }
            }
        };
        self.forks.insert(tkey, fork);
        Some(action)
    }

    /// Moves `fork` to its next destination and writes the INVITE for it into `out`. False when
    /// there is none left.
    fn fork_next(&mut self, t: &RoutingTable, fork: &mut Fork, tkey: u64, now: Instant, out: &mut Vec<u8>) -> bool {
        let Some((dest, counters, reservation)) = self.fork_pick(t, fork, now) else { return false };
        if let Some(c) = counters {
            DestCounters::bump(&c.forwarded);
        }
        fork.attempt += 1;
        fork.tried[usize::from(fork.attempt)] = Some(dest);
        fork.dest = dest;
        fork.reservation = reservation;
        fork.provisional = false;
        fork.deadline = Some(now + t.failover.no_answer_timeout);
        ShardStatsExt::failover(self);
        if let Ok(m) = sip::parse(&fork.request) {
            self.memory.start_dialog(self.dialog_key(&m), dest, fork.src, now, t.proxy.transaction_memory);
        }
        self.fork_forward(t, fork, tkey, out);
        true
    }

    fn dest_counters(&self, t: &RoutingTable, fork: &Fork) -> Option<std::sync::Arc<DestCounters>> {
        match fork.target {
            ForkTarget::Dispatcher { setid, .. } => t
                .sets
                .iter()
                .find(|s| s.setid == setid)?
                .destinations
                .iter()
                .find(|d| d.addr == fork.dest)
                .map(|d| d.counters.clone()),
            ForkTarget::LoadBalancer { .. } => None,
        }
    }

    /// fsroute's own final answer to the caller's INVITE when no destination is left.
    fn answer_exhausted(&mut self, t: &RoutingTable, fork: &Fork, out: &mut Vec<u8>) -> Action {
        out.clear();
        match sip::parse(&fork.request) {
            Ok(inv) => self.reply_exhausted(t, &inv, fork.src, out),
            Err(_) => Action::Absorbed,
        }
    }

    /// No-answer timers: the next destination, or 408 (or 487 after a CANCEL) to the caller.
    pub(super) fn fork_tick(&mut self, t: &RoutingTable, now: Instant) {
        let due: Vec<u64> = self
            .forks
            .iter()
            .filter(|(_, f)| !f.finished && f.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for tkey in due {
            let Some(mut fork) = self.forks.remove(&tkey) else { continue };
            drop(fork.reservation.take());
            let retry = !fork.canceled && usize::from(fork.attempt) + 1 < t.failover.max_attempts.clamp(1, MAX_ATTEMPTS);
            let mut out = self.take_buffer();
            if retry && self.fork_next(t, &mut fork, tkey, now, &mut out) {
                let dest = fork.dest;
                self.emit_buffer(dest, out);
            } else {
                self.recycle(out);
                fork.finished = true;
                fork.deadline = None;
                fork.expires = now + AFTER_FINAL;
                if let Ok(m) = sip::parse(&fork.request) {
                    let (code, reason) = if fork.canceled { (487, "Request Terminated") } else { (408, "Request Timeout") };
                    let to = super::reply_address(&m, fork.src);
                    let src = fork.src;
                    self.emit(to, |buf| local_reply(&m, src, code, reason, 0, &[], buf));
                    self.memory.rearm_dialog(self.dialog_key(&m), now, AFTER_FINAL);
                }
            }
            self.forks.insert(tkey, fork);
        }
        let mut gone = Vec::new();
        for (k, f) in &self.forks {
            if f.expires <= now {
                gone.push(*k);
            }
        }
        for k in gone {
            if let Some(mut f) = self.forks.remove(&k) {
                self.fork_bytes -= f.request.capacity();
                self.recycle(std::mem::take(&mut f.request));
            }
        }
    }

    /// Queues fsroute's CANCEL for `fork`'s attempt in progress.
    fn emit_cancel(&mut self, t: &RoutingTable, fork: &Fork, tkey: u64) {
        let mut buf = self.take_buffer();
        if build_cancel(fork, &t.proxy, tkey, &mut buf) {
            self.emit_buffer(fork.dest, buf);
        } else {
            self.recycle(buf);
        }
    }

    /// Forks waiting for a final response, for a graceful stop.
    pub(super) fn pending_forks(&self) -> usize {
        self.forks.values().filter(|f| !f.finished).count()
    }
}

/// Keeps failover counting next to the other per-shard counters.
trait ShardStatsExt {
    fn failover(&self);
}

impl ShardStatsExt for Router {
    fn failover(&self) {
        crate::stats::ShardStats::inc(&self.stats.failovers);
    }
}

/// §9.1: a CANCEL for the attempt in progress: the INVITE's Request-URI, Call-ID, From, To and CSeq
/// number, and a single Via with the attempt's branch. False (nothing written) if the stored INVITE
/// does not scan, which cannot happen for one that was forwarded.
fn build_cancel(fork: &Fork, px: &crate::table::ProxySettings, tkey: u64, out: &mut Vec<u8>) -> bool {
    let Ok(inv) = sip::parse(&fork.request) else { return false };
    let (inv, branch, reply_to) = (&inv, attempt_branch(tkey, fork.attempt), fork.reply_to);
    out.clear();
    let raw = inv.raw;
    out.extend_from_slice(b"CANCEL ");
    out.extend_from_slice(inv.request_uri().unwrap_or(b"sip:invalid"));
    out.extend_from_slice(b" SIP/2.0\r\n");
    push_via(out, px, branch, reply_to);
    copy_headers(inv, raw, out);
    out.extend_from_slice(b"CSeq: ");
    push_u32(out, inv.cseq.map_or(1, |c| c.number));
    out.extend_from_slice(b" CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    true
}

/// §17.1.1.3: the ACK for a non-2xx final response: the INVITE's Request-URI, Call-ID, From and
/// CSeq number, the response's To (with its tag), and the attempt's Via. A response without a To
/// (malformed, yet it must be ACKed to stop its retransmissions) gets the INVITE's, so the ACK
/// is still a valid request: the box matches it to its transaction by the branch (§17.2.3).
fn build_ack(inv: &Message<'_>, resp: &Message<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"ACK ");
    out.extend_from_slice(inv.request_uri().unwrap_or(b"sip:invalid"));
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(resp.top_via.map_or(&b""[..], |v| v.span.get(resp.raw)));
    out.extend_from_slice(b"\r\n");
    for h in sip::HeaderIter::new(inv.raw, inv.headers_start as usize).filter_map(Result::ok) {
        let name = h.name.get(inv.raw);
        if sip::is_named(name, sip::HeaderName::From) || sip::is_named(name, sip::HeaderName::CallId) {
            out.extend_from_slice(h.line.get(inv.raw));
        }
    }
    if let Some(line) = to_line(resp).or_else(|| to_line(inv)) {
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"CSeq: ");
    push_u32(out, inv.cseq.map_or(1, |c| c.number));
    out.extend_from_slice(b" ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
}

/// The first To header line of `m`, line break included.
fn to_line<'a>(m: &Message<'a>) -> Option<&'a [u8]> {
    let raw = m.raw;
    sip::HeaderIter::new(raw, m.headers_start as usize)
        .filter_map(Result::ok)
        .find(|h| sip::is_named(h.name.get(raw), sip::HeaderName::To))
        .map(|h| h.line.get(raw))
}

/// The top Via of the attempt being cancelled (§9.1: same branch, so the same MAC).
fn push_via(out: &mut Vec<u8>, px: &crate::table::ProxySettings, branch: u64, reply_to: SocketAddr) {
    out.extend_from_slice(b"Via: SIP/2.0/UDP ");
    out.extend_from_slice(px.advertise_host.as_bytes());
    out.push(b':');
    push_u32(out, u32::from(px.advertise_port));
    out.extend_from_slice(b";branch=");
    super::rewrite::push_branch(out, branch, px.branch_key.mac(branch, reply_to, b"INVITE"));
    out.extend_from_slice(b"\r\n");
}

/// From, To and Call-ID lines of the INVITE, as they are (a CANCEL's must match, §9.1).
fn copy_headers(inv: &Message<'_>, raw: &[u8], out: &mut Vec<u8>) {
    for h in sip::HeaderIter::new(raw, inv.headers_start as usize).filter_map(Result::ok) {
        let name = h.name.get(raw);
        if sip::is_named(name, sip::HeaderName::From) || sip::is_named(name, sip::HeaderName::To) || sip::is_named(name, sip::HeaderName::CallId) {
            out.extend_from_slice(h.line.get(raw));
        }
    }
}
