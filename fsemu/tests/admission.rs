//! The emulator refuses what a real FreeSWITCH refuses (docs/ADMISSION.md) and says so the way
//! FreeSWITCH does: sofia's 503 on the SIP side; `api status`, HEARTBEAT and `fsctl` on
//! the ESL side; per-reason refusal counters on the handle. Loopback only; every wait is
//! bounded.

mod common;

use std::collections::HashMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{emulator, Raw, Uac};
use fsroute_esl::serialize::SHUTDOWN_NOTICE;
use fsroute_esl::{Event, HeartbeatStats};
use fsroute_fsemu::sip::{SipMessage, StartLine};
use fsroute_fsemu::{EmulatorHandle, Refusals};

/// Sleeps until just after the box's next 1 s tick, so a burst sent now falls in one
/// box-second.
fn at_start_of_box_second(emu: &EmulatorHandle) -> u64 {
    let up = emu.uptime();
    let rest = Duration::from_secs(1) - Duration::from_nanos(u64::from(up.subsec_nanos()));
    std::thread::sleep(rest + Duration::from_millis(30));
    emu.uptime().as_secs()
}

/// The first 100 or 503 of each of `ids`, by Call-ID (later 180/200s are skipped).
fn first_answers(uac: &Uac, ids: &[String]) -> HashMap<String, SipMessage> {
    let mut got = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < ids.len() && Instant::now() < deadline {
        let Some(m) = uac.recv_within(Duration::from_millis(500)) else {
            continue;
        };
        if matches!(m.status(), Some(100 | 503)) {
            got.entry(m.call_id().to_owned()).or_insert(m);
        }
    }
    assert_eq!(got.len(), ids.len(), "every INVITE answered: {got:?}");
    got
}

fn burst(uac: &Uac, prefix: &str, n: usize) -> (usize, usize, HashMap<String, SipMessage>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        uac.send(&uac.invite(id, ""));
    }
    let got = first_answers(uac, &ids);
    let admitted = got.values().filter(|m| m.status() == Some(100)).count();
    (admitted, n - admitted, got)
}

/// sofia's refusal, byte for byte in the parts that matter.
fn assert_sofia_503(m: &SipMessage) {
    assert!(
        matches!(&m.start, StartLine::Response { code: 503, reason } if reason == "Maximum Calls In Progress"),
        "{:?}",
        m.start
    );
    assert_eq!(m.header("Retry-After"), Some("300"));
}

fn options(uac: &Uac, id: &str) -> String {
    format!(
        "OPTIONS sip:{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{id}\r\nFrom: <sip:p@{me}>;tag={id}\r\n\
         To: <sip:{uas}>\r\nCall-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        uas = uac.uas,
        me = uac.addr()
    )
}

/// Sends OPTIONS and returns the status it got.
fn ping(uac: &Uac, id: &str) -> Option<u16> {
    uac.send(&options(uac, id));
    uac.recv().status()
}

/// Answers the 200, then hangs up with BYE and waits for its 200.
fn ack_and_bye(uac: &Uac, call_id: &str, ok: &SipMessage) {
    let tag = ok.to_tag().expect("To-tag on 200").to_owned();
    uac.send(&uac.in_dialog("ACK", call_id, &tag, 1));
    uac.send(&uac.in_dialog("BYE", call_id, &tag, 2));
    loop {
        let m = uac.recv();
        if m.cseq().is_some_and(|(_, method)| method == "BYE") && m.status() == Some(200) {
            return;
        }
    }
}

fn api(c: &mut Raw, cmd: &str) -> String {
    String::from_utf8(c.command(&format!("api {cmd}")).body).expect("utf-8 reply")
}

#[test]
fn sps_budget_admits_n_minus_one_per_box_second_and_refuses_the_rest_with_503_retry_after_300() {
    let emu = emulator(|c| {
        c.sessions_per_second = 5;
        c.hold = Duration::from_secs(30);
    });
    let uac = Uac::new(&emu);
    at_start_of_box_second(&emu);
    let (admitted, refused, got) = burst(&uac, "s1", 8);
    assert_eq!((admitted, refused), (4, 4), "sps 5 lets 4 through");
    for m in got.values().filter(|m| m.status() == Some(503)) {
        assert_sofia_503(m);
    }
    assert_eq!(
        emu.refusals(),
        Refusals {
            sps: 4,
            ..Refusals::default()
        }
    );
    // The next box-second refills the budget to 5 again.
    at_start_of_box_second(&emu);
    let (admitted, refused, _) = burst(&uac, "s2", 6);
    assert_eq!((admitted, refused), (4, 2));
    assert_eq!(emu.active_calls(), 8);
    assert_eq!(emu.calls_rejected(), 6);
}

#[test]
fn a_bridged_call_spends_two_of_the_budget() {
    let emu = emulator(|c| {
        c.sessions_per_second = 7;
        c.channels_per_call = 2;
        c.hold = Duration::from_secs(30);
    });
    let uac = Uac::new(&emu);
    at_start_of_box_second(&emu);
    // Budget 7: 6,5 | 4,3 | 2,1 | the fourth A-leg takes it to 0.
    let (admitted, refused, _) = burst(&uac, "k2", 6);
    assert_eq!((admitted, refused), (3, 3));
    assert_eq!(emu.snapshot().session_count, 6);
    assert_eq!(emu.refusals().sps, 3);
}

#[test]
fn max_sessions_refusal_is_sofias_503_and_a_live_limit_change_takes_effect() {
    let emu = emulator(|c| {
        c.max_sessions = 4;
        c.channels_per_call = 2;
        c.hold = Duration::from_secs(30);
    });
    let uac = Uac::new(&emu);
    uac.call("m1");
    uac.call("m2");
    uac.send(&uac.invite("m3", ""));
    let r = uac.recv();
    assert_sofia_503(&r);
    assert_eq!(ping(&uac, "m-opt"), Some(503), "OPTIONS on a full box");
    assert_eq!(
        emu.refusals(),
        Refusals {
            sessions: 1,
            ..Refusals::default()
        }
    );
    emu.set_max_sessions(6);
    assert_eq!(emu.model().max_sessions, 6);
    uac.send(&uac.invite("m4", ""));
    assert_eq!(uac.recv().status(), Some(100));
    assert_eq!(emu.snapshot().session_count, 6);
}

#[test]
fn min_idle_cpu_refuses_a_box_busy_with_background_work() {
    let emu = emulator(|c| {
        c.background_cpu = 60;
        c.min_idle_cpu = 50.0;
        c.idle_cpu_smoothing = 1;
        c.hold = Duration::from_secs(30);
    });
    let uac = Uac::new(&emu);
    // After the first sample Idle-CPU is 100 − 60 = 40 < 50.
    at_start_of_box_second(&emu);
    assert_eq!(emu.snapshot().idle_cpu_micro, 40_000_000);
    uac.send(&uac.invite("cpu1", ""));
    assert_sofia_503(&uac.recv());
    assert_eq!(
        emu.refusals(),
        Refusals {
            cpu: 1,
            ..Refusals::default()
        }
    );
    assert_eq!(
        ping(&uac, "cpu-opt"),
        Some(200),
        "sofia's pre-check ignores CPU"
    );
    emu.set_min_idle_cpu(30.0);
    uac.send(&uac.invite("cpu2", ""));
    assert_eq!(uac.recv().status(), Some(100));
}

#[test]
fn pause_inbound_refuses_and_pause_check_reports_it() {
    let emu = emulator(|c| c.hold = Duration::from_secs(30));
    let uac = Uac::new(&emu);
    let mut esl = Raw::login(&emu);
    assert_eq!(api(&mut esl, "fsctl pause_check inbound"), "false");
    assert_eq!(api(&mut esl, "fsctl pause inbound"), "+OK\n");
    assert_eq!(api(&mut esl, "fsctl pause_check inbound"), "true");
    assert_eq!(
        api(&mut esl, "fsctl pause_check"),
        "false",
        "pause all is its own flag"
    );
    uac.send(&uac.invite("p1", ""));
    assert_sofia_503(&uac.recv());
    assert_eq!(ping(&uac, "p-opt"), Some(503));
    assert_eq!(emu.refusals().paused, 1);
    assert_eq!(api(&mut esl, "fsctl resume inbound"), "+OK\n");
    assert_eq!(api(&mut esl, "fsctl pause_check inbound"), "false");
    uac.send(&uac.invite("p2", ""));
    assert_eq!(uac.recv().status(), Some(100));
    // The handle drives the same flag.
    emu.pause_inbound(true);
    assert_eq!(api(&mut esl, "fsctl pause_check inbound"), "true");
    emu.pause_inbound(false);
    assert_eq!(api(&mut esl, "fsctl pause_check inbound"), "false");
}

#[test]
fn shutdown_elegant_fires_shutdown_requested_keeps_accepting_and_finishes_when_calls_reach_zero() {
    let emu = emulator(|c| c.hold = Duration::from_secs(30));
    let uac = Uac::new(&emu);
    let mut watcher = Raw::login(&emu);
    assert_eq!(
        watcher
            .command("event plain SHUTDOWN_REQUESTED")
            .reply_text(),
        Some("+OK event listener enabled plain")
    );
    let mut ctl = Raw::login(&emu);
    let ok1 = uac.call("e1");
    assert_eq!(api(&mut ctl, "fsctl shutdown elegant"), "+OK\n");
    let f = watcher.frame();
    assert_eq!(f.content_type(), Some("text/event-plain"));
    let ev = Event::parse_plain(&f.body).unwrap();
    assert_eq!(ev.get("Event-Name"), Some("SHUTDOWN_REQUESTED"));
    assert_eq!(ev.get("Event-Info"), Some("elegant"));
    assert_eq!(ev.get("Core-UUID"), Some(emu.core_uuid().as_str()));
    assert_eq!(api(&mut ctl, "fsctl shutdown_check"), "true");

    let ok2 = uac.call("e2");
    assert_eq!(emu.active_calls(), 2, "elegant keeps accepting calls");
    ack_and_bye(&uac, "e1", &ok1);
    assert!(!emu.is_down(), "one call left");
    ack_and_bye(&uac, "e2", &ok2);
    assert!(emu.is_down(), "the last call's end shuts the box down");

    let notice = watcher.frame();
    assert_eq!(notice.content_type(), Some("text/disconnect-notice"));
    assert_eq!(notice.body, SHUTDOWN_NOTICE);
    assert!(
        watcher.frame_within(Duration::from_secs(2)).is_none(),
        "closed"
    );
    uac.send(&uac.invite("e3", ""));
    assert!(
        uac.recv_within(Duration::from_millis(500)).is_none(),
        "SIP no longer answers"
    );
    assert!(
        TcpStream::connect(emu.esl_addr()).is_err(),
        "the ESL port is closed"
    );
    assert_eq!(emu.esl_connections(), 0);
}

#[test]
fn shutdown_asap_refuses_new_calls_at_once_and_finishes_at_zero_calls() {
    let emu = emulator(|c| c.hold = Duration::from_secs(30));
    let uac = Uac::new(&emu);
    let ok = uac.call("a1");
    emu.shutdown_asap();
    uac.send(&uac.invite("a2", ""));
    assert_sofia_503(&uac.recv());
    assert_eq!(ping(&uac, "a-opt"), Some(503));
    assert_eq!(emu.refusals().shutdown, 1);
    assert!(!emu.is_down());
    ack_and_bye(&uac, "a1", &ok);
    assert!(emu.is_down());
}

#[test]
fn api_status_lines_5_and_7_carry_the_configured_sps_and_min_idle_cpu_and_fsctl_changes_them() {
    let emu = emulator(|c| {
        c.sessions_per_second = 17;
        c.min_idle_cpu = 12.5;
        // No load at all, so Idle-CPU is 100.00 whenever the status is taken.
        c.background_cpu = 0;
    });
    let mut esl = Raw::login(&emu);
    let status = api(&mut esl, "status");
    let lines: Vec<&str> = status.split('\n').collect();
    assert_eq!(
        lines[4], "0 session(s) per Sec out of max 17, peak 0, last 5min 0 ",
        "{status}"
    );
    assert_eq!(lines[6], "min idle cpu 12.50/100.00", "{status}");
    assert_eq!(api(&mut esl, "fsctl sps 9"), "+OK sessions per second: 9\n");
    assert_eq!(api(&mut esl, "fsctl sps"), "+OK sessions per second: 9\n");
    assert_eq!(
        api(&mut esl, "fsctl max_sessions 5"),
        "+OK max sessions: 5\n"
    );
    assert_eq!(
        api(&mut esl, "fsctl min_idle_cpu 7"),
        "+OK min idle cpu: 7.00%\n"
    );
    let status = api(&mut esl, "status");
    let lines: Vec<&str> = status.split('\n').collect();
    assert!(lines[4].contains(" per Sec out of max 9, "), "{status}");
    assert_eq!(lines[5], "5 session(s) max");
    assert_eq!(lines[6], "min idle cpu 7.00/100.00");
    let parsed = HeartbeatStats::from_status(status.as_bytes()).unwrap();
    assert_eq!(parsed.sessions_per_sec_limit, Some(9));
    assert_eq!(parsed.min_idle_cpu_micro, Some(7_000_000));
    assert_eq!(
        api(&mut esl, "fsctl min_idle_cpu 0"),
        "+OK min idle cpu: DISABLED\n"
    );
    let bad = api(&mut esl, "fsctl frobnicate");
    assert!(
        bad.starts_with("-ERR INVALID COMMAND\nUSAGE: fsctl [") && !bad.ends_with('\n'),
        "{bad:?}"
    );
    assert!(api(&mut esl, "fsctl").starts_with("-USAGE: "));
}

#[test]
fn idle_cpu_follows_background_plus_cost_per_session_with_smoothing() {
    let emu = emulator(|c| {
        c.background_cpu = 10;
        c.cpu_per_session = 5.0;
        c.idle_cpu_smoothing = 2;
        c.heartbeat = Duration::from_millis(100);
        c.hold = Duration::from_secs(30);
    });
    // Subscribed first, so every heartbeat from now on is queued for us.
    let mut esl = Raw::login(&emu);
    esl.command("event plain HEARTBEAT");
    let uac = Uac::new(&emu);
    uac.call("i1");
    uac.call("i2");
    assert!(
        emu.uptime() < Duration::from_millis(900),
        "calls placed before the first sample"
    );
    let mut seen: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.last() != Some(&80_000_000) && Instant::now() < deadline {
        let f = esl.frame();
        let s = HeartbeatStats::from_event(&Event::parse_plain(&f.body).unwrap()).unwrap();
        if seen.last() != Some(&s.idle_cpu_micro) {
            seen.push(s.idle_cpu_micro);
        }
    }
    // Ring of 2 starting at [100, 100]; each sample is 100 − 10 − 5 × 2 = 80.
    assert_eq!(seen, [100_000_000, 90_000_000, 80_000_000]);
}

#[test]
fn heartbeat_session_per_sec_is_the_budget_left_in_the_box_second() {
    let emu = emulator(|c| {
        c.sessions_per_second = 5;
        c.heartbeat = Duration::from_millis(100);
        c.hold = Duration::from_secs(30);
    });
    let uac = Uac::new(&emu);
    let mut esl = Raw::login(&emu);
    esl.command("event plain HEARTBEAT");
    let second = at_start_of_box_second(&emu);
    let (admitted, _, _) = burst(&uac, "hb", 2);
    assert_eq!(admitted, 2);
    let mut this_second = None;
    let mut next_second = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while next_second.is_none() && Instant::now() < deadline {
        let f = esl.frame();
        let s = HeartbeatStats::from_event(&Event::parse_plain(&f.body).unwrap()).unwrap();
        let at = s.uptime_msec.unwrap() / 1000;
        if at == second && s.session_count == 2 {
            this_second.get_or_insert(s);
        } else if at == second + 1 {
            next_second = Some(s);
        }
    }
    let this_second = this_second.expect("a heartbeat in the burst's box-second");
    assert_eq!(this_second.session_per_sec, Some(3), "5 − 2 left");
    let next_second = next_second.expect("a heartbeat in the next box-second");
    assert_eq!(next_second.session_per_sec, Some(5), "refilled on the tick");
    assert_eq!(next_second.session_per_sec_last, Some(2));
    // Over-spent: the budget goes negative inside, the heartbeat says 0.
    at_start_of_box_second(&emu);
    burst(&uac, "hb2", 7);
    assert_eq!(emu.snapshot().sps_remaining, 0);
}

#[test]
fn network_delay_delays_sip_by_twice_the_delay_and_esl_writes_by_the_delay() {
    let d = Duration::from_millis(60);
    let emu = emulator(|c| c.network_delay = d);
    let uac = Uac::new(&emu);
    let t0 = Instant::now();
    assert_eq!(ping(&uac, "nd-opt"), Some(200));
    assert!(
        t0.elapsed() >= 2 * d,
        "OPTIONS round trip {:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    let ok = uac.call("nd-call");
    assert_eq!(ok.status(), Some(200));
    assert!(t0.elapsed() >= 2 * d, "INVITE to 200 {:?}", t0.elapsed());
    let mut esl = Raw::login(&emu);
    let t0 = Instant::now();
    assert_eq!(api(&mut esl, "hostname"), "fsemu");
    assert!(t0.elapsed() >= d, "api reply {:?}", t0.elapsed());
}
