//! Scanner specs: the reference corpus, the edge cases of RFC 3261 §7 and §18.3, and a property
//! test that arbitrary bytes never panic.

use super::*;
use proptest::prelude::*;

pub(crate) const INVITE: &[u8] = include_bytes!("../../testdata/sip-corpus/01-invite-from-sbc.sip");
const TRYING: &[u8] = include_bytes!("../../testdata/sip-corpus/02-100.sip");
const RINGING: &[u8] = include_bytes!("../../testdata/sip-corpus/03-180.sip");
const OK_INVITE: &[u8] = include_bytes!("../../testdata/sip-corpus/04-200-invite.sip");
const ACK_2XX: &[u8] = include_bytes!("../../testdata/sip-corpus/05-ack-2xx-in-dialog.sip");
const BYE_LF: &[u8] = include_bytes!("../../testdata/sip-corpus/06-bye-compact-bare-lf.sip");
const CANCEL: &[u8] = include_bytes!("../../testdata/sip-corpus/07-cancel.sip");
const OPTIONS: &[u8] = include_bytes!("../../testdata/sip-corpus/08-options-keepalive.sip");
const SERVICE_UNAVAILABLE: &[u8] = include_bytes!("../../testdata/sip-corpus/09-503-retry-after.sip");
const REINVITE_V6: &[u8] = include_bytes!("../../testdata/sip-corpus/10-reinvite-ipv6-multi-via-line.sip");

pub(crate) const CORPUS: &[&[u8]] = &[
    INVITE,
    TRYING,
    RINGING,
    OK_INVITE,
    ACK_2XX,
    BYE_LF,
    CANCEL,
    OPTIONS,
    SERVICE_UNAVAILABLE,
    REINVITE_V6,
];

#[test]
fn invite_from_sbc_yields_every_routing_field() {
    let m = parse(INVITE).unwrap();
    assert!(m.crlf);
    assert_eq!(
        m.start,
        StartLine::Request {
            method: Method::Invite,
            method_raw: b"INVITE",
            uri: b"sip:+15551230001@lb.example.net:5060;user=phone"
        }
    );
    let via = m.top_via.unwrap();
    assert_eq!(via.transport, b"UDP");
    assert_eq!(via.host, b"127.0.0.7");
    assert_eq!(via.port, Some(5060));
    assert_eq!(via.branch, Some(&b"z9hG4bK-524287-1---4d7a1c9e8f2b3a61"[..]));
    assert_eq!(via.rport, Some(None));
    assert_eq!(via.received, None);
    assert_eq!(m.via_count, 2);
    let second = m.second_via.unwrap();
    assert_eq!(second.received, Some(&b"127.0.0.40"[..]));
    assert_eq!(second.branch, Some(&b"z9hG4bKa7c3.9f1e2d30.0"[..]));
    assert_eq!(m.call_id, Some(&b"8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7"[..]));
    assert_eq!(m.cseq, Some(CSeq { number: 101, method: b"INVITE" }));
    let from = m.from.unwrap();
    assert_eq!(from.uri, b"sip:+15559870002@carrier.example.com;user=phone");
    assert_eq!(from.tag, Some(&b"4fa1c2"[..]));
    let to = m.to.unwrap();
    assert_eq!(to.uri, b"sip:+15551230001@lb.example.net;user=phone");
    assert_eq!(to.tag, None);
    assert_eq!(m.max_forwards.map(|mf| mf.value), Some(68));
    assert_eq!(m.max_forwards.unwrap().digits.get(INVITE), b"68");
    assert_eq!(m.record_route.unwrap().uri, b"sip:127.0.0.40;lr;ftag=4fa1c2");
    assert!(m.route.is_none());
    assert_eq!(m.content_length, Some(238));
    assert_eq!(m.body.len(), 238);
    assert!(m.body.get(INVITE).starts_with(b"v=0\r\n"));
    assert_eq!(m.framed_len(), INVITE.len());
    m.validate_request().unwrap();
}

#[test]
fn responses_yield_status_and_both_vias() {
    for (raw, code) in [(TRYING, 100), (RINGING, 180), (OK_INVITE, 200), (SERVICE_UNAVAILABLE, 503)] {
        let m = parse(raw).unwrap();
        assert_eq!(m.status(), Some(code));
        let top = m.top_via.unwrap();
        assert_eq!(top.rport, Some(Some(5060)));
        assert_eq!(top.received, Some(&b"127.0.0.7"[..]));
        assert_eq!(m.cseq.unwrap().method, b"INVITE");
        m.validate_response().unwrap();
    }
    assert_eq!(parse(RINGING).unwrap().to_tag(), Some(&b"Z8Xr3gKQ1yN2c"[..]));
    assert_eq!(parse(OK_INVITE).unwrap().body.len(), 216);
}

#[test]
fn compact_headers_and_bare_lf_are_understood() {
    let m = parse(BYE_LF).unwrap();
    assert!(!m.crlf);
    assert_eq!(m.method(), Some(Method::Bye));
    assert_eq!(m.top_via.unwrap().branch, Some(&b"z9hG4bK-524287-1---0a9b8c7d6e5f4a3b"[..]));
    assert_eq!(m.call_id, Some(&b"8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@127.0.0.7"[..]));
    assert_eq!(m.to_tag(), Some(&b"Z8Xr3gKQ1yN2c"[..]));
    assert_eq!(m.from.unwrap().tag, Some(&b"4fa1c2"[..]));
    assert_eq!(m.content_length, Some(0));
    assert_eq!(m.route.unwrap().uri, b"sip:lb.example.net:5060;lr");
    m.validate_request().unwrap();
}

#[test]
fn two_vias_on_one_line_and_ipv6_sent_by() {
    let m = parse(REINVITE_V6).unwrap();
    assert_eq!(m.via_count, 2);
    let top = m.top_via.unwrap();
    assert_eq!(top.host, b"[::1]");
    assert_eq!(top.port, Some(5060));
    assert_eq!(top.branch, Some(&b"z9hG4bK-reinv-01"[..]));
    assert_eq!(top.span.get(REINVITE_V6), b"SIP/2.0/UDP [::1]:5060;branch=z9hG4bK-reinv-01;rport");
    let second = m.second_via.unwrap();
    assert_eq!(second.host, b"127.0.0.40");
    assert_eq!(second.port, None);
    let route = m.route.unwrap();
    assert_eq!(route.uri, b"sip:lb.example.net:5060;lr");
    assert!(route.more);
    assert_eq!(
        &REINVITE_V6[route.next_on_line.unwrap() as usize..][..24],
        b"<sip:127.0.0.21:5080;lr>"
    );
}

#[test]
fn cancel_and_options_and_ack_validate() {
    for raw in [CANCEL, OPTIONS, ACK_2XX] {
        parse(raw).unwrap().validate_request().unwrap();
    }
}

fn msg(s: &str) -> Vec<u8> {
    s.replace('|', "\r\n").into_bytes()
}

#[test]
fn folded_header_values_are_joined() {
    let raw = msg("OPTIONS sip:a@127.0.0.1 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1:5070|\t;branch=z9hG4bKfold|Call-ID: x|From: <sip:a@b>;tag=1|To: <sip:c@d>|CSeq: 1 OPTIONS||");
    let m = parse(&raw).unwrap();
    assert_eq!(m.top_via.unwrap().branch, Some(&b"z9hG4bKfold"[..]));
    m.validate_request().unwrap();
}

#[test]
fn header_names_are_case_insensitive_with_space_before_colon() {
    let raw = msg("BYE sip:a@127.0.0.1 SIP/2.0|VIA : SIP/2.0/UDP 127.0.0.1;BRANCH=z9hG4bKx|call-id:x|FROM:<sip:a@b>;TAG=1|tO: sip:c@d;tag=2|cseq: 2 BYE|MAX-FORWARDS: 9||");
    let m = parse(&raw).unwrap();
    assert_eq!(m.top_via.unwrap().branch, Some(&b"z9hG4bKx"[..]));
    assert_eq!(m.from.unwrap().tag, Some(&b"1"[..]));
    assert_eq!(m.to.unwrap().uri, b"sip:c@d");
    assert_eq!(m.to_tag(), Some(&b"2"[..]));
    assert_eq!(m.max_forwards.unwrap().value, 9);
}

#[test]
fn bytes_past_content_length_are_discarded() {
    let raw = msg("MESSAGE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|i: x|f: <sip:a@b>;tag=1|t: <sip:c@d>|CSeq: 1 MESSAGE|l: 5||helloGARBAGE");
    let m = parse(&raw).unwrap();
    assert_eq!(m.body.get(&raw), b"hello");
    assert_eq!(m.framed_len(), raw.len() - 7);
}

#[test]
fn a_datagram_shorter_than_its_content_length_is_an_error() {
    let raw = msg("MESSAGE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|i: x|l: 50||short");
    let m = parse(&raw).unwrap();
    assert_eq!(m.defect, Some(ParseError::TruncatedBody { declared: 50, actual: 5 }));
    assert_eq!(m.validate_request(), Err(ParseError::TruncatedBody { declared: 50, actual: 5 }));
}

#[test]
fn without_content_length_the_body_runs_to_the_end() {
    let raw = msg("MESSAGE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|i: x||body bytes");
    assert_eq!(parse(&raw).unwrap().body.get(&raw), b"body bytes");
}

#[test]
fn crlf_only_datagram_is_a_keepalive() {
    assert_eq!(parse(b"\r\n\r\n"), Err(ParseError::Keepalive));
    assert_eq!(parse(b""), Err(ParseError::Empty));
}

#[test]
fn unknown_sip_version_is_distinguished_for_505() {
    let raw = msg("INVITE sip:a@127.0.0.1 SIP/3.0|v: SIP/2.0/UDP 127.0.0.1||");
    assert_eq!(parse(&raw).unwrap().validate_request(), Err(ParseError::UnsupportedVersion));
}

#[test]
fn nul_byte_in_headers_is_rejected() {
    let mut raw = msg("INVITE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|i: xx||");
    let at = raw.iter().position(|&b| b == b'x').unwrap();
    raw[at] = 0;
    assert_eq!(parse(&raw).unwrap().validate_request(), Err(ParseError::NulByte));
}

#[test]
fn missing_mandatory_headers_and_cseq_mismatch_fail_validation() {
    let raw = msg("INVITE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|i: x|f: <sip:a@b>;tag=1|t: <sip:c@d>||");
    assert_eq!(parse(&raw).unwrap().validate_request(), Err(ParseError::Missing("CSeq")));
    let raw = msg("INVITE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|i: x|f: <sip:a@b>;tag=1|t: <sip:c@d>|CSeq: 1 BYE||");
    assert_eq!(parse(&raw).unwrap().validate_request(), Err(ParseError::CSeqMethodMismatch));
}

#[test]
fn commas_inside_quotes_and_brackets_do_not_split_routes() {
    let raw = msg("BYE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|Route: \"a,b\" <sip:x@127.0.0.1;lr;p=a,b>|Route: <sip:y@127.0.0.2;lr>|i: x|f: <sip:a@b>;tag=1|t: <sip:c@d>;tag=2|CSeq: 2 BYE||");
    let m = parse(&raw).unwrap();
    let r = m.route.unwrap();
    assert_eq!(r.uri, b"sip:x@127.0.0.1;lr;p=a,b");
    assert!(r.more);
    assert_eq!(r.next_on_line, None);
}

#[test]
fn digest_username_prefers_proxy_authorization() {
    let raw = msg("INVITE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|Authorization: Digest username=\"bob\", realm=\"r\"|Proxy-Authorization: Digest realm=\"r\", username=\"alice\"|i: x||");
    assert_eq!(parse(&raw).unwrap().auth_username, Some(&b"alice"[..]));
}

#[test]
fn malformed_start_lines_are_rejected() {
    for bad in ["INVITE|", "SIP/2.0 99 Low|", "SIP/2.0 2000 X|", "IN VITE sip:x SIP/2.0 extra|", "SIP/1.0 200 OK|", "INVITE sip:x HTTP/1.1|"] {
        let raw = msg(bad);
        assert!(matches!(parse(&raw), Err(ParseError::BadStartLine)), "{bad}");
    }
}

/// Every message file the project keeps: the scanner corpus, its edge cases, and the fuzz corpora
/// (the router's inputs are datagrams too, framed by the target; the scanner takes any bytes).
fn every_corpus_file() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = ["testdata/sip-corpus", "testdata/sip-extra", "../fuzz/corpus/sip_scan", "../fuzz/corpus/router"];
    let mut files = Vec::new();
    for d in dirs {
        for e in std::fs::read_dir(root.join(d)).unwrap_or_else(|e| panic!("{d}: {e}")) {
            let p = e.unwrap().path();
            let raw = std::fs::read(&p).unwrap();
            files.push((p, raw));
        }
    }
    files
}

/// The same bytes with bare LF, then with CRLF, line endings: both are on the wire.
fn both_line_endings(raw: &[u8]) -> [Vec<u8>; 2] {
    let lf: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
    let crlf = lf.iter().flat_map(|&b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] }).collect();
    [lf, crlf]
}

#[test]
fn the_fast_scanner_equals_the_full_scanner_on_every_corpus_file() {
    let files = every_corpus_file();
    assert!(files.len() > 60, "{} corpus files", files.len());
    for (path, raw) in &files {
        for data in both_line_endings(raw).iter().chain([raw]) {
            assert_eq!(parse(data), parse_full(data), "{}", path.display());
        }
    }
}

#[test]
fn the_fast_scanner_reads_every_ordinary_message_itself() {
    // Without this, a fast walk that always gave up would pass every equality test.
    for (i, raw) in CORPUS.iter().enumerate() {
        for data in both_line_endings(raw) {
            assert!(super::scan::parse_fast(&data).is_some(), "corpus message {i} fell back to the full scanner");
        }
    }
}

#[test]
fn unusual_messages_fall_back_to_the_full_scanner() {
    for raw in [
        msg("INVITE sip:a@127.0.0.1 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1,|  SIP/2.0/UDP 127.0.0.2|i: x||"),
        msg("INVITE sip:a@127.0.0.1 SIP/2.0|Route: \"a,b\" <sip:127.0.0.1;lr>, <sip:127.0.0.2;lr>|i: x||"),
        msg("INVITE sip:a@127.0.0.1 SIP/2.0|Via : SIP/2.0/UDP 127.0.0.1|i: x||"),
        msg("INVITE sip:a@127.0.0.1 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1|no colon here|i: x||"),
        msg("INVITE sip:a@127.0.0.1 SIP/2.0|Via: SIP/2.0/UDP 127.0.0.1|i: x\0y||"),
    ] {
        assert!(super::scan::parse_fast(&raw).is_none(), "{}", String::from_utf8_lossy(&raw));
        assert_eq!(parse(&raw), parse_full(&raw));
    }
}

/// Bytes that change how a header reads: the fast walk must notice each or read it the same way.
fn tricky_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b','), Just(b'"'), Just(0u8), Just(b' '), Just(b'\t'), Just(b'\r'), Just(b'\n'), Just(b':'), Just(b';'),
        Just(b'<'), Just(b'>'), Just(b'\\'), Just(b'='), Just(b'['), Just(b'a'), any::<u8>(),
    ]
}

proptest! {
    #[test]
    fn the_fast_scanner_equals_the_full_scanner_on_corpus_edits(
        idx in 0usize..10,
        crlf in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), tricky_byte(), 0u8..3), 1..6),
    ) {
        let [lf, crlf_form] = both_line_endings(CORPUS[idx]);
        let mut data = if crlf { crlf_form } else { lf };
        for (at, b, how) in edits {
            let at = at % (data.len() + 1);
            match how {
                0 if at < data.len() => data[at] = b,
                1 if at < data.len() => { data.remove(at); }
                _ => data.insert(at, b),
            }
        }
        prop_assert_eq!(parse(&data), parse_full(&data));
    }

    #[test]
    fn the_fast_scanner_equals_the_full_scanner_on_arbitrary_bytes(data in proptest::collection::vec(tricky_byte(), 0..300)) {
        prop_assert_eq!(parse(&data), parse_full(&data));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = parse(&data) {
            let _ = m.validate_request();
            prop_assert!(m.framed_len() <= data.len());
        }
    }

    #[test]
    fn corpus_mutations_never_panic(idx in 0usize..10, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut data = CORPUS[idx].to_vec();
        for (at, b) in flips {
            let n = data.len();
            data[at % n] = b;
        }
        if let Ok(m) = parse(&data) {
            let _ = m.validate_request();
            let _ = m.validate_response();
        }
    }

    #[test]
    fn corpus_truncations_never_panic(idx in 0usize..10, cut in any::<usize>()) {
        let data = CORPUS[idx];
        let _ = parse(&data[..cut % (data.len() + 1)]);
    }
}

#[test]
fn a_malformed_cseq_is_a_defect_not_a_scan_failure() {
    let raw = msg("INVITE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|i: x|f: <sip:a@b>;tag=1|t: <sip:c@d>|CSeq: one INVITE||");
    let m = parse(&raw).unwrap();
    assert!(m.top_via.is_some());
    assert_eq!(m.validate_request(), Err(ParseError::Malformed("CSeq")));
}

#[test]
fn a_malformed_top_via_stops_the_scan() {
    let raw = msg("INVITE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0 127.0.0.1|i: x||");
    assert_eq!(parse(&raw), Err(ParseError::Malformed("Via")));
}

#[test]
fn white_space_around_the_sent_by_colon_is_allowed() {
    for (via, host) in [("127.0.0.7 : 5060", &b"127.0.0.7"[..]), ("[::1] :5060", b"[::1]"), ("h.example.com\t:  5060", b"h.example.com")] {
        let raw = msg(&format!("OPTIONS sip:a@127.0.0.1 SIP/2.0|Via: SIP/2.0/UDP {via};branch=z9hG4bKsp|Call-ID: x|From: <sip:a@b>;tag=1|To: <sip:c@d>|CSeq: 1 OPTIONS||"));
        let v = parse(&raw).unwrap().top_via.unwrap();
        assert_eq!((v.host, v.port, v.branch), (host, Some(5060), Some(&b"z9hG4bKsp"[..])), "{via}");
    }
}

#[test]
fn the_sip_version_is_case_insensitive() {
    let raw = msg("OPTIONS sip:a@127.0.0.1 sip/2.0|Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKv|Call-ID: x|From: <sip:a@b>;tag=1|To: <sip:c@d>|CSeq: 1 OPTIONS||");
    parse(&raw).unwrap().validate_request().unwrap();
    let raw = msg("sip/2.0 200 OK|Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKv|Call-ID: x|CSeq: 1 OPTIONS||");
    assert_eq!(parse(&raw).unwrap().status(), Some(200));
}

#[test]
fn a_header_line_without_a_colon_is_a_defect_and_the_headers_after_it_are_read() {
    let raw = msg("INVITE sip:a@127.0.0.1 SIP/2.0|v: SIP/2.0/UDP 127.0.0.1|NoColonHere|i: x|f: <sip:a@b>;tag=1|t: <sip:c@d>|CSeq: 1 INVITE||");
    let m = parse(&raw).unwrap();
    assert!(m.top_via.is_some());
    assert_eq!(m.call_id, Some(&b"x"[..]));
    assert_eq!(m.validate_request(), Err(ParseError::HeaderWithoutColon));
}

#[test]
fn a_continuation_line_before_any_header_ends_the_scan_with_an_error() {
    // Found by the `sip_scan` fuzz target once lines without a colon were skipped: a scan that
    // stopped there must not report a header block it never finished.
    let raw = b"SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP 127.0.0.7:5060;branch=z9hG4bKx\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\xf6";
    assert!(parse(raw).is_err());
    let raw = b"INVITE sip:a@b SIP/2.0\r\n  folded\r\nVia: SIP/2.0/UDP 127.0.0.7\r\n\r\n";
    assert_eq!(parse(raw), Err(ParseError::BadContinuation));
}

#[test]
fn a_received_that_is_not_an_ip_address_makes_the_via_malformed() {
    // Found by the `router` fuzz target: `received=x <sip:a,b` hid a comma inside an unclosed '<';
    // once fsroute wrote its own received over it, the comma split the header into a second Via.
    let with = |received: &str| format!("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9;received={received};branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    for bad in ["Ocord-Route: <sip:127.0.0.40", "host.example.com", ""] {
        assert!(parse(with(bad).as_bytes()).is_err(), "received={bad:?}");
    }
    for good in ["192.0.2.1", "[2001:db8::1]", "2001:db8::1"] {
        let text = with(good);
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!(m.top_via.unwrap().received, Some(good.as_bytes()), "received={good:?}");
    }
}
