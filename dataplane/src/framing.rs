//! Stream framing, sans-IO: the bytes a TCP connection delivered in, complete SIP messages out. A
//! stream has no datagram boundaries, so every message must announce its body with
//! Content-Length (RFC 3261 §18.3; without it the stream cannot be resynchronised and the
//! connection is closed). Between messages, CRLFs are skipped (§7.5), and a double CRLF is a
//! keep-alive ping that the shell answers with one CRLF (RFC 5626 §3.5.1). A message larger than
//! the configured maximum (headers plus announced body) is refused as soon as its headers are in,
//! before its body is read: a peer announcing 10 MB costs the header bytes, not 10 MB. The framer
//! only finds boundaries; the message itself is scanned by `sip` like any datagram (docs/TCP.md).

/// What the framer found next in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One complete message, headers and body, ready for the router.
    Message(&'a [u8]),
    /// A CRLF CRLF keep-alive: answer with [`PONG`].
    Ping,
}

/// The answer to a keep-alive ping (RFC 5626 §3.5.1).
pub const PONG: &[u8] = b"\r\n";

/// Why a stream cannot be framed any further; the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a message on a stream has no Content-Length")]
    NoContentLength,
    #[error("a Content-Length that is not a number, or two that disagree")]
    BadContentLength,
    /// Headers longer than the maximum, or headers plus the announced body.
    #[error("a message larger than the maximum ({announced} bytes or more)")]
    TooLarge { announced: usize },
}

/// The least a read asks room for, so a busy connection reads in few system calls.
const READ_CHUNK: usize = 16 * 1024;

/// One connection's framing state: the bytes received and not yet framed.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where the unframed bytes start in `buf` (bytes before it were handed out).
    start: usize,
    /// How far past `start` the search for the end of the headers has looked.
    scanned: usize,
    /// The current message's total length, once its headers are in.
    total: Option<usize>,
    max_message: usize,
}

impl Framer {
    pub fn new(max_message: usize) -> Framer {
        Framer { buf: Vec::new(), start: 0, scanned: 0, total: None, max_message }
    }

    /// Bytes received and not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Room to read into (at least `READ_CHUNK` bytes); report what was read with [`Self::filled`].
    pub fn spare(&mut self) -> &mut [u8] {
        self.compact();
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        &mut self.buf[len..]
    }

    /// `n` bytes of the last [`Self::spare`] were filled by a read.
    pub fn filled(&mut self, n: usize) {
        let len = self.buf.len() - READ_CHUNK;
        self.buf.truncate(len + n.min(READ_CHUNK));
    }

    /// Appends received bytes (for callers that already hold them).
    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Drops the bytes already handed out, so the buffer holds at most one partial message.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            // A large message has gone: an idle connection keeps only a small buffer.
            self.buf = Vec::new();
        }
    }

    /// The next complete frame, None when more bytes are needed. After an error the stream is
    /// unusable: close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        loop {
            let rest = &self.buf[self.start..];
            if self.total.is_none() && rest.first() == Some(&b'\r') {
                // Between messages: CRLF CRLF is a ping, a lone CRLF (a pong, or padding) is
                // skipped. Decided only when enough bytes are in, so any split frames alike.
                if rest.starts_with(b"\r\n\r\n") {
                    self.start += 4;
                    return Ok(Some(Frame::Ping));
                }
                if b"\r\n\r\n".starts_with(rest) {
                    return Ok(None);
                }
                if rest.starts_with(b"\r\n") {
                    self.start += 2;
                    continue;
                }
                // A CR that starts no line break starts no message either.
                return Err(FrameError::NoContentLength);
            }
            if self.total.is_none() && rest.first() == Some(&b'\n') {
                // A bare LF between messages (the scanner accepts LF line breaks too).
                self.start += 1;
                continue;
            }
            break;
        }
        let total = match self.total {
            Some(t) => t,
            None => {
                let Some(headers) = self.find_headers_end()? else { return Ok(None) };
                let body = content_length(&self.buf[self.start..self.start + headers])?;
                let total = headers.checked_add(body).ok_or(FrameError::TooLarge { announced: usize::MAX })?;
                if total > self.max_message {
                    return Err(FrameError::TooLarge { announced: total });
                }
                self.total = Some(total);
                total
            }
        };
        if self.pending() < total {
            return Ok(None);
        }
        let at = self.start;
        self.start += total;
        self.total = None;
        self.scanned = 0;
        Ok(Some(Frame::Message(&self.buf[at..at + total])))
    }

    /// The length of the header block (through its empty line), once it is in.
    fn find_headers_end(&mut self) -> Result<Option<usize>, FrameError> {
        let rest = &self.buf[self.start..];
        // Resume a little before where the last search stopped: the terminator may straddle reads.
        let from = self.scanned.saturating_sub(3);
        for nl in memchr::memchr_iter(b'\n', &rest[from..]).map(|i| from + i) {
            match rest.get(nl + 1) {
                Some(b'\n') => return Ok(Some(nl + 2)),
                Some(b'\r') if rest.get(nl + 2) == Some(&b'\n') => return Ok(Some(nl + 3)),
                _ => {}
            }
        }
        self.scanned = rest.len();
        if rest.len() > self.max_message {
            return Err(FrameError::TooLarge { announced: rest.len() });
        }
        Ok(None)
    }
}

/// The Content-Length of a header block (long or compact form `l`, any case): exactly one value,
/// or several that agree.
fn content_length(headers: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    // The first line is the start line; a folded continuation starts with white space.
    for line in headers.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = memchr::memchr(b':', line) else { continue };
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        if line.first().is_some_and(|b| matches!(b, b' ' | b'\t')) {
            continue;
        }
        let value = trim(&line[colon + 1..]);
        if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::BadContentLength);
        }
        let v = value.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        match found {
            Some(old) if old != v => return Err(FrameError::BadContentLength),
            _ => found = Some(v),
        }
    }
    found.ok_or(FrameError::NoContentLength)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1\r\nCall-ID: a@b\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n";
    const BYE: &[u8] = b"BYE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK2\nCall-ID: a@b\nl: 0\n\n";

    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Msg(Vec<u8>),
        Ping,
        Err(FrameError),
    }

    fn frame_all(f: &mut Framer, out: &mut Vec<Out>) -> bool {
        loop {
            match f.next_frame() {
                Ok(Some(Frame::Message(m))) => out.push(Out::Msg(m.to_vec())),
                Ok(Some(Frame::Ping)) => out.push(Out::Ping),
                Ok(None) => return true,
                Err(e) => {
                    out.push(Out::Err(e));
                    return false;
                }
            }
        }
    }

    fn frames(chunks: &[&[u8]], max: usize) -> Vec<Out> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c);
            if !frame_all(&mut f, &mut out) {
                break;
            }
        }
        out
    }

    #[test]
    fn content_length_frames_back_to_back_messages() {
        let stream = [INVITE, BYE].concat();
        assert_eq!(frames(&[&stream], 65_535), [Out::Msg(INVITE.to_vec()), Out::Msg(BYE.to_vec())]);
    }

    #[test]
    fn a_message_waits_for_its_whole_body() {
        let (head, tail) = INVITE.split_at(INVITE.len() - 2);
        let mut f = Framer::new(65_535);
        f.push(head);
        assert_eq!(f.next_frame(), Ok(None));
        f.push(tail);
        assert_eq!(f.next_frame(), Ok(Some(Frame::Message(INVITE))));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn double_crlf_is_a_ping_and_lone_crlfs_are_skipped() {
        let stream = [&b"\r\n\r\n"[..], b"\r\n", INVITE, b"\r\n\r\n"].concat();
        assert_eq!(frames(&[&stream], 65_535), [Out::Ping, Out::Msg(INVITE.to_vec()), Out::Ping]);
        // A lone CRLF (a client's pong) is not taken for half a ping once the next message is in.
        assert_eq!(frames(&[b"\r\n", BYE], 65_535), [Out::Msg(BYE.to_vec())]);
    }

    #[test]
    fn a_stream_message_without_content_length_is_an_error() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n";
        assert_eq!(frames(&[msg], 65_535), [Out::Err(FrameError::NoContentLength)]);
    }

    #[test]
    fn disagreeing_or_non_numeric_content_lengths_are_errors() {
        let two = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\nl: 3\r\n\r\nabc";
        assert_eq!(frames(&[two], 65_535), [Out::Err(FrameError::BadContentLength)]);
        let nan = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(frames(&[nan], 65_535), [Out::Err(FrameError::BadContentLength)]);
    }

    #[test]
    fn a_huge_content_length_is_refused_before_the_body_arrives() {
        let head = b"INVITE sip:x SIP/2.0\r\nContent-Length: 10485760\r\n\r\n";
        let announced = head.len() + 10 * 1024 * 1024;
        assert_eq!(frames(&[head], 65_535), [Out::Err(FrameError::TooLarge { announced })]);
    }

    #[test]
    fn endless_headers_are_refused_at_the_maximum() {
        let mut f = Framer::new(1000);
        let mut out = Vec::new();
        f.push(b"INVITE sip:x SIP/2.0\r\n");
        let mut ok = true;
        for _ in 0..100 {
            f.push(b"X-Junk: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            ok = frame_all(&mut f, &mut out);
            if !ok {
                break;
            }
        }
        assert!(!ok);
        assert!(matches!(out.last(), Some(Out::Err(FrameError::TooLarge { .. }))), "{out:?}");
        assert!(f.pending() < 1100, "the buffer stops near the maximum");
    }

    #[test]
    fn reads_go_straight_into_the_buffer() {
        let mut f = Framer::new(65_535);
        let room = f.spare();
        room[..BYE.len()].copy_from_slice(BYE);
        f.filled(BYE.len());
        assert_eq!(f.next_frame(), Ok(Some(Frame::Message(BYE))));
        assert_eq!(f.next_frame(), Ok(None));
    }

    fn stream_parts() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![Just(INVITE.to_vec()), Just(BYE.to_vec()), Just(b"\r\n\r\n".to_vec()), Just(b"\r\n".to_vec())];
        prop::collection::vec(part, 1..8).prop_map(|ps| ps.concat())
    }

    proptest! {
        #[test]
        fn any_split_of_a_stream_yields_the_same_frames(stream in stream_parts(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
            let whole = frames(&[&stream], 65_535);
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for a in at.into_iter().chain([stream.len()]) {
                chunks.push(&stream[prev..a]);
                prev = a;
            }
            prop_assert_eq!(frames(&chunks, 65_535), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_never_exceed_the_maximum(data in prop::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
            let mut f = Framer::new(512);
            let mut out = Vec::new();
            for c in data.chunks(chunk) {
                f.push(c);
                if !frame_all(&mut f, &mut out) {
                    break;
                }
                prop_assert!(f.pending() <= 512 + chunk);
            }
            for o in &out {
                if let Out::Msg(m) = o {
                    prop_assert!(m.len() <= 512);
                }
            }
        }
    }
}
