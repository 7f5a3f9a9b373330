//! Sans-IO client for one inbound ESL connection (docs/ESL.md §1, §2, §6): drives the handshake
//! (greeting → auth → `event <fmt> HEARTBEAT` → `api status` seed), matches each reply to
//! the oldest unanswered command while events interleave, and turns heartbeats into load
//! samples. The caller owns the socket and the clock: it passes received bytes to
//! [`ClientProto::handle_input`], writes whatever [`ClientProto::poll_output`] returns, and
//! acts on [`ClientProto::poll_event`]. Timeouts and reconnect backoff are the caller's.

use std::collections::VecDeque;
use std::fmt;

use crate::command::{Command, CommandError, Credentials, EventFormat, ReplyKind};
use crate::frame::{Decoder, FrameError, Limits};
use crate::heartbeat::{HeartbeatError, HeartbeatStats};
use crate::message::{CommandReply, Event, EventError, Message};

/// Event formats the client can parse heartbeats from. XML is deliberately absent: it
/// is passed through unparsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatFormat {
    Plain,
    Json,
}

impl From<HeartbeatFormat> for EventFormat {
    fn from(f: HeartbeatFormat) -> EventFormat {
        match f {
            HeartbeatFormat::Plain => EventFormat::Plain,
            HeartbeatFormat::Json => EventFormat::Json,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub credentials: Credentials,
    pub format: HeartbeatFormat,
    /// Issue `api status` after subscribing so the node has load figures before its first
    /// heartbeat, which can be a whole interval away (docs/ESL.md §6.11).
    pub seed_with_status: bool,
    pub limits: Limits,
    /// Events to subscribe to besides HEARTBEAT (e.g. `SHUTDOWN_REQUESTED`); they surface as
    /// [`ClientEvent::Event`].
    pub extra_events: Vec<String>,
}

impl ClientConfig {
    pub fn new(credentials: Credentials, format: HeartbeatFormat) -> ClientConfig {
        ClientConfig { credentials, format, seed_with_status: true, limits: Limits::default(), extra_events: Vec::new() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    AwaitAuthRequest,
    AwaitAuthReply,
    /// Authenticated; `event ... HEARTBEAT` sent.
    Subscribing,
    /// Subscribed; `api status` sent.
    Seeding,
    Ready,
    /// Credentials refused; the server is about to send its notice and close.
    AuthRejected,
    /// The server said it is closing.
    Closed,
}

/// What happened on the connection, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    Authenticated,
    Subscribed,
    /// Load figures from `api status`.
    Seed(HeartbeatStats),
    /// `api status` answered but its body was not usable. The connection stays up.
    SeedRejected(HeartbeatError),
    Heartbeat(HeartbeatStats),
    /// A HEARTBEAT arrived with a missing or malformed field. The connection stays up; the
    /// node's staleness clock should keep running.
    HeartbeatRejected(HeartbeatError),
    /// Any other event (the caller subscribed to more than HEARTBEAT).
    Event(Event),
    /// An event body that could not be read. The connection stays up.
    EventRejected(EventError),
    /// `text/event-xml`, unparsed.
    EventXml(Vec<u8>),
    /// `+OK` to a command the caller sent with [`ClientProto::send`].
    CommandOk { command: String, reply: CommandReply },
    /// A command was refused (`-ERR ...`, or an `api` error body).
    CommandFailed { command: String, reply: String },
    /// Output of an `api` command the caller sent.
    ApiResponse { command: String, body: Vec<u8> },
    /// Wrong credentials. Back off before retrying (docs/ESL.md §6.8).
    AuthFailed { reply: String },
    /// The server's ACL refused this client. Do not retry quickly.
    RudeRejection { reason: String },
    /// The server is closing (`linger: false`) or, in outbound mode, the channel ended.
    Disconnected { linger: bool, reason: String },
    /// A frame of a Content-Type this crate does not interpret (`log/data`, future types).
    Unsolicited(crate::frame::Frame),
}

/// A protocol violation or framing failure. The connection cannot be trusted afterwards:
/// [`ClientProto::handle_input`] keeps returning the same error; reconnect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unexpected auth/request in state {state:?}")]
    UnexpectedAuthRequest { state: ClientState },
    #[error("{got} arrived while no command was awaiting a reply")]
    UnsolicitedReply { got: &'static str },
    #[error("`{command}` expected {expected} but got {got}")]
    MismatchedReply { command: String, expected: &'static str, got: &'static str },
    #[error("frame received after the server's disconnect notice")]
    FrameAfterDisconnect,
    #[error("cannot send commands in state {state:?}")]
    NotReady { state: ClientState },
    #[error("authentication is performed by the handshake, not by send()")]
    AuthNotAllowed,
    #[error(transparent)]
    Command(#[from] CommandError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Auth,
    Subscribe,
    Seed,
    User,
}

#[derive(Clone)]
struct Pending {
    label: String,
    kind: ReplyKind,
    purpose: Purpose,
}

pub struct ClientProto {
    config: ClientConfig,
    decoder: Decoder,
    state: ClientState,
    pending: VecDeque<Pending>,
    output: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    failed: Option<ProtoError>,
}

impl fmt::Debug for ClientProto {
    // By hand: queued output holds the encoded `auth` line, password included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientProto")
            .field("credentials", &self.config.credentials)
            .field("format", &self.config.format)
            .field("state", &self.state)
            .field("pending", &self.pending.iter().map(|p| p.label.as_str()).collect::<Vec<_>>())
            .field("queued_writes", &self.output.len())
            .field("queued_events", &self.events.len())
            .field("decoder", &self.decoder)
            .field("failed", &self.failed)
            .finish()
    }
}

fn kind_name(kind: ReplyKind) -> &'static str {
    match kind {
        ReplyKind::CommandReply => "command/reply",
        ReplyKind::ApiResponse => "api/response",
    }
}

impl ClientProto {
    pub fn new(credentials: Credentials, format: HeartbeatFormat) -> ClientProto {
        ClientProto::with_config(ClientConfig::new(credentials, format))
    }

    pub fn with_config(config: ClientConfig) -> ClientProto {
        ClientProto {
            decoder: Decoder::with_limits(config.limits),
            config,
            state: ClientState::AwaitAuthRequest,
            pending: VecDeque::new(),
            output: VecDeque::new(),
            events: VecDeque::new(),
            failed: None,
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn is_ready(&self) -> bool {
        self.state == ClientState::Ready
    }

    /// Commands written and not yet answered.
    pub fn pending_commands(&self) -> usize {
        self.pending.len()
    }

    /// Next chunk of bytes to write to the socket.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.output.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Queues a command once authenticated. Its reply surfaces as
    /// [`ClientEvent::CommandOk`], [`ClientEvent::CommandFailed`] or
    /// [`ClientEvent::ApiResponse`], in order with the handshake's own commands.
    pub fn send(&mut self, command: Command) -> Result<(), ProtoError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.state {
            ClientState::Subscribing | ClientState::Seeding | ClientState::Ready => {}
            state => return Err(ProtoError::NotReady { state }),
        }
        if matches!(command, Command::Auth { .. } | Command::UserAuth { .. }) {
            return Err(ProtoError::AuthNotAllowed);
        }
        self.queue(command, Purpose::User)?;
        Ok(())
    }

    fn queue(&mut self, command: Command, purpose: Purpose) -> Result<(), CommandError> {
        let bytes = command.encode()?;
        self.output.push_back(bytes);
        self.pending.push_back(Pending { label: command.label(), kind: command.reply_kind(), purpose });
        Ok(())
    }

    /// Processes received bytes. Events produced before an error stay queued.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ProtoError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.decoder.feed(bytes);
        loop {
            let step = match self.decoder.next_frame() {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => return Ok(()),
                Err(e) => Err(ProtoError::from(e)),
            };
            if let Err(e) = step {
                tracing::debug!(error = %e, "ESL connection failed");
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
    }

    fn on_frame(&mut self, frame: crate::frame::Frame) -> Result<(), ProtoError> {
        if self.state == ClientState::Closed {
            return Err(ProtoError::FrameAfterDisconnect);
        }
        let message = match Message::from_frame(frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "ESL event rejected");
                self.events.push_back(ClientEvent::EventRejected(e));
                return Ok(());
            }
        };
        match message {
            Message::AuthRequest => {
                if self.state != ClientState::AwaitAuthRequest {
                    return Err(ProtoError::UnexpectedAuthRequest { state: self.state });
                }
                self.queue(self.config.credentials.command(), Purpose::Auth)?;
                self.state = ClientState::AwaitAuthReply;
            }
            Message::CommandReply(reply) => {
                let p = self.take_pending(ReplyKind::CommandReply)?;
                self.on_command_reply(p, reply)?;
            }
            Message::ApiResponse(body) => {
                let p = self.take_pending(ReplyKind::ApiResponse)?;
                self.on_api_response(p, body);
            }
            Message::Event(event) => self.on_event(event),
            Message::EventXml(body) => self.events.push_back(ClientEvent::EventXml(body)),
            Message::DisconnectNotice { linger, reason } => {
                if !linger {
                    self.state = ClientState::Closed;
                }
                let reason = String::from_utf8_lossy(&reason).into_owned();
                self.events.push_back(ClientEvent::Disconnected { linger, reason });
            }
            Message::RudeRejection { reason } => {
                let reason = String::from_utf8_lossy(&reason).into_owned();
                self.events.push_back(ClientEvent::RudeRejection { reason });
            }
            Message::Other(frame) => self.events.push_back(ClientEvent::Unsolicited(frame)),
        }
        Ok(())
    }

    fn take_pending(&mut self, got: ReplyKind) -> Result<Pending, ProtoError> {
        match self.pending.pop_front() {
            None => Err(ProtoError::UnsolicitedReply { got: kind_name(got) }),
            Some(p) if p.kind != got => Err(ProtoError::MismatchedReply {
                command: p.label,
                expected: kind_name(p.kind),
                got: kind_name(got),
            }),
            Some(p) => Ok(p),
        }
    }

    fn on_command_reply(&mut self, p: Pending, reply: CommandReply) -> Result<(), ProtoError> {
        match p.purpose {
            Purpose::Auth => {
                if reply.is_ok() {
                    self.events.push_back(ClientEvent::Authenticated);
                    let mut names = vec!["HEARTBEAT".to_owned()];
                    names.extend(self.config.extra_events.iter().filter(|n| *n != "HEARTBEAT").cloned());
                    self.queue(Command::Event { format: self.config.format.into(), names }, Purpose::Subscribe)?;
                    self.state = ClientState::Subscribing;
                } else {
                    self.state = ClientState::AuthRejected;
                    self.events.push_back(ClientEvent::AuthFailed { reply: reply.text });
                }
            }
            Purpose::Subscribe => {
                if reply.is_ok() {
                    self.events.push_back(ClientEvent::Subscribed);
                } else {
                    self.events.push_back(ClientEvent::CommandFailed { command: p.label, reply: reply.text });
                }
                if self.config.seed_with_status {
                    self.queue(Command::api("status"), Purpose::Seed)?;
                    self.state = ClientState::Seeding;
                } else {
                    self.state = ClientState::Ready;
                }
            }
            // A Seed entry expects api/response, so `take_pending` never routes one here.
            Purpose::Seed | Purpose::User => {
                self.events.push_back(if reply.is_ok() {
                    ClientEvent::CommandOk { command: p.label, reply }
                } else {
                    ClientEvent::CommandFailed { command: p.label, reply: reply.text }
                });
            }
        }
        Ok(())
    }

    fn on_api_response(&mut self, p: Pending, body: Vec<u8>) {
        match p.purpose {
            Purpose::Seed => {
                self.state = ClientState::Ready;
                if body.starts_with(b"-ERR") {
                    let reply = String::from_utf8_lossy(&body).trim_end().to_owned();
                    self.events.push_back(ClientEvent::CommandFailed { command: p.label, reply });
                    return;
                }
                self.events.push_back(match HeartbeatStats::from_status(&body) {
                    Ok(stats) => ClientEvent::Seed(stats),
                    Err(e) => ClientEvent::SeedRejected(e),
                });
            }
            _ => self.events.push_back(ClientEvent::ApiResponse { command: p.label, body }),
        }
    }

    fn on_event(&mut self, event: Event) {
        if event.name() != Some("HEARTBEAT") {
            self.events.push_back(ClientEvent::Event(event));
            return;
        }
        self.events.push_back(match HeartbeatStats::from_event(&event) {
            Ok(stats) => ClientEvent::Heartbeat(stats),
            Err(e) => {
                tracing::debug!(error = %e, "HEARTBEAT rejected");
                ClientEvent::HeartbeatRejected(e)
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_masks_the_queued_auth_line() {
        let mut p = ClientProto::new(Credentials::password("hunter2").unwrap(), HeartbeatFormat::Json);
        p.handle_input(b"Content-Type: auth/request\n\n").unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(p.poll_output().unwrap(), b"auth hunter2\n\n");
    }

    #[test]
    fn send_before_authentication_is_refused() {
        let mut p = ClientProto::new(Credentials::password("x").unwrap(), HeartbeatFormat::Json);
        assert_eq!(
            p.send(Command::api("status")),
            Err(ProtoError::NotReady { state: ClientState::AwaitAuthRequest })
        );
    }
}
