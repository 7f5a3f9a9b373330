//! End-to-end specs of the load_balancer: per-box capacities that are never exceeded across
//! shards, 503 + Retry-After when nothing is free, capacity coming back after BYE, failover that
//! hides a failing box from the caller, a CANCEL in the middle of a failover, and calls between two
//! heartbeats spreading instead of piling onto one box. Emulated FreeSWITCH boxes, SIPp callers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fsroute_esl::emulator::{Emulator, EmulatorConfig, EmulatorHandle, Respond503};

fn emulator(answer_delay: Duration, heartbeat: Duration) -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        sip: "127.0.0.1:0".parse().unwrap(),
        esl: "127.0.0.1:0".parse().unwrap(),
        max_sessions: 10_000,
        hold: Duration::from_secs(120),
        heartbeat,
        answer_delay,
        background_cpu: 0,
        // These specs drive SIPp at up to 100 calls/s: above FreeSWITCH's default sps of 30.
        sessions_per_second: 10_000,
        ..EmulatorConfig::default()
    })
    .expect("start emulator")
}

/// `rows`: (box, resources string) for group 1; one INVITE route to it asking for "ch".
fn lb_config(rows: &[(SocketAddr, String)], extra_control: &str) -> String {
    let mut c = format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = 2\n\n[control]\nadmin = \"{{ADMIN}}\"\n{extra_control}\n[failover]\ncodes = [408, 500, 503]\nno_answer_timeout = \"1s\"\nmax_attempts = 3\n\n"
    );
    for (addr, res) in rows {
        c.push_str(&format!("[[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:{addr}\"\nresources = \"{res}\"\n\n"));
    }
    c.push_str("[[route]]\nto_load_balancer = 1\nresources = \"ch\"\n");
    c
}

fn lb_loads(proxy: &Proxy) -> Vec<(String, u64, u64)> {
    proxy.status()["load_balancer"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let r = &d["resources"][0];
            (d["uri"].as_str().unwrap().to_string(), r["max"].as_u64().unwrap(), r["load"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn capacities_5_and_3_are_never_exceeded_the_rest_get_503_and_capacity_returns_after_bye() {
    let _g = serial();
    let (a, b) = (emulator(Duration::from_millis(5), Duration::from_secs(20)), emulator(Duration::from_millis(5), Duration::from_secs(20)));
    let proxy = Proxy::start(&lb_config(&[(a.sip_addr(), "ch=5".into()), (b.sip_addr(), "ch=3".into())], ""));
    // 20 concurrent calls of 3 s each.
    let run = Sipp::uac(proxy.sip, None, 20, 50, &["-l", "20", "-d", "3000"], Duration::from_secs(30));
    assert_eq!(run.counter("Successful call"), Some(8), "{}", run.explain());
    assert_eq!(run.counter("Failed call"), Some(12), "{}", run.explain());
    assert!(run.errors.contains("503"), "the rejected calls got 503: {}", run.explain());
    assert_eq!((a.peak_calls(), b.peak_calls()), (5, 3), "peak concurrency at the backends");
    // Every call ended with BYE: all units are back.
    assert!(lb_loads(&proxy).iter().all(|(_, _, load)| *load == 0), "{:?}", lb_loads(&proxy));
    let again = Sipp::uac(proxy.sip, None, 8, 50, &["-l", "8", "-d", "500"], Duration::from_secs(20));
    assert!(again.all_calls_succeeded(), "capacity did not come back: {}", again.explain());
}

#[test]
fn a_backend_answering_503_to_everything_is_hidden_by_failover() {
    let _g = serial();
    let (bad, good) = (emulator(Duration::from_millis(5), Duration::from_secs(20)), emulator(Duration::from_millis(5), Duration::from_secs(20)));
    bad.set_respond_503(Respond503::Always);
    let proxy = Proxy::start(&lb_config(&[(bad.sip_addr(), "ch=100".into()), (good.sip_addr(), "ch=100".into())], ""));
    let run = Sipp::uac(proxy.sip, None, 50, 50, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "the caller saw failures: {}\n{}", run.explain(), proxy.log());
    assert_eq!(good.calls_answered(), 50);
    assert!(bad.calls_rejected() > 0, "the failing box was tried");
    let failovers: u64 = proxy.status()["shards"].as_array().unwrap().iter().map(|s| s["failovers"].as_u64().unwrap()).sum();
    assert_eq!(failovers, bad.calls_rejected());
}

#[test]
fn a_cancel_in_the_middle_of_a_failover_cancels_the_attempt_in_progress() {
    let _g = serial();
    // The first box fails every call; the second rings for 5 s, long enough to be cancelled.
    let bad = emulator(Duration::from_millis(5), Duration::from_secs(20));
    bad.set_respond_503(Respond503::Always);
    let slow = emulator(Duration::from_secs(5), Duration::from_secs(20));
    let proxy = Proxy::start(&lb_config(&[(bad.sip_addr(), "ch=100".into()), (slow.sip_addr(), "ch=100".into())], ""));
    let sf = repo_path("tests/scenarios/cancel_uac.xml");
    let run = Sipp::uac(proxy.sip, Some(&sf), 10, 10, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(slow.calls_cancelled(), 10, "each CANCEL reached the attempt in progress");
    assert!(lb_loads(&proxy).iter().all(|(_, _, load)| *load == 0), "{:?}", lb_loads(&proxy));
}

#[test]
fn calls_routed_between_two_heartbeats_spread_instead_of_piling_onto_one_box() {
    let _g = serial();
    // One heartbeat at connect (the api status seed), then none during the test.
    let (a, b) = (emulator(Duration::from_millis(5), Duration::from_secs(60)), emulator(Duration::from_millis(5), Duration::from_secs(60)));
    for e in [&a, &b] {
        e.set_reported(100, 1000, 80_000_000);
    }
    let rows = [(a.sip_addr(), format!("ch=fs://:ClueCon@{}", a.esl_addr())), (b.sip_addr(), format!("ch=fs://:ClueCon@{}", b.esl_addr()))];
    let proxy = Proxy::start(&lb_config(&rows, "heartbeat_timeout = \"120s\"\ncpu_cost_prior = 0.1\n"));
    // Both boxes seeded: CPU binds, (80 % idle − 2 margin) / 0.1 configured cost = 780 free each
    // (docs/ADMISSION.md; Max-Sessions would leave 900).
    let seeded = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        lb_loads(&proxy).iter().all(|(_, max, _)| *max == 780)
    });
    assert!(seeded, "{:?}", lb_loads(&proxy));
    let run = Sipp::uac(proxy.sip, None, 40, 40, &["-l", "40", "-d", "5000"], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    // Absolute availability falls by one per call, so the boxes alternate: 20 each, give or take
    // the calls in flight on the other shard.
    let (pa, pb) = (a.peak_calls(), b.peak_calls());
    assert_eq!(pa + pb, 40);
    assert!(pa.abs_diff(pb) <= 4, "calls piled up: {pa} vs {pb}");
}

#[test]
fn an_admin_disabled_destination_takes_no_calls_until_enabled_again() {
    let _g = serial();
    let (a, b) = (emulator(Duration::from_millis(5), Duration::from_secs(20)), emulator(Duration::from_millis(5), Duration::from_secs(20)));
    let proxy = Proxy::start(&lb_config(&[(a.sip_addr(), "ch=100".into()), (b.sip_addr(), "ch=100".into())], ""));
    let body = format!(r#"{{"group_id":1,"dst_uri":"sip:{}","enabled":false}}"#, a.sip_addr());
    assert_eq!(http(proxy.admin, "POST", "/load_balancer/status", &body).0, 200);
    let run = Sipp::uac(proxy.sip, None, 20, 50, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    assert_eq!((a.calls_answered(), b.calls_answered()), (0, 20));
    assert_eq!(proxy.status()["load_balancer"][0]["destinations"][0]["enabled"], false);
    let body = body.replace("false", "true");
    assert_eq!(http(proxy.admin, "POST", "/load_balancer/status", &body).0, 200);
    let run = Sipp::uac(proxy.sip, None, 20, 50, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    assert!(a.calls_answered() > 0);
    let unknown = r#"{"group_id":1,"dst_uri":"sip:127.0.0.1:1","enabled":false}"#;
    assert_eq!(http(proxy.admin, "POST", "/load_balancer/status", unknown).0, 404);
}
