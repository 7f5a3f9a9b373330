//! The emulator's ESL server (docs/ESL.md §1, §2, §4, §9): one thread per connection, as in
//! mod_event_socket, reading commands with [`CommandReader`] and answering with the
//! byte-exact frames of [`fsroute_esl::serialize`]; plus the HEARTBEAT ticker that broadcasts to
//! every connection, each of which keeps only what its subscription and filters allow.
//! Fault knobs (split, stall, garbage, drop, kill, shutdown notice) live here too, as do
//! the box's own shutdown (SHUTDOWN_REQUESTED, then the notice once no session is left)
//! and the network delay on everything the box writes (a per-connection queue of frames
//! with their departure times, drained by the connection's own loop).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::{fsctl, lock, uuid_v4, Fault, Shared, ShutdownMode, VERSION, VERSION_HUMAN};
use fsroute_esl::command::EventFormat;
use fsroute_esl::serialize::{self, OutEvent, GOODBYE, GREETING};
use fsroute_esl::server_proto::{CommandReader, FilterOp, ServerCommand, ServerRequest};

/// FreeSWITCH polls each connection every 20 ms between commands.
const POLL: Duration = Duration::from_millis(20);
/// The first command must arrive within 25 s.
const AUTH_TIMEOUT: Duration = Duration::from_secs(25);
/// mod_event_socket's per-connection event queue limit.
const EVENT_QUEUE: usize = 100_000;
const GARBAGE: &[u8] = b"\x00\xffthis is not an ESL frame\n\n";

const CLOSE_NONE: u8 = 0;
const CLOSE_SHUTDOWN_NOTICE: u8 = 1;

struct ConnEntry {
    stream: TcpStream,
    tx: SyncSender<Arc<OutEvent>>,
    closing: Arc<AtomicBool>,
    close_mode: Arc<AtomicU8>,
}

struct Inner {
    listener: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    conns: HashMap<u64, ConnEntry>,
    next_id: u64,
}

pub(crate) struct EslRuntime {
    inner: Mutex<Inner>,
}

impl EslRuntime {
    pub fn new() -> EslRuntime {
        EslRuntime {
            inner: Mutex::new(Inner {
                listener: None,
                conns: HashMap::new(),
                next_id: 1,
            }),
        }
    }

    pub fn connection_count(&self) -> usize {
        lock(&self.inner).conns.len()
    }

    fn running(&self) -> bool {
        lock(&self.inner).listener.is_some()
    }
}

pub(crate) fn start_listener(shared: &Arc<Shared>, listener: TcpListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (Arc::clone(shared), Arc::clone(&stop));
    let handle = std::thread::Builder::new()
        .name("fsemu-esl-accept".into())
        .spawn(move || accept_loop(s, listener, st))?;
    lock(&shared.esl.inner).listener = Some((stop, handle));
    Ok(())
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) && !shared.shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = spawn_connection(&shared, stream, peer) {
                    tracing::warn!(error = %e, "fsemu: cannot serve ESL connection");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                tracing::warn!(error = %e, "fsemu: accept failed");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
    let closing = Arc::new(AtomicBool::new(false));
    let close_mode = Arc::new(AtomicU8::new(CLOSE_NONE));
    let id = {
        let mut inner = lock(&shared.esl.inner);
        let id = inner.next_id;
        inner.next_id += 1;
        let entry = ConnEntry {
            stream: stream.try_clone()?,
            tx,
            closing: Arc::clone(&closing),
            close_mode: Arc::clone(&close_mode),
        };
        inner.conns.insert(id, entry);
        id
    };
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("fsemu-esl-{id}"))
        .spawn(move || {
            let mut conn = Connection::new(&s, stream, rx, closing, close_mode);
            tracing::debug!(%peer, "fsemu: ESL connection accepted");
            match conn.serve() {
                End::ReadError(error) => {
                    tracing::debug!(%peer, %error, "fsemu: ESL connection dropped")
                }
                end => tracing::debug!(%peer, ?end, "fsemu: ESL connection ended"),
            }
            lock(&s.esl.inner).conns.remove(&id);
        });
    if let Err(e) = spawned {
        lock(&shared.esl.inner).conns.remove(&id);
        return Err(e);
    }
    Ok(())
}

/// Closes the listener (waiting until the port is closed) and every connection, with no
/// notice: what clients see when FreeSWITCH is killed.
pub(crate) fn kill(shared: &Shared) {
    let listener = lock(&shared.esl.inner).listener.take();
    if let Some((stop, handle)) = listener {
        stop.store(true, Ordering::Relaxed);
        let _ = handle.join();
    }
    drop_connections(shared, None);
}

pub(crate) fn drop_connections(shared: &Shared, notice: Option<&'static [u8]>) {
    let mut inner = lock(&shared.esl.inner);
    for entry in inner.conns.values() {
        if notice.is_some() {
            entry
                .close_mode
                .store(CLOSE_SHUTDOWN_NOTICE, Ordering::Relaxed);
        } else {
            entry.closing.store(true, Ordering::Relaxed);
            let _ = entry.stream.shutdown(Shutdown::Both);
        }
    }
    if notice.is_none() {
        inner.conns.clear();
    }
}

/// The box shut itself down: the listener closes (the port refuses connections) and
/// every connection gets its queued events, the 31-byte shutdown notice, then a close.
pub(crate) fn shutdown(shared: &Shared) {
    let listener = lock(&shared.esl.inner).listener.take();
    if let Some((stop, handle)) = listener {
        stop.store(true, Ordering::Relaxed);
        // The accept thread only polls; joining it from a connection thread is safe.
        let _ = handle.join();
    }
    drop_connections(shared, Some(serialize::SHUTDOWN_NOTICE));
}

/// The 13 headers every FreeSWITCH event starts with (docs/ESL.md §3.5, rows 1–13).
fn common_event(
    shared: &Shared,
    name: &str,
    file: &str,
    function: &str,
    line: u32,
) -> OutEvent {
    let hb = shared.heartbeat_params(Instant::now());
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let secs = i64::try_from(ts / 1_000_000).unwrap_or(0);
    OutEvent::new()
        .header("Event-Name", name)
        .header("Core-UUID", hb.core_uuid.as_str())
        .header("FreeSWITCH-Hostname", hb.hostname.as_str())
        .header("FreeSWITCH-Switchname", hb.switchname.as_str())
        .header("FreeSWITCH-IPv4", hb.ipv4.as_str())
        .header("FreeSWITCH-IPv6", hb.ipv6.as_str())
        .header("Event-Date-Local", serialize::format_date_local(secs, 0))
        .header("Event-Date-GMT", serialize::format_date_gmt(secs))
        .header("Event-Date-Timestamp", ts.to_string())
        .header("Event-Calling-File", file)
        .header("Event-Calling-Function", function)
        .header("Event-Calling-Line-Number", line.to_string())
        .header("Event-Sequence", hb.sequence.to_string())
}

/// SHUTDOWN_REQUESTED as `switch_core_session_ctl` fires it: the common headers plus
/// `Event-Info: elegant` or `ASAP`. The calling line number is a guess (not read from a
/// 1.10.12 tree).
pub(crate) fn fire_shutdown_requested(shared: &Shared, mode: ShutdownMode) {
    let info = match mode {
        ShutdownMode::Elegant => "elegant",
        ShutdownMode::Asap => "ASAP",
    };
    let ev = common_event(
        shared,
        "SHUTDOWN_REQUESTED",
        "switch_core.c",
        "switch_core_session_ctl",
        2906,
    )
    .header("Event-Info", info);
    broadcast(shared, ev);
}

fn broadcast(shared: &Shared, event: OutEvent) {
    let event = Arc::new(event);
    for entry in lock(&shared.esl.inner).conns.values() {
        // A full queue drops the event, as FreeSWITCH does.
        let _ = entry.tx.try_send(Arc::clone(&event));
    }
}

/// Fires one HEARTBEAT at boot and then one per interval while the ESL side runs.
pub(crate) fn heartbeat_loop(shared: Arc<Shared>) {
    let interval = shared.cfg.heartbeat.max(Duration::from_millis(10));
    let mut next = Instant::now();
    while !shared.shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(20)));
            continue;
        }
        next += interval;
        if next < now {
            // The scheduler ran late (a stalled test machine); do not burst to catch up.
            next = now + interval;
        }
        if shared.heartbeats_stopped.load(Ordering::Relaxed) || !shared.esl.running() {
            continue;
        }
        broadcast(&shared, shared.heartbeat_params(now).to_event());
    }
}

#[derive(Debug)]
enum End {
    PeerClosed,
    Killed,
    Exit,
    AuthFailed,
    AuthTimeout,
    Shutdown,
    ReadError(String),
}

#[derive(Default)]
struct Filter {
    header: String,
    value: String,
    negative: bool,
}

struct Subscription {
    format: EventFormat,
    all: bool,
    names: HashSet<String>,
    /// Types removed from `ALL` by `nixevent`.
    nixed: HashSet<String>,
    filters: Vec<Filter>,
}

impl Subscription {
    fn any(&self) -> bool {
        self.all || !self.names.is_empty()
    }

    fn wants(&self, event: &OutEvent) -> bool {
        let name = event_header(event, "Event-Name")
            .unwrap_or_default()
            .to_ascii_uppercase();
        let subscribed = if self.all {
            !self.nixed.contains(&name)
        } else {
            self.names.contains(&name)
        };
        if !subscribed {
            return false;
        }
        if self.filters.is_empty() {
            return true;
        }
        let matches = |f: &Filter| {
            // Regular-expression filters (`/.../`) are not emulated; they match nothing.
            !f.value.starts_with('/')
                && event_header(event, &f.header).is_some_and(|v| v.eq_ignore_ascii_case(&f.value))
        };
        let positive = self.filters.iter().filter(|f| !f.negative).any(matches);
        let vetoed = self.filters.iter().filter(|f| f.negative).any(matches);
        positive && !vetoed
    }
}

fn event_header(event: &OutEvent, name: &str) -> Option<String> {
    event
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| match v {
            serialize::Value::Single(b) => String::from_utf8_lossy(b).into_owned(),
            serialize::Value::Array(items) => items
                .iter()
                .map(|i| String::from_utf8_lossy(i))
                .collect::<Vec<_>>()
                .join("|:"),
        })
}

/// Event type names FreeSWITCH knows (`switch_event_types_t`); others are ignored.
const EVENT_TYPES: &[&str] = &[
    "CUSTOM",
    "CLONE",
    "CHANNEL_CREATE",
    "CHANNEL_DESTROY",
    "CHANNEL_STATE",
    "CHANNEL_CALLSTATE",
    "CHANNEL_ANSWER",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_EXECUTE",
    "CHANNEL_EXECUTE_COMPLETE",
    "CHANNEL_HOLD",
    "CHANNEL_UNHOLD",
    "CHANNEL_BRIDGE",
    "CHANNEL_UNBRIDGE",
    "CHANNEL_PROGRESS",
    "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_OUTGOING",
    "CHANNEL_PARK",
    "CHANNEL_UNPARK",
    "CHANNEL_APPLICATION",
    "CHANNEL_ORIGINATE",
    "CHANNEL_UUID",
    "API",
    "LOG",
    "INBOUND_CHAN",
    "OUTBOUND_CHAN",
    "STARTUP",
    "SHUTDOWN",
    "PUBLISH",
    "UNPUBLISH",
    "TALK",
    "NOTALK",
    "SESSION_CRASH",
    "MODULE_LOAD",
    "MODULE_UNLOAD",
    "DTMF",
    "MESSAGE",
    "PRESENCE_IN",
    "NOTIFY_IN",
    "PRESENCE_OUT",
    "PRESENCE_PROBE",
    "MESSAGE_WAITING",
    "MESSAGE_QUERY",
    "ROSTER",
    "CODEC",
    "BACKGROUND_JOB",
    "DETECTED_SPEECH",
    "DETECTED_TONE",
    "PRIVATE_COMMAND",
    "HEARTBEAT",
    "TRAP",
    "ADD_SCHEDULE",
    "DEL_SCHEDULE",
    "EXE_SCHEDULE",
    "RE_SCHEDULE",
    "RELOADXML",
    "NOTIFY",
    "PHONE_FEATURE",
    "PHONE_FEATURE_SUBSCRIBE",
    "SEND_MESSAGE",
    "RECV_MESSAGE",
    "REQUEST_PARAMS",
    "CHANNEL_DATA",
    "GENERAL",
    "COMMAND",
    "SESSION_HEARTBEAT",
    "CLIENT_DISCONNECTED",
    "SERVER_DISCONNECTED",
    "SEND_INFO",
    "RECV_INFO",
    "RECV_RTCP_MESSAGE",
    "SEND_RTCP_MESSAGE",
    "CALL_SECURE",
    "NAT",
    "RECORD_START",
    "RECORD_STOP",
    "PLAYBACK_START",
    "PLAYBACK_STOP",
    "CALL_UPDATE",
    "FAILURE",
    "SOCKET_DATA",
    "MEDIA_BUG_START",
    "MEDIA_BUG_STOP",
    "CONFERENCE_DATA_QUERY",
    "CONFERENCE_DATA",
    "CALL_SETUP_REQ",
    "CALL_SETUP_RESULT",
    "CALL_DETAIL",
    "DEVICE_STATE",
    "TEXT",
    "SHUTDOWN_REQUESTED",
    "ALL",
];

fn event_type(token: &str) -> Option<String> {
    let up = token.to_ascii_uppercase();
    let up = up
        .strip_prefix("SWITCH_EVENT_")
        .map(str::to_owned)
        .unwrap_or(up);
    EVENT_TYPES.contains(&up.as_str()).then_some(up)
}

struct Connection<'a> {
    shared: &'a Shared,
    stream: TcpStream,
    events: Receiver<Arc<OutEvent>>,
    closing: Arc<AtomicBool>,
    close_mode: Arc<AtomicU8>,
    reader: CommandReader,
    authed: bool,
    sub: Subscription,
    logging: bool,
    garbage_sent: bool,
    /// Bytes waiting for their departure time (only with a network delay).
    delayed: VecDeque<(Instant, Vec<u8>)>,
    read_timeout: Duration,
}

impl<'a> Connection<'a> {
    fn new(
        shared: &'a Shared,
        stream: TcpStream,
        events: Receiver<Arc<OutEvent>>,
        closing: Arc<AtomicBool>,
        close_mode: Arc<AtomicU8>,
    ) -> Connection<'a> {
        Connection {
            shared,
            stream,
            events,
            closing,
            close_mode,
            reader: CommandReader::new(),
            authed: false,
            sub: Subscription {
                format: EventFormat::Plain,
                all: false,
                names: HashSet::new(),
                nixed: HashSet::new(),
                filters: Vec::new(),
            },
            logging: false,
            garbage_sent: false,
            delayed: VecDeque::new(),
            read_timeout: POLL,
        }
    }

    fn killed(&self) -> bool {
        self.closing.load(Ordering::Relaxed) || self.shared.shutdown.load(Ordering::Relaxed)
    }

    /// Writes now, or queues the bytes to leave one network delay from now. Order is kept:
    /// once anything waits, everything after it waits too.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let delay = self.shared.cfg.network_delay;
        if delay.is_zero() && self.delayed.is_empty() {
            return self.write_now(bytes);
        }
        self.delayed.push_back((Instant::now() + delay, bytes.to_vec()));
        self.flush_due()
    }

    /// Writes every queued piece whose departure time has come.
    fn flush_due(&mut self) -> io::Result<()> {
        let now = Instant::now();
        while self.delayed.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, bytes)) = self.delayed.pop_front() {
                self.write_now(&bytes)?;
            }
        }
        Ok(())
    }

    /// Waits out and writes everything queued (before a close).
    fn flush_all(&mut self) -> io::Result<()> {
        while let Some((due, bytes)) = self.delayed.pop_front() {
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            self.write_now(&bytes)?;
        }
        Ok(())
    }

    /// Reads wake up in time for the next queued departure.
    fn adjust_read_timeout(&mut self) -> io::Result<()> {
        let want = self.delayed.front().map_or(POLL, |(due, _)| {
            due.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), POLL)
        });
        if want != self.read_timeout {
            self.stream.set_read_timeout(Some(want))?;
            self.read_timeout = want;
        }
        Ok(())
    }

    /// Honours the split fault: each piece is its own write, so with TCP_NODELAY its own
    /// segment.
    fn write_now(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.shared.fault() != Fault::Split {
            return self.stream.write_all(bytes);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rand::random::<usize>() % 7 + 1;
            let (piece, tail) = rest.split_at(n.min(rest.len()));
            self.stream.write_all(piece)?;
            self.stream.flush()?;
            std::thread::sleep(Duration::from_micros(300));
            rest = tail;
        }
        Ok(())
    }

    fn reply(&mut self, text: &str) -> io::Result<()> {
        self.send(&serialize::command_reply(text))
    }

    /// Sends the notice and closes, letting the client read what was written first.
    fn goodbye(&mut self, notice: &[u8]) -> io::Result<()> {
        self.send(&serialize::disconnect_notice(notice))?;
        self.flush_all()?;
        let _ = self.stream.shutdown(Shutdown::Write);
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)));
        let mut sink = [0u8; 1024];
        for _ in 0..4 {
            match self.stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        Ok(())
    }

    fn serve(&mut self) -> End {
        match self.run() {
            Ok(end) => end,
            Err(e) => End::ReadError(e.to_string()),
        }
    }

    fn run(&mut self) -> io::Result<End> {
        // A stalled box accepts but never greets.
        while self.shared.fault() == Fault::Stall {
            if self.killed() {
                return Ok(End::Killed);
            }
            std::thread::sleep(POLL);
        }
        self.send(GREETING)?;
        let greeted = Instant::now();
        let mut got_first = false;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if self.killed() {
                return Ok(End::Killed);
            }
            if self.close_mode.load(Ordering::Relaxed) == CLOSE_SHUTDOWN_NOTICE {
                // What was fired before the shutdown (SHUTDOWN_REQUESTED) still goes out.
                self.deliver_events()?;
                self.goodbye(serialize::SHUTDOWN_NOTICE)?;
                return Ok(End::Shutdown);
            }
            self.flush_due()?;
            self.adjust_read_timeout()?;
            match self.shared.fault() {
                Fault::Stall => {
                    std::thread::sleep(POLL);
                    continue;
                }
                Fault::Garbage if !self.garbage_sent => {
                    self.garbage_sent = true;
                    self.send(GARBAGE)?;
                }
                _ => {}
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(End::PeerClosed),
                Ok(n) => self.reader.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
            loop {
                let cmd = match self.reader.next_command() {
                    Ok(Some(cmd)) => cmd,
                    Ok(None) => break,
                    // FreeSWITCH 1.11.2+ drops such a connection without a word.
                    Err(e) => return Ok(End::ReadError(e.to_string())),
                };
                got_first = true;
                if let Some(end) = self.handle(&cmd)? {
                    return Ok(end);
                }
            }
            if !got_first && greeted.elapsed() >= AUTH_TIMEOUT {
                self.goodbye(GOODBYE)?;
                return Ok(End::AuthTimeout);
            }
            self.deliver_events()?;
        }
    }

    fn deliver_events(&mut self) -> io::Result<()> {
        while let Ok(event) = self.events.try_recv() {
            if self.authed && self.sub.wants(&event) {
                let encoded = event.encode(self.sub.format);
                // Envelope and body are two sends, as in FreeSWITCH.
                self.send(&encoded.envelope)?;
                self.send(&encoded.body)?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, cmd: &ServerCommand) -> io::Result<Option<End>> {
        let req = cmd.request();
        if let ServerRequest::Exit = req {
            self.reply("+OK bye")?;
            self.goodbye(GOODBYE)?;
            return Ok(Some(End::Exit));
        }
        if !self.authed {
            let ok = match req {
                ServerRequest::Auth { password } => Some(password == self.shared.cfg.password),
                ServerRequest::UserAuth {
                    domain, password, ..
                } => Some(
                    domain.is_some_and(|d| !d.is_empty())
                        && password == Some(self.shared.cfg.password.as_str()),
                ),
                _ => None,
            };
            return match ok {
                None => self.reply("-ERR command not found").map(|_| None),
                Some(true) => {
                    self.authed = true;
                    if matches!(req, ServerRequest::UserAuth { .. }) {
                        self.send(&serialize::userauth_accepted("all", "all", true))?;
                    } else {
                        self.reply("+OK accepted")?;
                    }
                    Ok(None)
                }
                Some(false) => {
                    self.reply("-ERR invalid")?;
                    self.goodbye(GOODBYE)?;
                    Ok(Some(End::AuthFailed))
                }
            };
        }
        match req {
            // Answered above, before the auth check.
            ServerRequest::Exit => {}
            ServerRequest::Auth { .. }
            | ServerRequest::UserAuth { .. }
            | ServerRequest::Unknown => self.reply("-ERR command not found")?,
            ServerRequest::Event { format, names } => {
                if let Some(f) = format {
                    self.sub.format = f;
                }
                let known: Vec<String> = names.iter().filter_map(|n| event_type(n)).collect();
                if known.is_empty() {
                    self.reply("-ERR no keywords supplied")?;
                } else {
                    for n in known {
                        if n == "ALL" {
                            self.sub.all = true;
                            self.sub.nixed.clear();
                        } else {
                            self.sub.nixed.remove(&n);
                            self.sub.names.insert(n);
                        }
                    }
                    let text = format!("+OK event listener enabled {}", self.sub.format.as_str());
                    self.reply(&text)?;
                }
            }
            ServerRequest::NixEvent { names } => {
                let known: Vec<String> = names.iter().filter_map(|n| event_type(n)).collect();
                if known.is_empty() {
                    self.reply("-ERR no keywords supplied")?;
                } else {
                    for n in known {
                        if n == "ALL" {
                            self.sub.all = false;
                            self.sub.names.clear();
                            self.sub.nixed.clear();
                        } else {
                            self.sub.names.remove(&n);
                            if self.sub.all {
                                self.sub.nixed.insert(n);
                            }
                        }
                    }
                    self.reply("+OK events nixed")?;
                }
            }
            ServerRequest::NoEvents => {
                if self.sub.any() {
                    self.sub.all = false;
                    self.sub.names.clear();
                    self.sub.nixed.clear();
                    while self.events.try_recv().is_ok() {}
                    self.reply("+OK no longer listening for events")?;
                } else {
                    self.reply("-ERR not listening for events")?;
                }
            }
            ServerRequest::Filter(op) => self.filter(op)?,
            ServerRequest::Api { command, arg } => {
                let body = self.api(command, arg);
                self.send(&serialize::api_response(&body))?;
            }
            ServerRequest::BgApi {
                command,
                arg,
                job_uuid,
            } => {
                let uuid = job_uuid.map_or_else(uuid_v4, str::to_owned);
                self.send(&serialize::bgapi_accepted(&uuid))?;
                let body = self.api(command, arg);
                broadcast(self.shared, self.background_job(&uuid, command, arg, body));
            }
            ServerRequest::Log { level } => {
                let (name, n) = log_level(level.unwrap_or("debug"));
                self.logging = true;
                self.reply(&format!("+OK log level {name} [{n}]"))?;
            }
            ServerRequest::NoLog => {
                if std::mem::take(&mut self.logging) {
                    self.reply("+OK no longer logging")?;
                } else {
                    self.reply("-ERR not loging")?;
                }
            }
            ServerRequest::SendEvent { .. } => self.reply(&format!("+OK {}", uuid_v4()))?,
        }
        Ok(None)
    }

    fn filter(&mut self, op: FilterOp<'_>) -> io::Result<()> {
        match op {
            FilterOp::Add {
                header,
                value: Some(value),
            } => {
                let (negative, name) = match header.as_bytes().first() {
                    Some(b'-') => (true, &header[1..]),
                    Some(b'+') => (false, &header[1..]),
                    _ => (false, header),
                };
                self.sub.filters.push(Filter {
                    header: name.to_owned(),
                    value: value.to_owned(),
                    negative,
                });
                self.reply(&format!("+OK filter added. [{header}]=[{value}]"))
            }
            FilterOp::Add { value: None, .. } | FilterOp::Invalid => {
                self.reply("-ERR invalid syntax")
            }
            FilterOp::Delete { header, value } => {
                let name = header.trim_start_matches(['+', '-']);
                self.sub.filters.retain(|f| {
                    !(f.header.eq_ignore_ascii_case(name)
                        && value.is_none_or(|v| f.value.eq_ignore_ascii_case(v)))
                });
                self.reply(&format!(
                    "+OK filter deleted. [{header}][{}]",
                    value.unwrap_or("")
                ))
            }
            FilterOp::DeleteAll => {
                self.sub.filters.clear();
                self.reply("+OK filter deleted. [all][]")
            }
        }
    }

    fn api(&self, command: &str, arg: Option<&str>) -> Vec<u8> {
        let now = Instant::now();
        let arg = arg.map(str::trim).unwrap_or("");
        match command.to_ascii_lowercase().as_str() {
            "status" => self.shared.status_params(now).body(),
            "show" => {
                let s = self.shared.snapshot(now);
                let k = lock(&self.shared.counters).model.channels_per_call.max(1);
                match arg.to_ascii_lowercase().as_str() {
                    "calls count" => serialize::show_count(s.session_count.div_ceil(k)),
                    "channels count" => serialize::show_count(s.session_count),
                    _ => b"-USAGE: codec|endpoint|application|api|dialplan|file|timer|calls [count]|channels [count|like <match string>]|calls|detailed_calls|bridged_calls|detailed_bridged_calls|aliases|complete|chat|management|modules|nat_map|say|interfaces|interface_types|tasks|limits|status\n".to_vec(),
                }
            }
            "uptime" => {
                let up = now.saturating_duration_since(lock(&self.shared.boot).started);
                let n = if arg == "ms" {
                    up.as_millis()
                } else {
                    u128::from(up.as_secs())
                };
                format!("{n}\n").into_bytes()
            }
            "hostname" => self.shared.cfg.hostname.clone().into_bytes(),
            "fsctl" => fsctl::run(self.shared, arg),
            "version" if arg == "short" => b"1.10.12\n".to_vec(),
            "version" => format!("FreeSWITCH Version {VERSION} ({VERSION_HUMAN})\n").into_bytes(),
            _ => serialize::api_not_found(command),
        }
    }

    fn background_job(
        &self,
        uuid: &str,
        command: &str,
        arg: Option<&str>,
        body: Vec<u8>,
    ) -> OutEvent {
        let mut ev = common_event(
            self.shared,
            "BACKGROUND_JOB",
            "mod_event_socket.c",
            "api_exec",
            1572,
        )
        .header("Job-UUID", uuid)
            .header("Job-Command", command);
        if let Some(a) = arg.filter(|a| !a.is_empty()) {
            ev.push("Job-Command-Arg", a);
        }
        ev.with_body(body)
    }
}

fn log_level(name: &str) -> (&'static str, u8) {
    match name.trim().to_ascii_lowercase().as_str() {
        "0" | "console" => ("CONSOLE", 0),
        "1" | "alert" => ("ALERT", 1),
        "2" | "crit" => ("CRIT", 2),
        "3" | "err" | "error" => ("ERR", 3),
        "4" | "warning" => ("WARNING", 4),
        "5" | "notice" => ("NOTICE", 5),
        "6" | "info" => ("INFO", 6),
        _ => ("DEBUG", 7),
    }
}
