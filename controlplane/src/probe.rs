//! OPTIONS probing of dispatcher destinations, owned by the control plane (shards never see a
//! probe). The core is sans-IO: it says which OPTIONS to send when, reads the replies, and keeps
//! each destination's health with separate failure and success thresholds, like OpenSIPS's
//! `ds_probing_threshold` but with a success threshold too. Any SIP reply proves the box alive;
//! a 503 is FreeSWITCH at max-sessions: full, not dead (OpenSIPS disables such a box; its heartbeat
//! weight already keeps calls away). Admin-inactive destinations are not probed, so that state is
//! sticky until an admin changes it. `ProbeSocket` is the thin UDP shell around it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use fsroute_dataplane::sip;

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
            let t = self.targets.entry(key.clone()).or_insert_with(|| Target {
                addr: *addr,
                health: ProbeHealth { up: !starts_down, full: false, last_status: None },
                fails: 0,
                oks: 0,
                outstanding: None,
                next_at: now,
            });
            t.addr = *addr;
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
            out.push(Outgoing { to: t.addr, bytes: options(&key.1, local, seq) });
        }
        changed
    }

    /// A datagram that arrived on the probe socket. Returns whether any health changed.
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

fn options(uri: &str, local: SocketAddr, seq: u64) -> Vec<u8> {
    // An address of a name (`sip:host#addr`, docs/DNS.md) is asked as the name: the box's domain.
    let uri = uri.split_once('#').map_or(uri, |(written, _)| written);
    format!(
        "OPTIONS {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-fsrprobe{seq:x};rport\r\n\
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

/// The UDP socket probes leave from (an ephemeral port on the first listener's address).
pub struct ProbeSocket {
    sock: UdpSocket,
    pub local: SocketAddr,
    buf: Vec<u8>,
}

impl ProbeSocket {
    pub fn bind(ip: std::net::IpAddr) -> io::Result<ProbeSocket> {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        Ok(ProbeSocket { sock, local, buf: vec![0; 65_535] })
    }

    pub fn send(&self, out: &[Outgoing]) {
        for o in out {
            if let Err(e) = self.sock.send_to(&o.bytes, o.to) {
                tracing::debug!(to = %o.to, error = %e, "probe not sent");
            }
        }
    }

    /// Feeds every waiting reply to the prober.
    pub fn drain(&mut self, prober: &mut Prober) -> bool {
        let mut changed = false;
        while let Ok((n, _)) = self.sock.recv_from(&mut self.buf) {
            changed |= prober.handle(&self.buf[..n]);
        }
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
