//! OPTIONS probing of dispatcher destinations, owned by the control plane (shards never see a
//! probe). The core is sans-IO: it says which OPTIONS to send when, reads the replies, and keeps
//! each destination's health with separate failure and success thresholds, like OpenSIPS's
//! `ds_probing_threshold` but with a success threshold too. Any SIP reply proves the box alive;
//! a 503 is FreeSWITCH at max-sessions: full, not dead (OpenSIPS disables such a box; its heartbeat
//! weight already keeps calls away). Admin-inactive destinations are not probed, so that state is
//! sticky until an admin changes it. `ProbeSocket` is the thin shell around it: one UDP socket,
//! and for TCP and TLS destinations one non-blocking connection per destination, kept open between
//! probes, framed and decrypted by the data plane's own `Framer` and `TlsSession`
//! (docs/TCP.md §6). A destination that refuses the connection, or whose certificate does not
//! verify, misses its probes like one that does not answer (OpenSIPS never marks it, its #3257).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsroute_dataplane::conn::Transport;
use fsroute_dataplane::framing::{Frame, Framer};
use fsroute_dataplane::sip;
use fsroute_dataplane::tls::TlsSession;

/// A destination's identity: (setid, URI as configured).
pub type DestKey = (i32, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeHealth {
    /// Answered within the last `success_threshold` probes (or never failed enough to go down).
    pub up: bool,
    /// The last reply was 503: alive but at capacity.
    pub full: bool,
    pub last_status: Option<u16>,
}

#[derive(Clone, Debug)]
struct Target {
    addr: SocketAddr,
    transport: Transport,
    health: ProbeHealth,
    fails: u32,
    oks: u32,
    /// Sequence number and send time of the probe awaiting its reply.
    outstanding: Option<(u64, Instant)>,
    next_at: Instant,
}

#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

pub struct Prober {
    settings: ProbeSettings,
    targets: HashMap<DestKey, Target>,
    seq: u64,
    /// Keys by probe sequence number, to match replies without parsing the URI back.
    by_seq: HashMap<u64, DestKey>,
}

/// A probe to send.
pub struct Outgoing {
    pub to: SocketAddr,
    pub transport: Transport,
    pub bytes: Vec<u8>,
}

impl Prober {
    pub fn new(settings: ProbeSettings) -> Prober {
        Prober { settings, targets: HashMap::new(), seq: 0, by_seq: HashMap::new() }
    }

    pub fn settings(&self) -> ProbeSettings {
        self.settings
    }

    pub fn set_settings(&mut self, settings: ProbeSettings) {
        self.settings = settings;
    }

    pub fn enabled(&self) -> bool {
        !self.settings.interval.is_zero()
    }

    /// Keeps exactly `wanted` as targets. New ones start up (or down when `starts_down`, a row
    /// whose initial state is probing); surviving ones keep their health.
    pub fn sync(&mut self, wanted: &[(DestKey, SocketAddr, bool)], now: Instant) {
        self.targets.retain(|k, _| wanted.iter().any(|(w, ..)| w == k));
        for (key, addr, starts_down) in wanted {
            let transport = crate::config::destination_transport(&key.1);
            let t = self.targets.entry(key.clone()).or_insert_with(|| Target {
                addr: *addr,
                transport,
                health: ProbeHealth { up: !starts_down, full: false, last_status: None },
                fails: 0,
                oks: 0,
                outstanding: None,
                next_at: now,
            });
            t.addr = *addr;
            t.transport = transport;
        }
        self.by_seq.retain(|_, k| self.targets.contains_key(k));
    }

    pub fn health(&self, key: &DestKey) -> Option<ProbeHealth> {
        self.targets.get(key).map(|t| t.health)
    }

    /// An admin decision resets the counters: `up` as told, probing resumes from there.
    pub fn force(&mut self, key: &DestKey, up: bool) {
        if let Some(t) = self.targets.get_mut(key) {
            t.health.up = up;
            t.fails = 0;
            t.oks = 0;
        }
    }

    /// Timeouts and due probes. `skip` says which targets not to probe now (admin-inactive).
    /// Returns whether any health changed.
    pub fn poll(&mut self, now: Instant, local: SocketAddr, skip: &dyn Fn(&DestKey) -> bool, out: &mut Vec<Outgoing>) -> bool {
        if !self.enabled() {
            return false;
        }
        let s = self.settings;
        // A reply later than the interval (or 2 s, if sooner) counts as a miss.
        let timeout = s.interval.min(Duration::from_secs(2));
        let mut changed = false;
        let keys: Vec<DestKey> = self.targets.keys().cloned().collect();
        for key in keys {
            let Some(t) = self.targets.get_mut(&key) else { continue };
            if let Some((seq, sent)) = t.outstanding {
                if now.duration_since(sent) >= timeout {
                    t.outstanding = None;
                    self.by_seq.remove(&seq);
                    changed |= record(t, None, s);
                }
            }
            if skip(&key) || now < t.next_at || t.outstanding.is_some() {
                continue;
            }
            self.seq += 1;
            let seq = self.seq;
            t.outstanding = Some((seq, now));
            t.next_at = now + s.interval;
            self.by_seq.insert(seq, key.clone());
            out.push(Outgoing { to: t.addr, transport: t.transport, bytes: options(&key.1, local, seq, t.transport) });
        }
        changed
    }

    /// A reply that arrived on the probe socket or a probe connection. Returns whether any
    /// health changed.
    pub fn handle(&mut self, bytes: &[u8]) -> bool {
        let Ok(m) = sip::parse(bytes) else { return false };
        let (Some(code), Some(cid)) = (m.status(), m.call_id) else { return false };
        if code < 200 {
            return false;
        }
        let Some(seq) = std::str::from_utf8(cid)
            .ok()
            .and_then(|c| c.strip_prefix("fsroute-probe-"))
            .and_then(|c| c.split('@').next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return false;
        };
        let Some(key) = self.by_seq.remove(&seq) else { return false };
        let s = self.settings;
        let Some(t) = self.targets.get_mut(&key) else { return false };
        if t.outstanding.map(|(q, _)| q) != Some(seq) {
            return false;
        }
        t.outstanding = None;
        record(t, Some(code), s)
    }
}

/// One probe outcome: `Some(code)` for a reply, `None` for a miss. Returns whether `up` changed.
fn record(t: &mut Target, reply: Option<u16>, s: ProbeSettings) -> bool {
    let before = t.health;
    match reply {
        Some(code) => {
            t.health.last_status = Some(code);
            t.health.full = code == 503;
            t.fails = 0;
            t.oks = t.oks.saturating_add(1);
            if !t.health.up && t.oks >= s.success_threshold.max(1) {
                t.health.up = true;
            }
        }
        None => {
            t.oks = 0;
            t.fails = t.fails.saturating_add(1);
            if t.health.up && t.fails >= s.failure_threshold.max(1) {
                t.health.up = false;
                t.health.full = false;
            }
        }
    }
    before.up != t.health.up || before.full != t.health.full
}

fn options(uri: &str, local: SocketAddr, seq: u64, transport: Transport) -> Vec<u8> {
    // An address of a name (`sip:host#addr`, docs/DNS.md) is asked as the name: the box's domain.
    let uri = uri.split_once('#').map_or(uri, |(written, _)| written);
    // Over a stream the reply comes back on the connection whatever the Via's sent-by says
    // (RFC 3261 §18.2.2); the Via still names the transport, as FreeSWITCH checks it.
    let via = transport.via_name();
    format!(
        "OPTIONS {uri} SIP/2.0\r\n\
         Via: SIP/2.0/{via} {local};branch=z9hG4bK-fsrprobe{seq:x};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:fsroute@{local}>;tag=fsrprobe\r\n\
         To: <{uri}>\r\n\
         Call-ID: fsroute-probe-{seq}@{local}\r\n\
         CSeq: {cseq} OPTIONS\r\n\
         User-Agent: fsroute\r\n\
         Content-Length: 0\r\n\r\n",
        cseq = seq % 1_000_000_000 + 1,
    )
    .into_bytes()
}

/// The sockets probes leave from: a UDP socket on an ephemeral port of the first listener's
/// address, and one connection per TCP/TLS destination.
pub struct ProbeSocket {
    sock: UdpSocket,
    pub local: SocketAddr,
    buf: Vec<u8>,
    streams: HashMap<SocketAddr, StreamProbe>,
    /// What TLS destinations are verified against (`[tls] ca`); None: TLS probes cannot leave
    /// (the config refuses a TLS destination without it).
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

/// A probe connection: replies are a few hundred bytes, so the framer's limit is small.
struct StreamProbe {
    sock: TcpStream,
    connected: bool,
    opened: Instant,
    /// Plaintext probes the socket did not take yet (TCP; TLS keeps them in its session).
    out: Vec<u8>,
    tls: Option<TlsSession>,
    framer: Framer,
}

/// How long a probe connection may take to connect before it is dropped (its probe is a miss).
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest reply a probe connection frames; OPTIONS answers are far smaller.
const PROBE_MAX_MESSAGE: usize = 64 * 1024;

impl StreamProbe {
    /// Starts a non-blocking connect to `to`; None when it fails at once (refused, no route).
    fn open(to: SocketAddr, transport: Transport, tls: Option<&Arc<rustls::ClientConfig>>, now: Instant) -> Option<StreamProbe> {
        let tls = match transport {
            Transport::Tls => Some(TlsSession::client(tls?, to.ip()).ok()?),
            _ => None,
        };
        let sock = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, Some(socket2::Protocol::TCP)).ok()?;
        sock.set_nonblocking(true).ok()?;
        let _ = sock.set_nodelay(true);
        match sock.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => {
                tracing::debug!(%to, error = %e, "probe connection failed");
                return None;
            }
        }
        Some(StreamProbe { sock: sock.into(), connected: false, opened: now, out: Vec::new(), tls, framer: Framer::new(PROBE_MAX_MESSAGE) })
    }

    /// Moves the connection on: finishes the connect, sends what waits, reads and hands every
    /// complete reply to `prober`. Err: the connection is over (refused, closed, a TLS failure).
    fn pump(&mut self, prober: &mut Prober, changed: &mut bool, now: Instant) -> io::Result<()> {
        if !self.connected {
            let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
            // SAFETY: one valid pollfd, a zero timeout.
            let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
            if ready <= 0 {
                if now.duration_since(self.opened) > PROBE_CONNECT_TIMEOUT {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                return Ok(());
            }
            if let Some(e) = self.sock.take_error()? {
                return Err(e);
            }
            self.connected = true;
        }
        match &mut self.tls {
            Some(tls) => {
                tls.write_tls(&mut self.sock)?;
            }
            None => {
                while !self.out.is_empty() {
                    match self.sock.write(&self.out) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => drop(self.out.drain(..n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        loop {
            let n = match &mut self.tls {
                Some(tls) => match tls.read_tls(&mut self.sock) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        let p = tls.process(&mut self.framer).map_err(io::Error::other)?;
                        // The handshake's next flight, or the probes it held back.
                        tls.write_tls(&mut self.sock)?;
                        if p.peer_closed {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
                None => match self.sock.read(self.framer.spare()) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        self.framer.filled(n);
                        n
                    }
                    Err(e) => {
                        self.framer.filled(0);
                        if e.kind() == io::ErrorKind::WouldBlock {
                            break;
                        }
                        return Err(e);
                    }
                },
            };
            debug_assert!(n > 0);
            loop {
                match self.framer.next_frame().map_err(io::Error::other)? {
                    Some(Frame::Message(m)) => *changed |= prober.handle(m),
                    // A keep-alive ping from the box: answered like the shards do.
                    Some(Frame::Ping) => self.send(fsroute_dataplane::framing::PONG),
                    None => break,
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, bytes: &[u8]) {
        match &mut self.tls {
            Some(tls) => {
                tls.write(bytes);
            }
            None => self.out.extend_from_slice(bytes),
        }
    }
}

impl ProbeSocket {
    pub fn bind(ip: std::net::IpAddr) -> io::Result<ProbeSocket> {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        Ok(ProbeSocket { sock, local, buf: vec![0; 65_535], streams: HashMap::new(), tls_client: None })
    }

    /// Sends probes: datagrams at once; over a destination's connection, opened when there is
    /// none. A connection that cannot be opened leaves its probe unanswered, a miss.
    pub fn send(&mut self, out: &[Outgoing], prober: &mut Prober) -> bool {
        let now = Instant::now();
        for o in out {
            if o.transport == Transport::Udp {
                if let Err(e) = self.sock.send_to(&o.bytes, o.to) {
                    tracing::debug!(to = %o.to, error = %e, "probe not sent");
                }
                continue;
            }
            if !self.streams.contains_key(&o.to) {
                match StreamProbe::open(o.to, o.transport, self.tls_client.as_ref(), now) {
                    Some(c) => {
                        self.streams.insert(o.to, c);
                    }
                    None => continue,
                }
            }
            if let Some(c) = self.streams.get_mut(&o.to) {
                c.send(&o.bytes);
            }
        }
        self.pump_streams(prober, now)
    }

    /// Feeds every waiting reply to the prober.
    pub fn drain(&mut self, prober: &mut Prober) -> bool {
        let mut changed = false;
        while let Ok((n, _)) = self.sock.recv_from(&mut self.buf) {
            changed |= prober.handle(&self.buf[..n]);
        }
        changed | self.pump_streams(prober, Instant::now())
    }

    /// Probe connections to destinations that are no longer probed are closed.
    pub fn retain_streams(&mut self, wanted: impl Fn(&SocketAddr) -> bool) {
        self.streams.retain(|a, _| wanted(a));
    }

    fn pump_streams(&mut self, prober: &mut Prober, now: Instant) -> bool {
        let mut changed = false;
        self.streams.retain(|to, c| match c.pump(prober, &mut changed, now) {
            Ok(()) => true,
            Err(e) => {
                // Its probe goes unanswered and counts as a miss; the next one reconnects.
                tracing::debug!(%to, error = %e, "probe connection closed");
                false
            }
        });
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProbeSettings {
        ProbeSettings { interval: Duration::from_secs(1), failure_threshold: 3, success_threshold: 2 }
    }

    fn key() -> DestKey {
        (1, "sip:127.0.0.1:5071".to_string())
    }

    fn reply(probe: &[u8], code: u16) -> Vec<u8> {
        let m = sip::parse(probe).unwrap();
        format!(
            "SIP/2.0 {code} X\r\nVia: {}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: {}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            String::from_utf8_lossy(m.top_via.unwrap().span.get(probe)),
            String::from_utf8_lossy(m.call_id.unwrap())
        )
        .into_bytes()
    }

    fn round(p: &mut Prober, now: Instant, answer: Option<u16>) -> bool {
        let mut out = Vec::new();
        let mut changed = p.poll(now, "127.0.0.1:40000".parse().unwrap(), &|_| false, &mut out);
        if let (Some(code), Some(o)) = (answer, out.first()) {
            changed |= p.handle(&reply(&o.bytes, code));
        }
        changed
    }

    #[test]
    fn two_misses_keep_a_destination_up_and_the_third_takes_it_down() {
        let t0 = Instant::now();
        let mut p = Prober::new(settings());
        p.sync(&[(key(), "127.0.0.1:5071".parse().unwrap(), false)], t0);
        let mut changed = Vec::new();
        for i in 0..4 {
            changed.push(round(&mut p, t0 + Duration::from_secs(i), None));
        }
        // Misses are counted when the next round finds the previous probe unanswered.
        assert_eq!(changed, [false, false, false, true]);
        assert!(!p.health(&key()).unwrap().up);
    }

    #[test]
    fn a_down_destination_needs_success_threshold_replies_to_come_back() {
        let t0 = Instant::now();
        let mut p = Prober::new(settings());
        p.sync(&[(key(), "127.0.0.1:5071".parse().unwrap(), true)], t0);
        assert!(!round(&mut p, t0, Some(200)));
        assert!(!p.health(&key()).unwrap().up);
        assert!(round(&mut p, t0 + Duration::from_secs(1), Some(200)));
        assert!(p.health(&key()).unwrap().up);
    }

    #[test]
    fn a_503_means_full_not_dead() {
        let t0 = Instant::now();
        let mut p = Prober::new(settings());
        p.sync(&[(key(), "127.0.0.1:5071".parse().unwrap(), false)], t0);
        for i in 0..5 {
            round(&mut p, t0 + Duration::from_secs(i), Some(503));
        }
        let h = p.health(&key()).unwrap();
        assert!(h.up && h.full);
        assert_eq!(h.last_status, Some(503));
    }

    #[test]
    fn skipped_destinations_are_not_probed() {
        let t0 = Instant::now();
        let mut p = Prober::new(settings());
        p.sync(&[(key(), "127.0.0.1:5071".parse().unwrap(), false)], t0);
        let mut out = Vec::new();
        p.poll(t0, "127.0.0.1:40000".parse().unwrap(), &|_| true, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn replies_to_unknown_or_stale_probes_are_ignored() {
        let mut p = Prober::new(settings());
        assert!(!p.handle(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1\r\nCall-ID: fsroute-probe-99@x\r\nCSeq: 1 OPTIONS\r\n\r\n"));
        assert!(!p.handle(b"garbage"));
    }
}
