//! The thread-per-core shell around the router: one glommio executor per shard, pinned to its core,
//! with its own UDP socket(s) in a REUSEPORT group. Each shard reads the one `ArcSwap` routing table
//! per datagram (no lock, no wait on the control plane), runs the sans-IO router, and sends what it
//! returns. Datagrams whose Call-ID another shard owns go to that shard over a bounded FIFO
//! channel (glommio's channel mesh), so per-call state lives in one place and a call's messages
//! keep their order. Sockets are bound before any thread starts, so a bind error stops startup.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::net::UdpSocket;
use glommio::{LocalExecutorBuilder, Placement};

use crate::router::{Action, Router};
use crate::socket::{bind_group, Ingress};
use crate::stats::{DropReason, ShardStats};
use crate::table::RoutingTable;

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
}

/// Flags the control plane raises; shards look at them on every tick.
#[derive(Debug, Default)]
pub struct ShardControl {
    pub draining: AtomicBool,
    pub stop: AtomicBool,
}

/// A datagram handed to the shard that owns its Call-ID.
struct Handoff {
    src: SocketAddr,
    data: Vec<u8>,
}

const TICK: Duration = Duration::from_millis(100);
const MAX_DATAGRAM: usize = 65_535;

pub struct DataPlane {
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    pub control: Arc<ShardControl>,
    pub stats: Vec<Arc<ShardStats>>,
    /// The address each listener ended up bound to (port 0 resolved).
    pub bound: Vec<SocketAddr>,
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
        let control = Arc::new(ShardControl::default());
        let stats: Vec<Arc<ShardStats>> = (0..shards).map(|_| Arc::new(ShardStats::default())).collect();
        let mesh = MeshBuilder::<Handoff, _>::full(shards, spec.handoff_capacity.max(1));
        let cpus = crate::socket::allowed_cpus();
        let mut threads = Vec::with_capacity(shards);
        for (i, fds) in fds_by_shard.into_iter().enumerate() {
            // Pinned to the i-th CPU the process is allowed on; unpinned when shards outnumber them.
            let placement = if spec.pin && shards <= cpus.len() { Placement::Fixed(cpus[i]) } else { Placement::Unbound };
            let table = table.clone();
            let control = control.clone();
            let stats = stats[i].clone();
            let mesh = mesh.clone();
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("fsroute-shard-{i}"))
                .spawn(move || async move {
                    run_shard(i, shards, fds, table, control, stats, mesh).await;
                })
                .map_err(|e| io::Error::other(format!("cannot start shard {i}: {e}")))?;
            threads.push(handle);
        }
        Ok(DataPlane { threads, control, stats, bound })
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

struct Shard {
    router: RefCell<Router>,
    table: Arc<ArcSwap<RoutingTable>>,
    stats: Arc<ShardStats>,
    sockets: Vec<UdpSocket>,
    /// Each socket's address family, read once at start (not a getsockname per datagram).
    socket_is_v4: Vec<bool>,
    senders: Senders<Handoff>,
}

impl Shard {
    /// The socket to send from: the first one of the destination's address family.
    fn socket_for(&self, to: SocketAddr) -> &UdpSocket {
        self.sockets
            .iter()
            .zip(&self.socket_is_v4)
            .find(|(_, v4)| **v4 == to.is_ipv4())
            .map_or(&self.sockets[0], |(s, _)| s)
    }

    async fn send(&self, to: SocketAddr, bytes: &[u8]) {
        if self.socket_for(to).send_to(bytes, to).await.is_err() {
            self.stats.drop_reason(DropReason::SendError);
        }
    }

    /// Routes one datagram and carries out the action. `owned`: it came from another shard.
    async fn process(&self, src: SocketAddr, data: &[u8], owned: bool, out: &mut Vec<u8>) {
        let action = {
            let table = self.table.load();
            let mut router = self.router.borrow_mut();
            if owned {
                router.handle_owned(&table, src, data, Instant::now(), out)
            } else {
                router.handle(&table, src, data, Instant::now(), out)
            }
        };
        match action {
            Action::Forward(to) | Action::Reply(to) => self.send(to, out).await,
            Action::HandOff(owner) => {
                let msg = Handoff { src, data: data.to_vec() };
                if self.senders.try_send_to(owner, msg).is_err() {
                    self.stats.drop_reason(DropReason::HandoffFull);
                }
            }
            Action::Drop(_) | Action::Absorbed => {}
        }
        self.flush().await;
    }

    /// Sends what the router queued besides the action's own datagram (100 Trying, fsroute's ACKs
    /// and CANCELs, a failover attempt started by a timer).
    async fn flush(&self) {
        loop {
            let next = self.router.borrow_mut().poll_transmit();
            let Some((to, buf)) = next else { break };
            self.send(to, &buf).await;
            self.router.borrow_mut().recycle(buf);
        }
    }
}

async fn run_shard(
    index: usize,
    shards: usize,
    fds: Vec<OwnedFd>,
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
    for s in &sockets {
        // Lets a receive loop notice a stop request even when no traffic arrives.
        let _ = s.set_read_timeout(Some(TICK * 2));
    }
    let socket_is_v4: Vec<bool> = sockets.iter().map(|s| s.local_addr().map_or(true, |a| a.is_ipv4())).collect();
    let seed = 0x5eed_0000 ^ (index as u64) << 32 ^ std::process::id() as u64;
    let shard = Rc::new(Shard {
        router: RefCell::new(Router::new(index, shards, seed, stats.clone())),
        table,
        stats,
        sockets,
        socket_is_v4,
        senders,
    });
    tracing::debug!(shard = index, "shard started");

    let mut tasks = Vec::new();
    for sock_idx in 0..shard.sockets.len() {
        let shard = shard.clone();
        let control = control.clone();
        tasks.push(glommio::spawn_local(receive(shard, sock_idx, control)));
    }
    for (_, stream) in receivers.streams() {
        let shard = shard.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut out = Vec::with_capacity(MAX_DATAGRAM);
            while let Some(msg) = stream.recv().await {
                shard.process(msg.src, &msg.data, true, &mut out).await;
            }
        }));
    }

    housekeeping(&shard, &control).await;
    shard.senders.close();
    for t in tasks {
        t.cancel().await;
    }
    tracing::debug!(shard = index, "shard stopped");
}

/// One socket's receive loop: each datagram through the router, until the stop flag.
async fn receive(shard: Rc<Shard>, sock_idx: usize, control: Arc<ShardControl>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    while !control.stop.load(Ordering::Relaxed) {
        match shard.sockets[sock_idx].recv_from(&mut buf).await {
            Ok((n, src)) => {
                ShardStats::inc(&shard.stats.received);
                shard.process(src, &buf[..n], false, &mut out).await;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                tracing::warn!(shard = shard.router.borrow().shard_index(), error = %e, "receive failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
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
            // A scan of the memory: only worth it while a graceful stop waits on it.
            if draining { r.pending_invites(now) } else { 0 }
        };
        shard.stats.pending_invites.store(pending as u64, Ordering::Relaxed);
        shard.flush().await;
        if control.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

fn is_timeout(e: &glommio::GlommioError<()>) -> bool {
    match e {
        glommio::GlommioError::IoError(io) => {
            matches!(io.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
                || io.raw_os_error() == Some(libc::ETIME)
                || io.raw_os_error() == Some(libc::ECANCELED)
        }
        glommio::GlommioError::TimedOut(_) => true,
        _ => false,
    }
}
