//! Fuzz target for the hot-path SIP scanner (`dataplane::sip::parse`) and every accessor the
//! router reads a scanned message through: spans, header walk, list and parameter tokenizers, URI
//! helpers and the RFC 3261 validity checks. Any datagram off the wire must scan without a panic,
//! and every offset the scanner records must lie inside the datagram, since the router splices
//! around those offsets without re-checking them. The fast walk and the full scanner must agree.
#![no_main]

use fsroute_dataplane::sip::{
    self, host_port, header_name, param_value, split_list, uri_host_port, uri_params, uri_user, HeaderIter,
    Message, ParamIter, Span, StartLine,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The fast walk must give what the full scanner gives, for every input (docs/SIP.md).
    let scanned = sip::parse(data);
    assert_eq!(scanned, sip::parse_full(data), "the fast scanner and the full scanner disagree");
    let Ok(m) = scanned else {
        return;
    };
    check_layout(&m, data);
    let _ = m.validate_request();
    let _ = m.validate_response();
    let _ = (m.is_request(), m.method(), m.status(), m.to_tag());

    if let StartLine::Request { uri, .. } = m.start {
        uri_helpers(uri);
    }
    for via in [m.top_via, m.second_via].into_iter().flatten() {
        in_bounds(via.span, data);
        for s in [via.rport_span, via.received_span].into_iter().flatten() {
            in_bounds(s, data);
            assert!(via.span.start <= s.start && s.end <= via.span.end, "a Via parameter outside its Via");
        }
        let _ = host_port(via.host);
    }
    for na in [m.from, m.to].into_iter().flatten() {
        uri_helpers(na.uri);
    }
    for r in [m.route, m.record_route].into_iter().flatten() {
        in_bounds(r.value, data);
        in_bounds(r.line, data);
        assert!(r.line.start <= r.value.start && r.value.end <= r.line.end, "a route value outside its line");
        if let Some(next) = r.next_on_line {
            assert!(next >= r.value.end && next <= r.line.end, "next route value outside the line");
        }
        uri_helpers(r.uri);
        if let Some(u) = r.next_uri {
            uri_helpers(u);
        }
    }
    if let Some(mf) = m.max_forwards {
        in_bounds(mf.digits, data);
    }

    // The same walk the router's rewrite and local replies do, header by header.
    let mut headers = HeaderIter::new(data, m.headers_start as usize);
    for h in headers.by_ref() {
        let Ok(h) = h else { break };
        in_bounds(h.line, data);
        let name = h.name.get(data);
        let value = h.value.get(data);
        let _ = header_name(name).is_reply_copied();
        for (a, b) in split_list(value) {
            assert!(a <= b && b <= value.len(), "list element outside its value");
            let item = &value[a..b];
            for (_, _, ps, pe) in ParamIter::new(item) {
                assert!(ps <= pe && pe <= item.len(), "parameter outside its element");
            }
            let _ = param_value(item, b"tag");
            let _ = param_value(item, b"branch");
        }
    }
});

/// The start line, the header block and the framed body come in that order, inside the datagram.
fn check_layout(m: &Message<'_>, data: &[u8]) {
    let (hs, he) = (m.headers_start as usize, m.headers_end as usize);
    assert!(hs <= he && he <= m.body.start as usize, "headers end after the body starts");
    in_bounds(m.body, data);
    assert!(m.framed_len() <= data.len());
    if let Some(cl) = m.content_length {
        assert!(m.body.len() <= cl, "body longer than its Content-Length");
    }
}

fn in_bounds(s: Span, data: &[u8]) {
    assert!(s.start <= s.end && s.end as usize <= data.len(), "span {s:?} outside a {}-byte datagram", data.len());
}

fn uri_helpers(uri: &[u8]) {
    let _ = uri_host_port(uri);
    let _ = uri_user(uri);
    let params = uri_params(uri);
    let _ = param_value(params, b"lr");
    let _ = param_value(params, b"fsd");
}
