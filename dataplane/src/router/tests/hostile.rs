//! Specs for a hostile peer at a public edge (docs/SECURITY.md): no open relay, no forged
//! responses, no self-loops, bounded call state, capacity that a stranger cannot release, and a
//! graceful stop that waits for what is really in flight. Each reproduces one finding of the
//! attack run that motivated it.

use super::*;

fn stranger() -> SocketAddr {
    "127.0.0.66:5060".parse().unwrap()
}

fn backend() -> SocketAddr {
    "127.0.0.1:5071".parse().unwrap()
}

/// An in-dialog request (it has a To tag) of `method` towards `ruri`, with no Route.
fn in_dialog(method: &str, ruri: &str, call_id: &str) -> Vec<u8> {
    sip(&format!(
        "{method} {ruri} SIP/2.0|Via: SIP/2.0/UDP 127.0.0.66:5060;branch=z9hG4bKevil{call_id}|Max-Forwards: 70|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: {call_id}|CSeq: 7 {method}|Content-Length: 0||"
    ))
}

/// The corpus INVITE with its own Call-ID and caller branch: a new call.
fn invite_n(n: u32) -> Vec<u8> {
    text(INVITE)
        .replace("8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e", &format!("{n:032x}"))
        .replace("4d7a1c9e8f2b3a61", &format!("{n:016x}"))
        .into_bytes()
}

#[test]
fn in_dialog_requests_from_a_stranger_to_an_address_fsroute_does_not_serve_get_403_and_are_counted() {
    let t = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    for (i, method) in ["INVITE", "BYE", "MESSAGE", "INFO"].into_iter().enumerate() {
        let req = in_dialog(method, "sip:victim@127.0.0.99:5060", &format!("relay{i}"));
        let a = r.handle(&t, stranger(), &req, Instant::now(), &mut out);
        assert_eq!(a, Action::Reply(stranger()), "{method}");
        assert!(text(&out).starts_with("SIP/2.0 403 Forbidden"), "{}", text(&out));
    }
    assert_eq!(r.stats().refused(Refusal::RelayDenied), 4);
    // An ACK is never answered: dropped and counted.
    let ack = in_dialog("ACK", "sip:victim@127.0.0.99:5060", "relay-ack");
    assert_eq!(r.handle(&t, stranger(), &ack, Instant::now(), &mut out), Action::Drop(DropReason::RelayDenied));
    // A Route naming the victim does not help either.
    let routed = text(&in_dialog("BYE", "sip:fsroute@127.0.0.1:5060", "relay-route"))
        .replace("Max-Forwards: 70", "Route: <sip:127.0.0.99:5060;lr>\r\nMax-Forwards: 70");
    let a = r.handle(&t, stranger(), routed.as_bytes(), Instant::now(), &mut out);
    assert_eq!(a, Action::Reply(stranger()));
    assert!(text(&out).starts_with("SIP/2.0 403"), "{}", text(&out));
}

#[test]
fn in_dialog_requests_reach_configured_destinations_and_remembered_calls_only() {
    let t = table_with(&[1, 1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    // Towards a configured destination: allowed from anyone (the box decides).
    let to_box = in_dialog("BYE", "sip:fs@127.0.0.1:5072", "known");
    assert_eq!(r.handle(&t, stranger(), &to_box, now, &mut out), Action::Forward("127.0.0.1:5072".parse().unwrap()));
    // A call's remembered destination serves its caller, and nobody else.
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let call_id = "8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7";
    let bye = text(&in_dialog("BYE", "sip:lb.example.net", call_id));
    assert_eq!(r.handle(&t, caller(), bye.as_bytes(), now, &mut out), Action::Forward(dest));
    let a = r.handle(&t, stranger(), bye.replace("evil", "evil2").as_bytes(), now, &mut out);
    assert_eq!(a, Action::Reply(stranger()));
    assert!(text(&out).starts_with("SIP/2.0 481"), "{}", text(&out));
}

#[test]
fn a_response_with_an_invented_fsroute_branch_is_dropped_as_forged() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let forged = sip("SIP/2.0 200 OK|Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-fsr00000000000000ab00000000000000cd|Via: SIP/2.0/UDP 127.0.0.99:5060;branch=z9hG4bKv|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: f|CSeq: 1 MESSAGE|Content-Length: 0||");
    assert_eq!(r.handle(&t, stranger(), &forged, Instant::now(), &mut out), Action::Drop(DropReason::ForgedResponse));
    assert_eq!(r.stats().dropped(DropReason::ForgedResponse), 1);
}

#[test]
fn a_real_branch_cannot_be_replayed_towards_another_address() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let ringing = backend_response(&out.clone(), RINGING);
    // Genuine: relayed to the caller.
    assert_eq!(r.handle(&t, dest, &ringing, now, &mut out), Action::Forward(caller()));
    // The same branch, the next Via pointed at a victim: dropped.
    let redirected = text(&ringing).replacen("SIP/2.0/UDP 127.0.0.7:5060", "SIP/2.0/UDP 127.0.0.99:5060", 1);
    let redirected = redirected.replace("received=127.0.0.7", "received=127.0.0.99");
    assert_eq!(r.handle(&t, dest, redirected.as_bytes(), now, &mut out), Action::Drop(DropReason::ForgedResponse));
}

#[test]
fn a_received_parameter_written_by_the_sender_is_replaced_by_its_real_address() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let raw = sip("MESSAGE sip:a@lb.example.net SIP/2.0|Via: SIP/2.0/UDP 127.0.0.66:5060;received=127.0.0.99;rport=7777;branch=z9hG4bKm1|Max-Forwards: 70|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: m1|CSeq: 1 MESSAGE|Content-Length: 0||");
    router().handle(&t, stranger(), &raw, Instant::now(), &mut out);
    let v = parse(&out).unwrap().second_via.unwrap();
    assert_eq!((v.received, v.rport), (Some(&b"127.0.0.66"[..]), Some(Some(5060))));
}

#[test]
fn a_request_whose_next_hop_is_fsroute_itself_gets_482_whatever_form_the_address_takes() {
    let mut t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let mut r = router();
    // From a destination, in-dialog requests go where they say: 0.0.0.0 and the listener loop back.
    // (127.0.0.1:5060 names fsroute: with no route left, a request to fsroute itself is 481.)
    for (ruri, code) in [("sip:x@0.0.0.0:5060", "482"), ("sip:x@[::]:5060", "482"), ("sip:x@0.0.0.0:5071", "482"), ("sip:x@127.0.0.1:5060", "481")] {
        let req = text(&in_dialog("BYE", ruri, "loop")).replace("127.0.0.66:5060;branch", "127.0.0.1:5071;branch");
        let a = r.handle(&t, backend(), req.as_bytes(), Instant::now(), &mut out);
        assert!(matches!(a, Action::Reply(_)), "{ruri}: {a:?}");
        assert!(text(&out).starts_with(&format!("SIP/2.0 {code}")), "{ruri}: {}", text(&out));
    }
    // Behind a wildcard listener, any loopback address and any of the host's own addresses at its
    // port are fsroute too.
    t.proxy.local_addrs = vec!["0.0.0.0:5060".parse().unwrap()];
    t.proxy.host_ips = vec!["192.0.2.10".parse().unwrap()];
    for ruri in ["sip:x@127.0.0.5:5060", "sip:x@192.0.2.10:5060"] {
        let req = text(&in_dialog("BYE", ruri, "loop2")).replace("127.0.0.66:5060;branch", "127.0.0.1:5071;branch");
        r.handle(&t, backend(), req.as_bytes(), Instant::now(), &mut out);
        assert!(text(&out).starts_with("SIP/2.0 482 Loop Detected"), "{ruri}: {}", text(&out));
    }
    assert!(r.stats().refused(Refusal::Loop) >= 3);
    // An ACK is never answered: it is dropped as a loop, not mistaken for a stranger's relay.
    let ack = text(&in_dialog("ACK", "sip:x@0.0.0.0:5060", "loop3")).replace("127.0.0.66:5060;branch", "127.0.0.1:5071;branch");
    assert_eq!(r.handle(&t, backend(), ack.as_bytes(), Instant::now(), &mut out), Action::Drop(DropReason::Loop));
    assert_eq!((r.stats().dropped(DropReason::Loop), r.stats().dropped(DropReason::RelayDenied)), (1, 0));
}

#[test]
fn max_forwards_above_255_is_clamped() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let raw = text(INVITE).replace("Max-Forwards: 68", "Max-Forwards: 4294967295");
    router().handle(&t, caller(), raw.as_bytes(), Instant::now(), &mut out);
    assert_eq!(parse(&out).unwrap().max_forwards.unwrap().value, 254);
}

#[test]
fn a_header_line_without_a_colon_gets_400() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut out = Vec::new();
    let raw = text(INVITE).replace("Min-SE: 90\r\n", "Min-SE 90\r\n");
    let a = router().handle(&t, caller(), raw.as_bytes(), Instant::now(), &mut out);
    assert_eq!(a, Action::Reply(caller()));
    assert!(text(&out).starts_with("SIP/2.0 400 Bad Request"), "{}", text(&out));
    assert!(text(&out).contains("CSeq: 101 INVITE"), "{}", text(&out));
}

#[test]
fn a_flood_of_new_calls_at_a_failover_route_meets_the_fork_limit_and_gets_503() {
    let mut t = failover_table(&[1, 1]);
    t.proxy.limits.forks = 50;
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let mut refused = 0;
    for n in 0..200 {
        if let Action::Reply(_) = r.handle(&t, caller(), &invite_n(n), now, &mut out) {
            assert!(text(&out).starts_with("SIP/2.0 503") && text(&out).contains("Retry-After: 5"), "{}", text(&out));
            refused += 1;
        }
        drain(&mut r);
    }
    assert_eq!(refused, 150);
    assert_eq!(r.stats().refused(Refusal::ForksFull), 150);
    r.tick(&t, now);
    assert_eq!(r.stats().forks.load(std::sync::atomic::Ordering::Relaxed), 50);
    // Once the forks are answered and aged out, new calls are taken again.
    r.tick(&t, now + Duration::from_secs(400));
    assert!(matches!(r.handle(&t, caller(), &invite_n(1000), now + Duration::from_secs(400), &mut out), Action::Forward(_)));
}

#[test]
fn stored_invites_are_bounded_in_bytes() {
    let mut t = failover_table(&[1, 1]);
    t.proxy.limits.fork_bytes = 64 * 1024;
    let mut r = router();
    let mut out = Vec::new();
    let padding = format!("X-Pad: {}\r\n", "p".repeat(8000));
    let mut forwarded = 0;
    for n in 0..40 {
        let big = text(&invite_n(n)).replace("User-Agent:", &format!("{padding}User-Agent:"));
        if let Action::Forward(_) = r.handle(&t, caller(), big.as_bytes(), Instant::now(), &mut out) {
            forwarded += 1;
        }
        drain(&mut r);
    }
    assert_eq!(forwarded, 7, "64 KiB holds seven 8.9 KB INVITEs");
    r.tick(&t, Instant::now());
    assert!(r.stats().fork_bytes.load(std::sync::atomic::Ordering::Relaxed) <= 64 * 1024);
}

#[test]
fn full_transaction_or_dialog_memory_refuses_new_calls_with_503_and_keeps_the_old_ones() {
    let mut t = table_with(&[1, 1], Algorithm::HashCallId, 1);
    t.proxy.limits.transactions = 10;
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    for n in 0..10 {
        assert!(matches!(r.handle(&t, caller(), &invite_n(n), now, &mut out), Action::Forward(_)));
    }
    assert_eq!(r.handle(&t, caller(), &invite_n(10), now, &mut out), Action::Reply(caller()));
    assert!(text(&out).starts_with("SIP/2.0 503"), "{}", text(&out));
    assert_eq!(r.stats().refused(Refusal::TransactionsFull), 1);
    // A retransmission of a remembered call still goes to its box.
    assert!(matches!(r.handle(&t, caller(), &invite_n(3), now, &mut out), Action::Forward(_)));
    t.proxy.limits.transactions = 1000;
    t.proxy.limits.dialogs = 10;
    r.handle(&t, caller(), &invite_n(11), now, &mut out);
    assert_eq!(r.stats().refused(Refusal::DialogsFull), 1);
}

/// A load_balancer call answered and then left without a BYE; returns the router, the call's box and
/// the INVITE as forwarded.
fn answered_lb_call(t: &RoutingTable, now: Instant) -> (Router, SocketAddr, Vec<u8>) {
    let mut r = router();
    let mut out = Vec::new();
    let Action::Forward(dest) = r.handle(t, caller(), INVITE, now, &mut out) else { panic!() };
    let invite_out = out.clone();
    let ok = backend_response(&invite_out, OK_INVITE);
    assert!(matches!(r.handle(t, dest, &ok, now, &mut out), Action::Forward(_)));
    (r, dest, invite_out)
}

fn lb_load(t: &RoutingTable) -> u32 {
    t.lb_groups[0].destinations[0].resources[0].as_ref().unwrap().load.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_call_whose_bye_is_lost_gives_its_units_back_at_max_call_duration() {
    let mut t = crate::testing::one_group_table(&[5], 1);
    t.proxy.max_call_duration = Duration::from_secs(3600);
    let now = Instant::now();
    let (mut r, _, _) = answered_lb_call(&t, now);
    assert_eq!(lb_load(&t), 1);
    r.tick(&t, now + Duration::from_secs(3599));
    assert_eq!(lb_load(&t), 1);
    r.tick(&t, now + Duration::from_secs(3601));
    assert_eq!(lb_load(&t), 0);
    assert_eq!(r.stats().calls_timed_out.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_forged_200_to_a_bye_from_a_stranger_does_not_release_a_live_call() {
    let t = crate::testing::one_group_table(&[5], 1);
    let now = Instant::now();
    let (mut r, _, _) = answered_lb_call(&t, now);
    let mut out = Vec::new();
    // The stranger sends a request of its own with the victim's Call-ID to obtain a real branch...
    let call_id = "8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7";
    let probe = sip(&format!("OPTIONS sip:fs@127.0.0.1:5081 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.66:5060;branch=z9hG4bKprobe|Max-Forwards: 70|From: <sip:a@b>;tag=1|To: <sip:c@d>|Call-ID: {call_id}|CSeq: 102 OPTIONS|Content-Length: 0||"));
    assert!(matches!(r.handle(&t, stranger(), &probe, now, &mut out), Action::Forward(_)));
    // ... and answers it as if it were the call's BYE.
    let forged = backend_response(&out.clone(), &sip(&format!("SIP/2.0 200 OK|Via: SIP/2.0/UDP 127.0.0.66:5060;branch=z9hG4bKprobe;received=127.0.0.66|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: {call_id}|CSeq: 102 BYE|Content-Length: 0||")));
    r.handle(&t, stranger(), &forged, now, &mut out);
    assert_eq!(lb_load(&t), 1, "the live call keeps its unit");
}

#[test]
fn a_graceful_stop_waits_for_unanswered_invites_and_answered_calls_but_not_for_finished_ones() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let invite_out = out.clone();
    assert_eq!((r.pending_invites(now), r.pending_calls(now)), (1, 1));
    r.handle(&t, dest, &backend_response(&invite_out, OK_INVITE), now, &mut out);
    assert_eq!((r.pending_invites(now), r.pending_calls(now)), (0, 1), "answered: no longer pending, still a call");
    let bye = text(&in_dialog("BYE", "sip:lb.example.net", "8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7")).replace("127.0.0.66", "127.0.0.7");
    let Action::Forward(_) = r.handle(&t, caller(), bye.as_bytes(), now, &mut out) else { panic!("{}", text(&out)) };
    let bye_ok = backend_response(&out.clone(), &sip("SIP/2.0 200 OK|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKevil8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7;received=127.0.0.7|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: 8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7|CSeq: 7 BYE|Content-Length: 0||"));
    assert!(matches!(r.handle(&t, dest, &bye_ok, now, &mut out), Action::Forward(_)));
    assert_eq!(r.pending_calls(now), 0);
    // While draining, a new INVITE gets 503 and is counted.
    r.set_draining(true);
    assert_eq!(r.handle(&t, caller(), &invite_n(5), now, &mut out), Action::Reply(caller()));
    assert_eq!(r.stats().refused(Refusal::Draining), 1);
}

#[test]
fn a_response_must_answer_the_method_its_branch_was_written_for() {
    // Found by the `router` fuzz target: a 200 for the INVITE sent back on the branch of the
    // call's BYE was relayed, and the caller took the call as answered while failover went on.
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let bye = text(&in_dialog("BYE", "sip:fs@127.0.0.1:5071", "m1")).replace("127.0.0.66", "127.0.0.7");
    let Action::Forward(dest) = r.handle(&t, caller(), bye.as_bytes(), now, &mut out) else { panic!("{}", text(&out)) };
    let bye_out = out.clone();
    let ok = |method: &str| {
        backend_response(&bye_out, &sip(&format!("SIP/2.0 200 OK|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKevilm1;received=127.0.0.7|From: <sip:a@b>;tag=1|To: <sip:c@d>;tag=2|Call-ID: m1|CSeq: 7 {method}|Content-Length: 0||")))
    };
    assert_eq!(r.handle(&t, dest, &ok("INVITE"), now, &mut out), Action::Drop(DropReason::ForgedResponse));
    assert_eq!(r.handle(&t, dest, &ok("BYE"), now, &mut out), Action::Forward(caller()));
}

#[test]
fn a_non_2xx_ack_repeats_its_invites_branch_and_a_2xx_ack_cannot_carry_an_invites_answer() {
    let t = table_with(&[1], Algorithm::RoundRobin, 1);
    let mut r = router();
    let mut out = Vec::new();
    let now = Instant::now();
    let Action::Forward(dest) = r.handle(&t, caller(), INVITE, now, &mut out) else { panic!() };
    let invite_branch = parse(&out).unwrap().top_via.unwrap().branch.unwrap().to_vec();
    let call_id = "8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7";
    // The non-2xx ACK: the INVITE's branch, MAC included (§17.1.1.3: the box matches it by branch).
    let ack = sip(&format!("ACK sip:+15551230001@lb.example.net:5060;user=phone SIP/2.0|Via: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bK-524287-1---4d7a1c9e8f2b3a61;rport|Max-Forwards: 70|To: <sip:a@b>;tag=x486|From: <sip:c@d>;tag=4fa1c2|Call-ID: {call_id}|CSeq: 101 ACK|Content-Length: 0||"));
    assert_eq!(r.handle(&t, caller(), &ack, now, &mut out), Action::Forward(dest));
    assert_eq!(parse(&out).unwrap().top_via.unwrap().branch.unwrap(), &invite_branch[..]);
    // A 2xx ACK is a transaction of its own: a "200 to the INVITE" on its branch is forged
    // (found by the `router` fuzz target: it was relayed, and failover went on).
    let ack2 = text(&in_dialog("ACK", "sip:fs@127.0.0.1:5071", call_id)).replace("127.0.0.66", "127.0.0.7").replace("CSeq: 7 ACK", "CSeq: 101 ACK");
    assert_eq!(r.handle(&t, caller(), ack2.as_bytes(), now, &mut out), Action::Forward(dest));
    let ok = backend_response(&out.clone(), OK_INVITE);
    assert_eq!(r.handle(&t, dest, &ok, now, &mut out), Action::Drop(DropReason::ForgedResponse));
}

#[test]
fn a_2xx_on_a_branch_no_invite_went_out_with_cannot_answer_a_call_being_failed_over() {
    // Found by the `router` fuzz target: a CANCEL with another branch than its INVITE's goes on
    // statelessly; a "200 to the INVITE" sent back on that CANCEL's branch (its MAC is the
    // INVITE's, §9.1) was relayed, the caller took the call as answered, and failover went on.
    let t = failover_table(&[1, 1]);
    let mut r = router();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let Action::Forward(first) = r.handle(&t, caller(), INVITE, t0, &mut out) else { panic!() };
    drain(&mut r);
    let cancel = text(CANCEL).replace("4d7a1c9e8f2b3a61", "0000000000000bad");
    let Action::Forward(to) = r.handle(&t, caller(), cancel.as_bytes(), t0, &mut out) else { panic!("{}", text(&out)) };
    assert_eq!(to, first, "a stray CANCEL still goes where the call is");
    let stray = backend_response(&out.clone(), OK_INVITE);
    assert_eq!(r.handle(&t, first, &stray, t0, &mut out), Action::Drop(DropReason::StrayAnswer));
    assert_eq!(r.stats().dropped(DropReason::StrayAnswer), 1);
    // The call is still the failover's: silence moves it on, and the caller has seen no answer.
    r.tick(&t, t0 + Duration::from_millis(2100));
    let sent = drain(&mut r);
    assert!(sent.iter().all(|(to, m)| *to != caller() || !m.starts_with("SIP/2.0 2")), "{sent:?}");
    assert!(sent.iter().any(|(to, m)| *to != first && m.starts_with("INVITE ")), "{sent:?}");
}
