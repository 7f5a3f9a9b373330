//! The sans-IO proxy core: `handle(table, src, datagram, now, out) -> Action`. It owns the RFC 3261
//! §16 / §16.11 decisions of a stateless load-balancing proxy (validate, answer locally, pick a
//! destination, keep a call's later messages on the INVITE's destination, rewrite) and the small
//! per-shard call memory that makes those decisions stick. It performs no I/O, reads time and
//! randomness only from its arguments and its seeded generator, and never panics on input.

mod fork;
mod memory;
pub mod rewrite;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use memory::{CallMemory, DialogView, Full, AFTER_FINAL};
use rewrite::{forward_request, forward_response, host_ip, local_reply, parse_branch, parse_token, reply_address, RequestRewrite};

use crate::dispatch::{opensips_uri_keys, trim_callid, Algorithm};
use crate::lb;
use fork::{Fork, ForkTarget};
use std::collections::{HashMap, VecDeque};
use crate::hash;
use crate::sip::{self, uri_host_port, uri_params, uri_user, Message, Method, ParseError};
use crate::stats::{DropReason, Refusal, ShardStats};
use crate::table::{DestCounters, MemoryLimits, ProxySettings, RouteTarget, RoutingTable};

const SEED_OWNER: u64 = 0x6673_726f_7574_6531; // "fsroute1"
const SEED_TXN: u64 = 0x6673_726f_7574_6532;
const SEED_DIALOG: u64 = 0x6673_726f_7574_6533;

/// What the shell must do with a datagram. Bytes to send are in the `out` buffer given to `handle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `out` to this address (a routed request or response).
    Forward(SocketAddr),
    /// Send `out`, a reply fsroute generated, to this address.
    Reply(SocketAddr),
    /// Pass the datagram unchanged to the shard that owns its Call-ID.
    HandOff(usize),
    Drop(DropReason),
    /// Handled by a stateful transaction, nothing to send for it (more may wait in the outbox).
    Absorbed,
}

/// The shard that owns a Call-ID's state: every shard computes the same answer.
pub fn owner_shard(call_id: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    (hash::hash_one(SEED_OWNER, trim_callid(call_id)) % shards as u64) as usize
}

pub struct Router {
    shard: usize,
    shards: usize,
    /// Per-set weighted round-robin cursors (OpenSIPS keeps one shared, racy cursor; per-core
    /// cursors make the split exact per shard and need no synchronisation).
    cursors: Vec<u64>,
    rng: u64,
    memory: CallMemory,
    stats: Arc<ShardStats>,
    draining: bool,
    /// Forked INVITE transactions (failover routes), by the caller's transaction key.
    forks: HashMap<u64, Fork, std::hash::BuildHasherDefault<memory::IdentityHasher>>,
    /// Datagrams beyond the one an action sends (100 Trying, fsroute's ACKs and CANCELs, the
    /// next attempt after a timeout), drained by the shell with `poll_transmit`.
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    free: Vec<Vec<u8>>,
    /// Bytes of the INVITEs the forks hold (bounded by `limits.fork_bytes`).
    fork_bytes: usize,
}

impl Router {
    pub fn new(shard: usize, shards: usize, seed: u64, stats: Arc<ShardStats>) -> Self {
        Router {
            shard,
            shards: shards.max(1),
            cursors: Vec::new(),
            rng: seed | 1,
            memory: CallMemory::new(MemoryLimits::default()),
            stats,
            draining: false,
            forks: HashMap::default(),
            outbox: VecDeque::new(),
            free: Vec::new(),
            fork_bytes: 0,
        }
    }

    /// The next datagram fsroute itself must send, if any. Give the buffer back with `recycle`.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// Returns a sent buffer for reuse, so steady state allocates nothing.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if self.free.len() < 256 {
            self.free.push(buf);
        }
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(2048))
    }

    fn emit(&mut self, to: SocketAddr, write: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.take_buffer();
        write(&mut buf);
        self.outbox.push_back((to, buf));
    }

    fn emit_buffer(&mut self, to: SocketAddr, buf: Vec<u8>) {
        self.outbox.push_back((to, buf));
    }

    fn dialog_key(&self, m: &Message<'_>) -> u64 {
        hash::hash_one(SEED_DIALOG, trim_callid(m.call_id.unwrap_or_default()))
    }

    pub fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }

    /// While draining, new INVITEs are answered 503 with Retry-After; everything else still flows.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn memory(&self) -> &CallMemory {
        &self.memory
    }

    /// INVITE transactions still without a final response.
    pub fn pending_invites(&self, now: Instant) -> usize {
        self.memory.pending_invites(now) + self.pending_forks()
    }

    /// What a graceful stop waits for: INVITEs without a final response and answered calls not
    /// yet ended (by BYE or `max_call_duration`).
    pub fn pending_calls(&self, now: Instant) -> usize {
        self.pending_invites(now) + self.memory.established()
    }

    /// Runs failover timers and ages out call memory; the shell calls it periodically (and drains
    /// `poll_transmit` afterwards).
    pub fn tick(&mut self, table: &RoutingTable, now: Instant) {
        self.fork_tick(table, now);
        self.memory.expire(now);
        let st = &self.stats;
        ShardStats::set(&st.memory_entries, self.memory.len() as u64);
        ShardStats::set(&st.transactions, self.memory.transactions() as u64);
        ShardStats::set(&st.dialogs, self.memory.dialogs() as u64);
        ShardStats::set(&st.established, self.memory.established() as u64);
        ShardStats::set(&st.forks, self.forks.len() as u64);
        ShardStats::set(&st.fork_bytes, self.fork_bytes as u64);
        ShardStats::set(&st.calls_timed_out, self.memory.timed_out);
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for spreading calls; seeded per shard by the shell.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Routes one datagram received from `src`. `out` is cleared and filled when the action sends.
    pub fn handle(&mut self, table: &RoutingTable, src: SocketAddr, buf: &[u8], now: Instant, out: &mut Vec<u8>) -> Action {
        let action = self.route(table, src, buf, now, out);
        match action {
            Action::Forward(_) => ShardStats::inc(&self.stats.processed),
            Action::Reply(_) => ShardStats::inc(&self.stats.replied),
            Action::HandOff(_) => ShardStats::inc(&self.stats.handed_off),
            Action::Drop(r) => self.stats.drop_reason(r),
            Action::Absorbed => ShardStats::inc(&self.stats.absorbed),
        }
        action
    }

    /// Like `handle`, for a datagram another shard handed over: never handed off again.
    pub fn handle_owned(&mut self, table: &RoutingTable, src: SocketAddr, buf: &[u8], now: Instant, out: &mut Vec<u8>) -> Action {
        let shards = std::mem::replace(&mut self.shards, 1);
        let action = self.handle(table, src, buf, now, out);
        self.shards = shards;
        action
    }

    fn route(&mut self, t: &RoutingTable, src: SocketAddr, buf: &[u8], now: Instant, out: &mut Vec<u8>) -> Action {
        self.memory.set_limits(t.proxy.limits);
        let m = match sip::parse(buf) {
            Ok(m) => m,
            Err(ParseError::Keepalive) => return Action::Drop(DropReason::Keepalive),
            Err(_) => return Action::Drop(DropReason::Malformed),
        };
        if self.shards > 1 {
            if let Some(cid) = m.call_id {
                let owner = owner_shard(cid, self.shards);
                if owner != self.shard {
                    return Action::HandOff(owner);
                }
            }
        }
        if m.is_request() {
            self.request(t, src, &m, now, out)
        } else {
            self.response(t, src, &m, now, out)
        }
    }

    /// fsroute's own answer to a request it will not forward, counted by why.
    fn refuse(&self, m: &Message<'_>, src: SocketAddr, why: Refusal, out: &mut Vec<u8>) -> Action {
        self.stats.refusal(why);
        match why {
            Refusal::RelayDenied => self.reply(m, src, 403, "Forbidden", &[], out),
            Refusal::Loop => self.reply(m, src, 482, "Loop Detected", &[], out),
            Refusal::TransactionsFull | Refusal::DialogsFull | Refusal::ForksFull | Refusal::Draining => {
                self.reply(m, src, 503, "Service Unavailable", &[("Retry-After", "5")], out)
            }
        }
    }

    /// The MAC that goes into the branch of a request from `src`: it binds the branch to where its
    /// responses will be relayed.
    fn branch_mac(px: &ProxySettings, branch: u64, m: &Message<'_>, src: SocketAddr) -> u64 {
        let method = match m.start {
            sip::StartLine::Request { method_raw, .. } => method_raw,
            sip::StartLine::Response { .. } => b"",
        };
        px.branch_key.mac(branch, reply_address(m, src), method)
    }

    /// [`Self::branch_mac`] for the ACK of a non-2xx response: it repeats its INVITE's branch, so
    /// it carries the INVITE's MAC.
    fn invite_branch_mac(px: &ProxySettings, branch: u64, m: &Message<'_>, src: SocketAddr) -> u64 {
        px.branch_key.mac(branch, reply_address(m, src), b"INVITE")
    }

    fn reply(&self, m: &Message<'_>, src: SocketAddr, code: u16, reason: &str, extra: &[(&str, &str)], out: &mut Vec<u8>) -> Action {
        let tag = hash::finish(hash::mix(hash::mix(SEED_TXN, m.call_id.unwrap_or_default()), m.top_via.and_then(|v| v.branch).unwrap_or_default()));
        local_reply(m, src, code, reason, tag, extra, out);
        Action::Reply(reply_address(m, src))
    }

    /// fsroute's own final answer when no destination can take a new call (all tried, all full):
    /// `[failover] exhausted_reply`, with a short `Retry-After` on a 503.
    fn reply_exhausted(&self, t: &RoutingTable, m: &Message<'_>, src: SocketAddr, out: &mut Vec<u8>) -> Action {
        let (code, reason, retry_after) = t.failover.exhausted();
        let mut digits = [0u8; 20];
        let retry = retry_after.and_then(|s| std::str::from_utf8(rewrite::format_u64(s, &mut digits)).ok());
        match retry {
            Some(v) => self.reply(m, src, code, reason, &[("Retry-After", v)], out),
            None => self.reply(m, src, code, reason, &[], out),
        }
    }

    fn request(&mut self, t: &RoutingTable, src: SocketAddr, m: &Message<'_>, now: Instant, out: &mut Vec<u8>) -> Action {
        let method = m.method().unwrap_or(Method::Other);
        if let Err(e) = m.validate_request() {
            if method == Method::Ack || m.top_via.is_none() {
                return Action::Drop(DropReason::Malformed);
            }
            return match e {
                ParseError::UnsupportedVersion => self.reply(m, src, 505, "Version Not Supported", &[], out),
                _ => self.reply(m, src, 400, "Bad Request", &[], out),
            };
        }
        // validate_request guarantees these.
        let (Some(call_id), Some(cseq), Some(ruri)) = (m.call_id, m.cseq, m.request_uri()) else {
            return Action::Drop(DropReason::Malformed);
        };
        let px = &t.proxy;
        let in_dialog = m.to_tag().is_some();

        // Keepalive OPTIONS addressed to fsroute itself (no user part): answered here, whatever
        // Max-Forwards says (§16.3 allows it).
        if method == Method::Options && !in_dialog && uri_user(ruri).is_none() && px.is_local_uri(ruri) {
            return self.reply(m, src, 200, "OK", &[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")], out);
        }
        if m.max_forwards.is_some_and(|mf| mf.value == 0) {
            if method == Method::Ack {
                return Action::Drop(DropReason::TooManyHops);
            }
            return self.reply(m, src, 483, "Too Many Hops", &[], out);
        }

        let caller_branch = m.top_via.and_then(|v| v.branch).filter(|b| b.starts_with(b"z9hG4bK"));
        let tkey = txn_key(call_id, cseq.number, caller_branch, m);
        let ckey = hash::hash_one(SEED_DIALOG, trim_callid(call_id));

        // fsroute's own Route (loose routing, §16.4): popped, its token names the destination.
        let own_route = m.route.filter(|r| px.is_local_uri(r.uri));
        let token = own_route
            .and_then(|r| sip::param_value(uri_params(r.uri), b"fsd").flatten())
            .and_then(parse_token)
            .filter(|d| t.is_known_destination(d));

        // A forked transaction's retransmissions, CANCEL and non-2xx ACK belong to it.
        if let Some(a) = self.fork_request(t, m, src, tkey, now, out) {
            return a;
        }

        let mut dest = None;
        let mut chosen: Option<&Arc<DestCounters>> = None;
        let mut remember = false;
        let mut invite_ack = false;

        // §16.11: INVITE retransmissions, CANCEL and non-2xx ACK follow the INVITE's choice.
        if let Some(txn) = self.memory.txn(tkey, now) {
            if matches!(method, Method::Ack | Method::Cancel) || !in_dialog {
                dest = Some(txn.dest);
                invite_ack = method == Method::Ack && txn.initial_invite;
            }
        }
        if dest.is_none() && (in_dialog || method == Method::Ack) {
            match self.in_dialog_destination(t, src, m, own_route.is_some(), token, ckey, now) {
                Ok(d) => dest = Some(d),
                Err(denied) => {
                    return match (method, denied) {
                        (Method::Ack, Denied::Unknown) => Action::Drop(DropReason::UnroutableAck),
                        (Method::Ack, Denied::Relay) => Action::Drop(DropReason::RelayDenied),
                        (_, Denied::Unknown) => self.reply(m, src, 481, "Call/Transaction Does Not Exist", &[], out),
                        (_, Denied::Relay) => self.refuse(m, src, Refusal::RelayDenied, out),
                    };
                }
            }
        }
        if dest.is_none() && method == Method::Cancel {
            // The INVITE's memory is gone (or it never passed here): the dialog memory may still
            // know the call, if the CANCEL comes from its caller; otherwise there is nothing to
            // cancel (§16.10).
            match self.memory.dialog(ckey, now).filter(|d| d.is_caller(src)) {
                Some(d) => dest = Some(d.dest),
                None => return self.reply(m, src, 481, "Call/Transaction Does Not Exist", &[], out),
            }
        }
        if dest.is_none() {
            // A new transaction: the routing table decides.
            if method == Method::Invite {
                if self.draining {
                    return self.refuse(m, src, Refusal::Draining, out);
                }
                // A call fsroute could not remember could not be cancelled, failed over or
                // ended cleanly: refused while the memory is full, never half-handled.
                match self.memory.room_for_call() {
                    Ok(()) => {}
                    Err(Full::Transactions) => return self.refuse(m, src, Refusal::TransactionsFull, out),
                    Err(Full::Dialogs) => return self.refuse(m, src, Refusal::DialogsFull, out),
                }
            }
            let method_raw = match m.start {
                sip::StartLine::Request { method_raw, .. } => method_raw,
                sip::StartLine::Response { .. } => b"",
            };
            let Some(route) = t.match_route(method_raw, ruri, src.ip()) else {
                let code = px.no_route_reply;
                let reason = if code == 503 { "Service Unavailable" } else { "Not Found" };
                return self.reply(m, src, code, reason, &[], out);
            };
            match route.target {
                RouteTarget::Dispatcher { set, algorithm, failover } => {
                    let Some(ds) = t.sets.get(set) else {
                        return self.reply(m, src, 500, "Server Internal Error", &[], out);
                    };
                    if failover && method == Method::Invite {
                        let target = ForkTarget::Dispatcher { setid: ds.setid, algorithm };
                        return self.fork_start(t, src, m, tkey, target, now, out);
                    }
                    let picked = self.dispatch_pick(t, set, algorithm, m);
                    // Only a new call costs a box a session; other requests go where the set says.
                    let admitted = if method == Method::Invite {
                        picked.and_then(|i| admit_in_set(ds, i, now, |_| false)).map(|(i, held)| {
                            // A stateless route cannot see the call end: the unit stays counted.
                            if let Some(h) = held {
                                h.keep_counted();
                            }
                            i
                        })
                    } else {
                        picked
                    };
                    let Some(idx) = admitted else {
                        return self.reply_exhausted(t, m, src, out);
                    };
                    let d = &ds.destinations[idx];
                    dest = Some(d.addr);
                    chosen = Some(&d.counters);
                }
                RouteTarget::LoadBalancer { group, wanted, flags } => {
                    let Some(g) = t.lb_groups.get(group) else {
                        return self.reply(m, src, 500, "Server Internal Error", &[], out);
                    };
                    if method == Method::Invite {
                        let target = ForkTarget::LoadBalancer { group_id: g.group_id, wanted, flags };
                        return self.fork_start(t, src, m, tkey, target, now, out);
                    }
                    // Out-of-dialog requests other than INVITE hold no call: the best box, no units.
                    let r = self.next_random();
                    let Some(idx) = lb::select(g, wanted.ids(), flags, 0, r, now) else {
                        return self.reply_exhausted(t, m, src, out);
                    };
                    dest = Some(g.destinations[idx].addr);
                }
            }
            remember = method != Method::Ack;
        }
        let Some(dest) = dest else {
            return Action::Drop(DropReason::Malformed);
        };
        if px.is_self(&dest) {
            if method == Method::Ack {
                return Action::Drop(DropReason::RelayDenied);
            }
            return self.refuse(m, src, Refusal::Loop, out);
        }

        if remember {
            let initial_invite = method == Method::Invite;
            let ttl = if initial_invite { px.transaction_memory } else { AFTER_FINAL };
            // Room was checked above for an INVITE; other requests are routed even when their
            // transaction cannot be remembered (their retransmissions are routed again).
            self.memory.remember_txn(tkey, dest, initial_invite, now, ttl);
            if initial_invite {
                // Held while the call rings; a 2xx stretches it to dialog_memory.
                self.memory.start_dialog(ckey, dest, src, now, px.transaction_memory);
            }
        }
        if let Some(c) = chosen {
            DestCounters::bump(&c.forwarded);
        }
        let record_route = (px.record_route
            && !in_dialog
            && matches!(method, Method::Invite | Method::Subscribe | Method::Refer))
        .then_some(dest);
        let rw = RequestRewrite {
            branch: tkey,
            mac: if invite_ack { Self::invite_branch_mac(px, tkey, m, src) } else { Self::branch_mac(px, tkey, m, src) },
            record_route,
            pop_route: own_route.is_some(),
            default_max_forwards: px.max_forwards,
        };
        forward_request(m, src, px, &rw, out);
        Action::Forward(dest)
    }

    /// A destination index of `ds` for a new transaction, by `algorithm`.
    fn dispatch_pick(&mut self, t: &RoutingTable, set: usize, algorithm: Algorithm, m: &Message<'_>) -> Option<usize> {
        let ds = t.sets.get(set)?;
        if self.cursors.len() < t.sets.len() {
            self.cursors.resize(t.sets.len(), 0);
        }
        let keys = hash_keys(algorithm, m, m.call_id.unwrap_or_default(), m.request_uri().unwrap_or_default());
        let (alg, keys) = match (algorithm, keys) {
            // No credentials: OpenSIPS documents round-robin for alg 5 (its code sticks to the
            // last destination instead); fsroute does what the documentation says.
            (Algorithm::HashAuthUsername, None) => (Algorithm::RoundRobin, (&b""[..], &b""[..])),
            (a, k) => (a, k.unwrap_or((b"", b""))),
        };
        let cursor = self.cursors[set];
        if alg == Algorithm::RoundRobin {
            self.cursors[set] = cursor.wrapping_add(1);
        }
        let r = if alg == Algorithm::Random { self.next_random() } else { 0 };
        ds.selector.pick(alg, t.proxy.hash, keys, cursor, r)
    }

    /// Where an in-dialog request goes (§16.4 loose routing, then fsroute's memories), under the
    /// relay policy (docs/SECURITY.md): a request from one of the destinations goes where its route
    /// set says; any other source reaches only a configured destination (named by fsroute's own
    /// Record-Route token, the route set or the Request-URI) or the remembered destination of a
    /// call it is the caller of. Anything else would make fsroute an open relay.
    #[allow(clippy::too_many_arguments)]
    fn in_dialog_destination(
        &self,
        t: &RoutingTable,
        src: SocketAddr,
        m: &Message<'_>,
        popped: bool,
        token: Option<SocketAddr>,
        ckey: u64,
        now: Instant,
    ) -> Result<SocketAddr, Denied> {
        let route_next = match m.route {
            Some(r) if popped => r.next_uri,
            Some(r) => Some(r.uri),
            None => None,
        };
        let uri_addr = |uri: &[u8]| -> Option<SocketAddr> {
            let (h, p) = uri_host_port(uri)?;
            Some(SocketAddr::new(host_ip(h)?, p.unwrap_or(5060)))
        };
        let ruri = m.request_uri().and_then(|u| uri_addr(u).filter(|_| !t.proxy.is_local_uri(u)));
        if t.is_from_destination(&src) {
            // From the FreeSWITCH side towards the caller: the route set, else the Request-URI.
            return route_next.and_then(uri_addr).or(ruri).ok_or(Denied::Unknown);
        }
        let named = route_next.and_then(uri_addr).or(ruri);
        let remembered = self.memory.dialog(ckey, now).filter(|d| d.is_caller(src)).map(|d| d.dest);
        token
            .or_else(|| named.filter(|a| t.is_known_destination(a)))
            .or(remembered)
            .ok_or(if named.is_some() || token.is_some() { Denied::Relay } else { Denied::Unknown })
    }

    fn response(&mut self, t: &RoutingTable, src: SocketAddr, m: &Message<'_>, now: Instant, out: &mut Vec<u8>) -> Action {
        if m.validate_response().is_err() {
            return Action::Drop(DropReason::BadResponse);
        }
        let px = &t.proxy;
        let Some(top) = m.top_via else {
            return Action::Drop(DropReason::BadResponse);
        };
        let branch = top.branch.and_then(parse_branch);
        let (Some((key, mac)), true) = (branch, px.is_local(top.host, top.port)) else {
            return Action::Drop(DropReason::NotOurVia);
        };
        // Where it would be relayed: the next Via's received/rport (§18.2.2, RFC 3581), or nowhere
        // for a response to one of fsroute's own requests.
        let next_hop = match m.second_via {
            Some(next) => {
                let Some(ip) = next.received.and_then(host_ip).or_else(|| host_ip(next.host)) else {
                    return Action::Drop(DropReason::Unresolvable);
                };
                Some(SocketAddr::new(ip, next.rport.flatten().or(next.port).unwrap_or(5060)))
            }
            None => None,
        };
        // The branch must be one fsroute wrote for a request of this CSeq method whose responses
        // go to that address (for an answer to fsroute's own CANCEL, the caller's, which the
        // CANCEL's branch repeats): a forged or altered response is never relayed, nor does it
        // touch a call's state.
        let Some(reply_to) = next_hop.or_else(|| self.fork_reply_to(key)) else {
            return Action::Drop(DropReason::NoNextVia);
        };
        let (Some(code), Some(cseq), Some(call_id)) = (m.status(), m.cseq, m.call_id) else {
            return Action::Drop(DropReason::BadResponse);
        };
        if px.branch_key.mac(key, reply_to, cseq.method) != mac {
            return Action::Drop(DropReason::ForgedResponse);
        }
        if let Some(a) = self.fork_response(t, m, src, key, next_hop, now, out) {
            return a;
        }
        let Some(next_hop) = next_hop else {
            return Action::Drop(DropReason::NoNextVia);
        };
        let ckey = hash::hash_one(SEED_DIALOG, trim_callid(call_id));
        match cseq.method {
            b"INVITE" => match code {
                // Each provisional response restarts Timer C: a long ring keeps its CANCEL route.
                100..=199 => {
                    if let Some(e) = self.memory.txn(key, now) {
                        let ttl = px.transaction_memory;
                        self.memory.rearm_txn(key, now, ttl);
                        if e.initial_invite {
                            self.memory.rearm_dialog(ckey, now, ttl);
                        }
                    }
                }
                200..=299 => {
                    if let Some(e) = self.memory.answer_txn(key, now) {
                        if e.initial_invite {
                            self.memory.confirm_dialog(ckey, now, px.dialog_memory, px.max_call_duration, None);
                        }
                    }
                }
                _ => {
                    if let Some(e) = self.memory.answer_txn(key, now) {
                        if e.initial_invite {
                            self.memory.rearm_dialog(ckey, now, AFTER_FINAL);
                        }
                    }
                }
            },
            // The call is over: its units go back, if the answer comes from one of the call's own
            // peers; retransmitted BYEs still find their way for 32 s.
            b"BYE" if (200..=299).contains(&code) => {
                self.memory.end_dialog(ckey, src, now);
            }
            _ => {}
        }
        forward_response(m, px, out);
        Action::Forward(next_hop)
    }
}

/// Why an in-dialog request has no destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Denied {
    /// Nothing names a next hop, and no dialog is remembered: 481.
    Unknown,
    /// It names one, and the relay policy does not let this source reach it: 403.
    Relay,
}

/// The destination of `ds` that takes a new call, with its hold on the destination's box: `picked`
/// if its box admits the call, else the active destination whose box has the most room now. None
/// when no box in the set has room. Destinations without a gate (static weights, stale boxes)
/// always admit, so a set without fs:// headroom behaves exactly as its selector says.
pub(crate) fn admit_in_set(
    ds: &crate::table::DispatcherSet,
    picked: usize,
    now: Instant,
    excluded: impl Fn(&crate::table::Destination) -> bool,
) -> Option<(usize, Option<lb::Reservation>)> {
    let first = ds.destinations.get(picked).filter(|d| !excluded(d));
    if let Some(held) = first.and_then(|d| d.admit(now)) {
        return Some((picked, held));
    }
    // A failed admission leaves that box with no room, so the ranking moves on; the bound only
    // matters when shards race for the last unit.
    for _ in 0..ds.destinations.len() {
        let (best, _) = ds
            .destinations
            .iter()
            .enumerate()
            .filter(|(_, d)| d.active && !excluded(d))
            .map(|(i, d)| (i, d.available(now)))
            .filter(|&(_, a)| a > 0)
            .max_by_key(|&(i, a)| (a, std::cmp::Reverse(i)))?;
        if let Some(held) = ds.destinations[best].admit(now) {
            return Some((best, held));
        }
    }
    None
}

/// Key of a request's transaction: the same for an INVITE, its retransmissions, its CANCEL and its
/// non-2xx ACK (which all carry the caller's branch), different for a 2xx ACK (a new branch).
fn txn_key(call_id: &[u8], cseq: u32, branch: Option<&[u8]>, m: &Message<'_>) -> u64 {
    let mut h = hash::mix(SEED_TXN, trim_callid(call_id));
    h = hash::mix(h, &cseq.to_le_bytes());
    match branch {
        Some(b) => h = hash::mix(h, b),
        None => {
            // RFC 2543 peers: no usable branch; the From tag and sent-by tell transactions apart.
            h = hash::mix(h, m.from.and_then(|f| f.tag).unwrap_or_default());
            if let Some(v) = m.top_via {
                h = hash::mix(hash::mix(h, v.host), &v.port.unwrap_or(5060).to_le_bytes());
            }
        }
    }
    hash::finish(h)
}

/// The two hash keys OpenSIPS uses for each hash algorithm; None when the message lacks them.
fn hash_keys<'a>(alg: Algorithm, m: &Message<'a>, call_id: &'a [u8], ruri: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    match alg {
        Algorithm::HashCallId => Some((trim_callid(call_id), b"")),
        Algorithm::HashFrom => m.from.map(|f| opensips_uri_keys(f.uri)),
        Algorithm::HashTo => m.to.map(|f| opensips_uri_keys(f.uri)),
        Algorithm::HashRuri => Some(opensips_uri_keys(ruri)),
        Algorithm::HashAuthUsername => m.auth_username.map(|u| (u, &b""[..])),
        _ => Some((b"", b"")),
    }
}

#[cfg(test)]
mod tests;
