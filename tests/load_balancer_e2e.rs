//! End-to-end specs of the load_balancer: per-box capacities that are never exceeded across
//! shards, 503 + Retry-After when nothing is free, capacity coming back after BYE, failover that
//! hides a failing box from the caller, a CANCEL in the middle of a failover, calls between two
//! heartbeats spreading instead of piling onto one box, units of calls whose BYE was lost coming
//! back once the box's readings stop counting them, and a box claiming 2^64 − 1 sessions read as
//! the configured ceiling. Emulated FreeSWITCH boxes, SIPp callers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fsroute_fsemu::{Emulator, EmulatorConfig, EmulatorHandle, Respond503};

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


fn fs_box(proxy: &Proxy, b: &EmulatorHandle) -> serde_json::Value {
    let url = format!("fs://{}", b.esl_addr());
    let st = proxy.status();
    st["freeswitch"].as_array().unwrap().iter().find(|x| x["url"] == url.as_str()).cloned().unwrap_or_else(|| panic!("{url} in {st}"))
}

#[test]
fn calls_whose_bye_is_lost_give_their_units_back_once_two_readings_no_longer_count_them() {
    let _g = serial();
    let fs = emulator(Duration::from_millis(5), Duration::from_millis(300));
    let row = [(fs.sip_addr(), format!("ch=fs://:ClueCon@{}", fs.esl_addr()))];
    let proxy = Proxy::start(&lb_config(&row, "capacity_model = \"opensips\"\nheartbeat_timeout = \"10s\"\n"));
    assert!(wait_for(Duration::from_secs(5), || lb_loads(&proxy)[0].1 == 10_000), "{:?}", lb_loads(&proxy));
    // Ten calls whose BYE never comes: the box holds them (for two minutes), so does fsroute.
    let sf = repo_path("tests/scenarios/no_bye_uac.xml");
    let run = Sipp::uac(proxy.sip, Some(&sf), 10, 20, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(fs.active_calls(), 10);
    // While the box counts them, every reading leaves them alone.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lb_loads(&proxy)[0].2, 10);
    assert_eq!(fs_box(&proxy, &fs)["units_reconciled"], 0);
    // Their ends are lost: the box says it has none, fsroute still holds ten, 10 below capacity.
    fs.set_reported(0, 10_000, 100_000_000);
    assert!(
        wait_for(Duration::from_secs(10), || lb_loads(&proxy)[0].2 == 0),
        "{:?}\n{}",
        lb_loads(&proxy),
        proxy.log()
    );
    let st = proxy.status();
    let r = &st["load_balancer"][0]["destinations"][0]["resources"][0];
    assert_eq!((r["max"].as_u64(), r["forgiven"].as_u64()), (Some(10_000), Some(10)), "{st}");
    assert_eq!(fs_box(&proxy, &fs)["units_reconciled"], 10);
    let m = http(proxy.admin, "GET", "/metrics", "").1;
    let metric = format!("fsroute_fs_units_reconciled_total{{fs=\"fs://{}\"}} 10", fs.esl_addr());
    assert!(m.contains(&metric), "{m}");
    assert!(proxy.log().contains("units reconciled"));
}

#[test]
fn a_box_claiming_two_to_the_64_max_sessions_counts_as_the_ceiling_and_status_says_so() {
    let _g = serial();
    let (liar, honest) = (emulator(Duration::from_millis(5), Duration::from_millis(300)), emulator(Duration::from_millis(5), Duration::from_millis(300)));
    liar.set_reported(0, u64::MAX, 100_000_000);
    let rows = [
        (liar.sip_addr(), format!("ch=fs://:ClueCon@{}", liar.esl_addr())),
        (honest.sip_addr(), format!("ch=fs://:ClueCon@{}", honest.esl_addr())),
    ];
    let proxy = Proxy::start(&lb_config(&rows, "capacity_model = \"opensips\"\nmax_sessions_ceiling = 10000\n"));
    assert!(wait_for(Duration::from_secs(5), || fs_box(&proxy, &liar)["clamped"]["max_sessions"].as_u64() > Some(0)), "{}", proxy.status());
    let b = fs_box(&proxy, &liar);
    assert_eq!(b["max_sessions"], 10_000, "{b}");
    assert_eq!(b["clamped"]["sessions_per_second"], 0, "{b}");
    assert_eq!(fs_box(&proxy, &honest)["clamped"]["max_sessions"], 0);
    // Both boxes say 10 000 free sessions now: the liar weighs the same as its honest neighbour.
    assert!(wait_for(Duration::from_secs(5), || lb_loads(&proxy).iter().all(|(_, max, _)| *max == 10_000)), "{:?}", lb_loads(&proxy));
    let m = http(proxy.admin, "GET", "/metrics", "").1;
    let line = m
        .lines()
        .find(|l| l.starts_with("fsroute_fs_reports_clamped_total") && l.contains(&liar.esl_addr().to_string()) && l.contains("field=\"max_sessions\""))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(!line.ends_with(" 0"), "{line}");
    assert_eq!(proxy.log().matches("reports more than any real box").count(), 1, "logged once per box: {}", proxy.log());
}
