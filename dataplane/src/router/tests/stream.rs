//! Specs for messages that come on a stream connection (docs/TCP.md): the connection is written
//! into fsroute's branch, bound by its MAC, so responses and fsroute's own replies go back on it;
//! requests from the callee's side of a call a TCP caller made go back on the caller's
//! connection (RFC 5923), with a Via saying TCP.

use super::*;
use crate::conn::{ConnId, Transport};

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

/// fsroute's Record-Route lines in a forwarded request, top first (the caller's own stay below).
fn own_record_routes(out: &[u8]) -> Vec<String> {
    text(out).lines().filter(|l| l.starts_with("Record-Route: <sip:127.0.0.1:5060")).map(str::to_string).collect()
}

#[test]
fn a_tcp_callers_call_to_a_udp_box_is_record_routed_twice_the_boxs_side_first() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let Action::Forward(dest) = router().handle_stream(&t, caller(), conn(), &tcp(INVITE), Instant::now(), &mut out) else { panic!() };
    assert_eq!(
        own_record_routes(&out),
        [
            format!("Record-Route: <sip:127.0.0.1:5060;lr;fsd=127.0.0.1~{}>", dest.port()),
            format!("Record-Route: <sip:127.0.0.1:5060;transport=tcp;lr;fsd=127.0.0.1~{}>", dest.port()),
        ],
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("Record-Route: <sip:127.0.0.40;lr;ftag=4fa1c2>"), "the caller's own stays below");
}

#[test]
fn a_udp_callers_call_to_a_tls_box_names_fsroutes_tls_side_to_the_box_and_its_udp_side_to_the_caller() {
    let box_addr: SocketAddr = "127.0.0.1:5071".parse().unwrap();
    let t = table_with(&[1], Algorithm::RoundRobin, 1).with_stream_destinations(vec![(box_addr, Transport::Tls)]);
    let mut out = Vec::new();
    assert_eq!(router().handle(&t, caller(), INVITE, Instant::now(), &mut out), Action::Forward(box_addr));
    assert_eq!(
        own_record_routes(&out),
        ["Record-Route: <sip:127.0.0.1:5060;transport=tls;lr;fsd=127.0.0.1~5071>", "Record-Route: <sip:127.0.0.1:5060;lr;fsd=127.0.0.1~5071>"]
    );
    assert_eq!(parse(&out).unwrap().top_via.unwrap().transport, b"TLS");
}

#[test]
fn a_call_that_keeps_its_transport_is_record_routed_once_naming_that_transport() {
    let box_addr: SocketAddr = "127.0.0.1:5071".parse().unwrap();
    let t = table_with(&[1], Algorithm::RoundRobin, 1).with_stream_destinations(vec![(box_addr, Transport::Tcp)]);
    let mut out = Vec::new();
    assert_eq!(router().handle_stream(&t, caller(), conn(), &tcp(INVITE), Instant::now(), &mut out), Action::Forward(box_addr));
    assert_eq!(own_record_routes(&out), ["Record-Route: <sip:127.0.0.1:5060;transport=tcp;lr;fsd=127.0.0.1~5071>"]);
}

#[test]
fn an_in_dialog_request_through_both_of_fsroutes_routes_pops_both_on_one_line_or_two() {
    let t = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    let both = "<sip:127.0.0.1:5060;transport=tcp;lr;fsd=127.0.0.1~5072>, <sip:127.0.0.1:5060;lr;fsd=127.0.0.1~5072>";
    let two_lines = "<sip:127.0.0.1:5060;transport=tcp;lr;fsd=127.0.0.1~5072>|Route: <sip:127.0.0.1:5060;lr;fsd=127.0.0.1~5072>";
    for routes in [both, two_lines] {
        let bye = sip(&format!("BYE sip:mod_sofia@127.0.0.21:5080 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKbye1;rport|Route: {routes}|Max-Forwards: 70|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: two-routes|CSeq: 2 BYE|Content-Length: 0||"));
        let mut out = Vec::new();
        assert_eq!(router().handle(&t, caller(), &bye, Instant::now(), &mut out), Action::Forward("127.0.0.1:5072".parse().unwrap()), "{routes}");
        let s = text(&out);
        assert!(!s.contains("Route:"), "both of fsroute's routes are gone: {s}");
        assert!(parse(&out).is_ok(), "{s}");
    }
}

#[test]
fn after_popping_both_of_its_routes_fsroute_follows_the_third() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let backend: SocketAddr = "127.0.0.1:5071".parse().unwrap();
    for routes in [
        "<sip:127.0.0.1:5060;lr;fsd=127.0.0.1~5071>, <sip:127.0.0.1:5060;transport=tcp;lr;fsd=127.0.0.1~5071>, <sip:127.0.0.9:5099;lr>",
        "<sip:127.0.0.1:5060;lr;fsd=127.0.0.1~5071>|Route: <sip:127.0.0.1:5060;transport=tcp;lr;fsd=127.0.0.1~5071>, <sip:127.0.0.9:5099;lr>",
    ] {
        let bye = sip(&format!("BYE sip:caller@127.0.0.7:5062 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKfsbye|Route: {routes}|From: <sip:c@d>;tag=2|To: <sip:a@b>;tag=1|Call-ID: c3|CSeq: 5 BYE||"));
        let mut out = Vec::new();
        assert_eq!(router().handle(&t, backend, &bye, Instant::now(), &mut out), Action::Forward("127.0.0.9:5099".parse().unwrap()), "{routes}");
        let s = text(&out);
        assert_eq!(s.matches("Route:").count(), 1, "{s}");
        assert!(s.contains("Route: <sip:127.0.0.9:5099;lr>\r\n"), "{s}");
    }
}
