//! Fuzz target for the ESL codec (`fsroute-esl`): the frame [`Decoder`], the meaning of a frame
//! ([`Message`], events, heartbeat and `api status` figures), the client state machine
//! ([`ClientProto`]) and the emulator's [`CommandReader`], all fed one byte stream cut into
//! chunks at fuzzer-chosen points. A FreeSWITCH box (or whatever answers on its ESL port) must
//! not be able to panic fsroute, make it buffer more than the decoder's limits, or get a
//! different result by splitting the same bytes differently across TCP reads.
//!
//! Input format: byte 0 holds flags (bits 0-3: how many chunk lengths follow; bit 4: small
//! limits; bit 5: JSON heartbeats; bit 6: no `api status` seed), then that many chunk lengths of
//! one byte each, then the stream. The stream is fed in chunks of those lengths, cycled; a zero
//! length feeds an empty chunk.
#![no_main]

use fsroute_esl::{
    ClientConfig, ClientEvent, ClientProto, CommandReader, Credentials, Decoder, Frame, FrameError, HeartbeatFormat,
    HeartbeatStats, Limits, Message, ProtoError, ServerCommand,
};
use libfuzzer_sys::fuzz_target;

const SMALL: Limits = Limits { max_header_bytes: 256, max_body_bytes: 1024 };

struct Input<'a> {
    limits: Limits,
    format: HeartbeatFormat,
    seed_with_status: bool,
    lengths: &'a [u8],
    stream: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Option<Input<'a>> {
        let (&flags, rest) = data.split_first()?;
        let k = usize::from(flags & 0x0f).min(rest.len());
        let (lengths, stream) = rest.split_at(k);
        Some(Input {
            limits: if flags & 0x10 != 0 { SMALL } else { Limits::default() },
            format: if flags & 0x20 != 0 { HeartbeatFormat::Json } else { HeartbeatFormat::Plain },
            seed_with_status: flags & 0x40 == 0,
            lengths,
            stream,
        })
    }

    /// The stream in chunks of the chosen lengths; one chunk when no length was given or when
    /// the lengths are all zero.
    fn chunks(&self) -> Vec<&'a [u8]> {
        let stream = self.stream;
        if self.lengths.iter().all(|&l| l == 0) {
            return vec![stream];
        }
        let mut out = Vec::new();
        let mut at = 0;
        for &l in self.lengths.iter().cycle() {
            if at == stream.len() {
                break;
            }
            let end = (at + usize::from(l)).min(stream.len());
            out.push(&stream[at..end]);
            at = end;
        }
        out
    }
}

/// Frames, then the error that stopped the stream if any, feeding `chunks` one by one and
/// draining after each, as the client's read loop does.
fn decode(chunks: &[&[u8]], limits: Limits) -> (Vec<Frame>, Option<FrameError>) {
    let mut d = Decoder::with_limits(limits);
    let mut frames = Vec::new();
    // Frames in flight never need more than one header block or one body: the rest waits in
    // the socket, not in fsroute.
    let bound = limits.max_header_bytes.max(limits.max_body_bytes);
    for chunk in chunks {
        d.feed(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(d.next_frame(), Err(e.clone()), "a framing error is sticky");
                    return (frames, Some(e));
                }
            }
        }
        assert!(d.buffered() <= bound, "{} bytes buffered with limits {limits:?}", d.buffered());
    }
    (frames, None)
}

/// What the control plane does with each frame: classify it, read heartbeat or status figures.
fn interpret(frame: Frame) {
    match Message::from_frame(frame) {
        Ok(Message::Event(e)) => {
            let _ = (e.name(), e.get("Event-Name"), e.get_array("Event-Info"), e.body());
            let _ = HeartbeatStats::from_event(&e);
        }
        Ok(Message::ApiResponse(body)) => {
            let _ = HeartbeatStats::from_status(&body);
        }
        Ok(Message::CommandReply(r)) => {
            let _ = (r.is_ok(), r.header("Job-UUID"));
        }
        Ok(_) | Err(_) => {}
    }
}

fn client_run(input: &Input<'_>, chunks: &[&[u8]]) -> (Vec<ClientEvent>, Vec<Vec<u8>>, Option<ProtoError>) {
    let credentials = Credentials::password("ClueCon").expect("a valid password");
    let mut config = ClientConfig::new(credentials, input.format);
    config.seed_with_status = input.seed_with_status;
    config.limits = input.limits;
    config.extra_events = vec!["SHUTDOWN_REQUESTED".into()];
    let mut p = ClientProto::with_config(config);
    let (mut events, mut writes) = (Vec::new(), Vec::new());
    let mut failed = None;
    for chunk in chunks {
        let r = p.handle_input(chunk);
        writes.extend(std::iter::from_fn(|| p.poll_output()));
        events.extend(std::iter::from_fn(|| p.poll_event()));
        if let Err(e) = r {
            failed = Some(e);
            break;
        }
    }
    (events, writes, failed)
}

fn command_run(chunks: &[&[u8]], limits: Limits) -> (Vec<ServerCommand>, bool) {
    let mut r = CommandReader::with_limits(limits.max_header_bytes, limits.max_body_bytes);
    let mut commands = Vec::new();
    for chunk in chunks {
        r.feed(chunk);
        loop {
            match r.next_command() {
                Ok(Some(c)) => {
                    let _ = c.request();
                    commands.push(c);
                }
                Ok(None) => break,
                Err(_) => return (commands, true),
            }
        }
    }
    (commands, false)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else {
        return;
    };
    let chunks = input.chunks();
    let whole = [input.stream];

    let (frames, error) = decode(&chunks, input.limits);
    let (frames_whole, error_whole) = decode(&whole, input.limits);
    assert_eq!(frames, frames_whole, "framing depends on where the stream was cut");
    assert_eq!(error, error_whole, "framing errors depend on where the stream was cut");
    for f in frames {
        interpret(f);
    }

    let client = client_run(&input, &chunks);
    let client_whole = client_run(&input, &whole);
    assert_eq!(client, client_whole, "the client's view depends on where the stream was cut");

    let commands = command_run(&chunks, input.limits);
    let commands_whole = command_run(&whole, input.limits);
    assert_eq!(commands, commands_whole, "command reading depends on where the stream was cut");
});
