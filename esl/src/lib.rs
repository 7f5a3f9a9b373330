//! FreeSWITCH Event Socket (ESL): a sans-IO codec and client protocol state machine, and the
//! control plane's ESL connection pool.
//!
//! The codec modules ([`frame`], [`message`], [`heartbeat`], [`command`], [`client_proto`],
//! [`serialize`], [`server_proto`]) touch no socket and no clock: bytes go in, frames,
//! events and load samples come out, and commands come out as bytes to write. The same
//! codec serves the load balancer's client and the FreeSWITCH emulator (the `fsroute-fsemu`
//! crate, which owns the server side's I/O and the `fsemu` binary). I/O lives in one place
//! only here: [`client`] ([`EslPool`], one mio poll for every FreeSWITCH box). The wire protocol is
//! described in `docs/ESL.md`; section numbers in comments refer to it.

pub mod client;
pub mod client_proto;
pub mod command;
pub mod frame;
pub mod heartbeat;
pub mod message;
pub mod percent;
pub mod serialize;
pub mod server_proto;
pub mod url;

pub use client::{ClientError, ConnId, ConnStatus, EslPool, IoError, PoolConfig, PoolEvent};
pub use client_proto::{ClientConfig, ClientEvent, ClientProto, ClientState, HeartbeatFormat, ProtoError};
pub use command::{Command, CommandError, Credentials, EventFormat, ReplyKind};
pub use frame::{Decoder, Frame, FrameError, Headers, Limits, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES};
pub use heartbeat::{HeartbeatError, HeartbeatStats};
pub use message::{CommandReply, Event, EventError, Message};
pub use serialize::{EncodedEvent, HeartbeatParams, OutEvent, StatusParams, Value};
pub use server_proto::{CommandReadError, CommandReader, FilterOp, ServerCommand, ServerRequest};
pub use url::{EslUrl, Secret, DEFAULT_ESL_PORT};
