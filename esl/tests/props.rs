//! Property tests: splitting never changes what is decoded, hostile bytes never panic, and
//! the serialisers round-trip through the parsers.

use fsroute_esl::heartbeat::parse_percent_micro;
use fsroute_esl::serialize::{self, format_percent6};
use fsroute_esl::{
    ClientProto, CommandReader, Credentials, Decoder, Event, EventFormat, Frame, Headers, HeartbeatFormat,
    HeartbeatStats, Limits, Message, OutEvent,
};
use proptest::prelude::*;

fn header_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_-]{0,20}".prop_filter("Content-Length is framing, not payload", |n| {
        !n.eq_ignore_ascii_case("Content-Length")
    })
}

/// Outer header values: anything printable (colons included) that does not start with a
/// space (those are trimmed) and has no CR/LF.
fn header_value() -> impl Strategy<Value = String> {
    "[!-~][ -~]{0,40}"
}

fn frame_strategy() -> impl Strategy<Value = (Vec<(String, String)>, Option<Vec<u8>>)> {
    (
        prop::collection::vec((header_name(), header_value()), 1..6),
        prop::option::of(prop::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()],
            0..200,
        )),
    )
}

fn encode_frame(headers: &[(String, String)], body: &Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(b) = body {
        out.extend_from_slice(format!("Content-Length: {}\n", b.len()).as_bytes());
    }
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\n").as_bytes());
    }
    out.push(b'\n');
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

fn expected_frame(headers: &[(String, String)], body: &Option<Vec<u8>>) -> Frame {
    let mut h = Headers::new();
    if let Some(b) = body {
        h.push("Content-Length", b.len().to_string());
    }
    for (n, v) in headers {
        h.push(n.clone(), v.trim_end_matches('\r').to_owned());
    }
    Frame { headers: h, body: body.clone().unwrap_or_default() }
}

fn drain(d: &mut Decoder, out: &mut Vec<Frame>) {
    while let Some(f) = d.next_frame().expect("valid stream") {
        out.push(f);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_a_valid_stream_yields_the_same_frames(
        frames in prop::collection::vec(frame_strategy(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        blank_runs in prop::collection::vec(prop_oneof![Just(""), Just("\n"), Just("\r\n"), Just("\r\n\n")], 6),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (i, (h, b)) in frames.iter().enumerate() {
            stream.extend_from_slice(blank_runs[i % blank_runs.len()].as_bytes());
            stream.extend(encode_frame(h, b));
            expected.push(expected_frame(h, b));
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain(std::iter::once(stream.len())) {
            d.feed(&stream[last..p]);
            drain(&mut d, &mut got);
            last = p;
        }
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn byte_by_byte_delivery_matches_one_shot_delivery(frames in prop::collection::vec(frame_strategy(), 1..4)) {
        let stream: Vec<u8> = frames.iter().flat_map(|(h, b)| encode_frame(h, b)).collect();
        let mut one = Decoder::new();
        one.feed(&stream);
        let mut a = Vec::new();
        drain(&mut one, &mut a);
        let mut drip = Decoder::new();
        let mut b = Vec::new();
        for byte in &stream {
            drip.feed(std::slice::from_ref(byte));
            drain(&mut drip, &mut b);
        }
        prop_assert_eq!(a, b);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder_and_stay_within_limits(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..10),
    ) {
        let limits = Limits { max_header_bytes: 256, max_body_bytes: 256 };
        let mut d = Decoder::with_limits(limits);
        for c in &chunks {
            d.feed(c);
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(f.body.len() <= 256);
                        let _ = Message::from_frame(f);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        prop_assert!(d.next_frame().is_err(), "errors are sticky");
                        break;
                    }
                }
            }
            // Everything buffered beyond one chunk is a frame in progress, which the caps bound.
            prop_assert!(d.buffered() <= 256 + 256 + 300);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_client(
        prefix in prop::sample::select(vec![0usize, 1, 2, 3]),
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..8),
    ) {
        let mut p = ClientProto::new(Credentials::password("ClueCon").unwrap(), HeartbeatFormat::Json);
        let mut script = vec![serialize::GREETING.to_vec(), serialize::command_reply("+OK accepted"),
            serialize::command_reply("+OK event listener enabled json")];
        script.truncate(prefix);
        for s in &script {
            p.handle_input(s).unwrap();
        }
        for c in &chunks {
            let _ = p.handle_input(c);
            while p.poll_event().is_some() {}
            while p.poll_output().is_some() {}
        }
    }

    #[test]
    fn arbitrary_frames_with_real_content_types_never_panic_the_client(
        kinds in prop::collection::vec(prop::sample::select(vec![
            "auth/request", "command/reply", "api/response", "text/event-plain", "text/event-json",
            "text/event-xml", "text/disconnect-notice", "text/rude-rejection", "log/data",
        ]), 1..8),
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 8),
    ) {
        let mut p = ClientProto::new(Credentials::password("ClueCon").unwrap(), HeartbeatFormat::Plain);
        for (i, k) in kinds.iter().enumerate() {
            let body = &bodies[i];
            let mut f = format!("Content-Type: {k}\nReply-Text: +OK\nContent-Length: {}\n\n", body.len()).into_bytes();
            f.extend_from_slice(body);
            let _ = p.handle_input(&f);
            while p.poll_event().is_some() {}
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic_the_parsers(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Event::parse_plain(&body);
        let _ = Event::parse_json(&body);
        let _ = HeartbeatStats::from_status(&body);
        let mut r = CommandReader::with_limits(256, 256);
        r.feed(&body);
        while let Ok(Some(_)) = r.next_command() {}
    }

    #[test]
    fn json_events_round_trip_any_text(
        headers in prop::collection::vec((header_name(), "\\PC{0,30}"), 1..10),
        body in prop::option::of("\\PC{0,50}"),
    ) {
        let mut ev = OutEvent::new();
        for (n, v) in &headers {
            ev.push(n, v.as_bytes());
        }
        ev.body = body.as_ref().map(|b| b.as_bytes().to_vec());
        let parsed = Event::parse_json(&ev.json_body()).unwrap();
        let got: Vec<(&str, &str)> = parsed.headers.iter().collect();
        let want: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(parsed.body, ev.body);
    }

    #[test]
    fn plain_events_round_trip_values_without_percent(
        headers in prop::collection::vec((header_name(), "[^%]{1,30}"), 1..10),
        body in prop::option::of(prop::collection::vec(any::<u8>(), 0..60)),
    ) {
        let mut ev = OutEvent::new();
        for (n, v) in &headers {
            ev.push(n, v.as_bytes());
        }
        ev.body = body.clone();
        let enc = ev.encode(EventFormat::Plain);
        // The percent-encoded wire form is pure printable ASCII plus the line structure.
        let header_part = &enc.body[..enc.body.len() - body.as_ref().map_or(0, Vec::len)];
        prop_assert!(header_part.iter().all(|&b| b == b'\n' || (0x20..0x7f).contains(&b)));
        let mut d = Decoder::new();
        d.feed(&enc.to_bytes());
        let Message::Event(parsed) = Message::from_frame(d.next_frame().unwrap().unwrap()).unwrap() else {
            panic!("not an event")
        };
        let got: Vec<(&str, &str)> = parsed.headers.iter().collect();
        let want: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(parsed.body, body);
    }

    #[test]
    fn idle_cpu_fixed_point_round_trips(micro in 0u32..=100_000_000) {
        prop_assert_eq!(parse_percent_micro("Idle-CPU", &format_percent6(micro)), Ok(micro));
    }

    #[test]
    fn any_split_of_pipelined_commands_yields_the_same_commands(
        lines in prop::collection::vec("[a-z]{1,8}( [!-~]{1,10}){0,3}", 1..6),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let stream: Vec<u8> = lines.iter().flat_map(|l| format!("{l}{eol}{eol}").into_bytes()).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut r = CommandReader::new();
        let mut got = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain(std::iter::once(stream.len())) {
            r.feed(&stream[last..p]);
            while let Some(c) = r.next_command().unwrap() {
                got.push(c.line);
            }
            last = p;
        }
        prop_assert_eq!(got, lines);
    }
}
