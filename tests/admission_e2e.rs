//! End-to-end specs of FreeSWITCH-aware admission (docs/ADMISSION.md) with the emulator enforcing
//! FreeSWITCH's own rules and SIPp calling: a box bound by its sessions-per-second limit gets no
//! more than `sps − 1` calls a second and the rest go elsewhere; a box busy with other work is
//! filled by CPU, its per-session cost learned from its heartbeats; a paused box and one whose
//! shutdown was requested drain. Loopback only, bounded in calls and time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fsroute_fsemu::{Emulator, EmulatorConfig, EmulatorHandle};

fn emulator(cfg: EmulatorConfig) -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        sip: "127.0.0.1:0".parse().unwrap(),
        esl: "127.0.0.1:0".parse().unwrap(),
        hold: Duration::from_secs(120),
        heartbeat: Duration::from_secs(1),
        answer_delay: Duration::from_millis(5),
        idle_cpu_smoothing: 1,
        ..cfg
    })
    .expect("start emulator")
}

fn lb_config(boxes: &[&EmulatorHandle], extra_control: &str) -> String {
    let mut c = format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = 2\n\n[control]\nadmin = \"{{ADMIN}}\"\nstatus_interval = \"1s\"\nidle_cpu_smoothing = 1\n{extra_control}\n[failover]\nmax_attempts = 3\n\n"
    );
    for b in boxes {
        c.push_str(&format!(
            "[[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:{}\"\nresources = \"ch=fs://:ClueCon@{}\"\n\n",
            b.sip_addr(),
            b.esl_addr()
        ));
    }
    c.push_str("[[route]]\nto_load_balancer = 1\nresources = \"ch\"\n");
    c
}

fn fs_box<'a>(st: &'a serde_json::Value, b: &EmulatorHandle) -> &'a serde_json::Value {
    let url = format!("fs://{}", b.esl_addr());
    st["freeswitch"].as_array().unwrap().iter().find(|x| x["url"] == url.as_str()).unwrap_or_else(|| panic!("{url} in {st}"))
}


/// Waits until fsroute has read every box's `api status` (its sps limit is known).
fn wait_limits_known(proxy: &Proxy, boxes: &[&EmulatorHandle]) {
    assert!(
        wait_for(Duration::from_secs(10), || {
            let st = proxy.status();
            boxes.iter().all(|b| fs_box(&st, b)["headroom"]["sps_limit"].is_u64())
        }),
        "{}",
        proxy.status()
    );
}

#[test]
fn an_sps_limited_box_gets_at_most_sps_minus_one_calls_a_second_and_the_rest_go_to_its_neighbour() {
    let _g = serial();
    let slow = emulator(EmulatorConfig { sessions_per_second: 6, max_sessions: 1000, ..EmulatorConfig::default() });
    let big = emulator(EmulatorConfig { sessions_per_second: 10_000, max_sessions: 1000, ..EmulatorConfig::default() });
    let proxy = Proxy::start(&lb_config(&[&slow, &big], ""));
    wait_limits_known(&proxy, &[&slow, &big]);
    // 20 calls/s for 5 s: the sps-6 box could take 5 a second, the rest must go elsewhere.
    let t0 = Instant::now();
    let run = Sipp::uac(proxy.sip, None, 100, 20, &[], Duration::from_secs(30));
    let secs = t0.elapsed().as_secs_f64();
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    let r = slow.refusals();
    assert!(r.sps <= 1, "the sps box refused {} INVITEs for its rate: {:?}", r.sps, r);
    let on_slow = slow.calls_answered();
    assert!(on_slow >= 10, "the sps box should be used up to its rate: {on_slow} calls");
    assert!((on_slow as f64) <= 5.0 * (secs + 1.0), "{on_slow} calls in {secs:.1} s on a box limited to 5/s");
    assert_eq!(on_slow + big.calls_answered(), 100);
    let st = proxy.status();
    assert_eq!(fs_box(&st, &slow)["headroom"]["by_limit"]["rate_per_window"], 5, "{st}");
}

#[test]
fn a_box_busy_with_other_work_fills_by_cpu_its_cost_learned_and_its_neighbour_takes_the_rest() {
    let _g = serial();
    // 50 % background, 2 points a session, min-idle-cpu 10: FreeSWITCH refuses past 20 sessions.
    let busy = emulator(EmulatorConfig {
        max_sessions: 1000,
        background_cpu: 50,
        cpu_per_session: 2.0,
        min_idle_cpu: 10.0,
        sessions_per_second: 10_000,
        ..EmulatorConfig::default()
    });
    let small = emulator(EmulatorConfig { max_sessions: 30, background_cpu: 0, cpu_per_session: 0.01, sessions_per_second: 10_000, ..EmulatorConfig::default() });
    let proxy = Proxy::start(&lb_config(&[&busy, &small], ""));
    wait_limits_known(&proxy, &[&busy, &small]);
    // 45 calls of 20 s at 5 calls/s: more than the busy box's 20 and the small box's 30 alone.
    let run = Sipp::uac(proxy.sip, None, 45, 5, &["-d", "20000", "-l", "45"], Duration::from_secs(60));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    // FreeSWITCH samples Idle-CPU once a second, so within a second a box may take a few calls
    // past its CPU limit before it refuses; at 5 calls/s that is at most 5.
    assert!(busy.peak_calls() <= 25, "peak {} on a box whose CPU holds 20", busy.peak_calls());
    assert!(busy.calls_answered() >= 10, "the busy box takes what its CPU allows: {}", busy.calls_answered());
    let st = proxy.status();
    let h = &fs_box(&st, &busy)["headroom"];
    assert_eq!(h["cpu_cost_source"], "fit", "{st}");
    let cost = h["cpu_cost_per_session"].as_f64().unwrap();
    assert!((1.5..=2.5).contains(&cost), "learned {cost} points a session, the box spends 2: {st}");
    // Each refusal is a wasted round trip: the first ones teach the cost, then they stop.
    let refused = busy.refusals().cpu;
    assert!(refused <= 5, "the busy box refused {refused} INVITEs: {:?}\n{st}", busy.refusals());
}

#[test]
fn a_paused_box_and_one_whose_shutdown_was_requested_drain_while_their_calls_continue() {
    let _g = serial();
    let a = emulator(EmulatorConfig { sessions_per_second: 10_000, ..EmulatorConfig::default() });
    let b = emulator(EmulatorConfig { sessions_per_second: 10_000, ..EmulatorConfig::default() });
    let proxy = Proxy::start(&lb_config(&[&a, &b], ""));
    wait_limits_known(&proxy, &[&a, &b]);
    a.pause_inbound(true);
    assert!(wait_for(Duration::from_secs(5), || fs_box(&proxy.status(), &a)["lifecycle"] == "paused"), "{}", proxy.status());
    let run = Sipp::uac(proxy.sip, None, 20, 20, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!((a.calls_answered(), a.refusals().paused), (0, 0), "a paused box is not even tried");
    a.pause_inbound(false);
    assert!(wait_for(Duration::from_secs(5), || fs_box(&proxy.status(), &a)["lifecycle"] == "running"), "{}", proxy.status());

    b.shutdown_elegant();
    assert!(wait_for(Duration::from_secs(5), || fs_box(&proxy.status(), &b)["lifecycle"] == "shutdown_requested"), "{}", proxy.status());
    let before = b.calls_answered();
    let run = Sipp::uac(proxy.sip, None, 20, 20, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(b.calls_answered(), before, "no new calls to a box that asked to shut down");
    let m = http(proxy.admin, "GET", "/metrics", "").1;
    let draining = format!("fsroute_fs_draining{{fs=\"fs://{}\"}} 1", b.esl_addr());
    assert!(m.contains(&draining), "{m}");
}
