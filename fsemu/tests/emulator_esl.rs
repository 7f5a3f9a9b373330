//! The emulator's ESL server, byte for byte against docs/ESL.md §1, §2, §4 and §9, over real
//! loopback sockets.

mod common;

use std::time::{Duration, Instant};

use common::{emulator, Raw};
use fsroute_esl::serialize::{self, GOODBYE, GREETING};
use fsroute_esl::{Event, HeartbeatStats};
use fsroute_fsemu::Fault;

fn notice() -> Vec<u8> {
    serialize::disconnect_notice(GOODBYE)
}

#[test]
fn greeting_is_28_bytes_and_correct_password_is_accepted_byte_for_byte() {
    let emu = emulator(|_| {});
    let mut c = Raw::connect(&emu);
    assert_eq!(c.read_exact(28), GREETING);
    c.send(b"auth ClueCon\n\n");
    let ok = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n";
    assert_eq!(c.read_exact(ok.len()), ok);
}

#[test]
fn wrong_password_gets_err_invalid_then_the_67_byte_notice_then_close() {
    let emu = emulator(|_| {});
    let mut c = Raw::connect(&emu);
    assert_eq!(c.read_exact(28), GREETING);
    c.send(b"auth clueCon\n\n");
    let mut expected = b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n".to_vec();
    expected.extend_from_slice(b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n");
    expected.extend_from_slice(GOODBYE);
    assert_eq!(GOODBYE.len(), 67);
    assert_eq!(
        String::from_utf8_lossy(&c.read_to_close()),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn commands_before_auth_are_not_found_and_auth_still_works_afterwards() {
    let emu = emulator(|_| {});
    let mut c = Raw::connect(&emu);
    assert_eq!(c.frame().content_type(), Some("auth/request"));
    assert_eq!(
        c.command("event plain HEARTBEAT").reply_text(),
        Some("-ERR command not found")
    );
    assert_eq!(
        c.command("api status").reply_text(),
        Some("-ERR command not found")
    );
    assert_eq!(c.command("AUTH ClueCon").reply_text(), Some("+OK accepted"));
    assert_eq!(
        c.command("auth ClueCon").reply_text(),
        Some("-ERR command not found"),
        "auth twice"
    );
}

#[test]
fn userauth_with_domain_is_accepted_with_allowed_lists() {
    let emu = emulator(|_| {});
    let mut c = Raw::connect(&emu);
    c.frame();
    let r = c.command("userauth 1000@default:ClueCon");
    assert_eq!(r.reply_text(), Some("+OK accepted"));
    assert_eq!(r.header("Allowed-Events"), Some("all"));
    assert_eq!(r.header("Allowed-LOG"), Some("true"));
    let mut bad = Raw::connect(&emu);
    bad.frame();
    bad.send(b"userauth 1000:ClueCon\n\n");
    let out = bad.read_to_close();
    assert!(out.starts_with(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n"));
    assert!(out.ends_with(&notice()));
}

#[test]
fn exit_replies_bye_then_the_notice_then_closes_before_and_after_auth() {
    let emu = emulator(|_| {});
    let mut expected = serialize::command_reply("+OK bye");
    expected.extend_from_slice(&notice());
    let mut before = Raw::connect(&emu);
    assert_eq!(before.read_exact(28), GREETING);
    before.send(b"exit\n\n");
    assert_eq!(before.read_to_close(), expected);
    let mut after = Raw::login(&emu);
    after.send(b"exit\r\n\r\n");
    assert_eq!(after.read_to_close(), expected);
}

#[test]
fn event_json_heartbeat_is_confirmed_and_a_heartbeat_arrives_within_the_interval_with_live_numbers()
{
    let emu = emulator(|c| {
        c.max_sessions = 40;
        c.background_cpu = 10;
    });
    let mut c = Raw::login(&emu);
    let reply = c.command("event json HEARTBEAT");
    assert_eq!(
        serialize::command_reply("+OK event listener enabled json"),
        b"Content-Type: command/reply\nReply-Text: +OK event listener enabled json\n\n"
    );
    assert_eq!(reply.reply_text(), Some("+OK event listener enabled json"));
    let started = Instant::now();
    let f = c
        .frame_within(Duration::from_millis(400))
        .expect("a heartbeat within one 200 ms interval (+ slack)");
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(f.content_type(), Some("text/event-json"));
    assert!(f
        .body
        .starts_with(b"{\"Event-Name\":\"HEARTBEAT\",\"Core-UUID\":"));
    let ev = Event::parse_json(&f.body).unwrap();
    assert_eq!(ev.headers.len(), 27);
    let s = HeartbeatStats::from_event(&ev).unwrap();
    // The smoothing ring starts full of 100, as FreeSWITCH's does: a box just booted
    // looks idle whatever its background load.
    assert_eq!(
        (s.session_count, s.max_sessions, s.idle_cpu_micro),
        (0, 40, 100_000_000)
    );
    assert_eq!(s.core_uuid.as_deref(), Some(emu.core_uuid().as_str()));

    emu.set_reported(37, 1000, 87_633_333);
    let s = loop {
        let f = c
            .frame_within(Duration::from_millis(500))
            .expect("heartbeats keep coming");
        let s = HeartbeatStats::from_event(&Event::parse_json(&f.body).unwrap()).unwrap();
        if s.session_count == 37 {
            break s;
        }
    };
    assert_eq!((s.max_sessions, s.idle_cpu_micro), (1000, 87_633_333));
}

#[test]
fn plain_heartbeats_are_percent_encoded_and_sequence_numbers_increase() {
    let emu = emulator(|_| {});
    let mut c = Raw::login(&emu);
    assert_eq!(
        c.command("event plain heartbeat").reply_text(),
        Some("+OK event listener enabled plain")
    );
    let a = c.frame();
    let b = c.frame();
    assert_eq!(a.content_type(), Some("text/event-plain"));
    assert!(a.body.ends_with(b"\n\n"));
    let text = String::from_utf8(a.body.clone()).unwrap();
    assert!(text.contains("Event-Info: System%20Ready\n"), "{text}");
    let seq = |f: &fsroute_esl::Frame| {
        HeartbeatStats::from_event(&Event::parse_plain(&f.body).unwrap())
            .unwrap()
            .event_sequence
            .unwrap()
    };
    assert!(seq(&b) > seq(&a));
}

#[test]
fn api_status_seed_and_show_calls_count_report_the_same_numbers_as_heartbeats() {
    let emu = emulator(|_| {});
    emu.set_reported(12, 300, 64_000_000);
    let mut c = Raw::login(&emu);
    let status = c.command("api status");
    assert_eq!(status.content_type(), Some("api/response"));
    let s = HeartbeatStats::from_status(&status.body).unwrap();
    assert_eq!(
        (s.session_count, s.max_sessions, s.idle_cpu_micro),
        (12, 300, 64_000_000)
    );
    assert_eq!(s.sessions_per_sec_limit, Some(30));
    let calls = c.command("api show calls count");
    assert_eq!(calls.body, b"\n12 total.\n");
    assert_eq!(
        c.command("api nosuch thing").body,
        b"-ERR nosuch Command not found!\n"
    );
    assert_eq!(
        c.command("hello").reply_text(),
        Some("-ERR command not found")
    );
}

#[test]
fn nixevent_and_noevents_stop_delivery_and_report_their_state() {
    let emu = emulator(|c| c.heartbeat = Duration::from_millis(100));
    let mut c = Raw::login(&emu);
    assert_eq!(
        c.command("event plain ALL").reply_text(),
        Some("+OK event listener enabled plain")
    );
    assert!(
        c.frame_within(Duration::from_millis(400)).is_some(),
        "ALL includes HEARTBEAT"
    );
    assert_eq!(
        c.command("nixevent HEARTBEAT").reply_text(),
        Some("+OK events nixed")
    );
    // Drain anything queued before the nix took effect, then expect silence.
    while c.frame_within(Duration::from_millis(50)).is_some() {}
    assert!(
        c.frame_within(Duration::from_millis(350)).is_none(),
        "HEARTBEAT was nixed from ALL"
    );
    assert_eq!(
        c.command("event bogus_name").reply_text(),
        Some("-ERR no keywords supplied")
    );
    assert_eq!(
        c.command("noevents").reply_text(),
        Some("+OK no longer listening for events")
    );
    assert_eq!(
        c.command("noevents").reply_text(),
        Some("-ERR not listening for events")
    );
}

#[test]
fn split_fault_delivers_the_same_frames_in_tiny_pieces() {
    let emu = emulator(|c| c.fault = Fault::Split);
    let mut c = Raw::login(&emu);
    assert_eq!(
        c.command("event json HEARTBEAT").reply_text(),
        Some("+OK event listener enabled json")
    );
    let f = c.frame();
    assert!(HeartbeatStats::from_event(&Event::parse_json(&f.body).unwrap()).is_ok());
}

#[test]
fn stopped_heartbeats_leave_the_connection_open_but_silent() {
    let emu = emulator(|c| c.heartbeat = Duration::from_millis(100));
    let mut c = Raw::login(&emu);
    c.command("event plain HEARTBEAT");
    emu.stop_heartbeats(true);
    while c.frame_within(Duration::from_millis(50)).is_some() {}
    assert!(c.frame_within(Duration::from_millis(300)).is_none());
    assert_eq!(
        c.command("api show channels count").body,
        b"\n0 total.\n",
        "still connected"
    );
    emu.stop_heartbeats(false);
    assert!(c.frame_within(Duration::from_millis(400)).is_some());
}
