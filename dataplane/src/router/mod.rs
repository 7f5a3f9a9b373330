//! The sans-IO proxy core: `handle(table, src, datagram, now, out) -> Action`: one datagram in, at
//! most one out in `out`; anything more (100 Trying, fsroute's ACKs and CANCELs, an attempt a timer
//! started) is queued in the outbox (`outbox`) and drained with `poll_transmit`; `tick` runs the
//! timers. A request goes through one pipeline, classify -> choose a destination -> remember ->
//! forward; a response through verify -> failover or call memory -> relay. It owns the RFC 3261
//! §16 / §16.11 decisions of a stateless load-balancing proxy (validate, answer locally, pick a
//! destination, keep a call's later messages on the INVITE's destination), writing messages out
//! in `rewrite`, the per-shard call memory that makes the decisions stick in `memory`, and hands
//! INVITEs on failover routes to their state machines in `failover`, its only
//! transaction-stateful part. It performs no I/O, reads time and randomness only from its
//! arguments and its seeded generator, and never panics on input.

mod failover;
mod memory;
mod outbox;
pub mod rewrite;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use memory::{CallMemory, DialogView, Full, AFTER_FINAL};
pub use failover::MAX_ATTEMPTS;
use failover::{Ctx, Failovers, NotStarted, Target};
use outbox::Outbox;
use rewrite::{forward_request, forward_response, host_ip, local_reply, parse_branch, parse_token, reply_address, RequestRewrite};

use crate::candidates::select_with;
use crate::conn::{ConnId, Hop};
use crate::dispatch::{opensips_uri_keys, trim_callid, Algorithm};
use crate::hash;
use crate::lb;
use crate::sip::{self, uri_host_port, uri_params, uri_user, Message, Method, ParseError};
use crate::stats::{DropReason, Refusal, ShardStats};
use crate::table::{DestCounters, DispatcherSet, RouteTarget, RoutingTable};

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
    /// Send `out` (a relayed response or request) on this stream connection.
    ForwardOn(ConnId),
    /// Send `out`, a reply fsroute generated, on this stream connection.
    ReplyOn(ConnId),
    /// Pass the datagram unchanged to the shard that owns its Call-ID.
    HandOff(usize),
    Drop(DropReason),
    /// Handled by a stateful transaction, nothing to send for it (more may wait in the outbox).
    Absorbed,
}

/// Sends a relayed message to `hop`: on its connection when it has one (RFC 3261 §18.2.2).
pub(crate) fn relay(hop: Hop) -> Action {
    match hop.conn {
        Some(c) => Action::ForwardOn(c),
        None => Action::Forward(hop.addr),
    }
}

/// Sends one of fsroute's own replies to `hop`: on its connection when it has one.
pub(crate) fn answer(hop: Hop) -> Action {
    match hop.conn {
        Some(c) => Action::ReplyOn(c),
        None => Action::Reply(hop.addr),
    }
}

/// The shard that owns a Call-ID's state: every shard computes the same answer.
pub fn owner_shard(call_id: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    (hash::hash_one(SEED_OWNER, trim_callid(call_id)) % shards as u64) as usize
}

/// A call's key in the dialog memory.
fn dialog_key(call_id: &[u8]) -> u64 {
    hash::hash_one(SEED_DIALOG, trim_callid(call_id))
}

/// The To tag of fsroute's own replies to a request: the same for its retransmissions.
fn reply_tag(m: &Message<'_>) -> u64 {
    let branch = m.top_via.and_then(|v| v.branch).unwrap_or_default();
    hash::finish(hash::mix(hash::mix(SEED_TXN, m.call_id.unwrap_or_default()), branch))
}

/// xorshift64*: plenty for spreading calls; seeded per shard by the shell.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A request that passed validation, with the keys every later step uses.
struct Request<'m> {
    method: Method,
    in_dialog: bool,
    ruri: &'m [u8],
    /// The transaction key: the same for an INVITE, its retransmissions, CANCEL and non-2xx ACK.
    tkey: u64,
    /// The call's key in the dialog memory.
    ckey: u64,
    /// How many of fsroute's own Routes are on top (loose routing, §16.4), popped when
    /// forwarding: 0, 1, or 2 (the two entries it records when a call changes transport).
    own_routes: u8,
    /// The destination named by fsroute's Record-Route token, when it is a known one.
    token: Option<SocketAddr>,
}

/// Where a request goes, and what forwarding it must remember.
struct Next<'t> {
    dest: SocketAddr,
    /// The dispatcher destination chosen for a new transaction (its counters).
    chosen: Option<&'t Arc<DestCounters>>,
    /// A new transaction: remembered so its retransmissions, CANCEL and ACK follow it.
    new_transaction: bool,
    /// The ACK of a non-2xx final response to an initial INVITE: it repeats the INVITE's branch.
    invite_ack: bool,
    /// The stream connection it leaves on (an in-dialog request towards a TCP caller).
    conn: Option<ConnId>,
}

/// What choosing a destination decided.
enum Choice<'t> {
    Send(Next<'t>),
    /// Answered, dropped, or taken on by a failover: nothing left to forward.
    Done(Action),
}

pub struct Router {
    shard: usize,
    shards: usize,
    /// Per-set weighted round-robin cursors (OpenSIPS keeps one shared, racy cursor; per-core
    /// cursors make the split exact per shard and need no synchronisation).
    cursors: Vec<u64>,
    rng: Rng,
    memory: CallMemory,
    stats: Arc<ShardStats>,
    draining: bool,
    /// INVITEs being failed over (failover routes), by the caller's transaction key.
    failovers: Failovers,
    /// Datagrams beyond the one an action sends, drained by the shell with `poll_transmit`.
    outbox: Outbox,
    /// The stream connection the message being handled came on (None: a datagram).
    arrival: Option<ConnId>,
}

impl Router {
    pub fn new(shard: usize, shards: usize, seed: u64, stats: Arc<ShardStats>) -> Self {
        Router {
            shard,
            shards: shards.max(1),
            cursors: Vec::new(),
            rng: Rng(seed | 1),
            memory: CallMemory::new(Default::default()),
            stats,
            draining: false,
            failovers: Failovers::default(),
            outbox: Outbox::default(),
            arrival: None,
        }
    }

    /// The next datagram fsroute itself must send, if any. Give the buffer back with `recycle`.
    pub fn poll_transmit(&mut self) -> Option<(Hop, Vec<u8>)> {
        self.outbox.poll()
    }

    /// Returns a sent buffer for reuse, so steady state allocates nothing.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.outbox.recycle(buf);
    }

    /// An empty buffer for the shell to route a datagram into (give it back with `recycle`).
    pub fn take_buffer(&mut self) -> Vec<u8> {
        self.outbox.take_buffer()
    }

    pub fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }

    /// Which shard this router serves.
    pub fn shard_index(&self) -> usize {
        self.shard
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
        self.memory.pending_invites(now) + self.failovers.pending()
    }

    /// What a graceful stop waits for: INVITEs without a final response and answered calls not
    /// yet ended (by BYE or `max_call_duration`).
    pub fn pending_calls(&self, now: Instant) -> usize {
        self.pending_invites(now) + self.memory.established()
    }

    /// What a failover step borrows from the router.
    fn ctx<'a>(&'a mut self, t: &'a RoutingTable, now: Instant) -> (&'a mut Failovers, Ctx<'a>) {
        let ctx = Ctx { t, memory: &mut self.memory, outbox: &mut self.outbox, stats: &self.stats, rng: &mut self.rng, now, arrival: self.arrival };
        (&mut self.failovers, ctx)
    }

    /// The shell could not connect to TCP destination `dest`: failover attempts waiting on it move
    /// on at once (drain `poll_transmit` afterwards).
    pub fn destination_unreachable(&mut self, table: &RoutingTable, dest: SocketAddr, now: Instant) {
        let (failovers, mut ctx) = self.ctx(table, now);
        failovers.unreachable(&mut ctx, dest);
    }

    /// Runs failover timers and ages out call memory; the shell calls it periodically (and drains
    /// `poll_transmit` afterwards).
    pub fn tick(&mut self, table: &RoutingTable, now: Instant) {
        let (failovers, mut ctx) = self.ctx(table, now);
        failovers.tick(&mut ctx);
        self.memory.expire(now);
        let st = &self.stats;
        ShardStats::set(&st.memory_entries, self.memory.len() as u64);
        ShardStats::set(&st.transactions, self.memory.transactions() as u64);
        ShardStats::set(&st.dialogs, self.memory.dialogs() as u64);
        ShardStats::set(&st.established, self.memory.established() as u64);
        ShardStats::set(&st.forks, self.failovers.len() as u64);
        ShardStats::set(&st.fork_bytes, self.failovers.bytes() as u64);
        ShardStats::set(&st.calls_timed_out, self.memory.timed_out);
    }

    /// Routes one datagram received from `src`. `out` is cleared and filled when the action sends.
    pub fn handle(&mut self, table: &RoutingTable, src: SocketAddr, buf: &[u8], now: Instant, out: &mut Vec<u8>) -> Action {
        let action = self.route(table, src, buf, now, out);
        match action {
            Action::Forward(_) | Action::ForwardOn(_) => ShardStats::inc(&self.stats.processed),
            Action::Reply(_) | Action::ReplyOn(_) => ShardStats::inc(&self.stats.replied),
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

    /// Like `handle`, for a message that came on stream connection `conn` from `src`: replies and
    /// responses to it go back on that connection (RFC 3261 §18.2.2).
    pub fn handle_stream(&mut self, table: &RoutingTable, src: SocketAddr, conn: ConnId, buf: &[u8], now: Instant, out: &mut Vec<u8>) -> Action {
        self.arrival = Some(conn);
        let action = self.handle(table, src, buf, now, out);
        self.arrival = None;
        action
    }

    /// `handle_stream` for a message another shard handed over: never handed off again.
    pub fn handle_owned_stream(&mut self, table: &RoutingTable, src: SocketAddr, conn: ConnId, buf: &[u8], now: Instant, out: &mut Vec<u8>) -> Action {
        let shards = std::mem::replace(&mut self.shards, 1);
        let action = self.handle_stream(table, src, conn, buf, now, out);
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

    /// The request pipeline: classify, choose a destination, remember, forward.
    fn request(&mut self, t: &RoutingTable, src: SocketAddr, m: &Message<'_>, now: Instant, out: &mut Vec<u8>) -> Action {
        let req = match self.classify(t, src, m, out) {
            Ok(req) => req,
            Err(done) => return done,
        };
        // A failover's retransmissions, CANCEL and non-2xx ACK belong to it.
        let (failovers, mut ctx) = self.ctx(t, now);
        if let Some(done) = failovers.request(&mut ctx, m, src, req.tkey, out) {
            return done;
        }
        match self.choose(t, src, m, &req, now, out) {
            Choice::Send(next) => self.forward(t, src, m, &req, next, now, out),
            Choice::Done(done) => done,
        }
    }

    /// Validates a request and answers what fsroute answers itself; otherwise its keys.
    fn classify<'m>(&self, t: &RoutingTable, src: SocketAddr, m: &Message<'m>, out: &mut Vec<u8>) -> Result<Request<'m>, Action> {
        let method = m.method().unwrap_or(Method::Other);
        if let Err(e) = m.validate_request() {
            if method == Method::Ack || m.top_via.is_none() {
                return Err(Action::Drop(DropReason::Malformed));
            }
            return Err(match e {
                ParseError::UnsupportedVersion => self.reply(m, src, 505, "Version Not Supported", &[], out),
                _ => self.reply(m, src, 400, "Bad Request", &[], out),
            });
        }
        // validate_request guarantees these.
        let (Some(call_id), Some(cseq), Some(ruri)) = (m.call_id, m.cseq, m.request_uri()) else {
            return Err(Action::Drop(DropReason::Malformed));
        };
        let px = &t.proxy;
        let in_dialog = m.to_tag().is_some();
        // Keepalive OPTIONS addressed to fsroute itself (no user part): answered here, whatever
        // Max-Forwards says (§16.3 allows it).
        if method == Method::Options && !in_dialog && uri_user(ruri).is_none() && px.is_local_uri(ruri) {
            return Err(self.reply(m, src, 200, "OK", &[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")], out));
        }
        if m.max_forwards.is_some_and(|mf| mf.value == 0) {
            if method == Method::Ack {
                return Err(Action::Drop(DropReason::TooManyHops));
            }
            return Err(self.reply(m, src, 483, "Too Many Hops", &[], out));
        }
        let caller_branch = m.top_via.and_then(|v| v.branch).filter(|b| b.starts_with(b"z9hG4bK"));
        // fsroute's own Route (loose routing, §16.4): popped, its token names the destination.
        let own_route = m.route.filter(|r| px.is_local_uri(r.uri));
        let own_routes = match own_route {
            None => 0,
            Some(r) if r.next_uri.is_some_and(|u| px.is_local_uri(u)) => 2,
            Some(_) => 1,
        };
        let token = own_route
            .and_then(|r| sip::param_value(uri_params(r.uri), b"fsd").flatten())
            .and_then(parse_token)
            .filter(|d| t.is_known_destination(d));
        Ok(Request {
            method,
            in_dialog,
            ruri,
            tkey: txn_key(call_id, cseq.number, caller_branch, m),
            ckey: dialog_key(call_id),
            own_routes,
            token,
        })
    }

    /// Where a request goes: §16.11, INVITE retransmissions, CANCEL and non-2xx ACK follow the
    /// INVITE's choice; in-dialog requests follow their route set under the relay policy; a new
    /// transaction is routed by the table.
    fn choose<'t>(&mut self, t: &'t RoutingTable, src: SocketAddr, m: &Message<'_>, req: &Request<'_>, now: Instant, out: &mut Vec<u8>) -> Choice<'t> {
        let method = req.method;
        if let Some(txn) = self.memory.txn(req.tkey, now) {
            if matches!(method, Method::Ack | Method::Cancel) || !req.in_dialog {
                let invite_ack = method == Method::Ack && txn.initial_invite;
                return Choice::Send(Next { dest: txn.dest, chosen: None, new_transaction: false, invite_ack, conn: None });
            }
        }
        if req.in_dialog || method == Method::Ack {
            return match self.in_dialog_destination(t, src, m, req, now) {
                Ok(dest) => {
                    // RFC 5923: a request from the callee's side towards a caller that came on a
                    // stream goes back on the caller's connection.
                    let conn = t
                        .is_from_destination(&src)
                        .then(|| self.memory.dialog(req.ckey, now))
                        .flatten()
                        .filter(|d| !d.is_caller(src))
                        .and_then(|d| d.caller_conn);
                    Choice::Send(Next { dest, chosen: None, new_transaction: false, invite_ack: false, conn })
                }
                Err(denied) => Choice::Done(match (method, denied) {
                    (Method::Ack, Denied::Unknown) => Action::Drop(DropReason::UnroutableAck),
                    (Method::Ack, Denied::Relay) => Action::Drop(DropReason::RelayDenied),
                    (_, Denied::Unknown) => self.reply(m, src, 481, "Call/Transaction Does Not Exist", &[], out),
                    (_, Denied::Relay) => self.refuse(m, src, Refusal::RelayDenied, out),
                }),
            };
        }
        if method == Method::Cancel {
            // The INVITE's memory is gone (or it never passed here): the dialog memory may still
            // know the call, if the CANCEL comes from its caller; otherwise there is nothing to
            // cancel (§16.10).
            return match self.memory.dialog(req.ckey, now).filter(|d| d.is_caller(src)) {
                Some(d) => Choice::Send(Next { dest: d.dest, chosen: None, new_transaction: false, invite_ack: false, conn: None }),
                None => Choice::Done(self.reply(m, src, 481, "Call/Transaction Does Not Exist", &[], out)),
            };
        }
        self.new_transaction(t, src, m, req, now, out)
    }

    /// A new transaction: the routing table decides. A new INVITE on a failover route starts a
    /// failover; a new INVITE anywhere is admitted against its box's headroom.
    fn new_transaction<'t>(&mut self, t: &'t RoutingTable, src: SocketAddr, m: &Message<'_>, req: &Request<'_>, now: Instant, out: &mut Vec<u8>) -> Choice<'t> {
        let invite = req.method == Method::Invite;
        if invite {
            if let Err(why) = self.room_for_call() {
                return Choice::Done(self.refuse(m, src, why, out));
            }
        }
        let method_raw = match m.start {
            sip::StartLine::Request { method_raw, .. } => method_raw,
            sip::StartLine::Response { .. } => b"",
        };
        let Some(route) = t.match_route(method_raw, req.ruri, src.ip()) else {
            let code = t.proxy.no_route_reply;
            let reason = if code == 503 { "Service Unavailable" } else { "Not Found" };
            return Choice::Done(self.reply(m, src, code, reason, &[], out));
        };
        let send = |dest, chosen| Choice::Send(Next { dest, chosen, new_transaction: req.method != Method::Ack, invite_ack: false, conn: None });
        match route.target {
            RouteTarget::Dispatcher { set, algorithm, failover } => {
                let Some(ds) = t.sets.get(set) else {
                    return Choice::Done(self.reply(m, src, 500, "Server Internal Error", &[], out));
                };
                let picked = self.dispatch_pick(t, set, algorithm, m);
                if failover && invite {
                    let target = Target::Dispatcher { setid: ds.setid };
                    return Choice::Done(self.start_failover(t, src, m, req, target, picked, now, out));
                }
                // Only a new call costs a box a session; other requests go where the set says.
                let admitted = if invite {
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
                match admitted {
                    Some(i) => send(ds.destinations[i].addr, Some(&ds.destinations[i].counters)),
                    None => Choice::Done(self.reply_exhausted(t, m, src, out)),
                }
            }
            RouteTarget::LoadBalancer { group, wanted, flags, failover } => {
                let Some(g) = t.lb_groups.get(group) else {
                    return Choice::Done(self.reply(m, src, 500, "Server Internal Error", &[], out));
                };
                if invite {
                    let target = Target::LoadBalancer { group_id: g.group_id, wanted, flags, failover };
                    return Choice::Done(self.start_failover(t, src, m, req, target, None, now, out));
                }
                // Out-of-dialog requests other than INVITE hold no call: the best box, no units.
                let r = self.rng.next();
                match lb::select(g, wanted.ids(), flags, 0, r, now) {
                    Some(i) => send(g.destinations[i].addr, None),
                    None => Choice::Done(self.reply_exhausted(t, m, src, out)),
                }
            }
        }
    }

    /// A call fsroute could not remember could not be cancelled, failed over or ended cleanly:
    /// refused while the memory is full (or fsroute is stopping), never half-handled.
    fn room_for_call(&self) -> Result<(), Refusal> {
        if self.draining {
            return Err(Refusal::Draining);
        }
        self.memory.room_for_call().map_err(|full| match full {
            Full::Transactions => Refusal::TransactionsFull,
            Full::Dialogs => Refusal::DialogsFull,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn start_failover(
        &mut self,
        t: &RoutingTable,
        src: SocketAddr,
        m: &Message<'_>,
        req: &Request<'_>,
        target: Target,
        hint: Option<usize>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Action {
        let keys = (req.tkey, req.ckey, reply_tag(m));
        let (failovers, mut ctx) = self.ctx(t, now);
        match failovers.start(&mut ctx, m, src, keys, req.own_routes, target, hint, out) {
            Ok(dest) => Action::Forward(dest),
            Err(NotStarted::Full) => self.refuse(m, src, Refusal::ForksFull, out),
            Err(NotStarted::Exhausted) => self.reply_exhausted(t, m, src, out),
        }
    }

    /// Remembers what the request's later messages need, and writes it out for `next.dest`.
    #[allow(clippy::too_many_arguments)]
    fn forward(&mut self, t: &RoutingTable, src: SocketAddr, m: &Message<'_>, req: &Request<'_>, next: Next<'_>, now: Instant, out: &mut Vec<u8>) -> Action {
        let (px, dest, method) = (&t.proxy, next.dest, req.method);
        if px.is_self(&dest) {
            if method == Method::Ack {
                return Action::Drop(DropReason::Loop);
            }
            return self.refuse(m, src, Refusal::Loop, out);
        }
        if next.new_transaction {
            let initial_invite = method == Method::Invite;
            let ttl = if initial_invite { px.transaction_memory } else { AFTER_FINAL };
            // Room was checked for an INVITE; other requests are routed even when their
            // transaction cannot be remembered (their retransmissions are routed again).
            self.memory.remember_txn(req.tkey, dest, initial_invite, now, ttl);
            if initial_invite {
                // Held while the call rings; a 2xx stretches it to dialog_memory.
                if self.memory.start_dialog(req.ckey, dest, src, now, px.transaction_memory) {
                    if let Some(c) = self.arrival {
                        self.memory.set_caller_conn(req.ckey, c);
                    }
                }
            }
        }
        if let Some(c) = next.chosen {
            DestCounters::bump(&c.forwarded);
        }
        let record_route =
            (px.record_route && !req.in_dialog && matches!(method, Method::Invite | Method::Subscribe | Method::Refer)).then_some(dest);
        // The ACK of a non-2xx response repeats its INVITE's branch, so it carries the INVITE's MAC.
        let mac_method = if next.invite_ack { &b"INVITE"[..] } else { request_method(m) };
        let rw = RequestRewrite {
            branch: req.tkey,
            mac: px.branch_key.mac(req.tkey, reply_address(m, src), self.arrival, mac_method),
            conn: self.arrival,
            // On the caller's connection, or to a `;transport=tcp` destination.
            transport: next.conn.map_or_else(|| t.destination_transport(&dest), ConnId::transport),
            record_route,
            pop_routes: req.own_routes,
            default_max_forwards: px.max_forwards,
            strip_x_auth: px.x_auth.removes_senders(),
            x_auth: px.x_auth.adds_for(dest).then_some(src),
        };
        forward_request(m, src, &t.own, &rw, out);
        relay(Hop { addr: dest, conn: next.conn })
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

    fn reply(&self, m: &Message<'_>, src: SocketAddr, code: u16, reason: &str, extra: &[(&str, &str)], out: &mut Vec<u8>) -> Action {
        local_reply(m, src, code, reason, reply_tag(m), extra, out);
        answer(Hop { addr: reply_address(m, src), conn: self.arrival })
    }

    /// fsroute's own final answer when no destination can take a new call (all tried, all full):
    /// `[failover] exhausted_reply`, with a short `Retry-After` on a 503.
    fn reply_exhausted(&self, t: &RoutingTable, m: &Message<'_>, src: SocketAddr, out: &mut Vec<u8>) -> Action {
        exhausted_reply(t, |code, reason, extra| self.reply(m, src, code, reason, extra, out))
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
        let r = if alg == Algorithm::Random { self.rng.next() } else { 0 };
        ds.selector.pick(alg, t.proxy.hash, keys, cursor, r)
    }

    /// Where an in-dialog request goes (§16.4 loose routing, then fsroute's memories), under the
    /// relay policy (docs/SECURITY.md): a request from one of the destinations goes where its route
    /// set says; any other source reaches only a configured destination (named by fsroute's own
    /// Record-Route token, the route set or the Request-URI) or the remembered destination of a
    /// call it is the caller of. Anything else would make fsroute an open relay.
    fn in_dialog_destination(&self, t: &RoutingTable, src: SocketAddr, m: &Message<'_>, req: &Request<'_>, now: Instant) -> Result<SocketAddr, Denied> {
        let route_next = match (m.route, req.own_routes) {
            (Some(r), 0) => Some(r.uri),
            (Some(r), 1) => r.next_uri,
            (Some(r), _) => r.next.and_then(|n| n.after_uri),
            (None, _) => None,
        };
        let uri_addr = |uri: &[u8]| -> Option<SocketAddr> {
            let (h, p) = uri_host_port(uri)?;
            Some(SocketAddr::new(host_ip(h)?, p.unwrap_or(5060)))
        };
        let ruri = uri_addr(req.ruri).filter(|_| !t.proxy.is_local_uri(req.ruri));
        if t.is_from_destination(&src) {
            // From the FreeSWITCH side towards the caller: the route set, else the Request-URI.
            return route_next.and_then(uri_addr).or(ruri).ok_or(Denied::Unknown);
        }
        let named = route_next.and_then(uri_addr).or(ruri);
        let remembered = self.memory.dialog(req.ckey, now).filter(|d| d.is_caller(src)).map(|d| d.dest);
        req.token
            .or_else(|| named.filter(|a| t.is_known_destination(a)))
            .or(remembered)
            .ok_or(if named.is_some() || req.token.is_some() { Denied::Relay } else { Denied::Unknown })
    }

    /// The response pipeline: verify fsroute's branch, let a failover take what is its own, keep
    /// the call memory in step, relay to the next Via.
    fn response(&mut self, t: &RoutingTable, src: SocketAddr, m: &Message<'_>, now: Instant, out: &mut Vec<u8>) -> Action {
        let (key, next_hop) = match self.verify_response(t, m) {
            Ok(v) => v,
            Err(drop) => return Action::Drop(drop),
        };
        let (failovers, mut ctx) = self.ctx(t, now);
        if let Some(done) = failovers.response(&mut ctx, m, src, key, next_hop, out) {
            return done;
        }
        let (Some(next_hop), Some(code), Some(cseq), Some(call_id)) = (next_hop, m.status(), m.cseq, m.call_id) else {
            return Action::Drop(DropReason::NoNextVia);
        };
        let (px, ckey) = (&t.proxy, dialog_key(call_id));
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
                200..=299 => match self.memory.answer_txn(key, now) {
                    Some(e) if e.initial_invite => {
                        self.memory.confirm_dialog(ckey, now, px.dialog_memory, px.max_call_duration, None);
                    }
                    Some(_) => {}
                    // No INVITE of this call went out with this branch, and the call is still
                    // being failed over: only its attempts may answer it.
                    None if self.memory.dialog(ckey, now).is_some_and(|d| !d.established) => {
                        return Action::Drop(DropReason::StrayAnswer);
                    }
                    None => {}
                },
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
        forward_response(m, out);
        relay(next_hop)
    }

    /// A response is relayed only on a branch fsroute wrote for a request of its CSeq method whose
    /// responses go to the address it would be relayed to (for an answer to fsroute's own CANCEL,
    /// the caller's, which the CANCEL's branch repeats): a forged or altered response is never
    /// relayed, nor does it touch a call's state. Returns the branch's transaction key and the
    /// next Via's address (§18.2.2, RFC 3581), None for a response to one of fsroute's own requests.
    fn verify_response(&self, t: &RoutingTable, m: &Message<'_>) -> Result<(u64, Option<Hop>), DropReason> {
        let px = &t.proxy;
        let top = m.validate_response().ok().and(m.top_via).ok_or(DropReason::BadResponse)?;
        let (key, mac, conn) = top.branch.and_then(parse_branch).filter(|_| px.is_local(top.host, top.port)).ok_or(DropReason::NotOurVia)?;
        let next_hop = match m.second_via {
            Some(next) => {
                let ip = next.received.and_then(host_ip).or_else(|| host_ip(next.host)).ok_or(DropReason::Unresolvable)?;
                Some(Hop { addr: SocketAddr::new(ip, next.rport.flatten().or(next.port).unwrap_or(5060)), conn })
            }
            None => None,
        };
        let reply_to = next_hop.or_else(|| self.failovers.reply_to(key)).ok_or(DropReason::NoNextVia)?;
        let (Some(_), Some(cseq), Some(_)) = (m.status(), m.cseq, m.call_id) else {
            return Err(DropReason::BadResponse);
        };
        if px.branch_key.mac(key, reply_to.addr, reply_to.conn, cseq.method) != mac {
            return Err(DropReason::ForgedResponse);
        }
        Ok((key, next_hop))
    }
}

/// Calls `write` with `[failover] exhausted_reply`: its code, reason and extra headers (a short
/// `Retry-After` on a 503), for fsroute's own answer when no destination can take a call.
fn exhausted_reply<R>(t: &RoutingTable, write: impl FnOnce(u16, &str, &[(&str, &str)]) -> R) -> R {
    let (code, reason, retry_after) = t.failover.exhausted();
    let mut digits = [0u8; 20];
    match retry_after.and_then(|s| std::str::from_utf8(rewrite::format_u64(s, &mut digits)).ok()) {
        Some(v) => write(code, reason, &[("Retry-After", v)]),
        None => write(code, reason, &[]),
    }
}

fn request_method<'a>(m: &Message<'a>) -> &'a [u8] {
    match m.start {
        sip::StartLine::Request { method_raw, .. } => method_raw,
        sip::StartLine::Response { .. } => b"",
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

/// The destination of `ds` that takes a new call, with its hold on the destination's box: `first`
/// if its box admits the call, else the destination whose box has the most room now, through
/// [`select_with`]. None when no box in the set has room. Destinations without a gate (static
/// weights, stale boxes) always admit, so a set without fs:// headroom behaves exactly as its
/// selector says.
pub(crate) fn admit_in_set(
    ds: &DispatcherSet,
    first: usize,
    now: Instant,
    excluded: impl Fn(&crate::table::Destination) -> bool,
) -> Option<(usize, Option<lb::Reservation>)> {
    let dests = &ds.destinations;
    let rank = |skip| {
        if !crate::candidates::is_tried(skip, first) && dests.get(first).is_some_and(|d| !excluded(d)) {
            return Some(first);
        }
        dests
            .iter()
            .enumerate()
            .filter(|&(i, d)| d.active && !excluded(d) && !crate::candidates::is_tried(skip, i))
            .map(|(i, d)| (i, d.available(now)))
            .filter(|&(_, a)| a > 0)
            .max_by_key(|&(i, a)| (a, std::cmp::Reverse(i)))
            .map(|(i, _)| i)
    };
    select_with(0, dests.len() + 1, rank, |i| dests[i].admit(now))
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
