//! The emulator's SIP UAS on UDP: minimal but correct RFC 3261 server behaviour for what a
//! load balancer sends a FreeSWITCH box. INVITE gets 100, then 180 and 200 (with SDP)
//! after the load-dependent answer delay, or 503 when full; 2xx is retransmitted (T1
//! doubling to T2) until ACK, for at most 64·T1; INVITE retransmissions get the last
//! response again; CANCEL gets 200 plus 487; a caller's BYE gets 200; after `hold` the
//! UAS hangs up itself with a BYE routed through the learned route set. One thread
//! owns all call state; the shared counters are what the ESL side reports.
//!
//! Admission is the model's (FreeSWITCH's rules); every refusal is sofia's
//! `503 Maximum Calls In Progress` with `Retry-After: 300`, for OPTIONS too when sofia's
//! pre-check (full, paused, stopping) fails. A box that has shut down answers nothing.
//!
//! Responses go to the request's source address (the `rport` behaviour), which is
//! where every client on loopback and every proxy expects them. A network delay is two
//! FIFO queues in this thread (constant delay keeps arrival order): datagrams in, handled
//! when their time comes, and datagrams out, sent when theirs does.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sip::{self, SipMessage};
use super::{lock, Shared};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// 64·T1: how long a transaction is retransmitted, and how long a finished call is
/// remembered to absorb retransmissions.
const TX_LIFETIME: Duration = Duration::from_secs(32);
/// sofia's refusal, whatever the limit that bound.
const REFUSAL_REASON: &str = "Maximum Calls In Progress";
const REFUSAL_RETRY_AFTER: &str = "300";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// INVITE admitted, no final response yet.
    Proceeding,
    /// 200 sent, waiting for ACK.
    Answered,
    Confirmed,
    /// Our BYE sent, waiting for its response.
    Terminating,
    /// Finished; kept only to answer retransmissions.
    Done,
}

struct Retransmit {
    bytes: Vec<u8>,
    dest: SocketAddr,
    next_at: Instant,
    interval: Duration,
    give_up_at: Instant,
}

impl Retransmit {
    fn new(bytes: Vec<u8>, dest: SocketAddr, now: Instant) -> Retransmit {
        Retransmit {
            bytes,
            dest,
            next_at: now + T1,
            interval: T1,
            give_up_at: now + TX_LIFETIME,
        }
    }
}

struct Call {
    peer: SocketAddr,
    invite: SipMessage,
    to_tag: String,
    state: State,
    /// Holds a session in the capacity model.
    admitted: bool,
    last_response: Vec<u8>,
    ring_at: Option<Instant>,
    answer_at: Option<Instant>,
    hangup_at: Option<Instant>,
    retransmit: Option<Retransmit>,
    purge_at: Option<Instant>,
}

pub(crate) struct Uas {
    shared: Arc<Shared>,
    local: SocketAddr,
    calls: HashMap<String, Call>,
    out: Vec<(Vec<u8>, SocketAddr)>,
}

pub(crate) fn run(shared: Arc<Shared>, sock: UdpSocket) {
    let local = shared.sip_addr;
    let mut uas = Uas {
        shared: Arc::clone(&shared),
        local,
        calls: HashMap::new(),
        out: Vec::new(),
    };
    let delay = shared.cfg.network_delay;
    let mut inbox: VecDeque<(Instant, Vec<u8>, SocketAddr)> = VecDeque::new();
    let mut outbox: VecDeque<(Instant, Vec<u8>, SocketAddr)> = VecDeque::new();
    let mut buf = vec![0u8; 65_536];
    while !shared.shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next = [
            uas.next_timer(),
            inbox.front().map(|m| m.0),
            outbox.front().map(|m| m.0),
        ]
        .into_iter()
        .flatten()
        .min();
        let wait = next
            .map_or(Duration::from_millis(20), |t| t.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        let _ = sock.set_read_timeout(Some(wait));
        let down = shared.is_down();
        match sock.recv_from(&mut buf) {
            // A box that has shut down reads and forgets: nothing answers.
            Ok(_) if down => {}
            Ok((n, src)) if delay.is_zero() => uas.on_datagram(&buf[..n], src, Instant::now()),
            Ok((n, src)) => inbox.push_back((Instant::now() + delay, buf[..n].to_vec(), src)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => tracing::debug!(error = %e, "fsemu: SIP receive error"),
        }
        let now = Instant::now();
        while inbox.front().is_some_and(|m| m.0 <= now) {
            if let Some((_, bytes, src)) = inbox.pop_front() {
                if !down {
                    uas.on_datagram(&bytes, src, now);
                }
            }
        }
        if down {
            uas.out.clear();
            outbox.clear();
            continue;
        }
        uas.on_timers(now);
        for (bytes, dest) in uas.out.drain(..) {
            if delay.is_zero() {
                send_now(&sock, &bytes, dest);
            } else {
                outbox.push_back((now + delay, bytes, dest));
            }
        }
        let now = Instant::now();
        while outbox.front().is_some_and(|m| m.0 <= now) {
            if let Some((_, bytes, dest)) = outbox.pop_front() {
                send_now(&sock, &bytes, dest);
            }
        }
    }
}

fn send_now(sock: &UdpSocket, bytes: &[u8], dest: SocketAddr) {
    if let Err(e) = sock.send_to(bytes, dest) {
        tracing::debug!(error = %e, %dest, "fsemu: SIP send failed");
    }
}

/// sofia's reply to a request it will not take.
fn refusal(msg: &SipMessage, to_tag: &str) -> Vec<u8> {
    sip::response_with_reason(
        msg,
        503,
        REFUSAL_REASON,
        Some(to_tag),
        false,
        &[("Retry-After", REFUSAL_RETRY_AFTER.to_owned())],
        None,
    )
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Uas {
    fn send(&mut self, bytes: Vec<u8>, dest: SocketAddr) {
        self.out.push((bytes, dest));
    }

    fn contact(&self) -> String {
        format!("<sip:fsemu@{}>", self.local)
    }

    fn sdp(&self) -> Vec<u8> {
        let ip = self.local.ip();
        let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
        let sess: u32 = rand::random::<u32>() >> 1;
        format!(
            "v=0\r\no=FreeSWITCH {sess} {sess} IN {family} {ip}\r\ns=FreeSWITCH\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        )
        .into_bytes()
    }

    fn release(&mut self, call_id: &str, now: Instant) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if std::mem::take(&mut call.admitted) {
            self.shared.release_call(now);
        }
    }

    fn finish(&mut self, call_id: &str, now: Instant) {
        self.release(call_id, now);
        if let Some(call) = self.calls.get_mut(call_id) {
            call.state = State::Done;
            call.ring_at = None;
            call.answer_at = None;
            call.hangup_at = None;
            call.purge_at = Some(now + TX_LIFETIME);
        }
    }

    pub(crate) fn on_datagram(&mut self, data: &[u8], src: SocketAddr, now: Instant) {
        let msg = match SipMessage::parse(data) {
            Ok(m) => m,
            Err(sip::SipParseError::Empty) => return,
            Err(e) => {
                tracing::debug!(error = %e, %src, "fsemu: unparsable SIP datagram dropped");
                return;
            }
        };
        match msg.method().map(str::to_ascii_uppercase).as_deref() {
            None => self.on_response(&msg, now),
            Some("INVITE") => self.on_invite(msg, src, now),
            Some("ACK") => self.on_ack(&msg),
            Some("BYE") => self.on_bye(&msg, src, now),
            Some("CANCEL") => self.on_cancel(&msg, src, now),
            Some("OPTIONS") => {
                let tag = random_token();
                let r = if self.shared.options_refused(now) {
                    refusal(&msg, &tag)
                } else {
                    let extra = [
                        ("Allow", ALLOW.to_owned()),
                        ("Accept", "application/sdp".to_owned()),
                    ];
                    sip::response(&msg, 200, Some(&tag), false, &extra, None)
                };
                self.send(r, src);
            }
            Some("INFO" | "UPDATE" | "NOTIFY") if self.calls.contains_key(msg.call_id()) => {
                let r = sip::response(&msg, 200, None, false, &[], None);
                self.send(r, src);
            }
            Some(_) => {
                let r = sip::response(
                    &msg,
                    501,
                    Some(&random_token()),
                    false,
                    &[("Allow", ALLOW.to_owned())],
                    None,
                );
                self.send(r, src);
            }
        }
    }

    fn on_invite(&mut self, msg: SipMessage, src: SocketAddr, now: Instant) {
        let call_id = msg.call_id().to_owned();
        if let Some(call) = self.calls.get(&call_id) {
            let same_tx = call.invite.cseq() == msg.cseq();
            if same_tx {
                // A retransmission: the last response again.
                let (bytes, peer) = (call.last_response.clone(), call.peer);
                if !bytes.is_empty() {
                    self.send(bytes, peer);
                }
            } else if msg.to_tag().is_some() && call.state == State::Confirmed {
                // A re-INVITE (session refresh): accept with the same media.
                let extra = [("Contact", self.contact())];
                let r = sip::response(
                    &msg,
                    200,
                    None,
                    false,
                    &extra,
                    Some(("application/sdp", &self.sdp())),
                );
                self.send(r, src);
            } else {
                let r = sip::response(&msg, 481, None, false, &[], None);
                self.send(r, src);
            }
            return;
        }
        if msg.to_tag().is_some() {
            let r = sip::response(&msg, 481, None, false, &[], None);
            self.send(r, src);
            return;
        }
        let to_tag = random_token();
        let admitted = self.shared.admit_call(now);
        if let Err(reason) = admitted {
            tracing::trace!(?reason, call_id = %call_id, "fsemu: INVITE refused");
            let r = refusal(&msg, &to_tag);
            self.send(r.clone(), src);
            self.calls.insert(
                call_id,
                Call {
                    peer: src,
                    invite: msg,
                    to_tag,
                    state: State::Done,
                    admitted: false,
                    last_response: r,
                    ring_at: None,
                    answer_at: None,
                    hangup_at: None,
                    retransmit: None,
                    purge_at: Some(now + TX_LIFETIME),
                },
            );
            return;
        }
        let delay = admitted.unwrap_or_default();
        let trying = sip::response(&msg, 100, None, false, &[], None);
        self.send(trying.clone(), src);
        // Ringing comes after a fifth of the answer delay, so post-dial delay also
        // grows with load.
        self.calls.insert(
            call_id,
            Call {
                peer: src,
                invite: msg,
                to_tag,
                state: State::Proceeding,
                admitted: true,
                last_response: trying,
                ring_at: Some(now + delay / 5),
                answer_at: Some(now + delay),
                hangup_at: None,
                retransmit: None,
                purge_at: None,
            },
        );
    }

    fn on_ack(&mut self, msg: &SipMessage) {
        let Some(call) = self.calls.get_mut(msg.call_id()) else {
            return;
        };
        match call.state {
            State::Answered => {
                call.state = State::Confirmed;
                call.retransmit = None;
            }
            // ACK of a 487 or 503: the non-2xx transaction is complete.
            State::Done => call.retransmit = None,
            _ => {}
        }
    }

    fn on_bye(&mut self, msg: &SipMessage, src: SocketAddr, now: Instant) {
        let known = self
            .calls
            .get(msg.call_id())
            .is_some_and(|c| msg.to_tag() == Some(c.to_tag.as_str()));
        let code = if known { 200 } else { 481 };
        let r = sip::response(msg, code, None, false, &[], None);
        self.send(r, src);
        if known {
            let call_id = msg.call_id().to_owned();
            let was_done = self
                .calls
                .get(&call_id)
                .is_some_and(|c| c.state == State::Done);
            if !was_done {
                self.finish(&call_id, now);
                if let Some(c) = self.calls.get_mut(&call_id) {
                    c.retransmit = None;
                }
            }
        }
    }

    fn on_cancel(&mut self, msg: &SipMessage, src: SocketAddr, now: Instant) {
        let call_id = msg.call_id().to_owned();
        let Some(call) = self.calls.get(&call_id) else {
            let r = sip::response(msg, 481, None, false, &[], None);
            self.send(r, src);
            return;
        };
        let proceeding = call.state == State::Proceeding;
        let to_tag = call.to_tag.clone();
        let ok = sip::response(msg, 200, Some(&to_tag), false, &[], None);
        self.send(ok, src);
        if !proceeding {
            return;
        }
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let terminated = sip::response(&call.invite, 487, Some(&to_tag), false, &[], None);
        let peer = call.peer;
        self.send(terminated.clone(), peer);
        lock(&self.shared.counters).calls_cancelled += 1;
        self.finish(&call_id, now);
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.last_response = terminated.clone();
            call.retransmit = Some(Retransmit::new(terminated, peer, now));
        }
    }

    fn on_response(&mut self, msg: &SipMessage, now: Instant) {
        let Some((_, method)) = msg.cseq() else {
            return;
        };
        let final_response = msg.status().is_some_and(|c| c >= 200);
        if method != "BYE" || !final_response {
            return;
        }
        let call_id = msg.call_id().to_owned();
        if self
            .calls
            .get(&call_id)
            .is_some_and(|c| c.state == State::Terminating)
        {
            self.finish(&call_id, now);
            if let Some(c) = self.calls.get_mut(&call_id) {
                c.retransmit = None;
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.calls
            .values()
            .flat_map(|c| {
                [
                    c.ring_at,
                    c.answer_at,
                    c.hangup_at,
                    c.retransmit.as_ref().map(|r| r.next_at.min(r.give_up_at)),
                    c.purge_at,
                ]
            })
            .flatten()
            .min()
    }

    pub(crate) fn on_timers(&mut self, now: Instant) {
        let due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                [
                    c.ring_at,
                    c.answer_at,
                    c.hangup_at,
                    c.retransmit.as_ref().map(|r| r.next_at.min(r.give_up_at)),
                    c.purge_at,
                ]
                .into_iter()
                .flatten()
                .any(|t| t <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for call_id in due {
            self.call_timers(&call_id, now);
        }
    }

    fn call_timers(&mut self, call_id: &str, now: Instant) {
        let contact = self.contact();
        let sdp = self.sdp();
        let hold = self.shared.cfg.hold;
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if call.purge_at.is_some_and(|t| t <= now) {
            self.release(call_id, now);
            self.calls.remove(call_id);
            return;
        }
        let mut sends = Vec::new();
        if call.state == State::Proceeding && call.ring_at.is_some_and(|t| t <= now) {
            call.ring_at = None;
            let r = sip::response(
                &call.invite,
                180,
                Some(&call.to_tag),
                true,
                &[("Contact", contact.clone())],
                None,
            );
            call.last_response = r.clone();
            sends.push((r, call.peer));
        }
        if call.state == State::Proceeding && call.answer_at.is_some_and(|t| t <= now) {
            call.answer_at = None;
            call.ring_at = None;
            let extra = [("Contact", contact), ("Allow", ALLOW.to_owned())];
            let r = sip::response(
                &call.invite,
                200,
                Some(&call.to_tag),
                true,
                &extra,
                Some(("application/sdp", &sdp)),
            );
            call.last_response = r.clone();
            call.state = State::Answered;
            call.retransmit = Some(Retransmit::new(r.clone(), call.peer, now));
            call.hangup_at = Some(now + hold);
            lock(&self.shared.counters).calls_answered += 1;
            sends.push((r, call.peer));
        }
        let mut hang_up = false;
        if let Some(rt) = &mut call.retransmit {
            if rt.give_up_at <= now {
                call.retransmit = None;
                match call.state {
                    // No ACK for our 200: RFC 3261 §13.3.1.4 says end the dialog with BYE.
                    State::Answered => hang_up = true,
                    State::Terminating => {
                        self.finish(call_id, now);
                        return;
                    }
                    _ => {}
                }
            } else if rt.next_at <= now {
                sends.push((rt.bytes.clone(), rt.dest));
                rt.interval = (rt.interval * 2).min(T2);
                rt.next_at = now + rt.interval;
            }
        }
        if matches!(call.state, State::Answered | State::Confirmed)
            && call.hangup_at.is_some_and(|t| t <= now)
        {
            hang_up = true;
        }
        for (b, d) in sends {
            self.send(b, d);
        }
        if hang_up {
            self.send_bye(call_id, now);
        }
    }

    /// Hangs up: BYE through the route set learned from the INVITE's Record-Route
    /// (RFC 3261 §12.1.1, §12.2.1.1), else straight to the Contact.
    fn send_bye(&mut self, call_id: &str, now: Instant) {
        let local = self.local;
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let inv = &call.invite;
        let target = inv
            .contact_uri()
            .unwrap_or_else(|| format!("sip:{}", call.peer));
        let routes: Vec<String> = inv.record_routes();
        let route_uris: Vec<&str> = routes.iter().map(|r| sip::addr_uri(r)).collect();
        let (ruri, route_headers, next_hop): (String, Vec<String>, String) =
            match route_uris.first() {
                None => (target.clone(), Vec::new(), target.clone()),
                Some(first) if sip::is_loose(first) => {
                    (target.clone(), routes.clone(), (*first).to_owned())
                }
                // A strict router takes the Request-URI's place; the target goes last.
                Some(first) => {
                    let mut rest: Vec<String> = routes[1..].to_vec();
                    rest.push(format!("<{target}>"));
                    ((*first).to_owned(), rest, (*first).to_owned())
                }
            };
        let dest = sip::resolve_uri(&next_hop).unwrap_or(call.peer);
        let mut s = format!(
            "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n",
            random_token()
        );
        for r in &route_headers {
            s.push_str(&format!("Route: {r}\r\n"));
        }
        let to_value = inv.header("To").unwrap_or("");
        let from_line = if sip::tag_param(to_value).is_some() {
            format!("From: {to_value}\r\n")
        } else {
            format!("From: {to_value};tag={}\r\n", call.to_tag)
        };
        s.push_str(&from_line);
        s.push_str(&format!(
            "To: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nUser-Agent: fsemu\r\nContent-Length: 0\r\n\r\n",
            inv.header("From").unwrap_or(""),
            inv.call_id()
        ));
        let bytes = s.into_bytes();
        call.state = State::Terminating;
        call.hangup_at = None;
        call.retransmit = Some(Retransmit::new(bytes.clone(), dest, now));
        // The channel is gone the moment FreeSWITCH hangs up.
        self.release(call_id, now);
        self.send(bytes, dest);
    }
}

const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, NOTIFY";
