//! Meaning of a decoded [`Frame`] (docs/ESL.md §0, §3, §6.5–6.8, §6.13): which of the server's
//! Content-Types it is, and for events, the event's headers and body in one shape whatever
//! the wire format (plain percent-decoded, or JSON decoded leniently).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

use crate::frame::{excerpt, split_header_line, Frame, Headers};
use crate::percent;

/// Why one event body could not be read. Only that event is lost: framing is unaffected
/// and the decoder stays usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("malformed event JSON: {0}")]
    Json(String),
    #[error("malformed header line {line:?} in a plain event")]
    PlainHeader { line: String },
    #[error("inner Content-Length {value:?} in a plain event is not a decimal integer")]
    InnerContentLength { value: String },
    #[error("plain event body declares {declared} bytes but only {available} follow")]
    InnerBodyTruncated { declared: usize, available: usize },
}

/// A `command/reply` frame: `Reply-Text` plus any extra headers (`Job-UUID`, `Allowed-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandReply {
    pub text: String,
    pub headers: Headers,
}

impl CommandReply {
    /// FreeSWITCH marks success with a `+OK` prefix and failure with `-ERR`.
    pub fn is_ok(&self) -> bool {
        self.text.starts_with("+OK")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// An event with its headers in wire order. Plain values are percent-decoded; both plain
/// and JSON values are converted to UTF-8 lossily (docs/ESL.md §6.7), and an array header is
/// represented as FreeSWITCH's `ARRAY::v1|:v2` string whichever format carried it. The
/// inner `Content-Length` / `_body` become [`Event::body`] rather than headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub headers: Headers,
    pub body: Option<Vec<u8>>,
}

const ARRAY_PREFIX: &str = "ARRAY::";
const ARRAY_SEP: &str = "|:";

impl Event {
    pub fn name(&self) -> Option<&str> {
        self.get("Event-Name")
    }

    /// First value of `header`, case-insensitively.
    pub fn get(&self, header: &str) -> Option<&str> {
        self.headers.get(header)
    }

    /// Elements of an array header, or the single value as a one-element list.
    pub fn get_array(&self, header: &str) -> Option<Vec<&str>> {
        let v = self.get(header)?;
        Some(match v.strip_prefix(ARRAY_PREFIX) {
            Some(items) => items.split(ARRAY_SEP).collect(),
            None => vec![v],
        })
    }

    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// Parses a `text/event-plain` body (docs/ESL.md §3.2).
    pub fn parse_plain(body: &[u8]) -> Result<Event, EventError> {
        let mut headers = Headers::new();
        let mut inner_len: Option<usize> = None;
        let mut rest = body;
        // A missing blank line (truncated producer) just ends the headers at end of body.
        while !rest.is_empty() {
            let (line, next) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            if line.is_empty() || line == b"\r" {
                break;
            }
            let (name, value) = split_header_line(line).ok_or_else(|| EventError::PlainHeader {
                line: excerpt(line),
            })?;
            let name = String::from_utf8_lossy(name).into_owned();
            if name.eq_ignore_ascii_case("Content-Length") {
                let v = String::from_utf8_lossy(value);
                let v = v.trim_end();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(EventError::InnerContentLength { value: excerpt(v.as_bytes()) });
                }
                // Larger than any possible remainder, so the truncation check below fires.
                inner_len = Some(v.parse().unwrap_or(usize::MAX));
                continue;
            }
            let value = String::from_utf8_lossy(&percent::decode(value)).into_owned();
            headers.push(name, value);
        }
        let body = match inner_len {
            None => None,
            Some(n) if n <= rest.len() => Some(rest[..n].to_vec()),
            Some(n) => {
                return Err(EventError::InnerBodyTruncated { declared: n, available: rest.len() })
            }
        };
        Ok(Event { headers, body })
    }

    /// Parses a `text/event-json` body (docs/ESL.md §3.3). Raw bytes that are not UTF-8 (cJSON
    /// copies them through) are replaced with U+FFFD first instead of failing the event.
    pub fn parse_json(body: &[u8]) -> Result<Event, EventError> {
        let text = String::from_utf8_lossy(body);
        let obj: JsonObject =
            serde_json::from_str(&text).map_err(|e| EventError::Json(e.to_string()))?;
        let mut headers = Headers::new();
        let mut ev_body = None;
        for (key, value) in obj.0 {
            if key == "_body" {
                ev_body = Some(value.into_bytes());
            } else if key.eq_ignore_ascii_case("Content-Length") {
                // Describes `_body`, whose length the lossy conversion may have changed.
            } else {
                headers.push(key, value);
            }
        }
        Ok(Event { headers, body: ev_body })
    }
}

/// A JSON object kept in document order with duplicate keys intact; every value folded to
/// a string (arrays become `ARRAY::a|:b`).
struct JsonObject(Vec<(String, String)>);

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let JsonField(value) = map.next_value()?;
                    out.push((key, value));
                }
                Ok(JsonObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A header value: a string, a scalar tolerated as its text, or an array of those.
struct JsonField(String);
/// An array element: a string or a scalar tolerated as its text, nothing nested.
struct JsonScalar(String);

struct ScalarVisitor {
    allow_array: bool,
}

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.allow_array {
            f.write_str("a string or an array of strings")
        } else {
            f.write_str("a string")
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    // FreeSWITCH sends every value as a string; numbers and booleans are accepted only so
    // that a foreign producer's typed JSON does not cost the whole event.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        if !self.allow_array {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut out = String::from(ARRAY_PREFIX);
        let mut first = true;
        while let Some(JsonScalar(item)) = seq.next_element()? {
            if !first {
                out.push_str(ARRAY_SEP);
            }
            first = false;
            out.push_str(&item);
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for JsonField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor { allow_array: true }).map(JsonField)
    }
}

impl<'de> Deserialize<'de> for JsonScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor { allow_array: false }).map(JsonScalar)
    }
}

/// What a frame means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `auth/request`: the server's greeting.
    AuthRequest,
    CommandReply(CommandReply),
    /// `api/response`: the command's output, exactly the body bytes.
    ApiResponse(Vec<u8>),
    /// `text/event-plain` or `text/event-json`.
    Event(Event),
    /// `text/event-xml`, passed through unparsed.
    EventXml(Vec<u8>),
    /// `text/disconnect-notice`. `linger` (outbound mode only) means the socket stays open.
    DisconnectNotice { linger: bool, reason: Vec<u8> },
    /// `text/rude-rejection`: refused by the server's ACL.
    RudeRejection { reason: Vec<u8> },
    /// `log/data` or any Content-Type this crate does not interpret (docs/ESL.md §6.13).
    Other(Frame),
}

impl Message {
    /// Classifies a frame. Only event bodies can fail to parse, and then only that event.
    pub fn from_frame(frame: Frame) -> Result<Message, EventError> {
        let ct = frame.content_type().unwrap_or("").trim().to_ascii_lowercase();
        Ok(match ct.as_str() {
            "auth/request" => Message::AuthRequest,
            "command/reply" => {
                let text = frame.reply_text().unwrap_or("").to_owned();
                Message::CommandReply(CommandReply { text, headers: frame.headers })
            }
            "api/response" => Message::ApiResponse(frame.body),
            "text/event-plain" => Message::Event(Event::parse_plain(&frame.body)?),
            "text/event-json" => Message::Event(Event::parse_json(&frame.body)?),
            "text/event-xml" => Message::EventXml(frame.body),
            "text/disconnect-notice" => {
                let linger = frame
                    .header("Content-Disposition")
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("linger"));
                Message::DisconnectNotice { linger, reason: frame.body }
            }
            "text/rude-rejection" => Message::RudeRejection { reason: frame.body },
            _ => Message::Other(frame),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Decoder;

    fn msg(bytes: &[u8]) -> Result<Message, EventError> {
        let mut d = Decoder::new();
        d.feed(bytes);
        Message::from_frame(d.next_frame().unwrap().unwrap())
    }

    #[test]
    fn plain_values_are_percent_decoded_and_plus_is_not_a_space() {
        let e = Event::parse_plain(b"Event-Name: CUSTOM\nA: 1.10%2Bgit%20x+y\nB: 100%\n\n").unwrap();
        assert_eq!(e.name(), Some("CUSTOM"));
        assert_eq!(e.get("a"), Some("1.10+git x+y"));
        assert_eq!(e.get("B"), Some("100%"));
        assert_eq!(e.body, None);
    }

    #[test]
    fn plain_event_with_inner_body_takes_exactly_inner_content_length_bytes() {
        let e = Event::parse_plain(b"Event-Name: BACKGROUND_JOB\nContent-Length: 11\n\n\n37 total.\n").unwrap();
        assert_eq!(e.body(), Some(b"\n37 total.\n".as_slice()));
        assert_eq!(e.get("Content-Length"), None);
    }

    #[test]
    fn plain_event_with_truncated_inner_body_is_rejected() {
        let e = Event::parse_plain(b"Event-Name: X\nContent-Length: 20\n\nshort");
        assert_eq!(e, Err(EventError::InnerBodyTruncated { declared: 20, available: 5 }));
    }

    #[test]
    fn plain_percent_decoded_invalid_utf8_is_replaced_not_fatal() {
        let e = Event::parse_plain(b"Event-Name: X\nCaller: Ren%E9\n\n").unwrap();
        assert_eq!(e.get("Caller"), Some("Ren\u{FFFD}"));
    }

    #[test]
    fn plain_arrays_are_exposed_as_elements() {
        let e = Event::parse_plain(b"Event-Name: X\nL: ARRAY%3A%3Aa%7C%3Ab%20c\n\n").unwrap();
        assert_eq!(e.get("L"), Some("ARRAY::a|:b c"));
        assert_eq!(e.get_array("L"), Some(vec!["a", "b c"]));
        assert_eq!(e.get_array("Event-Name"), Some(vec!["X"]));
    }

    #[test]
    fn json_event_keeps_order_duplicates_and_tolerates_invalid_utf8() {
        let body = b"{\"Event-Name\":\"CUSTOM\",\"Caller\":\"Ren\xe9\",\"X\":\"1\",\"X\":\"2\",\"L\":[\"a\",\"b\"]}";
        let e = Event::parse_json(body).unwrap();
        let names: Vec<_> = e.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Event-Name", "Caller", "X", "X", "L"]);
        assert_eq!(e.get("Caller"), Some("Ren\u{FFFD}"));
        assert_eq!(e.headers.get_all("X").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(e.get_array("L"), Some(vec!["a", "b"]));
    }

    #[test]
    fn json_body_and_its_content_length_become_the_event_body() {
        let e = Event::parse_json(br#"{"Event-Name":"BACKGROUND_JOB","Content-Length":"11","_body":"\n37 total.\n"}"#).unwrap();
        assert_eq!(e.body(), Some(b"\n37 total.\n".as_slice()));
        assert_eq!(e.headers.len(), 1);
    }

    #[test]
    fn malformed_json_event_is_a_typed_error() {
        assert!(matches!(Event::parse_json(b"{\"a\":"), Err(EventError::Json(_))));
        assert!(matches!(Event::parse_json(b"[1]"), Err(EventError::Json(_))));
        assert!(matches!(Event::parse_json(br#"{"a":{"b":"c"}}"#), Err(EventError::Json(_))));
        assert!(matches!(Event::parse_json(br#"{"a":[["x"]]}"#), Err(EventError::Json(_))));
    }

    #[test]
    fn disconnect_notice_reports_linger_disposition() {
        let m = msg(b"Content-Type: text/disconnect-notice\nContent-Disposition: linger\nContent-Length: 3\n\nbye").unwrap();
        assert_eq!(m, Message::DisconnectNotice { linger: true, reason: b"bye".to_vec() });
        let m = msg(b"Content-Type: text/disconnect-notice\nContent-Length: 3\n\nbye").unwrap();
        assert_eq!(m, Message::DisconnectNotice { linger: false, reason: b"bye".to_vec() });
    }

    #[test]
    fn unknown_content_types_are_kept_as_other() {
        let m = msg(b"Content-Type: log/data\nContent-Length: 2\nLog-Level: 7\n\nhi").unwrap();
        let Message::Other(f) = m else { panic!("expected Other") };
        assert_eq!(f.header("Log-Level"), Some("7"));
        assert_eq!(f.body, b"hi");
        assert!(matches!(msg(b"X-Foo: 1\n\n").unwrap(), Message::Other(_)));
    }

    #[test]
    fn command_reply_success_is_plus_ok_prefix() {
        let Message::CommandReply(r) = msg(b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: u\nJob-UUID: u\n\n").unwrap() else {
            panic!()
        };
        assert!(r.is_ok());
        assert_eq!(r.header("Job-UUID"), Some("u"));
        let Message::CommandReply(r) = msg(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n").unwrap() else {
            panic!()
        };
        assert!(!r.is_ok());
    }
}
