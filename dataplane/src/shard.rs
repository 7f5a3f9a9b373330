//! The thread-per-core shell around the router: one glommio executor per shard, pinned to its core,
//! with its own UDP socket(s) in a REUSEPORT group. Each shard drains its socket with `recvmmsg`,
//! reads the one `ArcSwap` routing table per datagram (no lock, no wait on the control plane), runs
//! the sans-IO router over the batch, and sends what it returns with `sendmmsg` through one
//! ordered send queue (`batch`); it parks in glommio only when the socket is empty, and a timer
//! ticks the router every 100 ms. With `[capture]` on, each shard mirrors every datagram it
//! received and sent to a HEP collector once the batch has left (`capture`, docs/CAPTURE.md).
//! Datagrams whose Call-ID another shard owns go to that shard over
//! a bounded FIFO channel (glommio's channel mesh), one packed batch per owner per receive batch,
//! so per-call state lives in one place and a call's messages keep their order. Sockets are bound
//! before any thread starts, so a bind error stops startup.
//!
//! TCP (docs/TCP.md): every shard has one listener per TCP address in a REUSEPORT group, so the
//! kernel spreads connections and each connection is owned by the shard that accepted it, with a
//! task that reads it, frames its messages (`framing`) and routes them like datagrams (the router
//! knows the connection: replies and responses go back on it). A message whose Call-ID another
//! shard owns is handed over with its connection id; bytes that must leave on a connection
//! another shard owns are handed to that owner through the same channels. Each shard's
//! connections are in its own table (`conn`); nothing is shared on a message's path.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::net::UdpSocket;
use glommio::{LocalExecutorBuilder, Placement};

use crate::batch::{Fate, Flushed, Outgoing, RecvBatch, SendQueue, SendScratch, BATCH};
use crate::capture::{worth_capturing, CaptureRing, CaptureSocket};
use crate::conn::{Closed, ConnId, ConnTable, Hop, SourceLimit, Transport};
use crate::framing::{Frame, FrameError, Framer, PONG};
use crate::hep::WallTime;
use crate::router::rewrite::{own_via_to_tcp, too_large_for_udp, via_back_to_udp};
use crate::router::{Action, Router};
use crate::socket::{bind_group, bind_tcp_group, Ingress};
use crate::stats::{DropReason, ShardStats};
use crate::table::{CaptureSettings, RoutingTable};
use crate::tls::TlsSession;

/// What the shell needs to start.
#[derive(Clone, Debug)]
pub struct ShardSpec {
    pub listeners: Vec<SocketAddr>,
    pub shards: usize,
    pub ingress: Ingress,
    /// Datagrams that may wait in one shard-to-shard channel before further ones are dropped.
    pub handoff_capacity: usize,
    /// Pin shard i to the i-th allowed CPU when there are at least as many allowed CPUs as shards.
    pub pin: bool,
    /// TCP listeners (each shard gets one socket per address in a REUSEPORT group).
    pub tcp_listeners: Vec<SocketAddr>,
    /// TLS listeners, bound like TCP ones; a connection accepted there starts a TLS session with
    /// the table's `tls.server` config (docs/TCP.md, "TLS").
    pub tls_listeners: Vec<SocketAddr>,
    pub stream: StreamSettings,
}

/// The limits of stream connections (`[proxy] tcp_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// The largest message (headers and body) a stream may carry.
    pub max_message: usize,
    /// Connections one source IP may hold open at once, over all shards.
    pub connections_per_source: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings { idle_timeout: Duration::from_secs(600), max_message: 65_535, connections_per_source: 64 }
    }
}

/// Flags the control plane raises; shards look at them on every tick.
#[derive(Debug, Default)]
pub struct ShardControl {
    pub draining: AtomicBool,
    pub stop: AtomicBool,
}

/// The datagrams of one receive batch that another shard owns, packed into one buffer: one
/// channel message, and one wake-up of the owner, per batch and owner, not per datagram.
#[derive(Default)]
struct Handoff {
    bytes: Vec<u8>,
    items: Vec<HandoffItem>,
}

/// One handed-over message: its source, how it arrived (or, for `Arrival::Write`, the owner's
/// connection it must leave on) and its length in `Handoff::bytes`, where they follow each other.
struct HandoffItem {
    src: SocketAddr,
    via: Arrival,
    len: usize,
}

/// How a message reached fsroute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    /// On the listener with this index (every shard has one socket per listener, in one order).
    Udp(usize),
    /// On this stream connection.
    Stream(ConnId),
    /// Not arrived but leaving: bytes another shard routed, to be written on this connection.
    Write(ConnId),
}

impl Arrival {
    fn socket(self) -> Option<usize> {
        match self {
            Arrival::Udp(s) => Some(s),
            _ => None,
        }
    }
}

impl Handoff {
    fn push(&mut self, src: SocketAddr, via: Arrival, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.items.push(HandoffItem { src, via, len: data.len() });
    }

    fn datagrams(&self) -> impl Iterator<Item = (&HandoffItem, &[u8])> {
        let mut at = 0;
        self.items.iter().map(move |it| {
            let d = &self.bytes[at..at + it.len];
            at += it.len;
            (it, d)
        })
    }
}

/// Hand-off batches one shard-to-shard channel holds, from `handoff_capacity` datagrams: a busy
/// shard's batches are full, so this bounds the datagrams waiting near `handoff_capacity`.
fn handoff_batches(handoff_capacity: usize) -> usize {
    (handoff_capacity / 4).max(16)
}

const TICK: Duration = Duration::from_millis(100);
/// glommio's smallest `io_memory` (its storage DMA pool; shards do no storage I/O).
const SHARD_IO_MEMORY: usize = 64 << 10;

/// How long a send queue that met EAGAIN waits before it tries again.
const SEND_RETRY: Duration = Duration::from_micros(200);

pub struct DataPlane {
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    pub control: Arc<ShardControl>,
    pub stats: Vec<Arc<ShardStats>>,
    /// The address each listener ended up bound to (port 0 resolved).
    pub bound: Vec<SocketAddr>,
    /// The same for the TCP listeners.
    pub bound_tcp: Vec<SocketAddr>,
    /// And for the TLS listeners.
    pub bound_tls: Vec<SocketAddr>,
}

impl DataPlane {
    /// Binds every socket, then starts one executor per shard.
    pub fn start(spec: &ShardSpec, table: Arc<ArcSwap<RoutingTable>>) -> io::Result<DataPlane> {
        let shards = spec.shards.max(1);
        // Per listener, one fd per shard.
        let mut per_listener: Vec<Vec<OwnedFd>> = Vec::new();
        let mut bound = Vec::new();
        for &addr in &spec.listeners {
            let mut addr = addr;
            if addr.port() == 0 {
                // Resolve an ephemeral port once so every shard joins the same group.
                let probe = bind_group(addr, 1, Ingress::Flow)?;
                let std_sock = unsafe { std::net::UdpSocket::from_raw_fd(probe.into_iter().next().expect("one fd").into_raw_fd()) };
                addr = std_sock.local_addr()?;
                drop(std_sock);
            }
            per_listener.push(bind_group(addr, shards, spec.ingress)?);
            bound.push(addr);
        }
        let mut fds_by_shard: Vec<Vec<OwnedFd>> = (0..shards).map(|_| Vec::new()).collect();
        for group in per_listener {
            for (i, fd) in group.into_iter().enumerate() {
                fds_by_shard[i].push(fd);
            }
        }
        let mut tcp_by_shard: Vec<Vec<(OwnedFd, bool)>> = (0..shards).map(|_| Vec::new()).collect();
        let mut bound_tcp = Vec::new();
        for &addr in &spec.tcp_listeners {
            let (addr, group) = bind_tcp_group(addr, shards)?;
            for (i, fd) in group.into_iter().enumerate() {
                tcp_by_shard[i].push((fd, false));
            }
            bound_tcp.push(addr);
        }
        let mut bound_tls = Vec::new();
        for &addr in &spec.tls_listeners {
            let (addr, group) = bind_tcp_group(addr, shards)?;
            for (i, fd) in group.into_iter().enumerate() {
                tcp_by_shard[i].push((fd, true));
            }
            bound_tls.push(addr);
        }
        let limit = Arc::new(SourceLimit::new(spec.stream.connections_per_source));
        let control = Arc::new(ShardControl::default());
        let stats: Vec<Arc<ShardStats>> = (0..shards).map(|_| Arc::new(ShardStats::default())).collect();
        let mesh = MeshBuilder::<Handoff, _>::full(shards, handoff_batches(spec.handoff_capacity));
        let cpus = crate::socket::allowed_cpus();
        let mut threads = Vec::with_capacity(shards);
        for (i, (fds, tcp)) in fds_by_shard.into_iter().zip(tcp_by_shard).enumerate() {
            // Pinned to the i-th CPU the process is allowed on; unpinned when shards outnumber them.
            let placement = if spec.pin && shards <= cpus.len() { Placement::Fixed(cpus[i]) } else { Placement::Unbound };
            let table = table.clone();
            let control = control.clone();
            let stats = stats[i].clone();
            let mesh = mesh.clone();
            let streams = Streams { listeners: tcp, settings: spec.stream, limit: limit.clone() };
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("fsroute-shard-{i}"))
                // glommio preallocates and registers this much for storage DMA buffers (10 MiB by
                // default); a shard does no storage I/O, so the minimum. Measured: an idle
                // 2-shard fsroute at 6.8 MB RSS instead of 27.2 (bench/README.md, "Executor knobs").
                .io_memory(SHARD_IO_MEMORY)
                .spawn(move || async move {
                    run_shard(i, shards, fds, streams, table, control, stats, mesh).await;
                })
                .map_err(|e| io::Error::other(format!("cannot start shard {i}: {e}")))?;
            threads.push(handle);
        }
        Ok(DataPlane { threads, control, stats, bound, bound_tcp, bound_tls })
    }

    pub fn drain(&self) {
        self.control.draining.store(true, Ordering::Relaxed);
    }

    /// INVITE transactions still waiting for a final response, over all shards.
    pub fn pending_invites(&self) -> u64 {
        self.stats.iter().map(|s| s.pending_invites.load(Ordering::Relaxed)).sum()
    }

    /// Answered calls not yet ended, over all shards (what a graceful stop waits for after the
    /// INVITEs).
    pub fn established_calls(&self) -> u64 {
        self.stats.iter().map(|s| s.established.load(Ordering::Relaxed)).sum()
    }

    pub fn stop(self) {
        self.control.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What a shard holds of one connection's socket: the fd (its reader task owns the socket), its
/// local address (the side HEP captures name) and, for TLS, the session the bytes pass through
/// (boxed: a TCP connection pays one pointer).
#[derive(Debug)]
struct ConnIo {
    fd: RawFd,
    local: SocketAddr,
    tls: Option<Box<TlsSession>>,
}

impl ConnIo {
    fn plain(stream: &glommio::net::TcpStream) -> ConnIo {
        let local = stream.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        ConnIo { fd: stream.as_raw_fd(), local, tls: None }
    }
}

/// The shell's side of the sans-IO TLS session: the connection's socket as rustls reads and
/// writes it, never blocking (EAGAIN is `WouldBlock`) and never raising SIGPIPE.
struct Fd(RawFd);

impl io::Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is writable memory of `buf.len()` bytes; the fd is an open socket.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl io::Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match send_some(self.0, buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A shard's connection to a TCP destination.
enum DestConn {
    Open(ConnId),
    /// Being opened: what to send once it is (bounded by `MAX_PENDING_OUTPUT`).
    Connecting(Vec<u8>),
}

/// How long a connection to a TCP destination may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a UDP destination that refused a connection for a large request gets its large
/// requests over UDP without another try (docs/TCP.md §6).
const NO_TCP_RETRY: Duration = Duration::from_secs(60);
/// How many such addresses a shard remembers before it forgets those whose time is up.
const MAX_REFUSED_TCP: usize = 4096;

/// What a shard needs for TCP: its listener sockets, the limits, and the per-source count that
/// all shards share (touched at accept and close only).
struct Streams {
    /// Each with whether it is a `tls:` listener.
    listeners: Vec<(OwnedFd, bool)>,
    settings: StreamSettings,
    limit: Arc<SourceLimit>,
}

struct Shard {
    index: usize,
    router: RefCell<Router>,
    table: Arc<ArcSwap<RoutingTable>>,
    stats: Arc<ShardStats>,
    /// One per listener. glommio's socket only serves to park the receive loop until a datagram
    /// is there (`peek`); datagrams move with `recvmmsg`/`sendmmsg` on its fd (`batch`).
    sockets: Vec<UdpSocket>,
    fds: Vec<RawFd>,
    /// Each socket's address family, read once at start (not a getsockname per datagram).
    socket_is_v4: Vec<bool>,
    senders: Senders<Handoff>,
    /// Per owner shard, what this receive batch hands over (sent once the batch is routed).
    handoffs: RefCell<Vec<Handoff>>,
    queue: RefCell<SendQueue>,
    scratch: RefCell<SendScratch>,
    /// A flush is waiting out an EAGAIN: others only add to the queue behind it.
    flushing: Cell<bool>,
    /// The TCP connections this shard owns, with each one's socket fd (owned by its reader task)
    /// and, for a TLS connection, its session.
    conns: RefCell<ConnTable<ConnIo>>,
    /// This shard's connection to each `;transport=tcp` destination it sends to (shards do not
    /// share them: each opens its own, so no table is shared).
    dests: RefCell<HashMap<SocketAddr, DestConn>>,
    /// UDP destinations that refused a connection for a large request, and when: for
    /// `NO_TCP_RETRY` their large requests go over UDP without trying again.
    refused_tcp: RefCell<HashMap<SocketAddr, Instant>>,
    stream: StreamSettings,
    limit: Arc<SourceLimit>,
    /// Each socket's bound address: the local side of the datagrams it captures.
    local: Vec<SocketAddr>,
    capture: RefCell<Capture>,
    /// While capturing: what a flush sent, with when; recorded once the flush is over (so no
    /// forward waits for a copy), then recycled.
    just_sent: RefCell<Vec<(Outgoing, WallTime)>>,
}

/// A shard's HEP capture, following the table's `capture` (docs/CAPTURE.md).
enum Capture {
    Off,
    On(Box<(CaptureRing, CaptureSocket)>),
    /// The table asks for it, but the socket could not be opened (logged): retried when the
    /// settings change.
    Broken(CaptureSettings),
}

impl Capture {
    fn settings(&self) -> Option<&CaptureSettings> {
        match self {
            Capture::Off => None,
            Capture::On(on) => Some(on.0.settings()),
            Capture::Broken(s) => Some(s),
        }
    }
}

impl Shard {
    /// The socket a datagram for `to` leaves from: for fsroute's own reply, the listener the
    /// request arrived on (`arrived`) when the address family matches; otherwise the first socket
    /// of the destination's family.
    fn socket_for(&self, arrived: Option<usize>, to: SocketAddr) -> usize {
        let family = |i: &usize| self.socket_is_v4[*i] == to.is_ipv4();
        arrived.filter(family).or_else(|| (0..self.sockets.len()).find(family)).unwrap_or(0)
    }

    fn enqueue(&self, to: SocketAddr, socket: usize, buf: Vec<u8>) {
        if let Err(o) = self.queue.borrow_mut().push(Outgoing { to, socket, buf }) {
            self.stats.drop_reason(DropReason::SendError);
            self.router.borrow_mut().recycle(o.buf);
        }
    }

    /// Routes one message and queues what it sends; `owned`: another shard handed it over.
    /// Nothing here awaits: a batch is routed whole, then flushed.
    fn route(&self, src: SocketAddr, data: &[u8], arrival: Arrival, owned: bool) {
        let mut out = self.router.borrow_mut().take_buffer();
        let table = self.table.load();
        let action = {
            let mut router = self.router.borrow_mut();
            let now = Instant::now();
            match (arrival, owned) {
                (Arrival::Stream(c), false) => router.handle_stream(&table, src, c, data, now, &mut out),
                (Arrival::Stream(c), true) => router.handle_owned_stream(&table, src, c, data, now, &mut out),
                (_, false) => router.handle(&table, src, data, now, &mut out),
                (_, true) => router.handle_owned(&table, src, data, now, &mut out),
            }
        };
        match action {
            Action::Forward(to) => self.send_request(&table, to, out),
            Action::Reply(to) => self.enqueue(to, self.socket_for(arrival.socket(), to), out),
            Action::ForwardOn(c) | Action::ReplyOn(c) => self.send_on(c, src, out),
            Action::HandOff(owner) => {
                self.router.borrow_mut().recycle(out);
                if let Some(h) = self.handoffs.borrow_mut().get_mut(owner) {
                    h.push(src, arrival, data);
                }
            }
            Action::Drop(_) | Action::Absorbed => self.router.borrow_mut().recycle(out),
        }
        self.take_outbox(arrival.socket());
    }

    /// Queues what the router queued besides an action's own datagram (100 Trying, fsroute's ACKs
    /// and CANCELs, a failover attempt started by a timer). fsroute's own replies among them leave
    /// from the listener their request `arrived` on, or on its connection.
    fn take_outbox(&self, arrived: Option<usize>) {
        loop {
            let next = self.router.borrow_mut().poll_transmit();
            let Some((to, buf)) = next else { break };
            match to {
                Hop { conn: Some(c), addr } => self.send_on(c, addr, buf),
                Hop { addr, conn: None } if buf.starts_with(b"SIP/2.0 ") => self.enqueue(addr, self.socket_for(arrived, addr), buf),
                Hop { addr, conn: None } => self.send_request(&self.table.load(), addr, buf),
            }
        }
    }

    /// Sends a request (or a response fsroute relays to a destination) to destination `to`: on
    /// its connection for a TCP/TLS destination, else over UDP, unless it is larger than
    /// `udp_max_message` (RFC 3261 §18.1.1): then over TCP to the same address, with fsroute's
    /// Via saying so, unless that address refused a connection in the last `NO_TCP_RETRY`.
    fn send_request(&self, table: &RoutingTable, to: SocketAddr, mut buf: Vec<u8>) {
        if table.destination_transport(&to).is_stream() {
            return self.send_tcp(to, buf);
        }
        if too_large_for_udp(&buf, table.proxy.udp_max_message) && !self.refuses_tcp(to) && own_via_to_tcp(&mut buf) {
            ShardStats::inc(&self.stats.udp_to_tcp);
            return self.send_tcp(to, buf);
        }
        self.enqueue(to, self.socket_for(None, to), buf);
    }

    fn refuses_tcp(&self, to: SocketAddr) -> bool {
        let mut refused = self.refused_tcp.borrow_mut();
        match refused.get(&to) {
            Some(at) if at.elapsed() < NO_TCP_RETRY => true,
            Some(_) => {
                refused.remove(&to);
                false
            }
            None => false,
        }
    }

    /// A UDP destination refused the connection its large requests were to take: they go over
    /// UDP after all, their Via back to UDP, rather than be lost (fragmented UDP is what every
    /// peer that does not speak TCP gets anyway).
    fn large_requests_back_to_udp(&self, to: SocketAddr, queued: &[u8]) {
        let mut refused = self.refused_tcp.borrow_mut();
        // Bounded: addresses whose 60 s are over go before the map grows past a few thousand.
        if refused.len() >= MAX_REFUSED_TCP {
            refused.retain(|_, at| at.elapsed() < NO_TCP_RETRY);
        }
        refused.insert(to, Instant::now());
        drop(refused);
        let mut framer = Framer::new(queued.len().max(1));
        framer.push(queued);
        while let Ok(Some(Frame::Message(m))) = framer.next_frame() {
            let mut buf = self.router.borrow_mut().take_buffer();
            buf.clear();
            buf.extend_from_slice(m);
            via_back_to_udp(&mut buf);
            ShardStats::inc(&self.stats.udp_to_tcp_fallback);
            self.enqueue(to, self.socket_for(None, to), buf);
        }
    }

    /// Sends `buf` to TCP destination `to` on this shard's connection to it, opening one when there
    /// is none (a connection that died was forgotten: the next message opens a new one).
    fn send_tcp(&self, to: SocketAddr, buf: Vec<u8>) {
        let open = {
            let mut dests = self.dests.borrow_mut();
            match dests.get_mut(&to) {
                Some(DestConn::Open(c)) => Some(*c),
                Some(DestConn::Connecting(q)) => {
                    if q.len() + buf.len() <= crate::conn::MAX_PENDING_OUTPUT {
                        ShardStats::inc(&self.stats.tcp_sent);
                        q.extend_from_slice(&buf);
                    } else {
                        self.stats.drop_reason(DropReason::SendError);
                    }
                    None
                }
                None => {
                    ShardStats::inc(&self.stats.tcp_sent);
                    dests.insert(to, DestConn::Connecting(buf.clone()));
                    if let Some(shard) = CURRENT.with(|s| s.borrow().clone()) {
                        let tls = self.table.load().destination_transport(&to) == Transport::Tls;
                        glommio::spawn_local(connect(shard, to, tls)).detach();
                    }
                    None
                }
            }
        };
        if let Some(c) = open {
            self.write_conn(c, &buf);
        }
        self.router.borrow_mut().recycle(buf);
    }

    /// Sends `buf` on stream connection `c`: written here when this shard owns it, else handed to
    /// its owner with this batch's hand-offs.
    fn send_on(&self, c: ConnId, peer: SocketAddr, buf: Vec<u8>) {
        if c.shard() == self.index {
            self.write_conn(c, &buf);
        } else if let Some(h) = self.handoffs.borrow_mut().get_mut(c.shard()) {
            h.push(peer, Arrival::Write(c), &buf);
        } else {
            self.stats.drop_reason(DropReason::ConnectionGone);
        }
        self.router.borrow_mut().recycle(buf);
    }

    /// Writes one message on a connection this shard owns, behind any output still pending; what
    /// the kernel does not take now waits (bounded) and is retried.
    fn write_conn(&self, c: ConnId, data: &[u8]) {
        ShardStats::inc(&self.stats.tcp_sent);
        if self.capturing() {
            let peer = self.conns.borrow_mut().get_mut(c).map(|conn| conn.peer);
            if let Some(peer) = peer {
                self.capture_stream(c, peer, false, data);
            }
        }
        self.write_bytes(c, data);
    }

    /// Whether `[capture]` is on (as of the last batch's `sync_capture`).
    fn capturing(&self) -> bool {
        matches!(*self.capture.borrow(), Capture::On(_))
    }

    /// Records a copy of one message received (`inbound`) or sent on connection `c`, decrypted
    /// for TLS; the ring is flushed with the batch's datagram captures (docs/CAPTURE.md).
    fn capture_stream(&self, c: ConnId, peer: SocketAddr, inbound: bool, data: &[u8]) {
        if !worth_capturing(data) {
            return;
        }
        let Some(local) = self.conns.borrow_mut().get_mut(c).map(|conn| conn.io.local) else { return };
        let mut cap = self.capture.borrow_mut();
        let Capture::On(on) = &mut *cap else { return };
        let (src, dst) = if inbound { (peer, local) } else { (local, peer) };
        if !on.0.record(src, dst, WallTime::now(), c.transport(), data) {
            self.stats.capture_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`Self::write_conn`] without counting a message (bytes already counted when queued).
    fn write_bytes(&self, c: ConnId, data: &[u8]) {
        let retry = {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.get_mut(c).filter(|conn| conn.closing.is_none()) else {
                self.stats.drop_reason(DropReason::ConnectionGone);
                return;
            };
            if let Some(tls) = conn.io.tls.as_mut() {
                if !tls.write(data) {
                    self.close_soon(&mut conns, c, Closed::Stuck);
                    return;
                }
                match flush_tls(conn) {
                    Ok(retry) => retry,
                    Err(_) => {
                        self.close_soon(&mut conns, c, Closed::Peer);
                        false
                    }
                }
            } else {
                let sent = if conn.pending.is_empty() { send_some(conn.io.fd, data) } else { Ok(0) };
                match sent {
                    Ok(n) if n == data.len() => false,
                    Ok(n) => {
                        if !conns.queue(c, &data[n..]) {
                            self.close_soon(&mut conns, c, Closed::Stuck);
                            return;
                        }
                        let conn = conns.get_mut(c).expect("queued above");
                        !std::mem::replace(&mut conn.retrying, true)
                    }
                    Err(_) => {
                        self.close_soon(&mut conns, c, Closed::Peer);
                        false
                    }
                }
            }
        };
        if retry {
            self.spawn_retry(c);
        }
    }

    fn spawn_retry(&self, c: ConnId) {
        // The shard outlives its tasks; a weak handle is not needed because the task ends as soon
        // as the connection's output is out or the connection is gone.
        let shard = CURRENT.with(|s| s.borrow().clone());
        if let Some(shard) = shard {
            glommio::spawn_local(retry_pending(shard, c)).detach();
        }
    }

    /// Marks `c` for closing by `why` and wakes its reader (a shutdown ends its wait), which
    /// removes and counts it.
    fn close_soon(&self, conns: &mut ConnTable<ConnIo>, c: ConnId, why: Closed) {
        if let Some(conn) = conns.get_mut(c) {
            if conn.closing.is_none() {
                conn.closing = Some(why);
                // SAFETY: the fd is open while the connection is in the table (its reader removes
                // it before closing the socket).
                unsafe { libc::shutdown(conn.io.fd, libc::SHUT_RDWR) };
            }
        }
    }

    /// Hands each owner shard what this batch holds for it, in one channel message.
    fn send_handoffs(&self) {
        let mut handoffs = self.handoffs.borrow_mut();
        for (owner, h) in handoffs.iter_mut().enumerate() {
            if h.items.is_empty() {
                continue;
            }
            let batch = std::mem::take(h);
            let n = batch.items.len();
            if self.senders.try_send_to(owner, batch).is_err() {
                for _ in 0..n {
                    self.stats.drop_reason(DropReason::HandoffFull);
                }
            }
        }
    }

    /// Sends everything queued, in order, waiting out EAGAIN (counted) without losing a datagram;
    /// then, while capturing, records what left and flushes the captures.
    async fn flush(&self) {
        self.flush_forward().await;
        self.capture_sent();
    }

    /// The SIP part of [`Shard::flush`]: while capturing, what left waits in `just_sent`.
    async fn flush_forward(&self) {
        if self.flushing.replace(true) {
            return;
        }
        loop {
            let capturing = matches!(*self.capture.borrow(), Capture::On(_));
            let left_at = Cell::new(WallTime::default());
            let done = self.queue.borrow_mut().flush(
                |socket, run| {
                    let r = self.scratch.borrow_mut().send(self.fds[socket], run);
                    if capturing {
                        left_at.set(WallTime::now());
                    }
                    r
                },
                |o, fate| match fate {
                    Fate::Sent if capturing => self.just_sent.borrow_mut().push((o, left_at.get())),
                    Fate::Sent => self.router.borrow_mut().recycle(o.buf),
                    Fate::Refused => {
                        self.stats.drop_reason(DropReason::SendError);
                        self.router.borrow_mut().recycle(o.buf);
                    }
                },
            );
            if done == Flushed::All {
                break;
            }
            ShardStats::inc(&self.stats.send_blocked);
            glommio::timer::sleep(SEND_RETRY).await;
        }
        self.flushing.set(false);
    }

    /// Frames what a connection delivered and routes each message; Err: close it.
    fn frames(&self, c: ConnId, peer: SocketAddr, framer: &mut Framer) -> Result<(), Closed> {
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Message(m))) => {
                    ShardStats::inc(&self.stats.tcp_received);
                    if self.capturing() {
                        self.capture_stream(c, peer, true, m);
                    }
                    self.route(peer, m, Arrival::Stream(c), false);
                }
                Ok(Some(Frame::Ping)) => {
                    ShardStats::inc(&self.stats.tcp_keepalives);
                    self.write_conn(c, PONG);
                }
                Ok(None) => return Ok(()),
                Err(FrameError::TooLarge { .. }) => return Err(Closed::TooLarge),
                Err(_) => return Err(Closed::Framing),
            }
        }
    }

    /// Follows the table's `[capture]`: opens, moves or closes the capture socket when the
    /// settings changed (what the old ring held is dropped and counted). Once per batch; with
    /// capture off, one comparison. True when capturing.
    fn sync_capture(&self) -> bool {
        let table = self.table.load();
        let want = table.capture.as_ref();
        let mut cap = self.capture.borrow_mut();
        if cap.settings() == want {
            return matches!(*cap, Capture::On(_));
        }
        if let Capture::On(on) = &mut *cap {
            let (ring, socket) = &mut **on;
            self.count_flush(socket.flush(ring));
            self.stats.capture_dropped.fetch_add(ring.discard(), Ordering::Relaxed);
        }
        *cap = match want {
            None => Capture::Off,
            Some(w) => match CaptureSocket::open(w.collector) {
                Ok(socket) => Capture::On(Box::new((CaptureRing::new(*w), socket))),
                Err(e) => {
                    tracing::warn!(shard = self.router.borrow().shard_index(), collector = %w.collector, error = %e, "cannot open the HEP capture socket; not capturing");
                    Capture::Broken(*w)
                }
            },
        };
        matches!(*cap, Capture::On(_))
    }

    fn count_flush(&self, f: crate::capture::Flush) {
        self.stats.capture_sent.fetch_add(f.sent, Ordering::Relaxed);
        self.stats.capture_dropped.fetch_add(f.failed, Ordering::Relaxed);
    }

    /// Records copies of datagrams `0..n` of a receive batch on socket `sock`, received at `at`.
    fn capture_received(&self, batch: &RecvBatch, n: usize, sock: usize, at: WallTime) {
        let mut cap = self.capture.borrow_mut();
        let Capture::On(on) = &mut *cap else { return };
        let mut dropped = 0;
        for i in 0..n {
            if let Some((src, data)) = batch.get(i) {
                if worth_capturing(data) && !on.0.record(src, self.local[sock], at, Transport::Udp, data) {
                    dropped += 1;
                }
            }
        }
        self.stats.capture_dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Records copies of what the last flushes sent, gives their buffers back to the router and
    /// sends the captures without waiting.
    fn capture_sent(&self) {
        let mut cap = self.capture.borrow_mut();
        let mut sent = self.just_sent.borrow_mut();
        if let Capture::On(on) = &mut *cap {
            let (ring, socket) = &mut **on;
            let mut dropped = 0;
            for (o, at) in sent.drain(..) {
                if !ring.record(self.local[o.socket], o.to, at, Transport::Udp, &o.buf) {
                    dropped += 1;
                }
                self.router.borrow_mut().recycle(o.buf);
            }
            self.stats.capture_dropped.fetch_add(dropped, Ordering::Relaxed);
            if !ring.is_empty() {
                self.count_flush(socket.flush(ring));
            }
        } else {
            // Capture went off while these waited.
            for (o, _) in sent.drain(..) {
                self.router.borrow_mut().recycle(o.buf);
            }
        }
    }
}

/// Hands a TLS connection's waiting records (handshake, alerts, messages) to its socket; true when
/// some are left and no retry is scheduled yet (it is marked as scheduled: spawn it). Err: the
/// socket failed.
fn flush_tls(conn: &mut crate::conn::Conn<ConnIo>) -> io::Result<bool> {
    let fd = conn.io.fd;
    let Some(tls) = conn.io.tls.as_mut() else { return Ok(false) };
    if tls.write_tls(&mut Fd(fd))? {
        return Ok(false);
    }
    Ok(!std::mem::replace(&mut conn.retrying, true))
}

/// Sends what the kernel takes of `data` now on a stream socket (never blocks, never raises
/// SIGPIPE); Ok(0) when its buffer is full.
fn send_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `data` is a live slice; fd is an open socket of this shard.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

thread_local! {
    /// This thread's shard, for the tasks a write spawns (retries of pending output).
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// Sends a connection's pending output as the kernel takes it; ends when it is out or the
/// connection is gone.
async fn retry_pending(shard: Rc<Shard>, c: ConnId) {
    loop {
        glommio::timer::sleep(SEND_RETRY).await;
        let mut conns = shard.conns.borrow_mut();
        let Some(conn) = conns.get_mut(c).filter(|conn| conn.closing.is_none()) else { return };
        let fd = conn.io.fd;
        let sent = match conn.io.tls.as_mut() {
            // A TLS connection's output waits in its session, already encrypted.
            Some(tls) => tls.write_tls(&mut Fd(fd)),
            None => send_some(fd, &conn.pending).map(|n| {
                conn.pending.drain(..n);
                conn.pending.is_empty()
            }),
        };
        match sent {
            Ok(true) => {
                conn.retrying = false;
                return;
            }
            Ok(false) => {}
            Err(_) => {
                shard.close_soon(&mut conns, c, Closed::Peer);
                return;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    index: usize,
    shards: usize,
    fds: Vec<OwnedFd>,
    streams: Streams,
    table: Arc<ArcSwap<RoutingTable>>,
    control: Arc<ShardControl>,
    stats: Arc<ShardStats>,
    mesh: MeshBuilder<Handoff, glommio::channels::channel_mesh::Full>,
) {
    let (senders, mut receivers): (Senders<Handoff>, Receivers<Handoff>) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(shard = index, error = %e, "cannot join the shard mesh");
            return;
        }
    };
    let sockets: Vec<UdpSocket> = fds
        .into_iter()
        // SAFETY: each fd is a bound, non-blocking UDP socket that this shard alone owns from here on.
        .map(|fd| unsafe { UdpSocket::from_raw_fd(fd.into_raw_fd()) })
        .collect();
    let fds = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let local: Vec<SocketAddr> =
        sockets.iter().map(|s| s.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))).collect();
    let socket_is_v4: Vec<bool> = local.iter().map(SocketAddr::is_ipv4).collect();
    let seed = 0x5eed_0000 ^ (index as u64) << 32 ^ std::process::id() as u64;
    let shard = Rc::new(Shard {
        index,
        router: RefCell::new(Router::new(index, shards, seed, stats.clone())),
        table,
        stats,
        sockets,
        fds,
        socket_is_v4,
        senders,
        handoffs: RefCell::new((0..shards).map(|_| Handoff::default()).collect()),
        queue: RefCell::new(SendQueue::default()),
        scratch: RefCell::new(SendScratch::default()),
        flushing: Cell::new(false),
        conns: RefCell::new(ConnTable::new(index)),
        dests: RefCell::new(HashMap::new()),
        refused_tcp: RefCell::new(HashMap::new()),
        stream: streams.settings,
        limit: streams.limit,
        local,
        capture: RefCell::new(Capture::Off),
        just_sent: RefCell::new(Vec::with_capacity(BATCH)),
    });
    CURRENT.with(|s| *s.borrow_mut() = Some(shard.clone()));
    tracing::debug!(shard = index, "shard started");

    let mut tasks = Vec::new();
    for sock_idx in 0..shard.sockets.len() {
        let shard = shard.clone();
        let control = control.clone();
        tasks.push(glommio::spawn_local(receive(shard, sock_idx, control)));
    }
    for (fd, tls) in streams.listeners {
        // SAFETY: a bound, listening, non-blocking TCP socket that this shard alone owns.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
        tasks.push(glommio::spawn_local(accept(shard.clone(), listener, tls)));
    }
    for (_, stream) in receivers.streams() {
        let shard = shard.clone();
        tasks.push(glommio::spawn_local(async move {
            while let Some(batch) = stream.recv().await {
                // The receiving shard captured these as received; this one captures what it sends.
                shard.sync_capture();
                for (it, data) in batch.datagrams() {
                    match it.via {
                        Arrival::Write(c) => shard.write_conn(c, data),
                        via => shard.route(it.src, data, via, true),
                    }
                }
                // Routing them may have produced bytes for a connection a third shard owns.
                shard.send_handoffs();
                shard.flush().await;
            }
        }));
    }

    housekeeping(&shard, &control).await;
    shard.senders.close();
    for t in tasks {
        t.cancel().await;
    }
    CURRENT.with(|s| s.borrow_mut().take());
    tracing::debug!(shard = index, "shard stopped");
}

/// One TCP or TLS listener's accept loop: each connection is owned by this shard from here on,
/// within the per-source limit. A TLS connection starts its session with the table's current
/// server config, so after a reload new connections present the new certificate.
async fn accept(shard: Rc<Shard>, listener: glommio::net::TcpListener, tls: bool) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = shard.index, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else { continue };
        if !shard.limit.take(peer.ip()) {
            ShardStats::inc(&shard.stats.tcp_refused);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let mut io = ConnIo::plain(&stream);
        if tls {
            let server = shard.table.load().tls.server.clone();
            match server.as_ref().map(TlsSession::server) {
                Some(Ok(session)) => io.tls = Some(Box::new(session)),
                _ => {
                    // Config validation requires a certificate with a tls: listener.
                    tracing::warn!(shard = shard.index, %peer, "no TLS server config: connection refused");
                    shard.limit.give_back(peer.ip());
                    ShardStats::inc(&shard.stats.tls_handshake_failed);
                    continue;
                }
            }
            shard.stats.tls_connections.fetch_add(1, Ordering::Relaxed);
        }
        let id = shard.conns.borrow_mut().open(peer, if tls { Transport::Tls } else { Transport::Tcp }, Instant::now(), io);
        ShardStats::inc(&shard.stats.tcp_accepted);
        ShardStats::set(&shard.stats.tcp_connections, shard.conns.borrow().len() as u64);
        glommio::spawn_local(serve(shard.clone(), stream, id, peer, true, tls)).detach();
    }
}

/// Opens this shard's connection to TCP destination `to` and sends what waited for it; a
/// connection that fails is counted and reported to the failovers waiting on `to`, and what
/// waited is dropped (the caller's retransmission or the next request tries again).
/// For a TLS destination (`tls`) the session starts at once (its ClientHello leaves with the
/// first flush), verifying the server's certificate against `[tls] ca` for the destination's IP;
/// a handshake that fails counts and is reported like a failed connect (`serve`).
async fn connect(shard: Rc<Shard>, to: SocketAddr, tls: bool) {
    let r = glommio::net::TcpStream::connect_timeout(to, CONNECT_TIMEOUT).await;
    let r = r.map_err(|e| e.to_string()).and_then(|stream| {
        let mut io = ConnIo::plain(&stream);
        if tls {
            let client = shard.table.load().tls.client.clone();
            let session = client.ok_or("no [tls] ca to verify it with")?;
            io.tls = Some(Box::new(TlsSession::client(&session, to.ip()).map_err(|e| e.to_string())?));
        }
        Ok((stream, io))
    });
    let queued = match shard.dests.borrow_mut().remove(&to) {
        Some(DestConn::Connecting(q)) => q,
        _ => Vec::new(),
    };
    match r {
        Ok((stream, io)) => {
            let _ = stream.set_nodelay(true);
            if tls {
                shard.stats.tls_connections.fetch_add(1, Ordering::Relaxed);
            }
            let id = shard.conns.borrow_mut().open(to, if tls { Transport::Tls } else { Transport::Tcp }, Instant::now(), io);
            shard.dests.borrow_mut().insert(to, DestConn::Open(id));
            ShardStats::inc(&shard.stats.tcp_connected);
            ShardStats::set(&shard.stats.tcp_connections, shard.conns.borrow().len() as u64);
            // What waited is whole messages, one after another: captured one by one now that
            // the connection's local address is known.
            if shard.capturing() {
                let mut framer = Framer::new(queued.len().max(1));
                framer.push(&queued);
                while let Ok(Some(Frame::Message(m))) = framer.next_frame() {
                    shard.capture_stream(id, to, false, m);
                }
                shard.capture_sent();
            }
            // Also what sends a TLS connection's ClientHello, with nothing queued.
            shard.write_bytes(id, &queued);
            glommio::spawn_local(serve(shard.clone(), stream, id, to, false, tls)).detach();
        }
        Err(e) => {
            ShardStats::inc(&shard.stats.tcp_connect_failed);
            tracing::debug!(shard = shard.index, %to, error = %e, "cannot connect to a stream destination");
            if shard.table.load().destination_transport(&to).is_stream() {
                shard.unreachable(to).await;
            } else {
                // Only large requests to this UDP destination wanted the connection.
                shard.large_requests_back_to_udp(to, &queued);
                shard.flush().await;
            }
        }
    }
}

impl Shard {
    /// Tells the failovers waiting on destination `to` that it cannot be reached, and sends what
    /// that makes them send.
    async fn unreachable(&self, to: SocketAddr) {
        {
            let table = self.table.load();
            self.router.borrow_mut().destination_unreachable(&table, to, Instant::now());
        }
        self.take_outbox(None);
        self.send_handoffs();
        self.flush().await;
    }

    /// Reads what a TLS connection's socket holds through its session into `framer` and routes
    /// every complete message; records the session produced (the handshake's answer, an alert)
    /// leave at once. None: the socket is drained; Some: close the connection for that reason.
    fn read_tls(&self, c: ConnId, fd: RawFd, peer: SocketAddr, framer: &mut Framer) -> Option<Closed> {
        loop {
            let (step, retry) = {
                let mut conns = self.conns.borrow_mut();
                let Some(conn) = conns.get_mut(c) else { return Some(Closed::Peer) };
                let Some(tls) = conn.io.tls.as_mut() else { return Some(Closed::Peer) };
                let step = match tls.read_tls(&mut Fd(fd)) {
                    Ok(0) => Err(Closed::Peer),
                    Ok(_) => match tls.process(framer) {
                        Ok(p) => {
                            if p.handshake_done {
                                ShardStats::inc(&self.stats.tls_handshakes);
                            }
                            if p.peer_closed { Err(Closed::Peer) } else { Ok(true) }
                        }
                        Err(e) => {
                            tracing::debug!(shard = self.index, %peer, error = %e, "tls failed");
                            Err(Closed::Tls)
                        }
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => Err(Closed::Peer),
                };
                match flush_tls(conn) {
                    Ok(retry) => (step, retry),
                    Err(_) => (step.and(Err(Closed::Peer)), false),
                }
            };
            if retry {
                self.spawn_retry(c);
            }
            match step {
                Ok(true) => {
                    if let Err(why) = self.frames(c, peer, framer) {
                        return Some(why);
                    }
                }
                Ok(false) => return None,
                // What arrived before the peer closed is still routed.
                Err(Closed::Peer) => return Some(self.frames(c, peer, framer).err().unwrap_or(Closed::Peer)),
                Err(why) => return Some(why),
            }
        }
    }
}

/// One connection's reader: park until bytes are there (a 1-byte peek, like the UDP loop), read
/// what the kernel holds straight into the framer, route every complete message, and end the
/// connection (counted by why) on EOF, an error, a framing error or fsroute's own decision.
/// `inbound`: accepted (it holds a share of its source's limit), else opened to a destination.
/// `tls`: the bytes pass through the connection's TLS session (`Shard::read_tls`).
async fn serve(shard: Rc<Shard>, stream: glommio::net::TcpStream, id: ConnId, peer: SocketAddr, inbound: bool, tls: bool) {
    let fd = stream.as_raw_fd();
    let mut framer = Framer::new(shard.stream.max_message);
    let mut probe = [0u8; 1];
    let why = 'conn: loop {
        match stream.peek(&mut probe).await {
            Ok(n) if n > 0 => {}
            _ => break Closed::Peer,
        }
        shard.conns.borrow_mut().touch(id, Instant::now());
        let ended = if tls { shard.read_tls(id, fd, peer, &mut framer) } else { loop {
            let room = framer.spare();
            // SAFETY: `room` is writable memory of `room.len()` bytes owned by the framer.
            let n = unsafe { libc::recv(fd, room.as_mut_ptr().cast(), room.len(), libc::MSG_DONTWAIT) };
            let want = room.len();
            if n > 0 {
                framer.filled(n as usize);
                if let Err(why) = shard.frames(id, peer, &mut framer) {
                    break Some(why);
                }
                if (n as usize) < want {
                    break None;
                }
                continue;
            }
            framer.filled(0);
            if n == 0 {
                break Some(Closed::Peer);
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => break None,
                io::ErrorKind::Interrupted => continue,
                _ => break Some(Closed::Peer),
            }
        } };
        shard.send_handoffs();
        shard.flush().await;
        if let Some(why) = ended {
            break 'conn why;
        }
    };
    let closed = shard.conns.borrow_mut().close(id);
    // A TLS connection that never completed its handshake: a failed handshake, whatever ended it.
    let unshaken = closed.as_ref().and_then(|c| c.io.tls.as_ref()).is_some_and(|t| !t.is_established());
    if tls {
        shard.stats.tls_connections.fetch_sub(1, Ordering::Relaxed);
        if unshaken {
            ShardStats::inc(&shard.stats.tls_handshake_failed);
        }
    }
    // fsroute's own reason (idle, stuck) wins over the EOF its shutdown caused.
    let why = closed.and_then(|c| c.closing).unwrap_or(why);
    if inbound {
        shard.limit.give_back(peer.ip());
    } else {
        let mut dests = shard.dests.borrow_mut();
        if matches!(dests.get(&peer), Some(DestConn::Open(c)) if *c == id) {
            dests.remove(&peer);
        }
    }
    ShardStats::inc(&shard.stats.tcp_closed[why as usize]);
    ShardStats::set(&shard.stats.tcp_connections, shard.conns.borrow().len() as u64);
    tracing::debug!(shard = shard.index, %peer, reason = why.label(), tls, "stream connection closed");
    drop(stream);
    if !inbound && unshaken {
        // Like a failed connect: the calls waiting on this destination fail over now.
        shard.unreachable(peer).await;
    }
}

/// One socket's receive loop: drain it with `recvmmsg`, route the batch, send it, and park in
/// glommio only when the socket is empty.
async fn receive(shard: Rc<Shard>, sock_idx: usize, control: Arc<ShardControl>) {
    let mut batch = RecvBatch::default();
    let fd = shard.fds[sock_idx];
    let mut probe = [0u8; 1];
    while !control.stop.load(Ordering::Relaxed) {
        let n = match batch.recv(fd) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(e) => {
                tracing::warn!(shard = shard.index, error = %e, "receive failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // The batch's receive time, for its captures (taken only while capturing).
        let captured_at = (n > 0 && shard.sync_capture()).then(WallTime::now);
        for i in 0..n {
            if let Some((src, data)) = batch.get(i) {
                ShardStats::inc(&shard.stats.received);
                shard.route(src, data, Arrival::Udp(sock_idx), false);
            }
        }
        shard.send_handoffs();
        shard.flush_forward().await;
        // Copies only once the batch has left; hand-offs included, since this shard received them.
        if let Some(at) = captured_at {
            shard.capture_received(&batch, n, sock_idx, at);
        }
        shard.capture_sent();
        if n == BATCH {
            // More may be waiting: let the shard's other tasks run, then drain on.
            glommio::executor().yield_if_needed().await;
            continue;
        }
        // Parked until a datagram is there: a 1-byte MSG_PEEK, which leaves the datagram for the
        // next recvmmsg (one wait per batch, never per datagram). `peek_from` submits its io_uring
        // receive at once; `peek` queues it unsubmitted, which measured 7 ms p50 per idle request.
        if shard.sockets[sock_idx].peek_from(&mut probe).await.is_err() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every `TICK`: failover timers and call-memory expiry, the control plane's drain flag, and what
/// the router queued; returns when the control plane says stop.
async fn housekeeping(shard: &Shard, control: &ShardControl) {
    loop {
        glommio::timer::sleep(TICK).await;
        let now = Instant::now();
        let pending = {
            let mut r = shard.router.borrow_mut();
            let draining = control.draining.load(Ordering::Relaxed);
            r.set_draining(draining);
            r.tick(&shard.table.load(), now);
            shard.stats.memory_full.store(r.memory().not_remembered, Ordering::Relaxed);
            shard.stats.expiry_records.store(r.memory().expiry_records() as u64, Ordering::Relaxed);
            // A scan of the memory: only worth it while a graceful stop waits on it.
            if draining { r.pending_invites(now) } else { 0 }
        };
        shard.stats.pending_invites.store(pending as u64, Ordering::Relaxed);
        {
            let mut conns = shard.conns.borrow_mut();
            for c in conns.idle(now, shard.stream.idle_timeout) {
                shard.close_soon(&mut conns, c, Closed::Idle);
            }
            // A TLS destination that took the connection but not the handshake within the
            // connect timeout fails like a connect that timed out (its reader reports it).
            let stalled: Vec<ConnId> = shard
                .dests
                .borrow()
                .values()
                .filter_map(|d| match d {
                    DestConn::Open(c) => Some(*c),
                    DestConn::Connecting(_) => None,
                })
                .filter(|c| {
                    conns.get_mut(*c).is_some_and(|conn| {
                        conn.io.tls.as_ref().is_some_and(|t| !t.is_established())
                            && now.saturating_duration_since(conn.last_active) >= CONNECT_TIMEOUT
                    })
                })
                .collect();
            for c in stalled {
                shard.close_soon(&mut conns, c, Closed::Tls);
            }
        }
        // A reload reaches an idle shard's capture here; captures EAGAIN left are retried.
        shard.sync_capture();
        shard.take_outbox(None);
        shard.send_handoffs();
        shard.flush().await;
        if control.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

