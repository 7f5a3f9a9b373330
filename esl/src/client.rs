//! ESL client I/O for the control plane: one single-threaded [`EslPool`] owns a `mio::Poll`
//! and every FreeSWITCH connection, and the control-plane thread drives it by calling
//! [`EslPool::poll`]. All protocol logic lives in [`ClientProto`]; this module owns sockets,
//! clocks and policy: non-blocking connect with a deadline, TCP keepalive and TCP_NODELAY,
//! a heartbeat watchdog, and reconnects with capped exponential backoff plus jitter. It
//! exists because the OpenSIPS client connects blocking from its one manager loop and has
//! no keepalive or watchdog (docs/OPENSIPS.md §3), so one dead box stalls or silently freezes
//! the others. Here nothing ever blocks on one box: a dead, slow or hostile peer costs
//! only its own connection.
//!
//! Watchdog policy: a connection that has been authenticated but has delivered no valid
//! HEARTBEAT for `heartbeat_timeout` is reported [`PoolEvent::Stale`] once and *kept*, so a
//! late heartbeat from an overloaded box recovers it without a reconnect. If the silence
//! lasts `recycle_after` (default twice the timeout), the connection is presumed
//! half-open and is closed and reconnected ([`PoolEvent::Disconnected`]).
//!
//! Every failure, before or after authentication, is a [`ClientError`]: the events carry it,
//! [`ConnStatus::last_error`] keeps the last one.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::Rng;
use socket2::{SockRef, TcpKeepalive};

use crate::client_proto::{
    ClientConfig, ClientEvent, ClientProto, ClientState, HeartbeatFormat, ProtoError,
};
use crate::command::{CommandError, Credentials};
use crate::frame::Limits;
use crate::heartbeat::{HeartbeatError, HeartbeatStats};
use crate::url::EslUrl;

/// Why a connection attempt failed or an established connection was closed: what
/// [`PoolEvent::ConnectFailed`] and [`PoolEvent::Disconnected`] carry and
/// [`ConnStatus::last_error`] keeps. `Clone + Eq` like the events (an I/O error is kept as its
/// kind and message, [`IoError`]); never contains a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The URL's credentials cannot be sent (a CR, LF or NUL would split the command, a
    /// `userauth` user is not one token); every attempt fails the same way.
    #[error("ESL URL credentials are unusable: {0}")]
    Credentials(CommandError),
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: IoError },
    #[error("resolving {host} timed out")]
    ResolveTimeout { host: String },
    #[error("cannot start resolver: {0}")]
    ResolverSpawn(IoError),
    #[error("resolver thread vanished")]
    ResolverGone,
    /// TCP connect failed: at once (`addr`: the socket could not be made, tuned or registered),
    /// or when the handshake completed with an error (refused, unreachable).
    #[error("connect{}: {source}", .addr.map(|a| format!(" to {a}")).unwrap_or_default())]
    Connect {
        addr: Option<SocketAddr>,
        source: IoError,
    },
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// No greeting, or no answer to `auth`, within `connect_timeout`.
    #[error("handshake timed out after {after:?} in state {state:?}")]
    HandshakeTimeout { after: Duration, state: ClientState },
    /// `-ERR invalid` to `auth`/`userauth`.
    #[error("authentication failed: {reply}")]
    AuthRefused { reply: String },
    /// The server's `rude-rejection` notice (its ACL refuses this address).
    #[error("rejected by the server's ACL: {0}")]
    AclRejected(String),
    /// The server's disconnect notice, first line.
    #[error("server disconnected: {0}")]
    ServerDisconnected(String),
    /// Authenticated but silent for `recycle_after`: presumed half-open.
    #[error("no heartbeat for {0:?}; connection presumed dead")]
    Silent(Duration),
    #[error("read: {0}")]
    Read(IoError),
    #[error("write: {0}")]
    Write(IoError),
    /// The peer closed the connection (a read of 0 bytes).
    #[error("connection closed by peer")]
    Closed,
    /// The bytes broke the protocol (framing, an unexpected reply): the codec's error.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtoError),
}

/// An I/O error as [`ClientError`] keeps it: its kind and its message, so that the error can be
/// cloned and compared like the events that carry it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IoError {
    pub kind: io::ErrorKind,
    pub message: String,
}

impl From<io::Error> for IoError {
    fn from(e: io::Error) -> IoError {
        IoError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Pool-wide policy.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Covers TCP connect, the greeting and the auth reply.
    pub connect_timeout: Duration,
    /// An authenticated connection silent this long is reported stale.
    pub heartbeat_timeout: Duration,
    /// Silence after which the connection is presumed half-open and recycled; `None`
    /// keeps a stale connection forever (TCP keepalive still applies).
    pub recycle_after: Option<Duration>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// ± fraction applied to each backoff delay so a farm restart does not synchronise
    /// every balancer's reconnects.
    pub backoff_jitter: f64,
    pub format: HeartbeatFormat,
    /// TCP keepalive idle time and probe interval; zero disables it. FreeSWITCH does not
    /// enable keepalive itself (docs/ESL.md §5), so without this a partition goes unnoticed.
    pub keepalive: Duration,
    /// Codec limits per connection; a heartbeat connection never needs 16 MiB frames.
    pub limits: Limits,
    /// Events subscribed to besides HEARTBEAT, reported as [`PoolEvent::Event`].
    pub extra_events: Vec<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connect_timeout: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(60),
            recycle_after: Some(Duration::from_secs(120)),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            backoff_jitter: 0.2,
            format: HeartbeatFormat::Plain,
            keepalive: Duration::from_secs(10),
            limits: Limits {
                max_header_bytes: 64 * 1024,
                max_body_bytes: 1024 * 1024,
            },
            extra_events: Vec::new(),
        }
    }
}

impl PoolConfig {
    /// Capped exponential backoff with jitter after `failures` consecutive failures (≥ 1).
    pub fn backoff(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        let base = self
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        let j = self.backoff_jitter.clamp(0.0, 1.0);
        let factor = if j > 0.0 {
            rng.gen_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        base.mul_f64(factor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "esl#{}", self.0)
    }
}

/// What happened, in order. Reasons never contain a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolEvent {
    /// Authenticated; the subscription and the `api status` seed are on their way.
    Connected(ConnId),
    /// Load figures from `api status`, before the first heartbeat.
    Seed(ConnId, HeartbeatStats),
    Heartbeat(ConnId, HeartbeatStats),
    /// A HEARTBEAT or seed with a missing or malformed field; the staleness clock keeps
    /// running.
    Rejected(ConnId, HeartbeatError),
    /// Authenticated but silent for `heartbeat_timeout`. Reported once per silence.
    Stale(ConnId),
    /// A connection that had reached [`PoolEvent::Connected`] is gone; a reconnect is
    /// scheduled.
    Disconnected(ConnId, ClientError),
    /// An attempt failed before authentication (refused, timed out, ACL rejection,
    /// protocol error); a retry is scheduled with backoff.
    ConnectFailed(ConnId, ClientError),
    /// Credentials refused. Retried with backoff like any other failure.
    AuthFailed(ConnId),
    /// The answer to an `api` command sent with [`EslPool::api`]: load figures when the command
    /// was `status` and its body could be read (a periodic re-read: limits change live).
    Status(ConnId, HeartbeatStats),
    /// Any other `api` answer: the command as sent and the body.
    Api(ConnId, String, Vec<u8>),
    /// A subscribed event other than HEARTBEAT (`PoolConfig::extra_events`): its name and its
    /// `Event-Info` header.
    Event(ConnId, String, Option<String>),
}

/// A snapshot of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnStatus {
    /// `fs://host:port`, no password.
    pub url: String,
    /// Authenticated and not yet closed.
    pub connected: bool,
    pub stale: bool,
    pub last_heartbeat: Option<Instant>,
    /// The last accepted heartbeat or seed.
    pub last_stats: Option<HeartbeatStats>,
    /// Core-UUID of the last heartbeat; a change means FreeSWITCH restarted.
    pub core_uuid: Option<String>,
    /// Consecutive failed attempts (reset once a connection is ready or heartbeats).
    pub failures: u32,
    pub next_attempt: Option<Instant>,
    pub last_error: Option<ClientError>,
}

/// Since when an authenticated connection has been silent: its last heartbeat, or when it was
/// established if that came later (a heartbeat from before a reconnect does not count).
fn silent_since(established: Instant, last_heartbeat: Option<Instant>) -> Instant {
    last_heartbeat.map_or(established, |h| h.max(established))
}

const WAKER: Token = Token(0);
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read from one connection per poll before the others get their turn.
const READ_BUDGET: usize = 256 * 1024;

type Resolved = io::Result<Vec<SocketAddr>>;

enum Phase {
    Waiting {
        at: Instant,
    },
    Resolving {
        rx: mpsc::Receiver<Resolved>,
        deadline: Instant,
    },
    Connecting {
        stream: TcpStream,
        token: Token,
        deadline: Instant,
    },
    Session(Box<Session>),
}

struct Session {
    stream: TcpStream,
    token: Token,
    proto: ClientProto,
    wbuf: Vec<u8>,
    handshake_deadline: Instant,
    /// Set once authenticated.
    established: Option<Instant>,
    stale: bool,
}

struct Conn {
    url: EslUrl,
    /// Checked once, when the box is added: unusable ones fail every attempt.
    credentials: Result<Credentials, CommandError>,
    phase: Phase,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    failures: u32,
    last_heartbeat: Option<Instant>,
    last_stats: Option<HeartbeatStats>,
    core_uuid: Option<String>,
    last_error: Option<ClientError>,
}

impl Conn {
    fn token(&self) -> Option<Token> {
        match &self.phase {
            Phase::Connecting { token, .. } => Some(*token),
            Phase::Session(s) => Some(s.token),
            _ => None,
        }
    }
}

/// Closes the socket `phase` holds, if any, saying `exit` first when `polite` and authenticated.
/// Returns whether it was an authenticated session.
fn hang_up(registry: &mio::Registry, phase: Phase, polite: bool) -> bool {
    match phase {
        Phase::Session(mut s) => {
            let established = s.established.is_some();
            if polite && established {
                // Best effort: a full send buffer just means no polite goodbye.
                let _ = s.stream.write(b"exit\n\n");
            }
            let _ = registry.deregister(&mut s.stream);
            let _ = s.stream.shutdown(std::net::Shutdown::Both);
            established
        }
        Phase::Connecting { mut stream, .. } => {
            let _ = registry.deregister(&mut stream);
            false
        }
        _ => false,
    }
}

/// All ESL connections of one control plane, driven by one thread.
pub struct EslPool {
    cfg: PoolConfig,
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    conns: HashMap<ConnId, Conn>,
    tokens: HashMap<Token, ConnId>,
    next_id: u64,
    next_token: usize,
    /// Connections that used their read budget and must be read again without waiting
    /// for readiness (mio is edge-triggered).
    again: HashSet<ConnId>,
    scratch: Vec<u8>,
}

impl fmt::Debug for EslPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<_> = self
            .conns
            .iter()
            .map(|(id, c)| (id.0, c.url.display_masked()))
            .collect();
        f.debug_struct("EslPool")
            .field("cfg", &self.cfg)
            .field("conns", &urls)
            .finish()
    }
}

impl EslPool {
    pub fn new(cfg: PoolConfig) -> io::Result<EslPool> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(EslPool {
            cfg,
            poll,
            events: Events::with_capacity(256),
            waker,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            next_id: 1,
            next_token: 1,
            again: HashSet::new(),
            scratch: vec![0; READ_CHUNK],
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Adds a box; the first attempt starts on the next [`poll`](EslPool::poll).
    pub fn add(&mut self, url: EslUrl) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        // Credentials that cannot be sent still get a connection slot, which reports the
        // problem on every attempt.
        let credentials = url.credentials();
        let bad = credentials
            .as_ref()
            .err()
            .map(|e| ClientError::Credentials(e.clone()));
        self.conns.insert(
            id,
            Conn {
                url,
                credentials,
                phase: Phase::Waiting { at: Instant::now() },
                addrs: Vec::new(),
                next_addr: 0,
                failures: 0,
                last_heartbeat: None,
                last_stats: None,
                core_uuid: None,
                last_error: bad,
            },
        );
        id
    }

    /// Forgets a box, saying `exit` first if it is connected. Emits no event.
    pub fn remove(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        self.again.remove(&id);
        if let Some(t) = conn.token() {
            self.tokens.remove(&t);
        }
        let phase = std::mem::replace(&mut conn.phase, Phase::Waiting { at: Instant::now() });
        hang_up(self.poll.registry(), phase, true);
        tracing::info!(conn = %id, url = %conn.url, "ESL connection removed");
    }

    pub fn ids(&self) -> Vec<ConnId> {
        let mut v: Vec<_> = self.conns.keys().copied().collect();
        v.sort();
        v
    }

    pub fn status(&self, id: ConnId) -> Option<ConnStatus> {
        let c = self.conns.get(&id)?;
        let (connected, stale) = match &c.phase {
            Phase::Session(s) => (s.established.is_some(), s.stale),
            _ => (false, false),
        };
        Some(ConnStatus {
            url: c.url.display_masked(),
            connected,
            stale,
            last_heartbeat: c.last_heartbeat,
            last_stats: c.last_stats.clone(),
            core_uuid: c.core_uuid.clone(),
            failures: c.failures,
            next_attempt: match c.phase {
                Phase::Waiting { at } => Some(at),
                _ => None,
            },
            last_error: c.last_error.clone(),
        })
    }

    /// Drives connects, reads, writes and timers, appending what happened to `out`.
    /// Waits for I/O at most `timeout` (`None`: until something happens or a timer is
    /// due); returns at once when `out` already has news.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        now: Instant,
        out: &mut Vec<PoolEvent>,
    ) -> io::Result<()> {
        let before = out.len();
        self.run_timers(now, out);
        let wait = if out.len() > before || !self.again.is_empty() {
            Some(Duration::ZERO)
        } else {
            let timer = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            match (timeout, timer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let now = now.max(Instant::now());
        let mut ready: Vec<ConnId> = self
            .events
            .iter()
            .filter(|e| e.token() != WAKER)
            .filter_map(|e| self.tokens.get(&e.token()).copied())
            .collect();
        for id in self.again.drain() {
            if !ready.contains(&id) {
                ready.push(id);
            }
        }
        for id in ready {
            self.handle_io(id, now, out);
        }
        self.run_timers(now, out);
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let hb = self.cfg.heartbeat_timeout;
        self.conns
            .values()
            .filter_map(|c| match &c.phase {
                Phase::Waiting { at } => Some(*at),
                // Resolution results arrive through the waker; the deadline bounds it.
                Phase::Resolving { deadline, .. } | Phase::Connecting { deadline, .. } => {
                    Some(*deadline)
                }
                Phase::Session(s) => match s.established {
                    None => Some(s.handshake_deadline),
                    Some(at) => {
                        let since = silent_since(at, c.last_heartbeat);
                        match (s.stale, self.cfg.recycle_after) {
                            (false, _) => Some(since + hb),
                            (true, Some(r)) => Some(since + r),
                            (true, None) => None,
                        }
                    }
                },
            })
            .min()
    }

    fn run_timers(&mut self, now: Instant, out: &mut Vec<PoolEvent>) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.timers_for(id, now, out);
        }
    }

    fn timers_for(&mut self, id: ConnId, now: Instant, out: &mut Vec<PoolEvent>) {
        let hb = self.cfg.heartbeat_timeout;
        let recycle = self.cfg.recycle_after;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let action: Option<ClientError> = match &mut conn.phase {
            Phase::Waiting { at } if *at <= now => {
                self.start_attempt(id, now, out);
                return;
            }
            Phase::Waiting { .. } => None,
            Phase::Resolving { rx, deadline } => match rx.try_recv() {
                Ok(Ok(addrs)) if !addrs.is_empty() => {
                    conn.addrs = addrs;
                    conn.next_addr = 0;
                    self.connect(id, now, out);
                    return;
                }
                Ok(Ok(_)) => Some(ClientError::NoAddress {
                    host: conn.url.host.clone(),
                }),
                Ok(Err(e)) => Some(ClientError::Resolve {
                    host: conn.url.host.clone(),
                    source: e.into(),
                }),
                Err(mpsc::TryRecvError::Disconnected) => Some(ClientError::ResolverGone),
                Err(mpsc::TryRecvError::Empty) if *deadline <= now => {
                    Some(ClientError::ResolveTimeout {
                        host: conn.url.host.clone(),
                    })
                }
                Err(mpsc::TryRecvError::Empty) => None,
            },
            Phase::Connecting { deadline, .. } if *deadline <= now => {
                Some(ClientError::ConnectTimeout(self.cfg.connect_timeout))
            }
            Phase::Connecting { .. } => None,
            Phase::Session(s) => match s.established {
                None if s.handshake_deadline <= now => Some(ClientError::HandshakeTimeout {
                    after: self.cfg.connect_timeout,
                    state: s.proto.state(),
                }),
                None => None,
                Some(at) => {
                    let silent =
                        now.saturating_duration_since(silent_since(at, conn.last_heartbeat));
                    if recycle.is_some_and(|r| silent >= r) {
                        Some(ClientError::Silent(silent))
                    } else {
                        if silent >= hb && !s.stale {
                            s.stale = true;
                            tracing::warn!(conn = %id, url = %conn.url, ?silent, "ESL connection stale: no heartbeat");
                            out.push(PoolEvent::Stale(id));
                        }
                        None
                    }
                }
            },
        };
        if let Some(reason) = action {
            self.fail(id, now, reason, out);
        }
    }

    fn start_attempt(&mut self, id: ConnId, now: Instant, out: &mut Vec<PoolEvent>) {
        let deadline = now + self.cfg.connect_timeout;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(e) = &conn.credentials {
            let reason = ClientError::Credentials(e.clone());
            self.fail(id, now, reason, out);
            return;
        }
        if !conn.addrs.is_empty() {
            self.connect(id, now, out);
            return;
        }
        let host = conn.url.host.clone();
        let port = conn.url.port;
        if let Ok(ip) = host.parse::<IpAddr>() {
            conn.addrs = vec![SocketAddr::new(ip, port)];
            self.connect(id, now, out);
            return;
        }
        // getaddrinfo blocks, so it runs beside the poll thread and reports via the waker.
        let (tx, rx) = mpsc::channel();
        let waker = Arc::clone(&self.waker);
        let spawned = std::thread::Builder::new()
            .name("esl-resolve".into())
            .spawn(move || {
                let r = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<_>>());
                let _ = tx.send(r);
                let _ = waker.wake();
            });
        match spawned {
            Ok(_) => conn.phase = Phase::Resolving { rx, deadline },
            Err(e) => self.fail(id, now, ClientError::ResolverSpawn(e.into()), out),
        }
    }

    fn connect(&mut self, id: ConnId, now: Instant, out: &mut Vec<PoolEvent>) {
        let token = Token(self.next_token);
        self.next_token = self.next_token.wrapping_add(1).max(1);
        let keepalive = self.cfg.keepalive;
        let deadline = now + self.cfg.connect_timeout;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let addr = conn.addrs[conn.next_addr % conn.addrs.len()];
        conn.next_addr = conn.next_addr.wrapping_add(1);
        let attempt = (|| -> io::Result<TcpStream> {
            let mut stream = TcpStream::connect(addr)?;
            let sock = SockRef::from(&stream);
            sock.set_nodelay(true)?;
            if !keepalive.is_zero() {
                sock.set_tcp_keepalive(
                    &TcpKeepalive::new()
                        .with_time(keepalive)
                        .with_interval(keepalive)
                        .with_retries(3),
                )?;
            }
            self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        })();
        match attempt {
            Ok(stream) => {
                tracing::debug!(conn = %id, url = %conn.url, %addr, "ESL connecting");
                conn.phase = Phase::Connecting {
                    stream,
                    token,
                    deadline,
                };
                self.tokens.insert(token, id);
            }
            Err(e) => self.fail(
                id,
                now,
                ClientError::Connect {
                    addr: Some(addr),
                    source: e.into(),
                },
                out,
            ),
        }
    }

    /// Closes whatever the connection has, reports it, and schedules the next attempt.
    fn fail(&mut self, id: ConnId, now: Instant, reason: ClientError, out: &mut Vec<PoolEvent>) {
        self.close(id, now, reason, true, out);
    }

    fn close(
        &mut self,
        id: ConnId,
        now: Instant,
        reason: ClientError,
        report: bool,
        out: &mut Vec<PoolEvent>,
    ) {
        let mut rng = rand::thread_rng();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(t) = conn.token() {
            self.tokens.remove(&t);
        }
        self.again.remove(&id);
        let phase = std::mem::replace(&mut conn.phase, Phase::Waiting { at: now });
        let was_established = hang_up(self.poll.registry(), phase, false);
        // A box that was up gets its first retry after the initial delay; one that keeps
        // failing backs off further each time.
        conn.failures = conn.failures.saturating_add(1);
        let delay = self.cfg.backoff(conn.failures, &mut rng);
        conn.phase = Phase::Waiting { at: now + delay };
        if was_established {
            tracing::warn!(conn = %id, url = %conn.url, %reason, retry_in = ?delay, "ESL connection lost");
            out.push(PoolEvent::Disconnected(id, reason.clone()));
        } else {
            tracing::info!(conn = %id, url = %conn.url, %reason, retry_in = ?delay, failures = conn.failures, "ESL connect attempt failed");
            if report {
                out.push(PoolEvent::ConnectFailed(id, reason.clone()));
            }
        }
        conn.last_error = Some(reason);
    }

    fn handle_io(&mut self, id: ConnId, now: Instant, out: &mut Vec<PoolEvent>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Phase::Connecting { stream, .. } = &conn.phase {
            let outcome = match stream.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                },
            };
            match outcome {
                Ok(false) => return,
                Err(e) => {
                    self.fail(
                        id,
                        now,
                        ClientError::Connect {
                            addr: None,
                            source: e.into(),
                        },
                        out,
                    );
                    return;
                }
                Ok(true) => {
                    let Ok(credentials) = conn.credentials.clone() else {
                        return;
                    };
                    let Phase::Connecting { stream, token, .. } =
                        std::mem::replace(&mut conn.phase, Phase::Waiting { at: now })
                    else {
                        return;
                    };
                    let mut config = ClientConfig::new(credentials, self.cfg.format);
                    config.limits = self.cfg.limits;
                    config.extra_events.clone_from(&self.cfg.extra_events);
                    tracing::debug!(conn = %id, url = %conn.url, "ESL TCP connected, awaiting greeting");
                    conn.phase = Phase::Session(Box::new(Session {
                        stream,
                        token,
                        proto: ClientProto::with_config(config),
                        wbuf: Vec::new(),
                        handshake_deadline: now + self.cfg.connect_timeout,
                        established: None,
                        stale: false,
                    }));
                }
            }
        }
        if let Err(reason) = self.read_session(id, now, out) {
            self.fail(id, now, reason, out);
            return;
        }
        if let Err(reason) = self.flush(id) {
            self.fail(id, now, reason, out);
        }
    }

    /// Reads what is available (up to the budget) and acts on the protocol's events.
    fn read_session(
        &mut self,
        id: ConnId,
        now: Instant,
        out: &mut Vec<PoolEvent>,
    ) -> Result<(), ClientError> {
        let mut total = 0;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            let Phase::Session(s) = &mut conn.phase else {
                return Ok(());
            };
            if total >= READ_BUDGET {
                self.again.insert(id);
                return Ok(());
            }
            let n = match s.stream.read(&mut self.scratch) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Read(e.into())),
            };
            total += n;
            let fed = s.proto.handle_input(&self.scratch[..n]);
            // Events decoded before a protocol error still count (a heartbeat, a notice).
            self.drain_proto(id, now, out)?;
            fed?;
            self.flush(id)?;
        }
    }

    fn drain_proto(
        &mut self,
        id: ConnId,
        now: Instant,
        out: &mut Vec<PoolEvent>,
    ) -> Result<(), ClientError> {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            let Phase::Session(s) = &mut conn.phase else {
                return Ok(());
            };
            let Some(ev) = s.proto.poll_event() else {
                if s.proto.is_ready() && conn.failures > 0 {
                    conn.failures = 0;
                }
                return Ok(());
            };
            match ev {
                ClientEvent::Authenticated => {
                    s.established = Some(now);
                    s.stale = false;
                    tracing::info!(conn = %id, url = %conn.url, "ESL connected and authenticated");
                    out.push(PoolEvent::Connected(id));
                }
                ClientEvent::Subscribed => {}
                ClientEvent::Seed(stats) => {
                    conn.last_stats = Some(stats.clone());
                    out.push(PoolEvent::Seed(id, stats));
                }
                ClientEvent::Heartbeat(stats) => {
                    if let (Some(old), Some(new)) = (&conn.core_uuid, &stats.core_uuid) {
                        if old != new {
                            tracing::info!(conn = %id, url = %conn.url, old = %old, new = %new, "FreeSWITCH restarted (new Core-UUID)");
                        }
                    }
                    if stats.core_uuid.is_some() {
                        conn.core_uuid.clone_from(&stats.core_uuid);
                    }
                    if s.stale {
                        tracing::info!(conn = %id, url = %conn.url, "ESL heartbeats resumed");
                    }
                    s.stale = false;
                    conn.last_heartbeat = Some(now);
                    conn.last_stats = Some(stats.clone());
                    conn.failures = 0;
                    out.push(PoolEvent::Heartbeat(id, stats));
                }
                ClientEvent::SeedRejected(e) | ClientEvent::HeartbeatRejected(e) => {
                    tracing::warn!(conn = %id, url = %conn.url, error = %e, "load sample rejected");
                    out.push(PoolEvent::Rejected(id, e));
                }
                ClientEvent::AuthFailed { reply } => {
                    tracing::warn!(conn = %id, url = %conn.url, %reply, "ESL authentication failed");
                    out.push(PoolEvent::AuthFailed(id));
                    self.close(id, now, ClientError::AuthRefused { reply }, false, out);
                    return Ok(());
                }
                ClientEvent::RudeRejection { reason } => {
                    return Err(ClientError::AclRejected(reason.trim_end().to_owned()));
                }
                ClientEvent::Disconnected {
                    linger: false,
                    reason,
                } => {
                    return Err(ClientError::ServerDisconnected(
                        reason.lines().next().unwrap_or("").trim_end().to_owned(),
                    ));
                }
                ClientEvent::Disconnected { linger: true, .. } => {}
                ClientEvent::CommandFailed { command, reply } => {
                    tracing::warn!(conn = %id, url = %conn.url, %command, %reply, "ESL command refused");
                }
                ClientEvent::EventRejected(e) => {
                    tracing::debug!(conn = %id, url = %conn.url, error = %e, "ESL event unreadable");
                }
                ClientEvent::ApiResponse { command, body } => {
                    let status = (command == "api status")
                        .then(|| HeartbeatStats::from_status(&body))
                        .and_then(Result::ok);
                    out.push(match status {
                        Some(stats) => PoolEvent::Status(id, stats),
                        None => PoolEvent::Api(id, command, body),
                    });
                }
                ClientEvent::Event(ev) => {
                    if let Some(name) = ev.name() {
                        out.push(PoolEvent::Event(id, name.to_owned(), ev.get("Event-Info").map(str::to_owned)));
                    }
                }
                ClientEvent::EventXml(_) | ClientEvent::CommandOk { .. } | ClientEvent::Unsolicited(_) => {}
            }
        }
    }

    /// Sends `api <command>` on an authenticated connection; the answer comes back as
    /// [`PoolEvent::Status`] or [`PoolEvent::Api`]. False (nothing sent) when the connection is not
    /// ready or already has `max_pending` commands unanswered: a box that does not answer is not
    /// sent more.
    pub fn api(&mut self, id: ConnId, command: &str, max_pending: usize) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else { return false };
        let Phase::Session(s) = &mut conn.phase else { return false };
        if !s.proto.is_ready() || s.proto.pending_commands() >= max_pending {
            return false;
        }
        if s.proto.send(crate::command::Command::api(command)).is_err() {
            return false;
        }
        if let Err(e) = self.flush(id) {
            tracing::debug!(conn = %id, error = %e, "ESL write failed; the read side will notice");
        }
        true
    }

    fn flush(&mut self, id: ConnId) -> Result<(), ClientError> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let Phase::Session(s) = &mut conn.phase else {
            return Ok(());
        };
        while let Some(chunk) = s.proto.poll_output() {
            s.wbuf.extend_from_slice(&chunk);
        }
        while !s.wbuf.is_empty() {
            match s.stream.write(&s.wbuf) {
                Ok(0) => {
                    let closed = IoError {
                        kind: io::ErrorKind::WriteZero,
                        message: "connection closed".to_owned(),
                    };
                    return Err(ClientError::Write(closed));
                }
                Ok(n) => {
                    s.wbuf.drain(..n);
                }
                // Writable readiness will bring us back.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ClientError::Write(e.into())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_initial_to_the_cap_within_jitter() {
        let cfg = PoolConfig {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            ..PoolConfig::default()
        };
        let mut rng = rand::thread_rng();
        for (failures, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (5, 16.0),
            (6, 30.0),
            (40, 30.0),
        ] {
            for _ in 0..50 {
                let d = cfg.backoff(failures, &mut rng).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "failures {failures}: {d}"
                );
            }
        }
    }
}
