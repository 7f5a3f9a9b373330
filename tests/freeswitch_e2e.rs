//! End-to-end specs of FreeSWITCH-driven routing: emulated FreeSWITCH boxes (ESL server + SIP UAS
//! telling the same story) behind `fs://` weights, SIPp callers, and `/status` as the observer.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use fsroute_fsemu::{Emulator, EmulatorConfig, EmulatorHandle};

const HEARTBEAT: Duration = Duration::from_millis(300);

fn emulator() -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        sip: "127.0.0.1:0".parse().unwrap(),
        esl: "127.0.0.1:0".parse().unwrap(),
        password: "ClueCon".into(),
        max_sessions: 1000,
        // SIPp's UAC hangs up first; the box never does within a test.
        hold: Duration::from_secs(120),
        heartbeat: HEARTBEAT,
        answer_delay: Duration::from_millis(5),
        background_cpu: 0,
        // These specs drive SIPp at up to 100 calls/s: above FreeSWITCH's default sps of 30.
        sessions_per_second: 10_000,
        ..EmulatorConfig::default()
    })
    .expect("start emulator")
}

fn fs_config(boxes: &[&EmulatorHandle], heartbeat_timeout: &str) -> String {
    let mut c = format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = 2\n\n[control]\nadmin = \"{{ADMIN}}\"\nheartbeat_timeout = \"{heartbeat_timeout}\"\nstale_weight = 0\ncpu_cost_prior = 0.1\n\n"
    );
    for b in boxes {
        c.push_str(&format!(
            "[[dispatcher]]\nsetid = 1\ndestination = \"sip:{}\"\nweight = \"fs://:ClueCon@{}\"\n\n",
            b.sip_addr(),
            b.esl_addr()
        ));
    }
    c.push_str("[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\n");
    c
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn dest(st: &serde_json::Value, addr: SocketAddr) -> &serde_json::Value {
    st["dispatcher"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == addr.to_string())
        .expect("destination in /status")
}

fn weights(proxy: &Proxy, a: &EmulatorHandle, b: &EmulatorHandle) -> (u64, u64) {
    let st = proxy.status();
    (dest(&st, a.sip_addr())["weight"].as_u64().unwrap(), dest(&st, b.sip_addr())["weight"].as_u64().unwrap())
}

/// Places `calls` SIPp calls through the proxy and returns how many each box answered.
fn place_calls(proxy: &Proxy, a: &EmulatorHandle, b: &EmulatorHandle, calls: u32) -> (u64, u64) {
    let (a0, b0) = (a.calls_answered(), b.calls_answered());
    let run = Sipp::uac(proxy.sip, None, calls, 100, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    (a.calls_answered() - a0, b.calls_answered() - b0)
}

#[test]
fn wrr_follows_heartbeat_weights_and_the_split_follows_a_changed_report() {
    let _g = serial();
    let (a, b) = (emulator(), emulator());
    // Box A reports 900 of 1000 sessions busy; box B is idle.
    a.set_reported(900, 1000, 100_000_000);
    b.set_reported(0, 1000, 100_000_000);
    let proxy = Proxy::start(&fs_config(&[&a, &b], "5s"));
    assert!(
        wait_until(Duration::from_secs(5), || weights(&proxy, &a, &b) == (10, 100)),
        "weights {:?}\n{}",
        weights(&proxy, &a, &b),
        proxy.status()
    );
    let (on_a, on_b) = place_calls(&proxy, &a, &b, 200);
    assert_eq!(on_a + on_b, 200);
    assert!(on_b * 100 >= 85 * 200, "idle box got {on_b} of 200 (busy box {on_a})");

    // The report flips; within two heartbeat intervals the table follows.
    a.set_reported(0, 1000, 100_000_000);
    b.set_reported(900, 1000, 100_000_000);
    let flipped = Instant::now();
    assert!(wait_until(Duration::from_secs(2), || weights(&proxy, &a, &b) == (100, 10)), "{:?}", weights(&proxy, &a, &b));
    // "Within two heartbeat intervals", plus this test's own /status polling period.
    assert!(flipped.elapsed() <= HEARTBEAT * 2 + Duration::from_millis(250), "took {:?}", flipped.elapsed());
    let (on_a, on_b) = place_calls(&proxy, &a, &b, 200);
    assert!(on_a * 100 >= 85 * 200, "now-idle box got {on_a} of 200 (busy box {on_b})");

    let st = proxy.status();
    let fs = &dest(&st, b.sip_addr())["fs"];
    assert_eq!(fs["connected"], true);
    assert_eq!(fs["session_count"], 900);
    assert_eq!(fs["max_sessions"], 1000);
    assert!(fs["url"].as_str().unwrap().starts_with("fs://127.0.0.1:"));
    assert!(!st.to_string().contains("ClueCon"), "password leaked into /status");
    assert!(st["control"]["heartbeat_to_table"]["count"].as_u64().unwrap() > 0);

    let (code, metrics) = http(proxy.admin, "GET", "/metrics", "");
    assert_eq!(code, 200);
    let b_label = format!("fs=\"fs://{}\"", b.esl_addr());
    for want in ["fsroute_esl_connected{", "fsroute_fs_session_count{", "fsroute_destination_forwarded_total{", "fsroute_shard_processed_total{", "fsroute_control_latency_us{"] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }
    assert!(metrics.lines().any(|l| l.starts_with("fsroute_fs_session_count{") && l.contains(&b_label) && l.ends_with(" 900")), "{metrics}");
    assert!(!metrics.contains("ClueCon"), "password leaked into /metrics");
}

#[test]
fn a_killed_box_is_stale_at_once_a_silent_one_after_heartbeat_timeout_and_both_recover() {
    let _g = serial();
    let (a, b) = (emulator(), emulator());
    let proxy = Proxy::start(&fs_config(&[&a, &b], "1s"));
    let fs_of = |h: &EmulatorHandle| dest(&proxy.status(), h.sip_addr())["fs"].clone();
    assert!(wait_until(Duration::from_secs(5), || fs_of(&a)["connected"] == true && fs_of(&b)["connected"] == true));

    // Killed: the connection drops, stale at once (well before heartbeat_timeout).
    let killed = Instant::now();
    a.kill();
    assert!(wait_until(Duration::from_secs(2), || fs_of(&a)["stale"] == true), "{}", fs_of(&a));
    assert!(killed.elapsed() < Duration::from_millis(900), "stale after {:?}", killed.elapsed());
    assert_eq!(fs_of(&a)["connected"], false);
    assert_eq!(weights(&proxy, &a, &b).0, 0, "a stale box takes stale_weight");

    // Silent but connected: stale after heartbeat_timeout.
    b.stop_heartbeats(true);
    let silent = Instant::now();
    assert!(wait_until(Duration::from_secs(4), || fs_of(&b)["stale"] == true), "{}", fs_of(&b));
    assert!(silent.elapsed() >= Duration::from_millis(700), "stale too early: {:?}", silent.elapsed());

    // A whole set stale: calls still spread (evenly) instead of failing.
    let (on_a, on_b) = place_calls(&proxy, &a, &b, 20);
    assert_eq!(on_a + on_b, 20);

    // Both come back: reconnect with backoff, heartbeats resume.
    a.restart().unwrap();
    b.stop_heartbeats(false);
    assert!(
        wait_until(Duration::from_secs(8), || fs_of(&a)["stale"] == false && fs_of(&b)["stale"] == false),
        "a {} b {}",
        fs_of(&a),
        fs_of(&b)
    );
    assert!(weights(&proxy, &a, &b).0 > 0);
}
