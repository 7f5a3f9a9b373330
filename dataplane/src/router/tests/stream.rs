//! Specs for messages that come on a stream connection (docs/TCP.md): the connection is written
//! into fsroute's branch, bound by its MAC, so responses and fsroute's own replies go back on it;
//! requests from the callee's side of a call a TCP caller made go back on the caller's
//! connection (RFC 5923), with a Via saying TCP.

use super::*;
use crate::conn::ConnId;

fn conn() -> ConnId {
    ConnId::new(1, 7)
}

fn tcp(msg: &[u8]) -> Vec<u8> {
    text(msg).replacen("SIP/2.0/UDP", "SIP/2.0/TCP", 1).into_bytes()
}

#[test]
fn a_tcp_callers_invite_carries_its_connection_in_the_branch_and_responses_go_back_on_it() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle_stream(&t, caller(), conn(), &tcp(INVITE), now, &mut out) else { panic!("{}", text(&out)) };
    let forwarded = out.clone();
    let m = parse(&forwarded).unwrap();
    let branch = m.top_via.unwrap().branch.unwrap();
    assert_eq!(rewrite::parse_branch(branch).map(|b| b.2), Some(Some(conn())), "{}", text(branch));
    assert_eq!(m.top_via.unwrap().transport, b"UDP", "the request leaves over UDP towards a UDP backend");
    let ringing = backend_response(&forwarded, RINGING);
    assert_eq!(r.handle(&t, dest, &ringing, now, &mut out), Action::ForwardOn(conn()));
    assert!(!text(&out).contains("z9hG4bK-fsr"), "fsroute's Via is gone: {}", text(&out));
}

#[test]
fn a_response_aimed_at_another_connection_is_a_forgery() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle_stream(&t, caller(), conn(), &tcp(INVITE), now, &mut out) else { panic!() };
    let forwarded = text(&out);
    let ours = rewrite::parse_branch(parse(forwarded.as_bytes()).unwrap().top_via.unwrap().branch.unwrap()).unwrap();
    let mut other = Vec::new();
    rewrite::push_branch(&mut other, ours.0, ours.1, Some(ConnId::new(1, 8)));
    let tampered = forwarded.replacen(&forwarded[forwarded.find("z9hG4bK-fsr").unwrap()..][..11 + 48], &text(&other), 1);
    let ringing = backend_response(tampered.as_bytes(), RINGING);
    assert_eq!(r.handle(&t, dest, &ringing, now, &mut out), Action::Drop(DropReason::ForgedResponse));
}

#[test]
fn fsroutes_own_replies_to_a_stream_request_go_back_on_its_connection() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let a = router().handle_stream(&t, caller(), conn(), &tcp(OPTIONS), Instant::now(), &mut out);
    assert_eq!(a, Action::ReplyOn(conn()), "{}", text(&out));
    assert!(text(&out).starts_with("SIP/2.0 200 OK\r\n"));
}

#[test]
fn the_callees_bye_goes_back_on_the_tcp_callers_connection_with_a_tcp_via() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle_stream(&t, caller(), conn(), &tcp(INVITE), now, &mut out) else { panic!() };
    let ok = backend_response(&out.clone(), OK_INVITE);
    assert_eq!(r.handle(&t, dest, &ok, now, &mut out), Action::ForwardOn(conn()));
    let bye = sip("BYE sip:caller@127.0.0.7:5062 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKfsbye|From: <sip:+15551230001@lb.example.net;user=phone>;tag=Z8Xr3gKQ1yN2c|To: <sip:+15559870002@carrier.example.com>;tag=4fa1c2|Call-ID: 8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7|CSeq: 5 BYE|Content-Length: 0||");
    assert_eq!(r.handle(&t, dest, &bye, now, &mut out), Action::ForwardOn(conn()));
    let m = parse(&out).unwrap();
    assert_eq!(m.top_via.unwrap().transport, b"TCP", "{}", text(&out));
    // A UDP caller's call is untouched by any of this.
    let mut r = router();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let ok = backend_response(&out.clone(), OK_INVITE);
    assert_eq!(r.handle(&t, dest, &ok, now, &mut out), Action::Forward(caller()));
    assert_eq!(r.handle(&t, dest, &bye, now, &mut out), Action::Forward("127.0.0.7:5062".parse().unwrap()));
}
