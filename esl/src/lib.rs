//! FreeSWITCH Event Socket (ESL): sans-IO codec, client protocol state machine, server-side serialisers.
//!
//! Nothing here touches a socket or a clock. Bytes go in, frames, events and load samples
//! come out, and commands come out as bytes to write. The same codec serves the load
//! balancer's client ([`ClientProto`]) and the FreeSWITCH emulator ([`CommandReader`] plus
//! the [`serialize`] functions). The wire protocol is described in
//! `design/reference/ESL.md`; section numbers in comments refer to it.

pub mod client_proto;
pub mod command;
pub mod frame;
pub mod heartbeat;
pub mod message;
pub mod percent;
pub mod serialize;
pub mod server_proto;

pub use client_proto::{ClientConfig, ClientEvent, ClientProto, ClientState, HeartbeatFormat, ProtoError};
pub use command::{Command, CommandError, Credentials, EventFormat, ReplyKind};
pub use frame::{Decoder, Frame, FrameError, Headers, Limits, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES};
pub use heartbeat::{HeartbeatError, HeartbeatStats};
pub use message::{CommandReply, Event, EventError, Message};
pub use serialize::{EncodedEvent, HeartbeatParams, OutEvent, StatusParams, Value};
pub use server_proto::{CommandReadError, CommandReader, FilterOp, ServerCommand, ServerRequest};
