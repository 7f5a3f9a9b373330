//! Every frame docs/ESL.md gives in full, decoded and (for server frames) re-encoded byte for
//! byte, with the lengths the document lists.

use fsroute_esl::serialize::{self, GOODBYE};
use fsroute_esl::{
    Decoder, Event, EventFormat, Frame, HeartbeatParams, HeartbeatStats, Message, OutEvent, StatusParams,
};

const HEARTBEAT_PLAIN_BODY: &str = "Event-Name: HEARTBEAT
Core-UUID: 6b7a3c1e-2f4d-4e8a-9b1c-3d5e7f9a0b2c
FreeSWITCH-Hostname: fs-node-01
FreeSWITCH-Switchname: fs-node-01
FreeSWITCH-IPv4: 10.0.0.21
FreeSWITCH-IPv6: %3A%3A1
Event-Date-Local: 2025-03-14%2009%3A26%3A40
Event-Date-GMT: Fri,%2014%20Mar%202025%2009%3A26%3A40%20GMT
Event-Date-Timestamp: 1741944400123456
Event-Calling-File: switch_core.c
Event-Calling-Function: send_heartbeat
Event-Calling-Line-Number: 95
Event-Sequence: 48213
Event-Info: System%20Ready
Up-Time: 0%20years,%202%20days,%203%20hours,%2014%20minutes,%2040%20seconds,%20512%20milliseconds,%2087%20microseconds
FreeSWITCH-Version: 1.10.12-release%2Bgit~20240802T210227Z~a88d069d6f~64bit
Uptime-msec: 184480512
Session-Count: 37
Max-Sessions: 1000
Session-Per-Sec: 28
Session-Per-Sec-Last: 2
Session-Per-Sec-Max: 19
Session-Per-Sec-FiveMin: 6
Session-Since-Startup: 81234
Session-Peak-Max: 212
Session-Peak-FiveMin: 48
Idle-CPU: 87.633333

";

const HEARTBEAT_JSON_BODY: &str = r#"{"Event-Name":"HEARTBEAT","Core-UUID":"6b7a3c1e-2f4d-4e8a-9b1c-3d5e7f9a0b2c","FreeSWITCH-Hostname":"fs-node-01","FreeSWITCH-Switchname":"fs-node-01","FreeSWITCH-IPv4":"10.0.0.21","FreeSWITCH-IPv6":"::1","Event-Date-Local":"2025-03-14 09:26:40","Event-Date-GMT":"Fri, 14 Mar 2025 09:26:40 GMT","Event-Date-Timestamp":"1741944400123456","Event-Calling-File":"switch_core.c","Event-Calling-Function":"send_heartbeat","Event-Calling-Line-Number":"95","Event-Sequence":"48213","Event-Info":"System Ready","Up-Time":"0 years, 2 days, 3 hours, 14 minutes, 40 seconds, 512 milliseconds, 87 microseconds","FreeSWITCH-Version":"1.10.12-release+git~20240802T210227Z~a88d069d6f~64bit","Uptime-msec":"184480512","Session-Count":"37","Max-Sessions":"1000","Session-Per-Sec":"28","Session-Per-Sec-Last":"2","Session-Per-Sec-Max":"19","Session-Per-Sec-FiveMin":"6","Session-Since-Startup":"81234","Session-Peak-Max":"212","Session-Peak-FiveMin":"48","Idle-CPU":"87.633333"}"#;

const BACKGROUND_JOB_PLAIN_BODY: &str = "Event-Name: BACKGROUND_JOB
Core-UUID: 6b7a3c1e-2f4d-4e8a-9b1c-3d5e7f9a0b2c
FreeSWITCH-Hostname: fs-node-01
FreeSWITCH-Switchname: fs-node-01
FreeSWITCH-IPv4: 10.0.0.21
FreeSWITCH-IPv6: %3A%3A1
Event-Date-Local: 2025-03-14%2009%3A26%3A41
Event-Date-GMT: Fri,%2014%20Mar%202025%2009%3A26%3A41%20GMT
Event-Date-Timestamp: 1741944401004211
Event-Calling-File: mod_event_socket.c
Event-Calling-Function: api_exec
Event-Calling-Line-Number: 1572
Event-Sequence: 48219
Job-UUID: 0d9e4a52-7c1b-4f3e-8a60-5b2f1c7d9e31
Job-Command: show
Job-Command-Arg: calls%20count
Content-Length: 11


37 total.
";

const STATUS_BODY: &str = "UP 0 years, 2 days, 3 hours, 14 minutes, 40 seconds, 512 milliseconds, 87 microseconds
FreeSWITCH (Version 1.10.12-release git a88d069 2024-08-02 21:02:27Z 64bit) is ready
81234 session(s) since startup
37 session(s) - peak 212, last 5min 48 \n2 session(s) per Sec out of max 30, peak 19, last 5min 6 \n1000 session(s) max
min idle cpu 0.00/87.63
Current Stack Size/Max 240K/8192K
";

fn example_heartbeat() -> HeartbeatParams {
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
        version: "1.10.12-release+git~20240802T210227Z~a88d069d6f~64bit".into(),
        session_count: 37,
        max_sessions: 1000,
        session_per_sec: 28,
        session_per_sec_last: 2,
        session_per_sec_max: 19,
        session_per_sec_five_min: 6,
        session_since_startup: 81234,
        session_peak_max: 212,
        session_peak_five_min: 48,
        idle_cpu_micro: 87_633_333,
    }
}

fn example_background_job() -> OutEvent {
    OutEvent::new()
        .header("Event-Name", "BACKGROUND_JOB")
        .header("Core-UUID", "6b7a3c1e-2f4d-4e8a-9b1c-3d5e7f9a0b2c")
        .header("FreeSWITCH-Hostname", "fs-node-01")
        .header("FreeSWITCH-Switchname", "fs-node-01")
        .header("FreeSWITCH-IPv4", "10.0.0.21")
        .header("FreeSWITCH-IPv6", "::1")
        .header("Event-Date-Local", serialize::format_date_local(1_741_944_401, 0))
        .header("Event-Date-GMT", serialize::format_date_gmt(1_741_944_401))
        .header("Event-Date-Timestamp", "1741944401004211")
        .header("Event-Calling-File", "mod_event_socket.c")
        .header("Event-Calling-Function", "api_exec")
        .header("Event-Calling-Line-Number", "1572")
        .header("Event-Sequence", "48219")
        .header("Job-UUID", "0d9e4a52-7c1b-4f3e-8a60-5b2f1c7d9e31")
        .header("Job-Command", "show")
        .header("Job-Command-Arg", "calls count")
        .with_body(serialize::show_count(37))
}

fn frame(envelope: &str, body: &[u8]) -> Vec<u8> {
    let mut v = envelope.as_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn decode_one(bytes: &[u8]) -> Frame {
    let mut d = Decoder::new();
    d.feed(bytes);
    let f = d.next_frame().expect("valid frame").expect("complete frame");
    assert_eq!(d.next_frame(), Ok(None), "exactly one frame");
    assert_eq!(d.buffered(), 0);
    f
}

#[test]
fn heartbeat_plain_is_930_bytes_and_byte_exact() {
    assert_eq!(HEARTBEAT_PLAIN_BODY.len(), 930);
    assert!(HEARTBEAT_PLAIN_BODY.ends_with("Idle-CPU: 87.633333\n\n"));
    let enc = example_heartbeat().to_event().encode(EventFormat::Plain);
    assert_eq!(enc.envelope, b"Content-Length: 930\nContent-Type: text/event-plain\n\n");
    assert_eq!(String::from_utf8(enc.body.clone()).unwrap(), HEARTBEAT_PLAIN_BODY);
}

#[test]
fn heartbeat_json_is_957_bytes_and_byte_exact() {
    assert_eq!(HEARTBEAT_JSON_BODY.len(), 957);
    let enc = example_heartbeat().to_event().encode(EventFormat::Json);
    assert_eq!(enc.envelope, b"Content-Length: 957\nContent-Type: text/event-json\n\n");
    assert_eq!(String::from_utf8(enc.body).unwrap(), HEARTBEAT_JSON_BODY);
}

#[test]
fn heartbeat_xml_is_1591_bytes_with_percent_encoded_values() {
    let enc = example_heartbeat().to_event().encode(EventFormat::Xml);
    assert_eq!(enc.envelope, b"Content-Length: 1591\nContent-Type: text/event-xml\n\n");
    let xml = String::from_utf8(enc.body).unwrap();
    assert_eq!(xml.len(), 1591);
    assert!(xml.starts_with("<event>\n  <headers>\n    <Event-Name>HEARTBEAT</Event-Name>\n    <Core-UUID>6b7a3c1e-2f4d-4e8a-9b1c-3d5e7f9a0b2c</Core-UUID>\n"));
    assert!(xml.contains("\n    <FreeSWITCH-IPv6>%3A%3A1</FreeSWITCH-IPv6>\n"));
    assert!(xml.contains("\n    <Event-Date-GMT>Fri,%2014%20Mar%202025%2009%3A26%3A40%20GMT</Event-Date-GMT>\n"));
    assert!(xml.ends_with("    <Idle-CPU>87.633333</Idle-CPU>\n  </headers>\n</event>\n"));
}

#[test]
fn heartbeat_plain_decodes_to_exact_stats() {
    let bytes = frame("Content-Length: 930\nContent-Type: text/event-plain\n\n", HEARTBEAT_PLAIN_BODY.as_bytes());
    let Message::Event(ev) = Message::from_frame(decode_one(&bytes)).unwrap() else { panic!("not an event") };
    assert_eq!(ev.headers.len(), 27);
    assert_eq!(ev.get("FreeSWITCH-IPv6"), Some("::1"));
    assert_eq!(ev.get("FreeSWITCH-Version"), Some("1.10.12-release+git~20240802T210227Z~a88d069d6f~64bit"));
    let s = HeartbeatStats::from_event(&ev).unwrap();
    assert_eq!(s.idle_cpu_micro, 87_633_333);
    assert_eq!(s.session_count, 37);
    assert_eq!(s.max_sessions, 1000);
    assert_eq!(s.core_uuid.as_deref(), Some("6b7a3c1e-2f4d-4e8a-9b1c-3d5e7f9a0b2c"));
    assert_eq!(s.hostname.as_deref(), Some("fs-node-01"));
    assert_eq!(s.event_sequence, Some(48213));
    assert_eq!(s.event_timestamp_us, Some(1_741_944_400_123_456));
    assert_eq!(s.uptime_msec, Some(184_480_512));
    assert_eq!(s.session_per_sec, Some(28));
    assert_eq!(s.session_per_sec_last, Some(2));
    assert_eq!(s.session_per_sec_max, Some(19));
    assert_eq!(s.session_per_sec_five_min, Some(6));
    assert_eq!(s.session_since_startup, Some(81234));
    assert_eq!(s.session_peak_max, Some(212));
    assert_eq!(s.session_peak_five_min, Some(48));
}

#[test]
fn heartbeat_json_and_plain_decode_to_the_same_event() {
    let plain = Event::parse_plain(HEARTBEAT_PLAIN_BODY.as_bytes()).unwrap();
    let json = Event::parse_json(HEARTBEAT_JSON_BODY.as_bytes()).unwrap();
    assert_eq!(plain, json);
    let bytes = frame("Content-Length: 957\nContent-Type: text/event-json\n\n", HEARTBEAT_JSON_BODY.as_bytes());
    assert_eq!(Message::from_frame(decode_one(&bytes)).unwrap(), Message::Event(json));
}

#[test]
fn background_job_plain_is_589_bytes_with_inner_body() {
    assert_eq!(BACKGROUND_JOB_PLAIN_BODY.len(), 589);
    let enc = example_background_job().encode(EventFormat::Plain);
    assert_eq!(enc.envelope, b"Content-Length: 589\nContent-Type: text/event-plain\n\n");
    assert_eq!(String::from_utf8(enc.body.clone()).unwrap(), BACKGROUND_JOB_PLAIN_BODY);
    let ev = Event::parse_plain(&enc.body).unwrap();
    assert_eq!(ev.get("Job-Command-Arg"), Some("calls count"));
    assert_eq!(ev.body(), Some(b"\n37 total.\n".as_slice()));
}

#[test]
fn background_job_json_is_627_bytes_and_ends_with_content_length_and_body() {
    let enc = example_background_job().encode(EventFormat::Json);
    assert_eq!(enc.body.len(), 627);
    assert_eq!(enc.envelope, b"Content-Length: 627\nContent-Type: text/event-json\n\n");
    let json = String::from_utf8(enc.body.clone()).unwrap();
    assert!(json.ends_with(r#","Job-Command-Arg":"calls count","Content-Length":"11","_body":"\n37 total.\n"}"#), "{json}");
    let plain = Event::parse_plain(BACKGROUND_JOB_PLAIN_BODY.as_bytes()).unwrap();
    assert_eq!(Event::parse_json(&enc.body).unwrap(), plain);
}

#[test]
fn greeting_is_28_bytes() {
    assert_eq!(serialize::GREETING, b"Content-Type: auth/request\n\n");
    assert_eq!(serialize::GREETING.len(), 28);
    assert_eq!(Message::from_frame(decode_one(serialize::GREETING)).unwrap(), Message::AuthRequest);
}

#[test]
fn disconnect_notice_body_is_67_bytes() {
    assert_eq!(GOODBYE.len(), 67);
    let bytes = serialize::disconnect_notice(GOODBYE);
    assert_eq!(
        bytes,
        b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\nDisconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
    );
    assert_eq!(
        Message::from_frame(decode_one(&bytes)).unwrap(),
        Message::DisconnectNotice { linger: false, reason: GOODBYE.to_vec() }
    );
}

#[test]
fn shutdown_and_lost_events_notices_have_the_listed_lengths() {
    assert_eq!(serialize::SHUTDOWN_NOTICE.len(), 31);
    assert_eq!(serialize::LOST_EVENTS_NOTICE.len(), 39);
    assert!(serialize::disconnect_notice(serialize::SHUTDOWN_NOTICE).starts_with(b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\n"));
}

#[test]
fn rude_rejection_is_24_bytes_and_is_followed_by_the_notice() {
    let bytes = serialize::rude_rejection();
    assert_eq!(bytes, b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n");
    let mut d = Decoder::new();
    d.feed(&bytes);
    d.feed(&serialize::disconnect_notice(GOODBYE));
    let first = Message::from_frame(d.next_frame().unwrap().unwrap()).unwrap();
    assert_eq!(first, Message::RudeRejection { reason: b"Access Denied, go away.\n".to_vec() });
    let second = Message::from_frame(d.next_frame().unwrap().unwrap()).unwrap();
    assert!(matches!(second, Message::DisconnectNotice { linger: false, .. }));
}

#[test]
fn command_replies_are_byte_exact() {
    assert_eq!(serialize::command_reply("+OK accepted"), b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n");
    assert_eq!(serialize::command_reply("-ERR invalid"), b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n");
    assert_eq!(serialize::command_reply("+OK bye"), b"Content-Type: command/reply\nReply-Text: +OK bye\n\n");
    assert_eq!(
        serialize::command_reply("+OK event listener enabled plain"),
        b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n"
    );
    assert_eq!(
        serialize::userauth_accepted("all", "all", true),
        b"Content-Type: command/reply\nReply-Text: +OK accepted\nAllowed-Events: all\nAllowed-API: all\nAllowed-LOG: true\n\n"
    );
    let uuid = "0d9e4a52-7c1b-4f3e-8a60-5b2f1c7d9e31";
    let bg = serialize::bgapi_accepted(uuid);
    assert_eq!(bg, format!("Content-Type: command/reply\nReply-Text: +OK Job-UUID: {uuid}\nJob-UUID: {uuid}\n\n").as_bytes());
    let Message::CommandReply(r) = Message::from_frame(decode_one(&bg)).unwrap() else { panic!() };
    assert_eq!(r.text, format!("+OK Job-UUID: {uuid}"));
    assert_eq!(r.header("Job-UUID"), Some(uuid));
}

#[test]
fn api_status_reply_is_379_bytes_and_byte_exact() {
    assert_eq!(STATUS_BODY.len(), 379);
    let params = StatusParams {
        uptime_us: 184_480_512_087,
        version_human: "1.10.12-release git a88d069 2024-08-02 21:02:27Z 64bit".into(),
        ready: true,
        session_since_startup: 81234,
        session_count: 37,
        session_peak_max: 212,
        session_peak_five_min: 48,
        session_per_sec_last: 2,
        sessions_per_sec_limit: 30,
        session_per_sec_max: 19,
        session_per_sec_five_min: 6,
        max_sessions: 1000,
        min_idle_cpu_micro: 0,
        idle_cpu_micro: 87_633_333,
        stack_size_kib: 240,
        stack_max_kib: 8192,
    };
    let body = params.body();
    assert_eq!(String::from_utf8(body.clone()).unwrap(), STATUS_BODY);
    let bytes = serialize::api_response(&body);
    assert!(bytes.starts_with(b"Content-Type: api/response\nContent-Length: 379\n\n"));
    let Message::ApiResponse(decoded) = Message::from_frame(decode_one(&bytes)).unwrap() else { panic!() };
    let s = HeartbeatStats::from_status(&decoded).unwrap();
    assert_eq!((s.session_count, s.max_sessions, s.idle_cpu_micro), (37, 1000, 87_630_000));
    assert_eq!(s.session_since_startup, Some(81234));
    assert_eq!(s.session_peak_max, Some(212));
    assert_eq!(s.session_peak_five_min, Some(48));
    assert_eq!(s.session_per_sec_last, Some(2));
    assert_eq!(s.sessions_per_sec_limit, Some(30));
    assert_eq!(s.session_per_sec_max, Some(19));
    assert_eq!(s.session_per_sec_five_min, Some(6));
    assert_eq!(s.min_idle_cpu_micro, Some(0));
    assert_eq!(s.uptime_msec, Some(184_480_512));
    assert_eq!(s.core_uuid, None);
}

#[test]
fn show_calls_count_reply_is_11_bytes_and_10_with_zero_calls() {
    assert_eq!(serialize::api_response(&serialize::show_count(37)), b"Content-Type: api/response\nContent-Length: 11\n\n\n37 total.\n");
    assert_eq!(serialize::show_count(0).len(), 10);
    assert_eq!(serialize::api_not_found("foo"), b"-ERR foo Command not found!\n");
}

#[test]
fn api_status_missing_idle_cpu_line_is_rejected_naming_the_field() {
    let body = STATUS_BODY.replace("min idle cpu 0.00/87.63\n", "");
    let e = HeartbeatStats::from_status(body.as_bytes()).unwrap_err();
    assert_eq!(e.field(), Some("Idle-CPU"));
}
