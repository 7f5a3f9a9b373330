//! Handshake and steady-state scenarios through `ClientProto`, fed with frames built by the
//! crate's own server serialisers (which tests/vectors.rs pins to docs/ESL.md byte for byte).

use fsroute_esl::serialize::{self, GOODBYE};
use fsroute_esl::{
    ClientConfig, ClientEvent, ClientProto, ClientState, Command, Credentials, EventFormat, FrameError,
    HeartbeatError, HeartbeatFormat, HeartbeatParams, Limits, OutEvent, ProtoError, StatusParams,
};

fn heartbeat(session_count: u64, idle_cpu_micro: u32) -> HeartbeatParams {
    HeartbeatParams {
        core_uuid: "6b7a3c1e-2f4d-4e8a-9b1c-3d5e7f9a0b2c".into(),
        hostname: "fs-node-01".into(),
        switchname: "fs-node-01".into(),
        ipv4: "10.0.0.21".into(),
        ipv6: "::1".into(),
        timestamp_us: 1_741_944_400_123_456,
        utc_offset_secs: 0,
        calling_line: 95,
        sequence: 48213,
        event_info: "System Ready".into(),
        uptime_us: 184_480_512_087,
        version: "1.10.12-release~64bit".into(),
        session_count,
        max_sessions: 1000,
        session_per_sec: 28,
        session_per_sec_last: 2,
        session_per_sec_max: 19,
        session_per_sec_five_min: 6,
        session_since_startup: 81234,
        session_peak_max: 212,
        session_peak_five_min: 48,
        idle_cpu_micro,
    }
}

fn status_body() -> Vec<u8> {
    StatusParams {
        uptime_us: 5_000_000,
        version_human: "1.10.12-release 64bit".into(),
        ready: true,
        session_since_startup: 10,
        session_count: 4,
        session_peak_max: 9,
        session_peak_five_min: 5,
        session_per_sec_last: 1,
        sessions_per_sec_limit: 30,
        session_per_sec_max: 3,
        session_per_sec_five_min: 2,
        max_sessions: 500,
        min_idle_cpu_micro: 0,
        idle_cpu_micro: 78_400_000,
        stack_size_kib: 240,
        stack_max_kib: 8192,
    }
    .body()
}

fn outputs(p: &mut ClientProto) -> Vec<String> {
    std::iter::from_fn(|| p.poll_output()).map(|b| String::from_utf8(b).unwrap()).collect()
}

fn events(p: &mut ClientProto) -> Vec<ClientEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn client(format: HeartbeatFormat) -> ClientProto {
    ClientProto::new(Credentials::password("ClueCon").unwrap(), format)
}

/// Runs greeting → auth → subscribe → seed and checks every write along the way.
fn ready_client(format: HeartbeatFormat) -> ClientProto {
    let mut p = client(format);
    assert_eq!(outputs(&mut p), Vec::<String>::new(), "nothing is sent before the greeting");
    p.handle_input(serialize::GREETING).unwrap();
    assert_eq!(outputs(&mut p), ["auth ClueCon\n\n"]);
    p.handle_input(&serialize::command_reply("+OK accepted")).unwrap();
    let fmt = EventFormat::from(format).as_str();
    assert_eq!(outputs(&mut p), [format!("event {fmt} HEARTBEAT\n\n")]);
    p.handle_input(&serialize::command_reply(&format!("+OK event listener enabled {fmt}"))).unwrap();
    assert_eq!(outputs(&mut p), ["api status\n\n"]);
    assert_eq!(p.state(), ClientState::Seeding);
    p.handle_input(&serialize::api_response(&status_body())).unwrap();
    assert!(p.is_ready());
    p
}

#[test]
fn successful_handshake_authenticates_subscribes_and_seeds_from_api_status() {
    let mut p = ready_client(HeartbeatFormat::Json);
    let ev = events(&mut p);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!(ev[0], ClientEvent::Authenticated);
    assert_eq!(ev[1], ClientEvent::Subscribed);
    let ClientEvent::Seed(s) = &ev[2] else { panic!("{ev:?}") };
    assert_eq!((s.session_count, s.max_sessions, s.idle_cpu_micro), (4, 500, 78_400_000));
    assert_eq!(s.sessions_per_sec_limit, Some(30));
    assert_eq!(p.pending_commands(), 0);
}

#[test]
fn heartbeats_in_json_and_plain_become_stats() {
    for format in [HeartbeatFormat::Json, HeartbeatFormat::Plain] {
        let mut p = ready_client(format);
        events(&mut p);
        p.handle_input(&heartbeat(37, 87_633_333).to_event().encode(format.into()).to_bytes()).unwrap();
        let ev = events(&mut p);
        let [ClientEvent::Heartbeat(s)] = ev.as_slice() else { panic!("{ev:?}") };
        assert_eq!((s.session_count, s.max_sessions, s.idle_cpu_micro), (37, 1000, 87_633_333));
    }
}

#[test]
fn wrong_password_reports_auth_failed_then_disconnect() {
    let mut p = client(HeartbeatFormat::Json);
    p.handle_input(serialize::GREETING).unwrap();
    outputs(&mut p);
    let mut bytes = serialize::command_reply("-ERR invalid");
    bytes.extend(serialize::disconnect_notice(GOODBYE));
    p.handle_input(&bytes).unwrap();
    assert_eq!(
        events(&mut p),
        [
            ClientEvent::AuthFailed { reply: "-ERR invalid".into() },
            ClientEvent::Disconnected { linger: false, reason: String::from_utf8(GOODBYE.to_vec()).unwrap() },
        ]
    );
    assert_eq!(outputs(&mut p), Vec::<String>::new(), "no subscription after a refused login");
    assert_eq!(p.state(), ClientState::Closed);
    assert_eq!(p.handle_input(serialize::GREETING), Err(ProtoError::FrameAfterDisconnect));
}

#[test]
fn userauth_credentials_send_userauth_and_accept_the_extended_reply() {
    let creds = Credentials::user("1000@example.com", "secret").unwrap();
    let mut p = ClientProto::new(creds, HeartbeatFormat::Plain);
    p.handle_input(serialize::GREETING).unwrap();
    assert_eq!(outputs(&mut p), ["userauth 1000@example.com:secret\n\n"]);
    p.handle_input(&serialize::userauth_accepted("all", "all", true)).unwrap();
    assert_eq!(events(&mut p), [ClientEvent::Authenticated]);
    assert_eq!(outputs(&mut p), ["event plain HEARTBEAT\n\n"]);
}

#[test]
fn event_arriving_before_a_command_reply_does_not_steal_the_reply() {
    let mut p = client(HeartbeatFormat::Json);
    p.handle_input(serialize::GREETING).unwrap();
    p.handle_input(&serialize::command_reply("+OK accepted")).unwrap();
    p.handle_input(&serialize::command_reply("+OK event listener enabled json")).unwrap();
    events(&mut p);
    assert_eq!(p.state(), ClientState::Seeding);
    // A heartbeat overtakes the api/response the client is waiting for.
    let mut bytes = heartbeat(12, 99_000_000).to_event().encode(EventFormat::Json).to_bytes();
    bytes.extend(serialize::api_response(&status_body()));
    p.handle_input(&bytes).unwrap();
    let ev = events(&mut p);
    assert!(matches!(&ev[0], ClientEvent::Heartbeat(s) if s.session_count == 12), "{ev:?}");
    assert!(matches!(&ev[1], ClientEvent::Seed(s) if s.session_count == 4), "{ev:?}");
    assert!(p.is_ready());
}

#[test]
fn replies_to_pipelined_commands_are_matched_in_fifo_order() {
    let mut p = ready_client(HeartbeatFormat::Json);
    events(&mut p);
    p.send(Command::api("show calls count")).unwrap();
    p.send(Command::Filter { header: "Event-Name".into(), value: "HEARTBEAT".into() }).unwrap();
    p.send(Command::event(EventFormat::Json, &["NOPE"])).unwrap();
    assert_eq!(
        outputs(&mut p),
        ["api show calls count\n\n", "filter Event-Name HEARTBEAT\n\n", "event json NOPE\n\n"]
    );
    let mut bytes = serialize::api_response(&serialize::show_count(3));
    bytes.extend(heartbeat(1, 50_000_000).to_event().encode(EventFormat::Json).to_bytes());
    bytes.extend(serialize::command_reply("+OK filter added. [Event-Name]=[HEARTBEAT]"));
    bytes.extend(serialize::command_reply("-ERR no keywords supplied"));
    p.handle_input(&bytes).unwrap();
    let ev = events(&mut p);
    assert_eq!(ev[0], ClientEvent::ApiResponse { command: "api show calls count".into(), body: b"\n3 total.\n".to_vec() });
    assert!(matches!(ev[1], ClientEvent::Heartbeat(_)));
    assert!(matches!(&ev[2], ClientEvent::CommandOk { command, reply } if command == "filter Event-Name HEARTBEAT" && reply.is_ok()));
    assert_eq!(ev[3], ClientEvent::CommandFailed { command: "event json NOPE".into(), reply: "-ERR no keywords supplied".into() });
}

#[test]
fn heartbeat_with_missing_field_is_rejected_while_the_connection_stays_usable() {
    let mut p = ready_client(HeartbeatFormat::Json);
    events(&mut p);
    let mut ev = heartbeat(37, 87_633_333).to_event();
    ev.headers.retain(|(n, _)| n != "Max-Sessions");
    p.handle_input(&ev.encode(EventFormat::Json).to_bytes()).unwrap();
    assert_eq!(events(&mut p), [ClientEvent::HeartbeatRejected(HeartbeatError::Missing { field: "Max-Sessions" })]);
    p.handle_input(&heartbeat(38, 87_000_000).to_event().encode(EventFormat::Json).to_bytes()).unwrap();
    assert!(matches!(events(&mut p).as_slice(), [ClientEvent::Heartbeat(s)] if s.session_count == 38));
}

#[test]
fn heartbeat_with_nan_idle_cpu_is_rejected_naming_the_field() {
    let mut p = ready_client(HeartbeatFormat::Plain);
    events(&mut p);
    let mut ev = heartbeat(37, 0).to_event();
    for (n, v) in ev.headers.iter_mut() {
        if n == "Idle-CPU" {
            *v = fsroute_esl::Value::Single(b"nan".to_vec());
        }
    }
    p.handle_input(&ev.encode(EventFormat::Plain).to_bytes()).unwrap();
    let got = events(&mut p);
    let [ClientEvent::HeartbeatRejected(e)] = got.as_slice() else { panic!("{got:?}") };
    assert!(matches!(e, HeartbeatError::NotFinite { field: "Idle-CPU", .. }));
    assert!(e.to_string().contains("Idle-CPU"));
    assert!(p.is_ready());
}

#[test]
fn heartbeat_with_idle_cpu_above_100_or_negative_count_is_rejected() {
    let mut p = ready_client(HeartbeatFormat::Json);
    events(&mut p);
    let bad = OutEvent::new()
        .header("Event-Name", "HEARTBEAT")
        .header("Idle-CPU", "100.5")
        .header("Session-Count", "1")
        .header("Max-Sessions", "10");
    p.handle_input(&bad.encode(EventFormat::Json).to_bytes()).unwrap();
    let bad = OutEvent::new()
        .header("Event-Name", "HEARTBEAT")
        .header("Idle-CPU", "50")
        .header("Session-Count", "-1")
        .header("Max-Sessions", "10");
    p.handle_input(&bad.encode(EventFormat::Json).to_bytes()).unwrap();
    let got = events(&mut p);
    assert!(matches!(got[0], ClientEvent::HeartbeatRejected(HeartbeatError::OutOfRange { field: "Idle-CPU", .. })), "{got:?}");
    assert!(matches!(got[1], ClientEvent::HeartbeatRejected(HeartbeatError::Negative { field: "Session-Count", .. })), "{got:?}");
}

#[test]
fn json_event_with_invalid_utf8_is_decoded_lossily_and_does_not_kill_the_connection() {
    let mut p = ready_client(HeartbeatFormat::Json);
    events(&mut p);
    let ev = OutEvent::new().header("Event-Name", "CUSTOM").header("Caller-Name", b"Ren\xe9".to_vec());
    p.handle_input(&ev.encode(EventFormat::Json).to_bytes()).unwrap();
    let body = b"{\"Event-Name\":\"HEARTBEAT\",\"Idle-CPU\":".to_vec();
    let mut broken = format!("Content-Length: {}\nContent-Type: text/event-json\n\n", body.len()).into_bytes();
    broken.extend(body);
    p.handle_input(&broken).unwrap();
    p.handle_input(&heartbeat(5, 60_000_000).to_event().encode(EventFormat::Json).to_bytes()).unwrap();
    let got = events(&mut p);
    assert!(matches!(&got[0], ClientEvent::Event(e) if e.get("Caller-Name") == Some("Ren\u{FFFD}")), "{got:?}");
    assert!(matches!(got[1], ClientEvent::EventRejected(_)), "{got:?}");
    assert!(matches!(got[2], ClientEvent::Heartbeat(_)), "{got:?}");
}

#[test]
fn oversized_frame_is_a_typed_error_and_the_connection_is_poisoned() {
    let mut config = ClientConfig::new(Credentials::password("ClueCon").unwrap(), HeartbeatFormat::Json);
    config.limits = Limits { max_header_bytes: 1024, max_body_bytes: 512 };
    let mut p = ClientProto::with_config(config);
    p.handle_input(serialize::GREETING).unwrap();
    let big = serialize::api_response(&vec![b'x'; 513]);
    let err = p.handle_input(&big).unwrap_err();
    assert_eq!(err, ProtoError::Frame(FrameError::BodyTooLarge { declared: 513, max: 512 }));
    assert_eq!(p.handle_input(serialize::GREETING), Err(err));
}

#[test]
fn reply_with_no_command_pending_is_a_protocol_violation() {
    let mut p = client(HeartbeatFormat::Json);
    assert_eq!(
        p.handle_input(&serialize::command_reply("+OK")),
        Err(ProtoError::UnsolicitedReply { got: "command/reply" })
    );
}

#[test]
fn api_response_where_a_command_reply_is_due_is_a_protocol_violation() {
    let mut p = client(HeartbeatFormat::Json);
    p.handle_input(serialize::GREETING).unwrap();
    let err = p.handle_input(&serialize::api_response(b"x")).unwrap_err();
    assert!(matches!(err, ProtoError::MismatchedReply { expected: "command/reply", got: "api/response", .. }), "{err}");
    assert!(!err.to_string().contains("ClueCon"), "the label of an auth command hides the password");
}

#[test]
fn second_greeting_is_a_protocol_violation() {
    let mut p = ready_client(HeartbeatFormat::Json);
    assert_eq!(
        p.handle_input(serialize::GREETING),
        Err(ProtoError::UnexpectedAuthRequest { state: ClientState::Ready })
    );
}

#[test]
fn rude_rejection_is_reported_before_the_disconnect() {
    let mut p = client(HeartbeatFormat::Json);
    let mut bytes = serialize::rude_rejection();
    bytes.extend(serialize::disconnect_notice(GOODBYE));
    p.handle_input(&bytes).unwrap();
    let got = events(&mut p);
    assert_eq!(got[0], ClientEvent::RudeRejection { reason: "Access Denied, go away.\n".into() });
    assert!(matches!(got[1], ClientEvent::Disconnected { linger: false, .. }));
}

#[test]
fn failed_subscription_is_reported_and_the_seed_still_runs() {
    let mut p = client(HeartbeatFormat::Json);
    p.handle_input(serialize::GREETING).unwrap();
    p.handle_input(&serialize::command_reply("+OK accepted")).unwrap();
    p.handle_input(&serialize::command_reply("-ERR permission denied")).unwrap();
    p.handle_input(&serialize::api_response(b"-ERR permission denied\n")).unwrap();
    let got = events(&mut p);
    assert_eq!(
        got[1..],
        [
            ClientEvent::CommandFailed { command: "event json HEARTBEAT".into(), reply: "-ERR permission denied".into() },
            ClientEvent::CommandFailed { command: "api status".into(), reply: "-ERR permission denied".into() },
        ]
    );
}

#[test]
fn seed_can_be_disabled() {
    let mut config = ClientConfig::new(Credentials::password("ClueCon").unwrap(), HeartbeatFormat::Json);
    config.seed_with_status = false;
    let mut p = ClientProto::with_config(config);
    p.handle_input(serialize::GREETING).unwrap();
    p.handle_input(&serialize::command_reply("+OK accepted")).unwrap();
    p.handle_input(&serialize::command_reply("+OK event listener enabled json")).unwrap();
    assert!(p.is_ready());
    assert_eq!(outputs(&mut p), ["auth ClueCon\n\n", "event json HEARTBEAT\n\n"]);
}

#[test]
fn handshake_survives_byte_by_byte_delivery() {
    let mut p = client(HeartbeatFormat::Plain);
    let mut stream = serialize::GREETING.to_vec();
    stream.extend(serialize::command_reply("+OK accepted"));
    stream.extend(serialize::command_reply("+OK event listener enabled plain"));
    stream.extend(serialize::api_response(&status_body()));
    let enc = heartbeat(7, 70_000_000).to_event().encode(EventFormat::Plain);
    stream.extend(enc.to_bytes());
    for b in &stream {
        p.handle_input(std::slice::from_ref(b)).unwrap();
    }
    let got = events(&mut p);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(matches!(got[3], ClientEvent::Heartbeat(ref s) if s.session_count == 7));
}
