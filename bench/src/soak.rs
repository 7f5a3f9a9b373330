//! `soak`: fsroute at a public edge for N minutes (default 10). One real `fsroute` process, four
//! emulated FreeSWITCH boxes (the `fsroute-fsemu` emulator, so `fs://` admission is live), and at once:
//! legitimate calls through a dispatcher failover route and a load_balancer route (INVITE, 100,
//! 180, 200, ACK, BYE after a hold; every tenth caller hangs up while it rings, with CANCEL);
//! floods from a hostile peer on another loopback address, in phases of one kind each and then
//! all together, at bounded rates; a SIGHUP every ~10 s alternating two configs that differ in
//! two weights; and a sampler that reads fsroute's VmRSS (/proc/PID/status) and `/status` every
//! second. It owns the flood generators, the sinks that count what fsroute relays where it
//! should not, the schedule, the sampling, and the report: a CSV, a PNG of RSS over time with
//! the phases shaded, a JSON and a text summary.
//!
//! Everything is loopback: callers and boxes on 127.0.0.1, the hostile peer on 127.0.0.66, the
//! victim that open-relay attempts and forged responses aim at on 127.0.0.99, and three silent
//! destinations on 127.0.0.77 behind a failover route (the flood INVITEs go there, so each one
//! forks to every silent box in turn: the worst case for a proxy that keeps each fork's INVITE).
//!
//! The soak must finish whatever fsroute does: a fsroute that dies is noticed within a second
//! (floods stop, callers are cut short, the run reports and exits nonzero); one whose RSS passes
//! `rss_limit_mib` has its floods stopped for the rest of the run, and at twice the limit it is
//! killed, so a memory blow-up is recorded instead of taking the machine down.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsroute_fsemu::{Emulator, EmulatorConfig, EmulatorHandle};
use serde::Serialize;
use serde_json::Value;

use crate::common::{machine, next_run_id};
use crate::peers::{http_get_timeout, Peer, ProxyConfig};
use crate::report::{num, progress, us, Table};
use crate::sys::{self, RecvBatch, SendQueue};
use crate::uac::{self, UacConfig, UacProgress, UacReport};

const HOSTILE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);
const VICTIM_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);
const SILENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
const SILENT_BOXES: usize = 3;
/// Size of the large INVITEs: far above any MTU, below the 64 KiB a UDP datagram can carry.
const LARGE_INVITE_BYTES: usize = 30 * 1024;

/// Everything that sizes a soak.
#[derive(Clone, Debug, Serialize)]
pub struct SoakParams {
    pub duration_s: f64,
    /// Legitimate new calls per second, half on each route.
    pub rate: f64,
    pub hold_s: f64,
    /// Every n-th legitimate call is cancelled while it rings.
    pub cancel_every: u64,
    /// Multiplies every flood rate (1.0 = the rates in [`Flood::rate`]).
    pub flood_scale: f64,
    pub hup_every_s: f64,
    /// Floods stop above this RSS; fsroute is killed above twice it.
    pub rss_limit_mib: u64,
    /// Legitimate calls only, before the first flood phase.
    pub warmup_s: f64,
    pub phase_s: f64,
    pub shards: usize,
    #[serde(skip)]
    pub out_dir: PathBuf,
}

impl SoakParams {
    /// The defaults for a run of `duration`: a warm-up of a tenth (2–60 s), then phases of
    /// (duration − warm-up)/14, at most 30 s, so every flood kind and the all-at-once phase come
    /// round at least twice; a SIGHUP every 10 s, more often in runs too short for five.
    pub fn new(duration: Duration, out_dir: PathBuf) -> SoakParams {
        let d = duration.as_secs_f64().max(4.0);
        let warmup = (d * 0.1).clamp(2.0, 60.0);
        let short = d < 60.0;
        SoakParams {
            duration_s: d,
            rate: 120.0,
            hold_s: if short { 1.0 } else { 3.0 },
            cancel_every: 10,
            flood_scale: 1.0,
            hup_every_s: (d / 5.0).clamp(1.0, 10.0),
            rss_limit_mib: 2048,
            warmup_s: warmup,
            phase_s: ((d - warmup) / 14.0).clamp(1.0, 30.0),
            shards: 2,
            out_dir,
        }
    }
}

/// One kind of hostile traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flood {
    /// Random bytes, some behind a SIP-looking start line.
    Garbage,
    /// INVITEs with a fresh Call-ID each, at the failover route of silent boxes.
    UniqueInvites,
    /// ~30 KB INVITEs at the same route.
    LargeInvites,
    /// In-dialog requests (To-tag) for dialogs fsroute never saw, aimed at a non-configured address.
    OpenRelay,
    /// Responses whose top Via carries an fsroute-looking branch and whose next Via is the victim.
    ForgedResponses,
    /// OPTIONS to fsroute itself and, one in three, through the silent route.
    Options,
}

impl Flood {
    pub const ALL: [Flood; 6] =
        [Flood::Garbage, Flood::UniqueInvites, Flood::LargeInvites, Flood::OpenRelay, Flood::ForgedResponses, Flood::Options];

    pub fn label(self) -> &'static str {
        match self {
            Flood::Garbage => "garbage",
            Flood::UniqueInvites => "unique INVITEs",
            Flood::LargeInvites => "30 KB INVITEs",
            Flood::OpenRelay => "open relay",
            Flood::ForgedResponses => "forged responses",
            Flood::Options => "OPTIONS",
        }
    }

    /// Datagrams per second at flood_scale 1: a few thousand in all, so two shared cores stay
    /// usable for the legitimate calls and everyone else on the machine.
    pub fn rate(self) -> f64 {
        match self {
            Flood::Garbage => 600.0,
            Flood::UniqueInvites => 300.0,
            Flood::LargeInvites => 30.0,
            Flood::OpenRelay => 300.0,
            Flood::ForgedResponses => 300.0,
            Flood::Options => 600.0,
        }
    }

    fn index(self) -> usize {
        Flood::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// What the hostile peer does at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    WarmUp,
    Only(Flood),
    All,
    /// After the run's end, or once the floods were stopped.
    Quiet,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::WarmUp => "warm-up",
            Phase::Only(f) => f.label(),
            Phase::All => "all floods",
            Phase::Quiet => "quiet",
        }
    }

    fn floods(self, f: Flood) -> bool {
        match self {
            Phase::Only(g) => g == f,
            Phase::All => true,
            Phase::WarmUp | Phase::Quiet => false,
        }
    }

    /// Colour slot in the plot (one per flood kind, then "all").
    pub fn slot(self) -> Option<usize> {
        match self {
            Phase::Only(f) => Some(f.index()),
            Phase::All => Some(Flood::ALL.len()),
            Phase::WarmUp | Phase::Quiet => None,
        }
    }
}

/// The schedule: (phase, its number, its start in s) at `t` seconds into the run.
pub fn phase_at(p: &SoakParams, t: f64) -> (Phase, usize, f64) {
    if t < p.warmup_s {
        return (Phase::WarmUp, 0, 0.0);
    }
    if t >= p.duration_s {
        return (Phase::Quiet, usize::MAX, p.duration_s);
    }
    let k = ((t - p.warmup_s) / p.phase_s).floor() as usize;
    let slot = k % (Flood::ALL.len() + 1);
    let phase = if slot == Flood::ALL.len() { Phase::All } else { Phase::Only(Flood::ALL[slot]) };
    (phase, k + 1, p.warmup_s + k as f64 * p.phase_s)
}

/// A shaded stretch of the plot.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseSpan {
    pub from_s: f64,
    pub to_s: f64,
    pub phase: &'static str,
    #[serde(skip)]
    pub slot: Option<usize>,
}

/// One row of the CSV.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// 0 once fsroute is gone.
    pub rss_kib: u64,
    pub calls_attempted: u64,
    pub calls_ok: u64,
    pub calls_failed: u64,
    pub flood_sent: u64,
    pub phase: &'static str,
    /// Transactions and dialogs fsroute remembers (sum over shards); None when /status did not answer.
    pub call_memory_entries: Option<u64>,
    pub reloads: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub t_s: f64,
    pub what: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteResult {
    pub route: &'static str,
    pub report: UacReport,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FloodKindResult {
    pub kind: &'static str,
    pub rate_per_s: f64,
    pub sent: u64,
    /// RSS change over each phase of this kind alone (end − start), summed and largest.
    pub rss_change_kib: i64,
    pub rss_change_max_kib: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Sinks {
    /// Requests that reached the victim address (fsroute relayed them: an open relay).
    pub victim_requests: u64,
    /// Responses that reached the victim (fsroute forwarded a forged response: a reflector).
    pub victim_responses: u64,
    /// Datagrams the silent boxes swallowed (every fork of a flood INVITE lands here).
    pub silent_invites: u64,
    pub silent_other: u64,
    /// What fsroute sent back to the hostile peer.
    pub hostile_replies: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SoakResult {
    pub machine: String,
    pub params: SoakParams,
    pub rss_start_kib: u64,
    pub rss_after_warmup_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_peak_t_s: f64,
    pub rss_end_kib: u64,
    /// Least-squares slope of RSS over the second half of the run.
    pub rss_slope_last_half_kib_per_min: f64,
    pub routes: Vec<RouteResult>,
    pub calls_attempted: u64,
    pub calls_completed: u64,
    pub calls_failed: u64,
    pub calls_cancelled: u64,
    pub floods: Vec<FloodKindResult>,
    /// RSS change over the all-at-once phases (sum, largest).
    pub all_floods_rss_change_kib: (i64, i64),
    pub flood_sent: u64,
    pub sinks: Sinks,
    pub sighups_sent: u64,
    pub reloads_reported: u64,
    pub reload_failures_reported: u64,
    /// fsroute's per-shard counters summed, from the last /status that answered.
    pub shard_totals: Counts,
    pub drops: Counts,
    pub call_memory_entries_peak: u64,
    pub status_unanswered: u64,
    /// CPU seconds (utime + stime) fsroute and the harness used over the run, for context.
    pub fsroute_cpu_s: f64,
    pub harness_cpu_s: f64,
    /// The machine's 1-minute load average at the start and at the end (other work shares it).
    pub load_avg: (f64, f64),
    pub fsroute_died: Option<Event>,
    pub killed_over_rss_limit: bool,
    pub floods_stopped: Option<Event>,
    pub events: Vec<Event>,
    pub phases: Vec<PhaseSpan>,
    pub samples: Vec<Sample>,
    pub csv: String,
    pub plot: Option<String>,
    pub plot_error: Option<String>,
    pub summary_json: String,
    pub fsroute_log: String,
}

/// Exit status rule: fsroute must survive the soak.
pub fn ok(r: &SoakResult) -> bool {
    r.fsroute_died.is_none()
}

fn start_boxes(hold: Duration) -> Result<Vec<EmulatorHandle>, String> {
    (0..4)
        .map(|i| {
            Emulator::start(EmulatorConfig {
                max_sessions: 1000,
                background_cpu: 5,
                cpu_per_session: 0.05,
                sessions_per_second: 100,
                idle_cpu_smoothing: 3,
                // The caller hangs up; the box's own hangup would come much later.
                hold: hold + Duration::from_secs(60),
                heartbeat: Duration::from_secs(1),
                // Ringing after 100 ms and the answer after 500 ms: time for a CANCEL to win.
                answer_delay: Duration::from_millis(500),
                hostname: format!("soak{}", i + 1),
                ..EmulatorConfig::default()
            })
            .map_err(|e| format!("emulator: {e}"))
        })
        .collect()
}

/// The config; `flip` is the other of the two files SIGHUP alternates between: one silent box
/// weighs 2 instead of 1 and the first dispatcher box's fallback weight is 1 instead of 0.
fn proxy_cfg(shards: usize, boxes: &[EmulatorHandle], silent: &[SocketAddr], flip: bool) -> ProxyConfig {
    let fs = |e: &EmulatorHandle| format!("fs://:ClueCon@{}", e.esl_addr());
    let mut rows = String::from("[failover]\ncodes = [408, 500, 503]\nmax_attempts = 3\nno_answer_timeout = \"2s\"\n\n");
    for (i, e) in boxes[..2].iter().enumerate() {
        let fallback = if flip && i == 0 { 1 } else { 0 };
        rows.push_str(&format!(
            "[[dispatcher]]\nsetid = 1\ndestination = \"sip:{}\"\nweight = \"{}\"\nfallback_weight = {fallback}\n\n",
            e.sip_addr(),
            fs(e)
        ));
    }
    for (i, s) in silent.iter().enumerate() {
        let w = if flip && i == 0 { 2 } else { 1 };
        rows.push_str(&format!("[[dispatcher]]\nsetid = 3\ndestination = \"sip:{s}\"\nweight = {w}\n\n"));
    }
    for e in &boxes[2..] {
        rows.push_str(&format!("[[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:{}\"\nresources = \"ch={}\"\n\n", e.sip_addr(), fs(e)));
    }
    rows.push_str("[[route]]\nruri_user_prefix = \"+1\"\nto_dispatcher = 1\nalgorithm = \"round-robin\"\nfailover = true\n\n");
    rows.push_str("[[route]]\nruri_user_prefix = \"+2\"\nto_load_balancer = 1\nresources = \"ch\"\n\n");
    rows.push_str("[[route]]\nruri_user_prefix = \"+3\"\nto_dispatcher = 3\nalgorithm = \"round-robin\"\nfailover = true\n");
    ProxyConfig {
        shards,
        ingress: "flow",
        algorithm: "round-robin",
        dests: Vec::new(),
        // The operator knows what a call costs these boxes (cpu_cost_prior, trusted, so no slow
        // start): the soak is about a proxy that has been up for a while, and fs-aware measures
        // the cold start.
        control_extra: "heartbeat_timeout = \"3s\"\nidle_cpu_smoothing = 3\ncpu_cost_prior = 0.05\n".into(),
        custom_rows: Some(rows),
        tcp_listen: None,
        proxy_extra: String::new(),
    }
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}

/// VmRSS of a live process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Default)]
struct FloodCounters {
    sent: [AtomicU64; 6],
    hostile_replies: AtomicU64,
    victim_requests: AtomicU64,
    victim_responses: AtomicU64,
    silent_invites: AtomicU64,
    silent_other: AtomicU64,
}

impl FloodCounters {
    fn total(&self) -> u64 {
        self.sent.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The hostile peer's message factory: every message unique (Call-ID, branch, tags), so no
/// memory of fsroute's can absorb a repeat.
struct Hostile {
    me: SocketAddrV4,
    fsroute: SocketAddrV4,
    victim: SocketAddrV4,
    rng: u64,
    n: u64,
    pad: String,
}

impl Hostile {
    fn new(me: SocketAddrV4, fsroute: SocketAddrV4, victim: SocketAddrV4) -> Hostile {
        let line = "a=x-pad:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n";
        let pad = line.repeat(LARGE_INVITE_BYTES / line.len());
        Hostile { me, fsroute, victim, rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()), n: 0, pad }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Appends one datagram to `out` (the send queue's shared buffer: lengths count from here).
    fn write(&mut self, kind: Flood, out: &mut Vec<u8>) {
        let start = out.len();
        self.n += 1;
        let (n, me, fsr, victim) = (self.n, self.me, self.fsroute, self.victim);
        let r = self.next();
        match kind {
            Flood::Garbage => {
                let len = 20 + (r % 1200) as usize;
                match r % 4 {
                    0 => out.extend_from_slice(b"INVITE sip:"),
                    1 => out.extend_from_slice(b"SIP/2.0 200 OK\r\nVia: "),
                    _ => {}
                }
                while out.len() - start < len {
                    let v = self.next();
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Flood::UniqueInvites | Flood::LargeInvites => {
                let body = if kind == Flood::LargeInvites {
                    format!("v=0\r\no=x 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n{}", self.pad, ip = me.ip())
                } else {
                    format!("v=0\r\no=x 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n", ip = me.ip())
                };
                let _ = write!(
                    out,
                    "INVITE sip:+3900{n}@{fsr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKfl{r:x};rport\r\nMax-Forwards: 70\r\nFrom: <sip:x@{me}>;tag=h{r:x}\r\nTo: <sip:+3900{n}@{fsr}>\r\nCall-ID: fl{n}-{r:x}@hostile\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            Flood::OpenRelay => {
                // Four ways to ask for a relay: a bare Request-URI, a forged fsroute Route naming
                // the victim, a plain Route to the victim, and a re-INVITE.
                let (method, route) = match n % 4 {
                    0 => ("BYE", String::new()),
                    1 => ("INFO", format!("Route: <sip:{fsr};lr;fsd={}~{}>\r\n", victim.ip(), victim.port())),
                    2 => ("MESSAGE", format!("Route: <sip:{victim};lr>\r\n")),
                    _ => ("INVITE", String::new()),
                };
                let _ = write!(
                    out,
                    "{method} sip:victim@{victim} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKor{r:x};rport\r\nMax-Forwards: 70\r\n{route}From: <sip:x@{me}>;tag=h{r:x}\r\nTo: <sip:victim@{victim}>;tag=v{n}\r\nCall-ID: or{n}-{r:x}@hostile\r\nCSeq: 2 {method}\r\nContact: <sip:x@{me}>\r\nContent-Length: 0\r\n\r\n"
                );
            }
            Flood::ForgedResponses => {
                let (status, method) = match n % 3 {
                    0 => ("200 OK", "INVITE"),
                    1 => ("180 Ringing", "INVITE"),
                    _ => ("200 OK", "BYE"),
                };
                let _ = write!(
                    out,
                    "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP {fsr};branch=z9hG4bK-fsr{r:016x}\r\nVia: SIP/2.0/UDP {victim};branch=z9hG4bKv{n};rport\r\nFrom: <sip:a@{victim}>;tag=a{n}\r\nTo: <sip:b@{fsr}>;tag=b{r:x}\r\nCall-ID: fr{n}-{r:x}@hostile\r\nCSeq: 1 {method}\r\nContact: <sip:b@{me}>\r\nContent-Length: 0\r\n\r\n"
                );
            }
            Flood::Options => {
                let ruri = if n % 3 == 0 { format!("sip:+3901@{fsr}") } else { format!("sip:{fsr}") };
                let _ = write!(
                    out,
                    "OPTIONS {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKop{r:x};rport\r\nMax-Forwards: 70\r\nFrom: <sip:x@{me}>;tag=h{r:x}\r\nTo: <{ruri}>\r\nCall-ID: op{n}-{r:x}@hostile\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                );
            }
        }
    }
}

/// The hostile peer: paced in 2 ms ticks by the schedule, reading back whatever fsroute answers.
/// A tick never sends more than 50 ms worth of one kind: after a stall the flood skips ahead
/// instead of bursting.
fn flood(sock: &UdpSocket, mut h: Hostile, p: &SoakParams, t0: Instant, stop: &AtomicBool, c: &FloodCounters) {
    let fd = sock.as_raw_fd();
    let mut q = SendQueue::default();
    let mut batch = RecvBatch::new(64);
    let mut readable = Vec::new();
    let mut phase_no = usize::MAX - 1;
    let mut sent_in_phase = [0u64; 6];
    let target = h.fsroute;
    while !stop.load(Ordering::Relaxed) {
        let t = t0.elapsed().as_secs_f64();
        let (phase, no, start) = phase_at(p, t);
        if phase == Phase::Quiet {
            break;
        }
        if no != phase_no {
            phase_no = no;
            sent_in_phase = [0; 6];
        }
        for f in Flood::ALL {
            if !phase.floods(f) {
                continue;
            }
            let rate = f.rate() * p.flood_scale;
            let want = (rate * (t - start)).floor() as u64;
            let k = f.index();
            let due = want.saturating_sub(sent_in_phase[k]).min((rate * 0.05).ceil() as u64);
            for _ in 0..due {
                q.push_with(target, |out| h.write(f, out));
            }
            sent_in_phase[k] = want.max(sent_in_phase[k]);
            c.sent[k].fetch_add(due, Ordering::Relaxed);
        }
        q.flush(fd);
        loop {
            let n = batch.recv(fd);
            c.hostile_replies.fetch_add(n as u64, Ordering::Relaxed);
            if n < 64 {
                break;
            }
        }
        sys::poll_readable(&[fd], 2, &mut readable);
    }
}

/// The victim and the silent boxes: count, never answer.
fn sinks(victim: &UdpSocket, silent: &[UdpSocket], stop: &AtomicBool, c: &FloodCounters) {
    let mut fds = vec![victim.as_raw_fd()];
    fds.extend(silent.iter().map(|s| s.as_raw_fd()));
    let mut batch = RecvBatch::new(64);
    let mut readable = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        sys::poll_readable(&fds, 20, &mut readable);
        for (i, fd) in fds.iter().enumerate() {
            loop {
                let n = batch.recv(*fd);
                for j in 0..n {
                    let (data, _) = batch.get(j);
                    let counter = match (i, data.starts_with(b"SIP/2.0 ")) {
                        (0, true) => &c.victim_responses,
                        (0, false) => &c.victim_requests,
                        (_, _) if data.starts_with(b"INVITE ") => &c.silent_invites,
                        _ => &c.silent_other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if n < 64 {
                    break;
                }
            }
        }
    }
}

/// What one /status says, reduced to what the soak tracks.
struct StatusView {
    memory_entries: u64,
    reloads: u64,
    reload_failures: u64,
    raw: Value,
}

fn read_status(admin: SocketAddr) -> Option<StatusView> {
    let body = http_get_timeout(admin, "/status", Duration::from_millis(500), Duration::from_millis(800))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    let memory_entries = v["shards"].as_array()?.iter().filter_map(|s| s["call_memory_entries"].as_u64()).sum();
    Some(StatusView {
        memory_entries,
        reloads: v["config"]["reloads"].as_u64().unwrap_or(0),
        reload_failures: v["config"]["reload_failures"].as_u64().unwrap_or(0),
        raw: v,
    })
}

/// Per-shard counters summed, and drops by reason summed, in /status order.
/// Named counters in the order /status gives them.
type Counts = Vec<(String, u64)>;

fn shard_sums(status: &Value) -> (Counts, Counts) {
    let mut totals = Counts::new();
    let mut drops = Counts::new();
    let add = |list: &mut Counts, k: &str, v: u64| match list.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 += v,
        None => list.push((k.to_string(), v)),
    };
    for s in status["shards"].as_array().into_iter().flatten() {
        for k in ["received", "processed", "replied", "handed_off", "failovers", "absorbed"] {
            add(&mut totals, k, s[k].as_u64().unwrap_or(0));
        }
        if let Some(d) = s["dropped"].as_object() {
            for (k, v) in d {
                add(&mut drops, k, v.as_u64().unwrap_or(0));
            }
        }
    }
    (totals, drops)
}

/// Least-squares slope of (t s, y) in y per minute.
fn slope_per_min(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx * 60.0
    }
}

fn phase_spans(p: &SoakParams, until: f64) -> Vec<PhaseSpan> {
    let mut spans = vec![PhaseSpan { from_s: 0.0, to_s: p.warmup_s.min(until), phase: Phase::WarmUp.label(), slot: None }];
    let mut t = p.warmup_s;
    while t < until.min(p.duration_s) {
        let (ph, _, start) = phase_at(p, t + 1e-6);
        let end = (start + p.phase_s).min(p.duration_s).min(until);
        spans.push(PhaseSpan { from_s: start, to_s: end, phase: ph.label(), slot: ph.slot() });
        t = start + p.phase_s;
    }
    spans
}

/// RSS of the sample nearest `t`.
fn rss_near(samples: &[Sample], t: f64) -> u64 {
    samples
        .iter()
        .filter(|s| s.rss_kib > 0)
        .min_by(|a, b| (a.t_s - t).abs().total_cmp(&(b.t_s - t).abs()))
        .map_or(0, |s| s.rss_kib)
}

fn write_csv(samples: &[Sample], path: &Path) -> Result<(), String> {
    let mut s = String::from("t_s,rss_kib,calls_attempted,calls_ok,calls_failed,flood_sent,phase,call_memory_entries,reloads\n");
    for x in samples {
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        s.push_str(&format!(
            "{:.1},{},{},{},{},{},{},{},{}\n",
            x.t_s,
            x.rss_kib,
            x.calls_attempted,
            x.calls_ok,
            x.calls_failed,
            x.flood_sent,
            x.phase,
            opt(x.call_memory_entries),
            opt(x.reloads)
        ));
    }
    std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))
}

/// The last 256 KiB of fsroute's stderr, so a run that logged a storm still leaves a readable file.
fn copy_log_tail(from: &Path, to: &Path) -> String {
    let bytes = std::fs::read(from).unwrap_or_default();
    let keep = 256 * 1024;
    let tail = &bytes[bytes.len().saturating_sub(keep)..];
    let mut out = Vec::new();
    if bytes.len() > keep {
        let _ = writeln!(out, "[fsroute-bench soak: {} bytes logged, the last {keep} kept]", bytes.len());
    }
    out.extend_from_slice(tail);
    let _ = std::fs::write(to, out);
    to.display().to_string()
}

/// What the once-a-second watcher may act on besides fsroute itself.
struct Controls<'a> {
    flood_stop: &'a AtomicBool,
    callers: &'a [Arc<UacProgress>],
    counters: &'a FloodCounters,
}

impl Controls<'_> {
    fn abort_callers(&self) {
        for c in self.callers {
            c.abort.store(true, Ordering::Relaxed);
        }
    }

    fn calls(&self, f: fn(&UacProgress) -> &AtomicU64) -> u64 {
        self.callers.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    }
}

/// The watcher's record and its decisions: sample, notice a death, enforce the RSS limit, SIGHUP.
struct Watch<'a> {
    p: &'a SoakParams,
    pid: u32,
    admin: Option<SocketAddr>,
    samples: Vec<Sample>,
    events: Vec<Event>,
    died: Option<Event>,
    killed: bool,
    floods_stopped: Option<Event>,
    hups: u64,
    next_hup: f64,
    status_unanswered: u64,
    last_status: Option<StatusView>,
}

impl<'a> Watch<'a> {
    fn new(p: &'a SoakParams, peer: &Peer) -> Watch<'a> {
        Watch {
            p,
            pid: peer.pid(),
            admin: peer.admin,
            samples: Vec::new(),
            events: Vec::new(),
            died: None,
            killed: false,
            floods_stopped: None,
            hups: 0,
            next_hup: p.hup_every_s,
            status_unanswered: 0,
            last_status: None,
        }
    }

    fn event(&mut self, t: f64, what: String) -> Event {
        let e = Event { t_s: t, what };
        self.events.push(e.clone());
        e
    }

    fn second(&mut self, t: f64, peer: &mut Peer, cfgs: &[ProxyConfig; 2], ctl: &Controls<'_>) {
        let p = self.p;
        if self.died.is_none() {
            if let Ok(Some(st)) = peer.child.try_wait() {
                let what = if self.killed {
                    format!("fsroute killed by the soak over {} MiB RSS ({st})", 2 * p.rss_limit_mib)
                } else {
                    format!("fsroute exited: {st}")
                };
                self.died = Some(self.event(t, what));
                ctl.flood_stop.store(true, Ordering::Relaxed);
                ctl.abort_callers();
            }
        }
        let alive = self.died.is_none();
        let rss = if alive { rss_kib(self.pid).unwrap_or(0) } else { 0 };
        let st = if alive { self.admin.and_then(read_status) } else { None };
        if alive && st.is_none() {
            self.status_unanswered += 1;
        }
        let phase = if self.floods_stopped.is_some() && t >= p.warmup_s { Phase::Quiet } else { phase_at(p, t).0 };
        self.samples.push(Sample {
            t_s: t,
            rss_kib: rss,
            calls_attempted: ctl.calls(|x| &x.attempted),
            calls_ok: ctl.calls(|x| &x.completed),
            calls_failed: ctl.calls(|x| &x.failed),
            flood_sent: ctl.counters.total(),
            phase: phase.label(),
            call_memory_entries: st.as_ref().map(|v| v.memory_entries),
            reloads: st.as_ref().map(|v| v.reloads),
        });
        if st.is_some() {
            self.last_status = st;
        }
        let limit_kib = p.rss_limit_mib * 1024;
        if alive && rss > limit_kib && self.floods_stopped.is_none() {
            let e = self.event(t, format!("RSS {} MiB over the {} MiB limit: floods stopped", rss / 1024, p.rss_limit_mib));
            self.floods_stopped = Some(e);
            ctl.flood_stop.store(true, Ordering::Relaxed);
        }
        if alive && rss > 2 * limit_kib && !self.killed {
            self.event(t, format!("RSS {} MiB over twice the limit: SIGKILL", rss / 1024));
            peer.signal(libc::SIGKILL);
            self.killed = true;
        }
        if alive && t >= self.next_hup && t < p.duration_s {
            let flip = self.hups % 2 == 0;
            match peer.reload(&cfgs[usize::from(flip)]) {
                Ok(()) => self.hups += 1,
                Err(e) => {
                    self.event(t, format!("reload not sent: {e}"));
                }
            }
            self.next_hup += p.hup_every_s;
        }
    }
}

pub fn run(p: &SoakParams) -> Result<SoakResult, String> {
    std::fs::create_dir_all(&p.out_dir).map_err(|e| format!("{}: {e}", p.out_dir.display()))?;
    let hold = Duration::from_secs_f64(p.hold_s);
    let boxes = start_boxes(hold)?;
    let silent: Vec<UdpSocket> = (0..SILENT_BOXES)
        .map(|_| sys::bind_udp(SocketAddr::from((SILENT_IP, 0))))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bind {SILENT_IP}: {e}"))?;
    let silent_addrs: Vec<SocketAddr> = silent.iter().filter_map(|s| s.local_addr().ok()).collect();
    let victim = sys::bind_udp(SocketAddr::from((VICTIM_IP, 0))).map_err(|e| format!("bind {VICTIM_IP}: {e}"))?;
    let hostile = sys::bind_udp(SocketAddr::from((HOSTILE_IP, 0))).map_err(|e| format!("bind {HOSTILE_IP}: {e}"))?;
    let cfgs = [proxy_cfg(p.shards, &boxes, &silent_addrs, false), proxy_cfg(p.shards, &boxes, &silent_addrs, true)];
    crate::peers::fsroute_accepts(&cfgs[0]).map_err(|e| format!("fsroute rejects the soak config: {e}"))?;
    let mut peer = Peer::fsroute(&cfgs[0])?;
    crate::fs_aware::wait_fs_connected(&peer, Duration::from_secs(5));
    let sip = peer.sip;
    let log_path = peer.dir.0.join("stderr.log");

    let counters = FloodCounters::default();
    let flood_stop = AtomicBool::new(false);
    let sinks_stop = AtomicBool::new(false);
    let uacs_done = AtomicUsize::new(0);
    let routes: [(&'static str, &str, &[EmulatorHandle]); 2] =
        [("dispatcher failover (fs:// weights)", "+15550100", &boxes[..2]), ("load_balancer (fs:// capacity)", "+25550100", &boxes[2..])];
    let progress_of: Vec<Arc<UacProgress>> = routes.iter().map(|_| Arc::new(UacProgress::default())).collect();
    let uac_cfgs: Vec<UacConfig> = routes
        .iter()
        .zip(&progress_of)
        .map(|((_, user, bx), prog)| UacConfig {
            targets: vec![sip],
            sockets: 2,
            threads: 1,
            rate: p.rate / routes.len() as f64,
            duration: Duration::from_secs_f64(p.duration_s),
            hold,
            // Timer B shortened as in fs-aware: a call fsroute lost is counted 8 s later, not 32.
            timer_b: Duration::from_secs(8),
            drain: Duration::from_secs(1),
            retry_503: false,
            backends: bx.iter().map(EmulatorHandle::sip_addr).collect(),
            run_id: next_run_id(),
            ruri_user: user.to_string(),
            cancel_every: p.cancel_every,
            progress: Some(Arc::clone(prog)),
        })
        .collect();

    let mut w = Watch::new(p, &peer);
    // Past this the callers are cut short: they should have drained long before.
    let hard_end = p.duration_s + p.hold_s + 8.0 + 1.0 + 15.0;
    let pb = progress(Duration::from_secs_f64(p.duration_s + p.hold_s + 2.0), "soak");
    let hostile_me = sys::v4(hostile.local_addr().map_err(|e| e.to_string())?);
    let victim_addr = sys::v4(victim.local_addr().map_err(|e| e.to_string())?);
    let ctl = Controls { flood_stop: &flood_stop, callers: &progress_of, counters: &counters };

    let (cpu0, self_cpu0, load0) = (peer.cpu_secs(), sys::self_cpu_secs(), load_avg());
    let t0 = Instant::now();
    let reports: Vec<std::io::Result<UacReport>> = std::thread::scope(|s| {
        let handles: Vec<_> = uac_cfgs
            .iter()
            .map(|c| {
                let done = &uacs_done;
                s.spawn(move || {
                    let r = uac::run(c);
                    done.fetch_add(1, Ordering::Relaxed);
                    r
                })
            })
            .collect();
        let h = Hostile::new(hostile_me, sys::v4(sip), victim_addr);
        let (hostile, counters, flood_stop, sinks_stop) = (&hostile, &counters, &flood_stop, &sinks_stop);
        s.spawn(move || flood(hostile, h, p, t0, flood_stop, counters));
        let (victim, silent) = (&victim, &silent);
        s.spawn(move || sinks(victim, silent, sinks_stop, counters));

        let mut tick = 0u64;
        let mut cut_short = false;
        loop {
            if let Some(wait) = Duration::from_secs(tick).checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
            let t = t0.elapsed().as_secs_f64();
            // A slow /status must not make the samples bunch up afterwards: skip missed seconds.
            tick = (tick + 1).max(t.floor() as u64 + 1);
            pb.set_position(t as u64);
            w.second(t, &mut peer, &cfgs, &ctl);
            if uacs_done.load(Ordering::Relaxed) == handles.len() && (t >= p.duration_s || w.died.is_some()) {
                break;
            }
            if t > hard_end && !cut_short {
                cut_short = true;
                w.events.push(Event { t_s: t, what: "callers still open long after the end: cut short".into() });
                ctl.abort_callers();
            }
        }
        flood_stop.store(true, Ordering::Relaxed);
        sinks_stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("caller thread panicked")))).collect()
    });
    pb.finish_and_clear();
    // A dead fsroute's /proc entry is gone: its CPU is unknown, not zero.
    let fsroute_cpu_s = if w.died.is_none() { peer.cpu_secs() - cpu0 } else { f64::NAN };
    let harness_cpu_s = sys::self_cpu_secs() - self_cpu0;

    let mut route_results = Vec::new();
    for ((name, _, _), r) in routes.iter().zip(reports) {
        route_results.push(RouteResult { route: name, report: r.map_err(|e| format!("generator: {e}"))? });
    }
    let fsroute_log = copy_log_tail(&log_path, &p.out_dir.join("fsroute-stderr.log"));
    drop(peer);
    drop(boxes);

    let Watch { samples, events, died, killed, floods_stopped, hups, status_unanswered, last_status, .. } = w;
    let alive_samples: Vec<&Sample> = samples.iter().filter(|s| s.rss_kib > 0).collect();
    let peak = alive_samples.iter().max_by_key(|s| s.rss_kib);
    let half: Vec<(f64, f64)> = alive_samples
        .iter()
        .filter(|s| s.t_s >= p.duration_s / 2.0 && s.t_s <= p.duration_s)
        .map(|s| (s.t_s, s.rss_kib as f64))
        .collect();
    let until = floods_stopped.as_ref().or(died.as_ref()).map_or(p.duration_s, |e| e.t_s);
    let phases = phase_spans(p, until);
    // (sum, largest) of the RSS change over each phase of one label.
    let change = |label: &str| -> (i64, i64) {
        let d: Vec<i64> = phases
            .iter()
            .filter(|s| s.phase == label)
            .map(|s| rss_near(&samples, s.to_s) as i64 - rss_near(&samples, s.from_s) as i64)
            .collect();
        (d.iter().sum(), d.iter().copied().max().unwrap_or(0))
    };
    let floods = Flood::ALL
        .iter()
        .map(|f| {
            let (sum, max) = change(f.label());
            FloodKindResult {
                kind: f.label(),
                rate_per_s: f.rate() * p.flood_scale,
                sent: counters.sent[f.index()].load(Ordering::Relaxed),
                rss_change_kib: sum,
                rss_change_max_kib: max,
            }
        })
        .collect();
    let all_floods_rss_change_kib = change(Phase::All.label());
    let (shard_totals, drops) = last_status.as_ref().map(|s| shard_sums(&s.raw)).unwrap_or_default();
    let rep = |f: fn(&UacReport) -> u64| route_results.iter().map(|r| f(&r.report)).sum::<u64>();
    let csv = p.out_dir.join("soak.csv");
    write_csv(&samples, &csv)?;
    let mut r = SoakResult {
        machine: machine(),
        params: p.clone(),
        rss_start_kib: alive_samples.first().map_or(0, |s| s.rss_kib),
        rss_after_warmup_kib: rss_near(&samples, p.warmup_s),
        rss_peak_kib: peak.map_or(0, |s| s.rss_kib),
        rss_peak_t_s: peak.map_or(0.0, |s| s.t_s),
        rss_end_kib: alive_samples.last().map_or(0, |s| s.rss_kib),
        rss_slope_last_half_kib_per_min: slope_per_min(&half),
        calls_attempted: rep(|u| u.attempted),
        calls_completed: rep(|u| u.completed),
        calls_failed: rep(UacReport::failed),
        calls_cancelled: rep(|u| u.cancelled),
        routes: route_results,
        floods,
        all_floods_rss_change_kib,
        flood_sent: counters.total(),
        sinks: Sinks {
            victim_requests: counters.victim_requests.load(Ordering::Relaxed),
            victim_responses: counters.victim_responses.load(Ordering::Relaxed),
            silent_invites: counters.silent_invites.load(Ordering::Relaxed),
            silent_other: counters.silent_other.load(Ordering::Relaxed),
            hostile_replies: counters.hostile_replies.load(Ordering::Relaxed),
        },
        sighups_sent: hups,
        reloads_reported: last_status.as_ref().map_or(0, |s| s.reloads),
        reload_failures_reported: last_status.as_ref().map_or(0, |s| s.reload_failures),
        shard_totals,
        drops,
        call_memory_entries_peak: samples.iter().filter_map(|s| s.call_memory_entries).max().unwrap_or(0),
        status_unanswered,
        fsroute_cpu_s,
        harness_cpu_s,
        load_avg: (load0, load_avg()),
        fsroute_died: died,
        killed_over_rss_limit: killed,
        floods_stopped,
        events,
        phases,
        samples,
        csv: csv.display().to_string(),
        plot: None,
        plot_error: None,
        summary_json: p.out_dir.join("soak-summary.json").display().to_string(),
        fsroute_log,
    };
    match crate::plot::soak_rss(&r, &p.out_dir.join("soak-rss.png")) {
        Ok(path) => r.plot = Some(path),
        Err(e) => r.plot_error = Some(e),
    }
    let json = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
    std::fs::write(&r.summary_json, json).map_err(|e| format!("{}: {e}", r.summary_json))?;
    std::fs::write(p.out_dir.join("soak-summary.txt"), render(&r)).map_err(|e| e.to_string())?;
    Ok(r)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn render(r: &SoakResult) -> String {
    let p = &r.params;
    let mut s = format!(
        "soak: {:.0} s on {} (fsroute {} shards); {:.0} legitimate calls/s (half dispatcher failover, half load_balancer; hold {:.0} s; 1 in {} cancelled while ringing) to 4 emulated FreeSWITCH boxes; floods from 127.0.0.66 in phases of {:.0} s after a {:.0} s warm-up (flood scale {}); SIGHUP every {:.0} s\n\n",
        p.duration_s, r.machine, p.shards, p.rate, p.hold_s, p.cancel_every, p.phase_s, p.warmup_s, p.flood_scale, p.hup_every_s
    );
    let mut t = Table::new("fsroute RSS", &["start", "after warm-up", "peak", "end", "slope, last half"]);
    t.row(vec![
        mib(r.rss_start_kib),
        mib(r.rss_after_warmup_kib),
        format!("{} at {:.0} s", mib(r.rss_peak_kib), r.rss_peak_t_s),
        mib(r.rss_end_kib),
        format!("{:+.0} KiB/min", r.rss_slope_last_half_kib_per_min),
    ]);
    s.push_str(&t.render());
    s.push('\n');
    let mut t = Table::new(
        "legitimate calls",
        &["route", "attempted", "completed", "failed", "cancelled (487)", "timed out", "503", "other failures", "retransmissions", "PDD p50", "PDD p99"],
    );
    for rr in &r.routes {
        let u = &rr.report;
        t.row(vec![
            rr.route.to_string(),
            u.attempted.to_string(),
            u.completed.to_string(),
            u.failed().to_string(),
            u.cancelled.to_string(),
            u.timed_out.to_string(),
            u.rejected_503.to_string(),
            u.other_failures.to_string(),
            (u.invite_retransmissions + u.bye_retransmissions).to_string(),
            us(u.pdd.p50_us),
            us(u.pdd.p99_us),
        ]);
    }
    t.row(vec!["total".into(), r.calls_attempted.to_string(), r.calls_completed.to_string(), r.calls_failed.to_string(), r.calls_cancelled.to_string()]);
    s.push_str(&t.render());
    s.push('\n');
    let mut t = Table::new("floods", &["kind", "rate/s", "sent", "RSS change over its phases (sum / largest)"]);
    for f in &r.floods {
        t.row(vec![
            f.kind.to_string(),
            num(f.rate_per_s),
            f.sent.to_string(),
            format!("{:+.1} / {:+.1} MiB", f.rss_change_kib as f64 / 1024.0, f.rss_change_max_kib as f64 / 1024.0),
        ]);
    }
    let (sum, max) = r.all_floods_rss_change_kib;
    t.row(vec![
        "all at once".into(),
        num(r.floods.iter().map(|f| f.rate_per_s).sum()),
        "(in the rows above)".into(),
        format!("{:+.1} / {:+.1} MiB", sum as f64 / 1024.0, max as f64 / 1024.0),
    ]);
    s.push_str(&t.render());
    let k = &r.sinks;
    s.push_str(&format!(
        "relayed to the victim (non-configured 127.0.0.99): {} requests, {} responses; silent boxes swallowed {} INVITEs + {} other; fsroute answered the hostile peer {} times\n\n",
        k.victim_requests, k.victim_responses, k.silent_invites, k.silent_other, k.hostile_replies
    ));
    s.push_str(&format!(
        "SIGHUPs sent: {}; reloads reported by /status: {} (failures {}); /status unanswered in {} of {} samples; call memory entries peak {}\n",
        r.sighups_sent,
        r.reloads_reported,
        r.reload_failures_reported,
        r.status_unanswered,
        r.samples.len(),
        r.call_memory_entries_peak
    ));
    let wall = r.samples.last().map_or(1.0, |x| x.t_s).max(1.0);
    s.push_str(&format!(
        "CPU over {:.0} s: fsroute {:.0} s ({:.0}% of a core), harness (callers, floods, 4 boxes) {:.0} s; load average {:.1} at the start, {:.1} at the end\n",
        wall,
        r.fsroute_cpu_s,
        r.fsroute_cpu_s / wall * 100.0,
        r.harness_cpu_s,
        r.load_avg.0,
        r.load_avg.1
    ));
    let list = |v: &[(String, u64)]| v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    s.push_str(&format!("fsroute shards: {}\nfsroute drops: {}\n", list(&r.shard_totals), list(&r.drops)));
    for e in &r.events {
        s.push_str(&format!("event at {:.0} s: {}\n", e.t_s, e.what));
    }
    s.push_str(&format!("files: {} (CSV), {} (summary), {} (fsroute's log)\n", r.csv, r.summary_json, r.fsroute_log));
    match (&r.plot, &r.plot_error) {
        (Some(pl), _) => s.push_str(&format!("plot: {pl}\n")),
        (None, Some(e)) => s.push_str(&format!("plot not drawn: {e}\n")),
        _ => {}
    }
    s.push_str(match &r.fsroute_died {
        None => "PASS: fsroute survived the soak\n",
        Some(_) => "FAIL: fsroute died during the soak\n",
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(secs: u64) -> SoakParams {
        SoakParams::new(Duration::from_secs(secs), std::env::temp_dir())
    }

    #[test]
    fn the_schedule_warms_up_then_brings_every_flood_round_at_least_twice() {
        for secs in [20, 120, 600] {
            let p = params(secs);
            assert_eq!(phase_at(&p, 0.0).0, Phase::WarmUp);
            assert_eq!(phase_at(&p, p.duration_s).0, Phase::Quiet);
            let spans = phase_spans(&p, p.duration_s);
            for f in Flood::ALL {
                let n = spans.iter().filter(|s| s.phase == f.label()).count();
                assert!(n >= 2, "{secs} s: {} comes round {n} times", f.label());
            }
            assert!(spans.iter().filter(|s| s.phase == Phase::All.label()).count() >= 2);
            // Spans tile the run: each starts where the previous one ended.
            for w in spans.windows(2) {
                assert!((w[0].to_s - w[1].from_s).abs() < 1e-9, "{secs} s: gap between {w:?}");
            }
        }
    }

    #[test]
    fn hostile_messages_are_well_formed_sip_except_the_garbage() {
        let me = "127.0.0.66:4000".parse().unwrap();
        let fsr = "127.0.0.1:5060".parse().unwrap();
        let victim = "127.0.0.99:5099".parse().unwrap();
        let mut h = Hostile::new(me, fsr, victim);
        for f in Flood::ALL.into_iter().filter(|f| *f != Flood::Garbage) {
            for _ in 0..4 {
                // A shared buffer with something before, as the send queue hands it over.
                let mut out = b"earlier datagram".to_vec();
                h.write(f, &mut out);
                let msg = &out[16..];
                let m = crate::sipmsg::parse(msg).unwrap_or_else(|| panic!("{}: unparsable", f.label()));
                assert!(!m.call_id.is_empty(), "{}: no Call-ID", f.label());
                let text = String::from_utf8_lossy(msg);
                let (head, body) = text.split_once("\r\n\r\n").expect("blank line");
                let cl: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
                assert_eq!(cl, body.len(), "{}: Content-Length", f.label());
                if f == Flood::LargeInvites {
                    assert!(msg.len() > 29 * 1024 && msg.len() < 60 * 1024, "large INVITE is {} bytes", msg.len());
                }
                if f == Flood::OpenRelay {
                    assert!(crate::sipmsg::has_tag(m.to), "an open-relay attempt is in-dialog");
                }
            }
        }
        let mut out = b"x".to_vec();
        h.write(Flood::Garbage, &mut out);
        assert!(out.len() > 20 && out.len() < 1300, "garbage of {} bytes", out.len());
    }

    #[test]
    fn the_slope_is_per_minute() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 100.0 + 2.0 * i as f64)).collect();
        assert!((slope_per_min(&pts) - 120.0).abs() < 1e-9);
        assert_eq!(slope_per_min(&pts[..1]), 0.0);
    }
}
