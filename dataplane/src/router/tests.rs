//! Router specs: one datagram in, one action and one rewritten message out, no sockets.

use super::*;
use crate::dispatch::{Member, Selector};
use crate::sip::parse;
use std::time::Duration;

pub(crate) use crate::testing::one_set_table as table_with;

fn caller() -> SocketAddr {
    "127.0.0.7:5060".parse().unwrap()
}

fn router() -> Router {
    Router::new(0, 1, 42, Arc::new(ShardStats::default()))
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

use crate::sip::tests::CORPUS;
const INVITE: &[u8] = CORPUS[0];
const RINGING: &[u8] = CORPUS[2];
const OK_INVITE: &[u8] = CORPUS[3];
const BYE_LF: &[u8] = CORPUS[5];
const CANCEL: &[u8] = CORPUS[6];
const OPTIONS: &[u8] = CORPUS[7];
const REJECTED: &[u8] = CORPUS[8];

/// A branch fsroute would have written for an OPTIONS transaction `key`, whose responses go to
/// `reply_to`.
fn our_branch(t: &RoutingTable, key: u64, reply_to: &str) -> String {
    let mut b = Vec::new();
    rewrite::push_branch(&mut b, key, t.proxy.branch_key.mac(key, reply_to.parse().unwrap(), None, b"OPTIONS"), None);
    String::from_utf8(b).unwrap()
}

fn sip(s: &str) -> Vec<u8> {
    s.replace('|', "\r\n").into_bytes()
}

/// Turns a response received by the caller side into what the backend sends fsroute: the
/// response to the forwarded request, i.e. with fsroute's Via on top.
fn backend_response(forwarded: &[u8], template: &[u8]) -> Vec<u8> {
    let f = parse(forwarded).unwrap();
    let ours = f.top_via.unwrap().span.get(forwarded);
    let t = parse(template).unwrap();
    let at = t.headers_start as usize;
    let mut v = template[..at].to_vec();
    v.extend_from_slice(b"Via: ");
    v.extend_from_slice(ours);
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(&template[at..]);
    v
}

#[test]
fn invite_is_forwarded_with_our_via_on_top_and_max_forwards_decremented() {
    let t = table_with(&[1, 1], Algorithm::HashCallId, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let a = r.handle(&t, caller(), INVITE, now, &mut out);
    let Action::Forward(dest) = a else { panic!("{a:?}") };
    assert!(t.is_known_destination(&dest));
    let m = parse(&out).unwrap();
    let top = m.top_via.unwrap();
    assert_eq!(top.host, b"127.0.0.1");
    assert_eq!(top.port, Some(5060));
    assert!(top.branch.unwrap().starts_with(b"z9hG4bK"));
    assert_eq!(m.via_count, 3);
    assert_eq!(m.max_forwards.unwrap().value, 67);
    assert_eq!(m.body.get(&out), parse(INVITE).unwrap().body.get(INVITE));
    assert_eq!(m.content_length, Some(238));
    assert_eq!(r.stats().processed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn received_and_rport_are_filled_in_on_the_callers_via() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    // Source port differs from the Via port: rport must carry the real one.
    let src: SocketAddr = "127.0.0.7:40000".parse().unwrap();
    router().handle(&t, src, INVITE, Instant::now(), &mut out);
    let m = parse(&out).unwrap();
    let second = m.second_via.unwrap();
    assert_eq!(second.rport, Some(Some(40000)));
    assert_eq!(second.received, Some(&b"127.0.0.7"[..]));
    assert_eq!(second.branch, Some(&b"z9hG4bK-524287-1---4d7a1c9e8f2b3a61"[..]));
}

#[test]
fn received_is_added_when_the_sent_by_host_is_not_the_source() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let raw = sip("MESSAGE sip:a@lb.example.net SIP/2.0|Via: SIP/2.0/UDP sbc.example.com:5060;branch=z9hG4bKm1|Max-Forwards: 70|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: m1|CSeq: 1 MESSAGE|Content-Length: 0||");
    let mut out = Vec::new();
    router().handle(&t, caller(), &raw, Instant::now(), &mut out);
    let m = parse(&out).unwrap();
    let v = m.second_via.unwrap();
    assert_eq!(v.received, Some(&b"127.0.0.7"[..]));
    assert_eq!(v.rport, None);
}

#[test]
fn record_route_carries_the_chosen_destination() {
    let t = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let Action::Forward(dest) = router().handle(&t, caller(), INVITE, Instant::now(), &mut out) else { panic!() };
    let m = parse(&out).unwrap();
    let rr = m.record_route.unwrap();
    let token = sip::param_value(uri_params(rr.uri), b"fsd").flatten().unwrap();
    assert_eq!(parse_token(token), Some(dest));
    assert!(rr.uri.starts_with(b"sip:127.0.0.1:5060;lr"));
    // The caller's own Record-Route stays below ours.
    assert!(text(&out).contains("Record-Route: <sip:127.0.0.40;lr;ftag=4fa1c2>"));
}

#[test]
fn retransmitted_invite_cancel_and_non_2xx_ack_follow_the_invite_even_after_weights_change() {
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let t1 = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    let Action::Forward(first) = r.handle(&t1, caller(), INVITE, now, &mut out) else { panic!() };
    let invite_branch = parse(&out).unwrap().top_via.unwrap().branch.unwrap().to_vec();
    // Weights flip so that round-robin and hashing would both pick the other box now.
    let t2 = if first.port() == 5071 { table_with(&[0, 1], Algorithm::RoundRobin, 2) } else { table_with(&[1, 0], Algorithm::RoundRobin, 2) };
    for _ in 0..3 {
        assert_eq!(r.handle(&t2, caller(), INVITE, now, &mut out), Action::Forward(first));
        assert_eq!(parse(&out).unwrap().top_via.unwrap().branch.unwrap(), &invite_branch[..]);
    }
    assert_eq!(r.handle(&t2, caller(), CANCEL, now + Duration::from_secs(150), &mut out), Action::Forward(first));
    assert_eq!(parse(&out).unwrap().top_via.unwrap().branch.unwrap(), &invite_branch[..]);
    // Non-2xx ACK: same branch as the INVITE, a To tag from the 487.
    let ack = sip("ACK sip:+15551230001@lb.example.net:5060;user=phone SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bK-524287-1---4d7a1c9e8f2b3a61;rport|Max-Forwards: 70|To: <sip:+15551230001@lb.example.net;user=phone>;tag=x487|From: \"Caller Name\" <sip:+15559870002@carrier.example.com;user=phone>;tag=4fa1c2|Call-ID: 8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7|CSeq: 101 ACK|Content-Length: 0||");
    assert_eq!(r.handle(&t2, caller(), &ack, now + Duration::from_secs(151), &mut out), Action::Forward(first));
    assert_eq!(parse(&out).unwrap().top_via.unwrap().branch.unwrap(), &invite_branch[..]);
}

#[test]
fn a_cancel_after_a_long_ring_still_finds_the_invite() {
    let mut r = router();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let t = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, t0, &mut out) else { panic!() };
    let forwarded = out.clone();
    // 180s every 60 s for five minutes (Timer C restarts on each provisional response).
    for i in 1..=5 {
        let at = t0 + Duration::from_secs(60 * i);
        r.tick(&t, at);
        let resp = backend_response(&forwarded, RINGING);
        assert!(matches!(r.handle(&t, dest, &resp, at, &mut out), Action::Forward(_)));
    }
    let late = t0 + Duration::from_secs(320);
    r.tick(&t, late);
    // Weights changed meanwhile: only memory can get this right.
    let t2 = if dest.port() == 5071 { table_with(&[0, 1], Algorithm::RoundRobin, 2) } else { table_with(&[1, 0], Algorithm::RoundRobin, 2) };
    assert_eq!(r.handle(&t2, caller(), CANCEL, late, &mut out), Action::Forward(dest));
}

#[test]
fn a_2xx_ack_is_a_new_transaction_with_its_own_branch_and_follows_the_dialog() {
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let t = table_with(&[1, 1, 1], Algorithm::RoundRobin, 1);
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let invite_branch = parse(&out).unwrap().top_via.unwrap().branch.unwrap().to_vec();
    let forwarded = out.clone();
    let ok = backend_response(&forwarded, OK_INVITE);
    assert!(matches!(r.handle(&t, dest, &ok, now, &mut out), Action::Forward(_)));
    // SIPp-style ACK: no Route, Request-URI is fsroute itself.
    let ack = sip("ACK sip:service@127.0.0.1:5060 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bK-ack-new|Max-Forwards: 70|To: <sip:+15551230001@lb.example.net>;tag=Z8Xr3gKQ1yN2c|From: <sip:+15559870002@carrier.example.com>;tag=4fa1c2|Call-ID: 8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7|CSeq: 101 ACK|Content-Length: 0||");
    for _ in 0..5 {
        assert_eq!(r.handle(&t, caller(), &ack, now, &mut out), Action::Forward(dest));
    }
    assert_ne!(parse(&out).unwrap().top_via.unwrap().branch.unwrap(), &invite_branch[..]);
}

#[test]
fn in_dialog_bye_with_our_route_is_popped_and_sent_to_the_token_destination() {
    let t = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let bye = sip("BYE sip:mod_sofia@127.0.0.21:5080 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKbye1;rport|Route: <sip:127.0.0.1:5060;lr;fsd=127.0.0.1~5072>|Max-Forwards: 70|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: never-seen|CSeq: 2 BYE|Content-Length: 0||");
    assert_eq!(r.handle(&t, caller(), &bye, Instant::now(), &mut out), Action::Forward("127.0.0.1:5072".parse().unwrap()));
    let s = text(&out);
    assert!(!s.contains("Route:"), "{s}");
    assert!(!s.contains("Record-Route"), "no Record-Route on in-dialog requests: {s}");
}

#[test]
fn a_forged_token_naming_an_unknown_host_is_not_followed() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let bye = sip("BYE sip:x@lb.example.net SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKbye2|Route: <sip:127.0.0.1:5060;lr;fsd=127.0.0.99~5099>|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: forged|CSeq: 2 BYE||");
    let a = router().handle(&t, caller(), &bye, Instant::now(), &mut out);
    assert_eq!(a, Action::Reply(caller()));
    assert!(text(&out).starts_with("SIP/2.0 481 "));
}

#[test]
fn bye_from_the_backend_goes_towards_the_caller() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let backend: SocketAddr = "127.0.0.1:5071".parse().unwrap();
    let bye = sip("BYE sip:caller@127.0.0.7:5062 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKfsbye|Route: <sip:127.0.0.1:5060;lr;fsd=127.0.0.1~5071>|From: <sip:c@d>;tag=2|To: <sip:a@b>;tag=1|Call-ID: c1|CSeq: 5 BYE||");
    assert_eq!(router().handle(&t, backend, &bye, Instant::now(), &mut out), Action::Forward("127.0.0.7:5062".parse().unwrap()));
}

#[test]
fn compact_bare_lf_bye_is_forwarded_with_bare_lf_lines() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    // The corpus BYE names lb.example.net in its Route: fsroute pops it and falls back to the
    // R-URI. It comes from the backend's side, which may send towards any caller.
    let backend: SocketAddr = "127.0.0.1:5071".parse().unwrap();
    let a = router().handle(&t, backend, BYE_LF, Instant::now(), &mut out);
    assert_eq!(a, Action::Forward("127.0.0.21:5080".parse().unwrap()));
    assert!(!out.windows(2).any(|w| w == b"\r\n"), "{}", text(&out));
    assert!(parse(&out).unwrap().route.is_none());
}

#[test]
fn responses_lose_our_via_and_go_to_received_and_rport() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let src: SocketAddr = "127.0.0.7:40000".parse().unwrap();
    let Action::Forward(dest) = r.handle(&t, src, INVITE, Instant::now(), &mut out) else { panic!() };
    let forwarded = out.clone();
    // The backend echoes every Via of the forwarded request.
    let fw = parse(&forwarded).unwrap();
    let mut resp = b"SIP/2.0 180 Ringing\r\n".to_vec();
    resp.extend_from_slice(&forwarded[fw.headers_start as usize..]);
    let a = r.handle(&t, dest, &resp, Instant::now(), &mut out);
    assert_eq!(a, Action::Forward(src));
    let m = parse(&out).unwrap();
    assert_eq!(m.via_count, 2);
    assert_eq!(m.top_via.unwrap().branch, Some(&b"z9hG4bK-524287-1---4d7a1c9e8f2b3a61"[..]));
}

#[test]
fn a_response_whose_top_via_is_not_ours_is_dropped() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let mut r = router();
    assert_eq!(r.handle(&t, caller(), RINGING, Instant::now(), &mut out), Action::Drop(DropReason::NotOurVia));
    assert_eq!(r.stats().dropped(DropReason::NotOurVia), 1);
    assert_eq!(r.handle(&t, caller(), REJECTED, Instant::now(), &mut out), Action::Drop(DropReason::NotOurVia));
}

#[test]
fn two_vias_sharing_a_line_in_a_response_lose_only_ours() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let branch = our_branch(&t, 0xab, "127.0.0.7:5090");
    let resp = sip(&format!("SIP/2.0 200 OK|Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}, SIP/2.0/UDP 127.0.0.7:5090;branch=z9hG4bKc|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: v|CSeq: 1 OPTIONS|Content-Length: 0||"));
    assert_eq!(router().handle(&t, caller(), &resp, Instant::now(), &mut out), Action::Forward("127.0.0.7:5090".parse().unwrap()));
    assert!(text(&out).contains("\r\nVia: SIP/2.0/UDP 127.0.0.7:5090;branch=z9hG4bKc\r\n"), "{}", text(&out));
}

#[test]
fn max_forwards_zero_gets_483() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let raw = sip("INVITE sip:1@lb.example.net SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKmf0;rport|Max-Forwards: 0|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: mf0|CSeq: 1 INVITE|Content-Length: 0||");
    assert_eq!(router().handle(&t, caller(), &raw, Instant::now(), &mut out), Action::Reply(caller()));
    let m = parse(&out).unwrap();
    assert_eq!(m.status(), Some(483));
    assert!(m.to_tag().is_some());
    assert_eq!(m.top_via.unwrap().received, Some(&b"127.0.0.7"[..]));
    assert_eq!(m.cseq.unwrap().method, b"INVITE");
}

#[test]
fn options_to_fsroute_itself_is_answered_200_even_at_max_forwards_zero() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    assert_eq!(router().handle(&t, caller(), OPTIONS, Instant::now(), &mut out), Action::Reply(caller()));
    assert_eq!(parse(&out).unwrap().status(), Some(200));
    let raw = sip("OPTIONS sip:127.0.0.1:5060 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKo0|Max-Forwards: 0|From: <sip:a@b>;tag=1|To: <sip:127.0.0.1>|Call-ID: o0|CSeq: 1 OPTIONS||");
    assert_eq!(router().handle(&t, caller(), &raw, Instant::now(), &mut out), Action::Reply(caller()));
    assert_eq!(parse(&out).unwrap().status(), Some(200));
}

#[test]
fn max_forwards_is_inserted_when_absent() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let raw = sip("INVITE sip:1@lb.example.net SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKnomf|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: nomf|CSeq: 1 INVITE|Content-Length: 0||");
    router().handle(&t, caller(), &raw, Instant::now(), &mut out);
    assert_eq!(parse(&out).unwrap().max_forwards.unwrap().value, 70);
}

#[test]
fn malformed_requests_get_400_and_unknown_versions_505() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let raw = sip("INVITE sip:1@lb.example.net SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKbad|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: bad|CSeq: x INVITE||");
    assert_eq!(router().handle(&t, caller(), &raw, Instant::now(), &mut out), Action::Reply("127.0.0.7:5060".parse().unwrap()));
    assert!(text(&out).starts_with("SIP/2.0 400 Bad Request\r\n"));
    let raw = sip("INVITE sip:1@lb.example.net SIP/3.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKv3|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: v3|CSeq: 1 INVITE||");
    router().handle(&t, caller(), &raw, Instant::now(), &mut out);
    assert!(text(&out).starts_with("SIP/2.0 505 "));
    // A datagram shorter than its Content-Length is never forwarded.
    let raw = sip("INVITE sip:1@lb.example.net SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKcl|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: cl|CSeq: 1 INVITE|Content-Length: 900||v=0|");
    router().handle(&t, caller(), &raw, Instant::now(), &mut out);
    assert!(text(&out).starts_with("SIP/2.0 400 "));
}

#[test]
fn garbage_is_a_counted_drop() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let mut r = router();
    for g in [&b"\x00\xff garbage"[..], b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n"] {
        assert!(matches!(r.handle(&t, caller(), g, Instant::now(), &mut out), Action::Drop(_)));
    }
    assert_eq!(r.stats().dropped(DropReason::Malformed), 2);
    assert_eq!(r.stats().dropped(DropReason::Keepalive), 1);
}

#[test]
fn a_request_matching_no_route_gets_no_route_reply() {
    let mut t = table_with(&[1], Algorithm::RoundRobin, 1);
    t.routes[0].matcher.ruri_user_prefix = Some("+44".into());
    let mut out = Vec::new();
    router().handle(&t, caller(), INVITE, Instant::now(), &mut out);
    assert!(text(&out).starts_with("SIP/2.0 404 Not Found"));
    t.proxy.no_route_reply = 503;
    router().handle(&t, caller(), INVITE, Instant::now(), &mut out);
    assert!(text(&out).starts_with("SIP/2.0 503 Service Unavailable"));
}

#[test]
fn no_active_destination_gets_503() {
    let mut t = table_with(&[1, 1], Algorithm::HashCallId, 1);
    let ds = &mut t.sets[0];
    for d in &mut ds.destinations {
        d.active = false;
    }
    let members: Vec<Member<'_>> = ds.destinations.iter().map(|d| Member { key: &d.uri, weight: d.weight, priority: 0, active: false }).collect();
    ds.selector = Selector::new(&members);
    let mut out = Vec::new();
    router().handle(&t, caller(), INVITE, Instant::now(), &mut out);
    assert!(text(&out).starts_with("SIP/2.0 503 "));
}

#[test]
fn draining_answers_new_invites_503_with_retry_after_but_keeps_calls_flowing() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    r.set_draining(true);
    assert_eq!(r.handle(&t, caller(), CANCEL, now, &mut out), Action::Forward(dest));
    let raw = sip("INVITE sip:1@lb.example.net SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKdrain|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: drain|CSeq: 1 INVITE||");
    r.handle(&t, caller(), &raw, now, &mut out);
    let s = text(&out);
    assert!(s.starts_with("SIP/2.0 503 ") && s.contains("Retry-After: 5"), "{s}");
}

#[test]
fn messages_of_a_call_owned_elsewhere_are_handed_to_the_owner() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let cid = parse(INVITE).unwrap().call_id.unwrap();
    let owner = owner_shard(cid, 2);
    let mut out = Vec::new();
    let mut other = Router::new(1 - owner, 2, 1, Arc::new(ShardStats::default()));
    assert_eq!(other.handle(&t, caller(), INVITE, Instant::now(), &mut out), Action::HandOff(owner));
    let mut own = Router::new(owner, 2, 1, Arc::new(ShardStats::default()));
    assert!(matches!(own.handle(&t, caller(), INVITE, Instant::now(), &mut out), Action::Forward(_)));
    assert!(matches!(other.handle_owned(&t, caller(), INVITE, Instant::now(), &mut out), Action::Forward(_)));
}

#[test]
fn a_destination_that_is_fsroute_itself_is_a_loop() {
    let mut t = table_with(&[1], Algorithm::RoundRobin, 1);
    t.sets[0].destinations[0].addr = "127.0.0.1:5060".parse().unwrap();
    let mut out = Vec::new();
    router().handle(&t, caller(), INVITE, Instant::now(), &mut out);
    assert!(text(&out).starts_with("SIP/2.0 482 "));
}

#[test]
fn a_failed_invite_ends_the_dialog_memory_after_32_seconds() {
    let t = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, t0, &mut out) else { panic!() };
    let resp = backend_response(&out.clone(), REJECTED);
    assert!(matches!(r.handle(&t, dest, &resp, t0, &mut out), Action::Forward(_)));
    r.tick(&t, t0 + Duration::from_secs(33));
    assert_eq!(r.memory().len(), 0);
}

#[test]
fn arbitrary_bytes_never_panic_the_router() {
    use proptest::prelude::*;
    let t = table_with(&[1, 2], Algorithm::HashCallId, 1);
    let r = std::cell::RefCell::new(router());
    let out = std::cell::RefCell::new(Vec::new());
    proptest!(|(idx in 0usize..10, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut in any::<usize>())| {
        let mut data = CORPUS[idx].to_vec();
        for (at, b) in flips {
            let n = data.len();
            data[at % n] = b;
        }
        let n = data.len();
        data.truncate(n - cut % (n / 4 + 1));
        let _ = r.borrow_mut().handle(&t, caller(), &data, Instant::now(), &mut out.borrow_mut());
    });
}

#[test]
fn a_caller_sharing_an_ip_with_the_backends_is_still_a_caller() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let sipp: SocketAddr = "127.0.0.1:49340".parse().unwrap();
    let invite = sip("INVITE sip:service@127.0.0.1:5060 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1:49340;branch=z9hG4bK-1|From: <sip:a@127.0.0.1>;tag=1|To: <sip:service@127.0.0.1:5060>|Call-ID: shared-ip|CSeq: 1 INVITE|Content-Length: 0||");
    let Action::Forward(dest) = r.handle(&t, sipp, &invite, now, &mut out) else { panic!() };
    let bye = sip("BYE sip:service@127.0.0.1:5060 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1:49340;branch=z9hG4bK-2|From: <sip:a@127.0.0.1>;tag=1|To: <sip:service@127.0.0.1:5060>;tag=b|Call-ID: shared-ip|CSeq: 2 BYE|Content-Length: 0||");
    assert_eq!(r.handle(&t, sipp, &bye, now, &mut out), Action::Forward(dest));
}

// ---- failover and load_balancer (transaction-stateful INVITEs) ----

fn failover_table(weights: &[u32]) -> RoutingTable {
    let mut t = table_with(weights, Algorithm::RoundRobin, 1);
    t.routes[0].target = RouteTarget::Dispatcher { set: 0, algorithm: Algorithm::RoundRobin, failover: true };
    t
}

fn drain(r: &mut Router) -> Vec<(SocketAddr, String)> {
    let mut v = Vec::new();
    while let Some((to, b)) = r.poll_transmit() {
        v.push((to.addr, text(&b)));
        r.recycle(b);
    }
    v
}

fn status_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[test]
fn failover_moves_a_503_to_the_next_destination_acks_it_and_the_caller_sees_only_the_200() {
    let t = failover_table(&[1, 1]);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(first) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let first_invite = out.clone();
    let sent = drain(&mut r);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, status_line(&sent[0].1)), (caller(), "SIP/2.0 100 Trying"));

    let rejected = backend_response(&first_invite, REJECTED);
    let Action::Forward(second) = r.handle(&t, first, &rejected, now, &mut out) else { panic!() };
    assert_ne!(second, first);
    let second_invite = out.clone();
    let m2 = parse(&second_invite).unwrap();
    assert_eq!(m2.method(), Some(Method::Invite));
    assert_ne!(m2.top_via.unwrap().branch, parse(&first_invite).unwrap().top_via.unwrap().branch, "a new client transaction");
    let sent = drain(&mut r);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, first);
    let ack = parse(sent[0].1.as_bytes()).unwrap();
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(ack.top_via.unwrap().branch, parse(&first_invite).unwrap().top_via.unwrap().branch);
    assert_eq!(ack.to_tag(), Some(&b"aB3dE5"[..]));

    let ok = backend_response(&second_invite, OK_INVITE);
    assert_eq!(r.handle(&t, second, &ok, now, &mut out), Action::Forward("127.0.0.7:5060".parse().unwrap()));
    assert_eq!(parse(&out).unwrap().status(), Some(200));
    assert_eq!(r.stats().failovers.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn silence_for_no_answer_timeout_tries_the_next_destination_and_exhaustion_answers_408() {
    let mut t = failover_table(&[1, 1]);
    t.failover.max_attempts = 2;
    let mut r = router();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let Action::Forward(first) = r.handle(&t, caller(), INVITE, t0, &mut out) else { panic!() };
    drain(&mut r);
    r.tick(&t, t0 + Duration::from_millis(2100));
    let sent = drain(&mut r);
    assert_eq!(sent.len(), 1);
    assert_ne!(sent[0].0, first);
    assert!(sent[0].1.starts_with("INVITE "));
    r.tick(&t, t0 + Duration::from_millis(4200));
    let sent = drain(&mut r);
    assert_eq!((sent[0].0, status_line(&sent[0].1)), (caller(), "SIP/2.0 408 Request Timeout"));
}

#[test]
fn a_destination_that_rings_keeps_the_call_past_the_no_answer_timeout() {
    let t = failover_table(&[1, 1]);
    let mut r = router();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let Action::Forward(first) = r.handle(&t, caller(), INVITE, t0, &mut out) else { panic!() };
    let ringing = backend_response(&out.clone(), RINGING);
    drain(&mut r);
    assert!(matches!(r.handle(&t, first, &ringing, t0, &mut out), Action::Forward(_)));
    r.tick(&t, t0 + Duration::from_secs(30));
    assert!(drain(&mut r).is_empty());
}

#[test]
fn when_every_attempt_fails_with_503_fsroute_answers_its_own_503_never_the_boxes_and_absorbs_the_ack() {
    let mut t = failover_table(&[1, 1]);
    t.failover.max_attempts = 2;
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(a) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let rej = backend_response(&out.clone(), REJECTED);
    let Action::Forward(b) = r.handle(&t, a, &rej, now, &mut out) else { panic!() };
    let rej = backend_response(&out.clone(), REJECTED);
    assert_eq!(r.handle(&t, b, &rej, now, &mut out), Action::Reply("127.0.0.7:5060".parse().unwrap()));
    let reply = text(&out);
    assert_eq!(status_line(&reply), "SIP/2.0 503 Service Unavailable");
    // docs/ADMISSION.md: the box's `Retry-After: 300` would keep an upstream carrier away from the
    // whole balancer for five minutes; fsroute's own answer carries the configured short one.
    assert!(reply.contains("\r\nRetry-After: 5\r\n"), "{reply}");
    assert!(!reply.contains("Retry-After: 300"), "{reply}");
    let ack = sip("ACK sip:+15551230001@lb.example.net:5060;user=phone SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bK-524287-1---4d7a1c9e8f2b3a61;rport|Max-Forwards: 70|To: <sip:+15551230001@lb.example.net;user=phone>;tag=aB3dE5|From: \"Caller Name\" <sip:+15559870002@carrier.example.com;user=phone>;tag=4fa1c2|Call-ID: 8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7|CSeq: 101 ACK|Content-Length: 0||");
    assert_eq!(r.handle(&t, caller(), &ack, now, &mut out), Action::Absorbed);
}

/// One box, one attempt: the caller's INVITE, then `final_response` from the box, rewritten from the
/// REJECTED template; returns what fsroute did with it and what it sent.
fn one_attempt(t: &RoutingTable, final_response: impl Fn(String) -> String) -> (Action, String) {
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(a) = r.handle(t, caller(), INVITE, now, &mut out) else { panic!() };
    let resp = final_response(text(&backend_response(&out.clone(), REJECTED)));
    let action = r.handle(t, a, resp.as_bytes(), now, &mut out);
    (action, text(&out))
}

fn one_box_table() -> RoutingTable {
    let mut t = failover_table(&[1]);
    t.failover.max_attempts = 1;
    t
}

#[test]
fn exhausted_reply_500_follows_rfc3261_16_7_step_6_when_configured() {
    let mut t = one_box_table();
    t.failover.exhausted_reply = 500;
    let (action, reply) = one_attempt(&t, |r| r);
    assert!(matches!(action, Action::Reply(_)));
    assert_eq!(status_line(&reply), "SIP/2.0 500 Server Internal Error");
    assert!(!reply.contains("Retry-After"), "{reply}");
}

#[test]
fn a_final_failure_other_than_503_still_reaches_the_caller_as_the_box_sent_it() {
    let (action, sent) = one_attempt(&one_box_table(), |r| r.replace("503 Service Unavailable", "486 Busy Here"));
    assert!(matches!(action, Action::Forward(_)));
    assert_eq!(parse(sent.as_bytes()).unwrap().status(), Some(486));
}

#[test]
fn a_cancel_during_failover_cancels_the_attempt_in_progress() {
    let t = failover_table(&[1, 1]);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(a) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let rej = backend_response(&out.clone(), REJECTED);
    let Action::Forward(b) = r.handle(&t, a, &rej, now, &mut out) else { panic!() };
    let second_invite = out.clone();
    drain(&mut r);
    let ringing = backend_response(&second_invite, RINGING);
    assert!(matches!(r.handle(&t, b, &ringing, now, &mut out), Action::Forward(_)));
    assert_eq!(r.handle(&t, caller(), CANCEL, now, &mut out), Action::Forward(b));
    let cancel = parse(&out).unwrap();
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(cancel.top_via.unwrap().branch, parse(&second_invite).unwrap().top_via.unwrap().branch);
    let sent = drain(&mut r);
    assert_eq!((sent[0].0, status_line(&sent[0].1)), (caller(), "SIP/2.0 200 OK"));
}

#[test]
fn load_balancer_holds_a_unit_per_call_until_bye_and_answers_503_when_full() {
    let t = crate::testing::one_group_table(&[1], 1);
    let load = t.lb_groups[0].destinations[0].resources[0].as_ref().unwrap().load.clone();
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let invite_out = out.clone();
    assert_eq!(load.load(std::sync::atomic::Ordering::Relaxed), 1);
    // A second call finds no capacity.
    let other = text(INVITE).replace("8d3f0a4c2b1e", "000000000000").replace("4d7a1c9e8f2b3a61", "0000000000000001");
    r.handle(&t, caller(), other.as_bytes(), now, &mut out);
    let s = text(&out);
    assert!(s.starts_with("SIP/2.0 503 ") && s.contains("Retry-After:"), "{s}");
    // Answered, then hung up: the unit comes back with the BYE's 200.
    let ok = backend_response(&invite_out, OK_INVITE);
    r.handle(&t, dest, &ok, now, &mut out);
    assert_eq!(load.load(std::sync::atomic::Ordering::Relaxed), 1);
    let bye = sip("BYE sip:mod_sofia@127.0.0.21:5080 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKbye9;rport|Max-Forwards: 70|To: <sip:+15551230001@lb.example.net;user=phone>;tag=Z8Xr3gKQ1yN2c|From: <sip:+15559870002@carrier.example.com>;tag=4fa1c2|Call-ID: 8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7|CSeq: 102 BYE|Content-Length: 0||");
    let Action::Forward(bye_dest) = r.handle(&t, caller(), &bye, now, &mut out) else { panic!() };
    assert_eq!(bye_dest, dest, "no Route: the dialog memory names the INVITE's box");
    let bye_ok = backend_response(&out.clone(), &sip("SIP/2.0 200 OK|To: <sip:x@y>;tag=Z8Xr3gKQ1yN2c|From: <sip:a@b>;tag=4fa1c2|Call-ID: 8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7|CSeq: 102 BYE|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKbye9;rport=5060;received=127.0.0.7|Content-Length: 0||"));
    assert!(matches!(r.handle(&t, dest, &bye_ok, now, &mut out), Action::Forward(_)));
    assert_eq!(load.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_failed_load_balancer_call_gives_its_unit_back() {
    let mut t = crate::testing::one_group_table(&[1], 1);
    t.failover.max_attempts = 1;
    let load = t.lb_groups[0].destinations[0].resources[0].as_ref().unwrap().load.clone();
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let rej = backend_response(&out.clone(), REJECTED);
    r.handle(&t, dest, &rej, now, &mut out);
    assert_eq!(parse(&out).unwrap().status(), Some(503));
    assert_eq!(load.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_load_balancer_route_written_failover_false_tries_one_box_and_gives_its_unit_back() {
    let mut t = crate::testing::one_group_table(&[1, 1], 1);
    let crate::table::RouteTarget::LoadBalancer { failover, .. } = &mut t.routes[0].target else { panic!() };
    *failover = false;
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let rej = backend_response(&out.clone(), REJECTED);
    let action = r.handle(&t, dest, &rej, now, &mut out);
    assert!(matches!(action, Action::Forward(to) if to == caller()) || matches!(action, Action::Reply(to) if to == caller()), "{action:?}");
    assert_eq!(parse(&out).unwrap().status(), Some(503), "the caller hears the refusal: no second box was tried");
    let other = t.lb_groups[0].destinations.iter().map(|d| d.addr).find(|a| *a != dest).unwrap();
    assert!(drain(&mut r).iter().all(|(to, _)| *to != other), "nothing went to the other box");
    for d in &t.lb_groups[0].destinations {
        assert_eq!(d.resources[0].as_ref().unwrap().load.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}

fn gate(limit: u64) -> Arc<crate::admission::BoxAdmission> {
    let gate = Arc::new(crate::admission::BoxGate::default());
    Arc::new(crate::admission::BoxAdmission { gate, limit, headroom: limit, rate: None, seq: 1, accepting: true })
}

#[test]
fn a_dispatcher_box_without_headroom_is_passed_over_and_when_none_has_room_fsroute_answers_503() {
    let mut t = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    t.sets[0].destinations[0].fs = Some(gate(0));
    t.sets[0].destinations[1].fs = Some(gate(2));
    let second = t.sets[0].destinations[1].addr;
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    for n in 0..2u32 {
        let invite = text(INVITE).replace("Call-ID: ", &format!("Call-ID: gate{n}-"));
        assert_eq!(r.handle(&t, caller(), invite.as_bytes(), now, &mut out), Action::Forward(second), "call {n}");
    }
    let invite = text(INVITE).replace("Call-ID: ", "Call-ID: gate-full-");
    assert!(matches!(r.handle(&t, caller(), invite.as_bytes(), now, &mut out), Action::Reply(_)));
    assert_eq!(status_line(&text(&out)), "SIP/2.0 503 Service Unavailable");
}

#[test]
fn a_503_from_a_box_fsroute_thought_had_room_closes_it_until_the_cooldown() {
    let mut t = failover_table(&[1, 1]);
    t.sets[0].destinations[0].fs = Some(gate(100));
    t.sets[0].destinations[1].fs = Some(gate(100));
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(a) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let rej = backend_response(&out.clone(), REJECTED);
    let Action::Forward(b) = r.handle(&t, a, &rej, now, &mut out) else { panic!() };
    assert_ne!(a, b);
    let refused = t.sets[0].destinations.iter().find(|d| d.addr == a).unwrap();
    assert_eq!(refused.available(now), 0, "full after its 503");
    assert_eq!(refused.fs.as_ref().unwrap().gate.refusals(), 1);
    assert!(refused.available(now + t.failover.refused_cooldown) > 0, "open again after the cool-down");
}

/// A failover call whose first box stayed silent past `no_answer_timeout`, so fsroute moved on to
/// the second. Returns the router, both boxes, the INVITE each got, and when the move happened.
fn failed_over_on_silence(t: &RoutingTable) -> (Router, [SocketAddr; 2], [Vec<u8>; 2], Instant) {
    let mut r = router();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let Action::Forward(first) = r.handle(t, caller(), INVITE, t0, &mut out) else { panic!() };
    let first_invite = out.clone();
    drain(&mut r);
    let moved = t0 + t.failover.no_answer_timeout + Duration::from_millis(1);
    r.tick(t, moved);
    let sent: Vec<(SocketAddr, Vec<u8>)> = std::iter::from_fn(|| r.poll_transmit()).map(|(to, b)| (to.addr, b)).collect();
    assert_eq!(sent.len(), 1, "the next attempt only");
    let (second, second_invite) = sent.into_iter().next().unwrap();
    assert_ne!(second, first);
    (r, [first, second], [first_invite, second_invite], moved)
}

#[test]
fn a_late_2xx_from_an_attempt_given_up_on_answers_the_call_and_ends_the_failover() {
    // Found by the `router` fuzz target (fuzz/corpus/router/08-late-2xx-from-an-abandoned-attempt).
    let t = failover_table(&[1, 1, 1]);
    let (mut r, [first, second], [first_invite, _], moved) = failed_over_on_silence(&t);
    let mut out = Vec::new();
    let late_ok = backend_response(&first_invite, OK_INVITE);
    assert_eq!(r.handle(&t, first, &late_ok, moved, &mut out), Action::Forward(caller()));
    assert_eq!(r.pending_invites(moved), 0, "the call is answered");

    // The second attempt's no-answer timer runs out: neither a third box nor a 408 after the 200.
    let later = moved + t.failover.no_answer_timeout * 2;
    r.tick(&t, later);
    assert_eq!(drain(&mut r), Vec::<(SocketAddr, String)>::new());
    // In-dialog requests without a Route go to the box that answered, not the one still trying.
    let bye = sip("BYE sip:mod_sofia@127.0.0.21:5080 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKlate-bye|Max-Forwards: 70|To: <sip:+15551230001@lb.example.net;user=phone>;tag=Z8Xr3gKQ1yN2c|From: \"Caller Name\" <sip:+15559870002@carrier.example.com;user=phone>;tag=4fa1c2|Call-ID: 8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7|CSeq: 102 BYE|Content-Length: 0||");
    assert_eq!(r.handle(&t, caller(), &bye, later, &mut out), Action::Forward(first));
    assert_ne!(first, second);
}

#[test]
fn the_attempt_in_progress_is_cancelled_once_it_rings_after_the_call_was_answered_elsewhere() {
    let t = failover_table(&[1, 1]);
    let (mut r, [first, second], [first_invite, second_invite], moved) = failed_over_on_silence(&t);
    let mut out = Vec::new();
    let late_ok = backend_response(&first_invite, OK_INVITE);
    assert_eq!(r.handle(&t, first, &late_ok, moved, &mut out), Action::Forward(caller()));
    // The second box had not rung yet, so it could not be cancelled (§9.1); now it rings.
    let ringing = backend_response(&second_invite, RINGING);
    assert_eq!(r.handle(&t, second, &ringing, moved, &mut out), Action::Absorbed, "the caller has its 200");
    let sent = drain(&mut r);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, second);
    let cancel = parse(sent[0].1.as_bytes()).unwrap();
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(cancel.top_via.unwrap().branch, parse(&second_invite).unwrap().top_via.unwrap().branch);
}

#[test]
fn a_final_failure_without_a_to_header_is_still_acked_with_a_valid_ack() {
    // Found by the `router` fuzz target: the ACK copied the response's To lines, and had none.
    let t = failover_table(&[1]);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(first) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    drain(&mut r);
    let without_to: String = text(REJECTED).lines().filter(|l| !l.starts_with("To:")).map(|l| format!("{l}\r\n")).collect();
    let rejected = backend_response(&out.clone(), without_to.as_bytes());
    assert!(parse(&rejected).unwrap().to.is_none());
    r.handle(&t, first, &rejected, now, &mut out);
    let sent = drain(&mut r);
    let (to, ack) = sent.iter().find(|(_, m)| m.starts_with("ACK ")).expect("the 503 is ACKed");
    assert_eq!(*to, first);
    let ack = parse(ack.as_bytes()).unwrap();
    assert_eq!(ack.validate_request(), Ok(()));
    assert_eq!(ack.to.unwrap().uri, parse(INVITE).unwrap().to.unwrap().uri);
}
mod hostile;
mod stream;

#[test]
fn a_request_whose_first_header_is_our_route_still_gets_our_via() {
    // The popped Route line and fsroute's top lines start at the same offset: the insert must
    // come first, or the Via would be lost with the line.
    let t = table_with(&[1, 1], Algorithm::HashCallId, 1);
    let bye = sip("BYE sip:mod_sofia@127.0.0.21:5080 SIP/2.0|Route: <sip:127.0.0.1:5060;lr;fsd=127.0.0.1~5072>|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKbye1;rport|Max-Forwards: 70|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: route-first|CSeq: 2 BYE|Content-Length: 0||");
    let mut out = Vec::new();
    let a = router().handle(&t, caller(), &bye, Instant::now(), &mut out);
    assert_eq!(a, Action::Forward("127.0.0.1:5072".parse().unwrap()));
    let fwd = parse(&out).unwrap();
    assert_eq!(fwd.via_count, 2, "{}", text(&out));
    assert!(fwd.top_via.unwrap().host == b"127.0.0.1", "{}", text(&out));
    assert!(fwd.route.is_none(), "{}", text(&out));
}

/// The INVITE of the corpus with forged X-AUTH lines after its first header.
fn invite_claiming(lines: &str) -> Vec<u8> {
    let s = String::from_utf8(INVITE.to_vec()).unwrap().replace("\r\n", "\n");
    let (start, rest) = s.split_once('\n').unwrap();
    format!("{start}\n{lines}{rest}").replace('\n', "\r\n").into_bytes()
}

fn x_auth_values(out: &[u8]) -> Vec<String> {
    text(out).lines().filter(|l| l.to_ascii_lowercase().starts_with("x-auth-")).map(str::to_string).collect()
}

#[test]
fn x_auth_ip_names_the_caller_towards_a_freeswitch_box_and_a_forged_one_is_removed() {
    let mut t = table_with(&[1, 1], Algorithm::HashCallId, 1);
    let boxes: Vec<SocketAddr> = t.sets[0].destinations.iter().map(|d| d.addr).collect();
    t.proxy.x_auth = crate::table::XAuth::To(boxes);
    let forged = invite_claiming("X-AUTH-IP: 10.9.9.9\nx-auth-port: 1\n");
    let mut out = Vec::new();
    assert!(matches!(router().handle(&t, caller(), &forged, Instant::now(), &mut out), Action::Forward(_)));
    assert_eq!(x_auth_values(&out), ["X-AUTH-IP: 127.0.0.7", "X-AUTH-PORT: 5060"], "{}", text(&out));
    assert!(parse(&out).unwrap().validate_request().is_ok());
}

#[test]
fn x_auth_ip_is_not_added_towards_other_destinations_but_a_forged_one_is_still_removed() {
    let mut t = table_with(&[1, 1], Algorithm::HashCallId, 1);
    t.proxy.x_auth = crate::table::XAuth::To(vec!["127.0.0.1:9".parse().unwrap()]);
    let mut out = Vec::new();
    assert!(matches!(router().handle(&t, caller(), &invite_claiming("X-AUTH-IP: 10.9.9.9\n"), Instant::now(), &mut out), Action::Forward(_)));
    assert_eq!(x_auth_values(&out), Vec::<String>::new(), "{}", text(&out));
}

#[test]
fn x_auth_ip_never_leaves_what_the_sender_wrote() {
    let mut t = table_with(&[1, 1], Algorithm::HashCallId, 1);
    t.proxy.x_auth = crate::table::XAuth::Never;
    let mut out = Vec::new();
    assert!(matches!(router().handle(&t, caller(), &invite_claiming("X-AUTH-IP: 10.9.9.9\n"), Instant::now(), &mut out), Action::Forward(_)));
    assert_eq!(x_auth_values(&out), ["X-AUTH-IP: 10.9.9.9"]);
}

#[test]
fn more_x_auth_lines_than_fsroute_removes_are_answered_400() {
    let t = table_with(&[1, 1], Algorithm::HashCallId, 1);
    let many = "X-AUTH-IP: 10.9.9.9\n".repeat(crate::sip::XAuthLines::MAX + 1);
    let mut out = Vec::new();
    assert_eq!(router().handle(&t, caller(), &invite_claiming(&many), Instant::now(), &mut out), Action::Reply(caller()));
    assert!(text(&out).starts_with("SIP/2.0 400"), "{}", text(&out));
}

#[test]
fn every_failover_attempt_towards_a_freeswitch_box_names_the_caller_once() {
    let mut t = failover_table(&[1, 1]);
    t.proxy.x_auth = crate::table::XAuth::Always;
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(first) = r.handle(&t, caller(), &invite_claiming("X-AUTH-IP: 10.9.9.9\n"), now, &mut out) else { panic!() };
    assert_eq!(x_auth_values(&out), ["X-AUTH-IP: 127.0.0.7", "X-AUTH-PORT: 5060"], "{}", text(&out));
    let first_invite = out.clone();
    drain(&mut r);
    let Action::Forward(second) = r.handle(&t, first, &backend_response(&first_invite, REJECTED), now, &mut out) else { panic!() };
    assert_ne!(second, first);
    assert_eq!(x_auth_values(&out), ["X-AUTH-IP: 127.0.0.7", "X-AUTH-PORT: 5060"], "{}", text(&out));
}
