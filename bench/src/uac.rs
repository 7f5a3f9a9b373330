//! The UAC load generator: an open-loop caller at a fixed call rate on plain threads with
//! `sendmmsg`/`recvmmsg`, so it can offer far more than SIPp and never slows down because the
//! system under test does (closed-loop generators hide overload). Call i is *intended* at
//! `t0 + i / rate`; every latency is recorded against that intended time, which is the
//! coordinated-omission correction: if the generator itself falls behind, the lag shows in
//! the numbers instead of vanishing.
//!
//! Each call behaves like an upstream carrier: INVITE (retransmitted per RFC 3261 Timer A,
//! T1 = 500 ms doubling, until a provisional arrives), ACK for every final response (2xx ACK
//! as a new transaction through the Record-Route set; non-2xx ACK on the INVITE's branch),
//! a 503 retried once at once with a fresh Call-ID, BYE after the hold (retransmitted per
//! Timer E, T1 doubling to T2), and an incoming BYE answered 200. Timer B (64·T1 = 32 s in
//! RFC 3261) is a parameter: the benches shorten it so a run ends in seconds, and say so.
//!
//! Reordering is checked per call: a 18x after the 2xx, or any response whose `X-Seq` stamp
//! (set by the built-in UAS in send order) is lower than one already received.
//!
//! Optionally every n-th call is CANCELled on its first 18x (the ringing caller who hangs up):
//! the CANCEL carries the INVITE's branch and is retransmitted per Timer E until answered; a 487
//! ends the call as completed, and a 200 that won the race is ACKed and hung up at once. A shared
//! [`UacProgress`] shows the counts while a long run (the soak) is still going, and lets it be
//! cut short when the system under test died.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::sipmsg;
use crate::sys::{self, RecvBatch, SendQueue};

const T1_NS: u64 = 500_000_000;
const T2_NS: u64 = 4_000_000_000;

/// The number every call dials unless a scenario routes on it.
pub const DEFAULT_USER: &str = "+15550100";

#[derive(Clone, Debug)]
pub struct UacConfig {
    /// Where each socket sends: socket i uses `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    /// Source addresses (peers) in total; one per socket.
    pub sockets: usize,
    /// Generator threads; sockets are split among them.
    pub threads: usize,
    /// Offered calls per second (new calls, retries not included).
    pub rate: f64,
    pub duration: Duration,
    /// Time from the 200 to our BYE.
    pub hold: Duration,
    /// Give-up time of an INVITE attempt and of a BYE (RFC 3261: 32 s; shortened in benches).
    pub timer_b: Duration,
    /// How long after the last call's BYE is due the run may still wait for stragglers.
    pub drain: Duration,
    pub retry_503: bool,
    /// Backend SIP addresses, to attribute answered calls by the 200's Contact.
    pub backends: Vec<SocketAddr>,
    pub run_id: u64,
    /// User part of the Request-URI and To (routes match on it).
    pub ruri_user: String,
    /// CANCEL every n-th call on its first 18x; 0 never.
    pub cancel_every: u64,
    /// Live counters for a watcher, and its way to stop the run early.
    pub progress: Option<Arc<UacProgress>>,
}

/// Counts visible while a run goes on (the report at the end is the authoritative one): calls
/// started, completed (answered and torn down, or cancelled as planned) and failed so far.
#[derive(Debug, Default)]
pub struct UacProgress {
    pub attempted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Set by the watcher: stop starting calls and return (whatever is open counts as timed out).
    pub abort: AtomicBool,
}

impl Default for UacConfig {
    fn default() -> Self {
        UacConfig {
            targets: Vec::new(),
            sockets: 1,
            threads: 1,
            rate: 100.0,
            duration: Duration::from_secs(2),
            hold: Duration::from_millis(100),
            timer_b: Duration::from_secs(2),
            drain: Duration::from_millis(500),
            retry_503: true,
            backends: Vec::new(),
            run_id: 1,
            ruri_user: DEFAULT_USER.to_string(),
            cancel_every: 0,
            progress: None,
        }
    }
}

/// Percentiles of one latency distribution, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BackendShare {
    pub addr: String,
    pub answered: u64,
    pub share: f64,
    pub peak_concurrent: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct UacReport {
    pub offered_rate: f64,
    pub peers: usize,
    pub attempted: u64,
    pub answered: u64,
    /// Answered and torn down cleanly (BYE answered, or the UAS's BYE answered by us).
    pub completed: u64,
    /// Calls whose last attempt got 503 (what the caller finally saw).
    pub rejected_503: u64,
    /// Every 503 received, first attempts included.
    pub responses_503: u64,
    pub other_failures: u64,
    pub timed_out: u64,
    pub retries: u64,
    pub invite_retransmissions: u64,
    pub bye_retransmissions: u64,
    pub reordered_calls: u64,
    /// Calls CANCELled while ringing that ended with 487 (counted as completed too).
    pub cancelled: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Wall time of the send window (seconds).
    pub window_s: f64,
    pub calls_per_s_carried: f64,
    pub messages_per_s: f64,
    /// Worst lateness of an INVITE against its intended time (generator saturation shows here).
    pub max_send_lag_ms: f64,
    /// CPU of the whole bench process during the step: generator plus in-process UAS/emulators.
    pub generator_cpu_s: f64,
    pub pdd: Latency,
    pub invite_to_200: Latency,
    pub backends: Vec<BackendShare>,
    #[serde(skip)]
    pub pdd_hist: Option<Histogram<u64>>,
    #[serde(skip)]
    pub i200_hist: Option<Histogram<u64>>,
}

impl UacReport {
    /// Calls that did not complete: what "zero failed calls" is about.
    pub fn failed(&self) -> u64 {
        self.attempted.saturating_sub(self.completed)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Pending,
    Calling,
    Proceeding,
    Answered,
    ByeSent,
    Done,
    Failed,
}

struct Call {
    st: St,
    attempt: u8,
    sock: u8,
    reordered: bool,
    backend: u16,
    retx_interval: u64,
    intended: u64,
    t18x: u64,
    last_seq: u64,
    totag: Vec<u8>,
    contact: Vec<u8>,
    /// Route header lines for in-dialog requests, already formatted.
    routes: Vec<u8>,
    /// 0: no CANCEL; 1: sent, unanswered; 2: answered.
    cancel: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tk {
    InviteRetx,
    TimerB,
    Bye,
    ByeRetx,
    ByeTimeout,
    CancelRetx,
}

struct Shared {
    active: Vec<AtomicI64>,
    peak: Vec<AtomicI64>,
}

struct Worker<'a> {
    cfg: &'a UacConfig,
    k: usize,
    t0: Instant,
    socks: Vec<UdpSocket>,
    locals: Vec<SocketAddrV4>,
    targets: Vec<SocketAddrV4>,
    queues: Vec<SendQueue>,
    calls: Vec<Call>,
    heap: BinaryHeap<Reverse<(u64, u32, u8, Tk)>>,
    shared: &'a Shared,
    backend_idx: HashMap<SocketAddr, u16>,
    pdd: Histogram<u64>,
    i200: Histogram<u64>,
    r: UacReport,
    answered_by: Vec<u64>,
    sdp: Vec<u8>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Runs one load step and returns what the callers saw.
pub fn run(cfg: &UacConfig) -> std::io::Result<UacReport> {
    let threads = cfg.threads.clamp(1, cfg.sockets.max(1));
    let total_calls = (cfg.rate * cfg.duration.as_secs_f64()).floor() as u64;
    let shared = Shared {
        active: (0..=cfg.backends.len()).map(|_| AtomicI64::new(0)).collect(),
        peak: (0..=cfg.backends.len()).map(|_| AtomicI64::new(0)).collect(),
    };
    let mut socks: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..cfg.sockets.max(1) {
        socks[i % threads].push(sys::bind_udp("127.0.0.1:0".parse().unwrap())?);
    }
    let cpu0 = sys::self_cpu_secs();
    // Start a little in the future so every thread is ready at t0.
    let t0 = Instant::now() + Duration::from_millis(20);
    let reports: Vec<std::io::Result<UacReport>> = std::thread::scope(|s| {
        let handles: Vec<_> = socks
            .into_iter()
            .enumerate()
            .map(|(k, ss)| {
                let shared = &shared;
                s.spawn(move || {
                    let first_sock = k; // global socket index of ss[0]
                    let targets: Vec<SocketAddrV4> = (0..ss.len())
                        .map(|j| sys::v4(cfg.targets[(first_sock + j * threads) % cfg.targets.len()]))
                        .collect();
                    Worker::new(cfg, k, threads, total_calls, t0, ss, targets, shared)?.run()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("uac thread panicked")).collect()
    });
    let mut total = UacReport { offered_rate: cfg.rate, peers: cfg.sockets, ..Default::default() };
    let mut pdd = hist();
    let mut i200 = hist();
    let mut answered_by = vec![0u64; cfg.backends.len() + 1];
    for r in reports {
        let r = r?;
        total.attempted += r.attempted;
        total.answered += r.answered;
        total.completed += r.completed;
        total.rejected_503 += r.rejected_503;
        total.responses_503 += r.responses_503;
        total.other_failures += r.other_failures;
        total.timed_out += r.timed_out;
        total.retries += r.retries;
        total.invite_retransmissions += r.invite_retransmissions;
        total.bye_retransmissions += r.bye_retransmissions;
        total.reordered_calls += r.reordered_calls;
        total.cancelled += r.cancelled;
        total.messages_sent += r.messages_sent;
        total.messages_received += r.messages_received;
        total.max_send_lag_ms = total.max_send_lag_ms.max(r.max_send_lag_ms);
        total.window_s = total.window_s.max(r.window_s);
        if let Some(h) = &r.pdd_hist {
            pdd.add(h).ok();
        }
        if let Some(h) = &r.i200_hist {
            i200.add(h).ok();
        }
        for (i, b) in r.backends.iter().enumerate() {
            answered_by[i] += b.answered;
        }
    }
    total.generator_cpu_s = sys::self_cpu_secs() - cpu0;
    let w = total.window_s.max(1e-9);
    total.calls_per_s_carried = total.answered as f64 / w;
    total.messages_per_s = (total.messages_sent + total.messages_received) as f64 / w;
    total.pdd = Latency::from_hist(&pdd);
    total.invite_to_200 = Latency::from_hist(&i200);
    total.pdd_hist = Some(pdd);
    total.i200_hist = Some(i200);
    let answered: u64 = answered_by.iter().sum();
    total.backends = answered_by
        .iter()
        .enumerate()
        .filter(|(i, n)| *i < cfg.backends.len() || **n > 0)
        .map(|(i, &n)| BackendShare {
            addr: cfg.backends.get(i).map_or("other".into(), |a| a.to_string()),
            answered: n,
            share: if answered > 0 { n as f64 / answered as f64 } else { 0.0 },
            peak_concurrent: shared.peak[i].load(Ordering::Relaxed),
        })
        .collect();
    Ok(total)
}

/// Counts of one generator thread's calls: call `k + threads * j` belongs to thread k.
fn my_calls(total: u64, k: usize, threads: usize) -> u64 {
    if (k as u64) >= total {
        0
    } else {
        (total - k as u64).div_ceil(threads as u64)
    }
}

static NEXT_BRANCH: AtomicU64 = AtomicU64::new(1);

impl<'a> Worker<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &'a UacConfig,
        k: usize,
        threads: usize,
        total: u64,
        t0: Instant,
        socks: Vec<UdpSocket>,
        targets: Vec<SocketAddrV4>,
        shared: &'a Shared,
    ) -> std::io::Result<Worker<'a>> {
        let n = my_calls(total, k, threads);
        let locals = socks.iter().map(|s| s.local_addr().map(sys::v4)).collect::<std::io::Result<Vec<_>>>()?;
        let nsock = socks.len();
        let calls = (0..n)
            .map(|j| {
                let idx = k as u64 + threads as u64 * j;
                Call {
                    st: St::Pending,
                    attempt: 0,
                    sock: (j % nsock as u64) as u8,
                    reordered: false,
                    backend: u16::MAX,
                    retx_interval: T1_NS,
                    intended: (idx as f64 / cfg.rate * 1e9) as u64,
                    t18x: 0,
                    last_seq: 0,
                    totag: Vec::new(),
                    contact: Vec::new(),
                    routes: Vec::new(),
                    cancel: 0,
                }
            })
            .collect();
        let backend_idx = cfg.backends.iter().enumerate().map(|(i, a)| (*a, i as u16)).collect();
        let sdp = b"v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n".to_vec();
        Ok(Worker {
            cfg,
            k,
            t0,
            queues: (0..nsock).map(|_| SendQueue::default()).collect(),
            socks,
            locals,
            targets,
            calls,
            heap: BinaryHeap::new(),
            shared,
            backend_idx,
            pdd: hist(),
            i200: hist(),
            r: UacReport::default(),
            answered_by: vec![0; cfg.backends.len() + 1],
            sdp,
        })
    }

    fn now(&self) -> u64 {
        Instant::now().saturating_duration_since(self.t0).as_nanos() as u64
    }

    fn global_idx(&self, j: usize, threads: usize) -> u64 {
        self.k as u64 + threads as u64 * j as u64
    }

    fn run(mut self) -> std::io::Result<UacReport> {
        let threads = self.cfg.threads.clamp(1, self.cfg.sockets.max(1));
        let n = self.calls.len();
        let hold = self.cfg.hold.as_nanos() as u64;
        let window = self.cfg.duration.as_nanos() as u64;
        let deadline = window + hold + self.cfg.timer_b.as_nanos() as u64 + self.cfg.drain.as_nanos() as u64;
        let mut next = 0usize;
        let mut open = 0usize; // calls started and not yet Done/Failed
        let mut batch = RecvBatch::new(64);
        let fds: Vec<i32> = self.socks.iter().map(|s| s.as_raw_fd()).collect();
        let mut readable = Vec::new();
        let mut window_end = 0u64;
        while Instant::now() < self.t0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        loop {
            let now = self.now();
            // 1. New calls that are due (bounded per pass so receiving keeps up).
            let mut started = 0;
            while next < n && self.calls[next].intended <= now && started < 256 {
                let lag = now.saturating_sub(self.calls[next].intended);
                self.r.max_send_lag_ms = self.r.max_send_lag_ms.max(lag as f64 / 1e6);
                self.progress(|p| &p.attempted);
                self.start_call(next, threads, now);
                next += 1;
                open += 1;
                started += 1;
                if next == n {
                    window_end = now;
                }
            }
            // 2. Timers.
            while let Some(Reverse((at, j, att, kind))) = self.heap.peek().copied() {
                if at > now {
                    break;
                }
                self.heap.pop();
                open -= self.on_timer(j as usize, att, kind, now, threads);
            }
            // 3. Send.
            for (q, fd) in self.queues.iter_mut().zip(&fds) {
                self.r.messages_sent += q.flush(*fd) as u64;
            }
            // 4. Receive.
            let mut got = 0;
            for (si, fd) in fds.iter().enumerate() {
                loop {
                    let c = batch.recv(*fd);
                    if c == 0 {
                        break;
                    }
                    got += c;
                    let now = self.now();
                    for i in 0..c {
                        let (data, src) = batch.get(i);
                        open -= self.on_datagram(data, src, si, now, threads);
                    }
                    self.r.messages_received += c as u64;
                    if c < 64 {
                        break;
                    }
                }
            }
            for (q, fd) in self.queues.iter_mut().zip(&fds) {
                self.r.messages_sent += q.flush(*fd) as u64;
            }
            let now = self.now();
            if (next == n && open == 0) || now > deadline {
                break;
            }
            if self.cfg.progress.as_ref().is_some_and(|p| p.abort.load(Ordering::Relaxed)) {
                break;
            }
            if got == 0 {
                let due_call = if next < n { self.calls[next].intended } else { u64::MAX };
                let due_timer = self.heap.peek().map_or(u64::MAX, |r| r.0 .0);
                let wait_ns = due_call.min(due_timer).min(deadline).saturating_sub(now).min(5_000_000);
                // Sleep when the next event is far (low rates: leave the CPU to the system under
                // test on a 2-core box); spin when it is close (high rates: a wake-up per call
                // costs more than the gap and the generator would fall behind its schedule).
                if wait_ns > 200_000 {
                    sys::poll_readable_ns(&fds, wait_ns, &mut readable);
                }
            }
        }
        // Whatever is still open at the deadline never finished.
        for c in &self.calls {
            if matches!(c.st, St::Calling | St::Proceeding | St::Answered | St::ByeSent) {
                self.r.timed_out += 1;
            }
        }
        self.r.attempted = next as u64;
        self.r.window_s = if window_end > 0 { window_end as f64 / 1e9 } else { window as f64 / 1e9 };
        self.r.pdd_hist = Some(std::mem::replace(&mut self.pdd, hist()));
        self.r.i200_hist = Some(std::mem::replace(&mut self.i200, hist()));
        self.r.backends = self
            .answered_by
            .iter()
            .map(|&a| BackendShare { answered: a, ..Default::default() })
            .collect();
        Ok(self.r)
    }

    fn progress(&self, counter: impl Fn(&UacProgress) -> &AtomicU64) {
        if let Some(p) = &self.cfg.progress {
            counter(p).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The call reached Done.
    fn complete(&mut self) {
        self.r.completed += 1;
        self.progress(|p| &p.completed);
    }

    /// The call reached Failed.
    fn fail(&mut self, j: usize) {
        self.calls[j].st = St::Failed;
        self.progress(|p| &p.failed);
    }

    fn cancels(&self, j: usize, threads: usize) -> bool {
        let e = self.cfg.cancel_every;
        e > 0 && self.global_idx(j, threads) % e == e - 1
    }

    /// CANCEL (§9.1): the INVITE's Request-URI, Call-ID, From, To (no tag), branch and CSeq number.
    fn send_cancel(&mut self, j: usize, threads: usize) {
        let c = &self.calls[j];
        let (sock, target) = (c.sock as usize, self.targets[c.sock as usize]);
        let local = self.locals[sock];
        let idx = self.global_idx(j, threads);
        let user = &self.cfg.ruri_user;
        let mut out = Vec::with_capacity(500);
        let _ = write!(
            out,
            "CANCEL sip:{user}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}x{}x{};rport\r\nMax-Forwards: 70\r\nFrom: \"bench\" <sip:caller@{local}>;tag=f{idx}\r\nTo: <sip:{user}@{target}>\r\nCall-ID: ",
            self.cfg.run_id, idx, c.attempt
        );
        self.call_id(j, threads, c.attempt, &mut out);
        out.extend_from_slice(b"\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n");
        self.queues[sock].push(target, &out);
    }

    fn call_id(&self, j: usize, threads: usize, attempt: u8, out: &mut Vec<u8>) {
        let _ = write!(out, "{}-{}-{}@fsroute-bench", self.global_idx(j, threads), attempt, self.cfg.run_id);
    }

    fn write_invite(&self, j: usize, threads: usize, out: &mut Vec<u8>) {
        let c = &self.calls[j];
        let local = self.locals[c.sock as usize];
        let target = self.targets[c.sock as usize];
        let idx = self.global_idx(j, threads);
        let _ = write!(
            out,
            "INVITE sip:{user}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}x{}x{};rport\r\nMax-Forwards: 70\r\nFrom: \"bench\" <sip:caller@{local}>;tag=f{idx}\r\nTo: <sip:{user}@{target}>\r\nCall-ID: ",
            self.cfg.run_id, idx, c.attempt, user = self.cfg.ruri_user
        );
        self.call_id(j, threads, c.attempt, out);
        let _ = write!(
            out,
            "\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{local}>\r\nUser-Agent: fsroute-bench\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
            self.sdp.len()
        );
        out.extend_from_slice(&self.sdp);
    }

    fn send_invite(&mut self, j: usize, threads: usize) {
        let c = &self.calls[j];
        let (sock, target) = (c.sock as usize, self.targets[c.sock as usize]);
        let mut buf = Vec::with_capacity(800);
        self.write_invite(j, threads, &mut buf);
        self.queues[sock].push(target, &buf);
    }

    fn start_call(&mut self, j: usize, threads: usize, now: u64) {
        self.send_invite(j, threads);
        let c = &mut self.calls[j];
        c.st = St::Calling;
        c.retx_interval = T1_NS;
        let att = c.attempt;
        self.heap.push(Reverse((now + T1_NS, j as u32, att, Tk::InviteRetx)));
        self.heap.push(Reverse((now + self.cfg.timer_b.as_nanos() as u64, j as u32, att, Tk::TimerB)));
    }

    /// Returns 1 when the call reached Done/Failed now (so the caller closes it).
    fn on_timer(&mut self, j: usize, att: u8, kind: Tk, now: u64, threads: usize) -> usize {
        if self.calls[j].attempt != att {
            return 0;
        }
        let st = self.calls[j].st;
        match kind {
            Tk::InviteRetx if st == St::Calling => {
                self.send_invite(j, threads);
                self.r.invite_retransmissions += 1;
                let c = &mut self.calls[j];
                c.retx_interval *= 2;
                self.heap.push(Reverse((now + c.retx_interval, j as u32, att, Tk::InviteRetx)));
                0
            }
            Tk::TimerB if matches!(st, St::Calling | St::Proceeding) => {
                self.r.timed_out += 1;
                self.fail(j);
                1
            }
            Tk::CancelRetx if self.calls[j].cancel == 1 && matches!(st, St::Calling | St::Proceeding) => {
                self.send_cancel(j, threads);
                let c = &mut self.calls[j];
                c.retx_interval = (c.retx_interval * 2).min(T2_NS);
                self.heap.push(Reverse((now + c.retx_interval, j as u32, att, Tk::CancelRetx)));
                0
            }
            Tk::Bye if st == St::Answered => {
                self.send_indialog(j, threads, b"BYE", 2, None);
                let c = &mut self.calls[j];
                c.st = St::ByeSent;
                c.retx_interval = T1_NS;
                self.heap.push(Reverse((now + T1_NS, j as u32, att, Tk::ByeRetx)));
                self.heap.push(Reverse((now + self.cfg.timer_b.as_nanos() as u64, j as u32, att, Tk::ByeTimeout)));
                0
            }
            Tk::ByeRetx if st == St::ByeSent => {
                self.send_indialog(j, threads, b"BYE", 2, None);
                self.r.bye_retransmissions += 1;
                let c = &mut self.calls[j];
                c.retx_interval = (c.retx_interval * 2).min(T2_NS);
                self.heap.push(Reverse((now + c.retx_interval, j as u32, att, Tk::ByeRetx)));
                0
            }
            Tk::ByeTimeout if st == St::ByeSent => {
                self.r.timed_out += 1;
                self.end_concurrency(j);
                self.fail(j);
                1
            }
            _ => 0,
        }
    }

    /// ACK for a 2xx or BYE: a request inside the dialog, R-URI = the remote Contact, Route =
    /// the Record-Route set reversed, sent to the INVITE's target (the proxy under test; with no
    /// Record-Route the proxy must route it by its own means, as SIPp's stock UAC expects).
    fn send_indialog(&mut self, j: usize, threads: usize, method: &[u8], cseq: u32, branch: Option<&str>) {
        let c = &self.calls[j];
        let (sock, target) = (c.sock as usize, self.targets[c.sock as usize]);
        let local = self.locals[sock];
        let idx = self.global_idx(j, threads);
        let m = std::str::from_utf8(method).unwrap_or("BYE");
        let mut out = Vec::with_capacity(600);
        let user = &self.cfg.ruri_user;
        let ruri = if c.contact.is_empty() { format!("sip:{user}@{target}") } else { String::from_utf8_lossy(&c.contact).into_owned() };
        let b = branch.map_or_else(|| format!("z9hG4bK{}", NEXT_BRANCH.fetch_add(1, Ordering::Relaxed)), str::to_owned);
        let _ = write!(out, "{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={b};rport\r\nMax-Forwards: 70\r\n");
        out.extend_from_slice(&c.routes);
        let _ = write!(out, "From: \"bench\" <sip:caller@{local}>;tag=f{idx}\r\nTo: <sip:{user}@{target}>;tag=");
        out.extend_from_slice(&c.totag);
        out.extend_from_slice(b"\r\nCall-ID: ");
        self.call_id(j, threads, c.attempt, &mut out);
        let _ = write!(out, "\r\nCSeq: {cseq} {m}\r\nUser-Agent: fsroute-bench\r\nContent-Length: 0\r\n\r\n");
        self.queues[sock].push(target, &out);
    }

    /// Non-2xx ACK (§17.1.1.3): same R-URI and branch as the INVITE, To with the response's tag.
    fn send_non2xx_ack(&mut self, j: usize, threads: usize, totag: &[u8]) {
        let c = &self.calls[j];
        let (sock, target) = (c.sock as usize, self.targets[c.sock as usize]);
        let local = self.locals[sock];
        let idx = self.global_idx(j, threads);
        let mut out = Vec::with_capacity(500);
        let _ = write!(
            out,
            "ACK sip:{user}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}x{}x{};rport\r\nMax-Forwards: 70\r\nFrom: \"bench\" <sip:caller@{local}>;tag=f{idx}\r\nTo: <sip:{user}@{target}>;tag=",
            self.cfg.run_id, idx, c.attempt, user = self.cfg.ruri_user
        );
        out.extend_from_slice(totag);
        out.extend_from_slice(b"\r\nCall-ID: ");
        self.call_id(j, threads, c.attempt, &mut out);
        out.extend_from_slice(b"\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
        self.queues[sock].push(target, &out);
    }

    fn end_concurrency(&mut self, j: usize) {
        let b = self.calls[j].backend;
        if b != u16::MAX {
            self.shared.active[b as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Returns 1 when the call reached Done/Failed now.
    fn on_datagram(&mut self, data: &[u8], src: SocketAddrV4, si: usize, now: u64, threads: usize) -> usize {
        let Some(m) = sipmsg::parse(data) else { return 0 };
        // Call-ID: "{idx}-{attempt}-{run}@fsroute-bench"
        let Some((idx, attempt)) = parse_call_id(m.call_id, self.cfg.run_id) else { return 0 };
        if idx % threads as u64 != self.k as u64 {
            return 0;
        }
        let j = (idx / threads as u64) as usize;
        if j >= self.calls.len() {
            return 0;
        }
        if m.status == 0 {
            // A request from the far end: BYE (the UAS hangs up) or anything else gets 200.
            let mut out = Vec::with_capacity(400);
            sipmsg::write_response(&mut out, data, 200, "OK", None, false, b"", None);
            self.queues[si].push(src, &out);
            if m.method.eq_ignore_ascii_case(b"BYE") && attempt == self.calls[j].attempt && matches!(self.calls[j].st, St::Answered | St::ByeSent) {
                self.end_concurrency(j);
                self.calls[j].st = St::Done;
                self.complete();
                return 1;
            }
            return 0;
        }
        let current = attempt == self.calls[j].attempt;
        let is_invite = m.cseq_method.eq_ignore_ascii_case(b"INVITE");
        if current {
            let c = &mut self.calls[j];
            if let Some(seq) = m.x_seq {
                if seq < c.last_seq && !c.reordered {
                    c.reordered = true;
                    self.r.reordered_calls += 1;
                }
                c.last_seq = c.last_seq.max(seq);
            }
        }
        if is_invite {
            let st = self.calls[j].st;
            match m.status {
                100..=199 => {
                    if !current {
                        return 0;
                    }
                    let c = &mut self.calls[j];
                    if c.st == St::Calling {
                        c.st = St::Proceeding;
                    }
                    if (m.status == 180 || m.status == 183) && c.t18x == 0 && matches!(st, St::Calling | St::Proceeding) {
                        c.t18x = now.max(1);
                        let _ = self.pdd.record(((now.saturating_sub(c.intended)) / 1000).max(1));
                        if c.cancel == 0 && self.cancels(j, threads) {
                            let c = &mut self.calls[j];
                            c.cancel = 1;
                            c.retx_interval = T1_NS;
                            let att = c.attempt;
                            self.send_cancel(j, threads);
                            self.heap.push(Reverse((now + T1_NS, j as u32, att, Tk::CancelRetx)));
                        }
                    }
                    let c = &mut self.calls[j];
                    // Without X-Seq (the emulator), a 18x after the 2xx is the reorder signal. With
                    // X-Seq, a 18x re-sent for a retransmitted INVITE carries a higher stamp and is
                    // a legitimate duplicate, not a reorder.
                    if m.x_seq.is_none() && matches!(st, St::Answered | St::ByeSent | St::Done) && (m.status == 180 || m.status == 183) && !c.reordered {
                        c.reordered = true;
                        self.r.reordered_calls += 1;
                    }
                    0
                }
                200..=299 => {
                    if !current {
                        return 0;
                    }
                    if matches!(st, St::Calling | St::Proceeding) {
                        let c = &mut self.calls[j];
                        let since = (now.saturating_sub(c.intended) / 1000).max(1);
                        let _ = self.i200.record(since);
                        if c.t18x == 0 {
                            // RFC 6076 SRD: without a 18x the final response ends the delay.
                            c.t18x = now.max(1);
                            let _ = self.pdd.record(since);
                        }
                        c.totag = sipmsg::tag(m.to).unwrap_or(b"").to_vec();
                        c.contact = m.contact.to_vec();
                        c.routes.clear();
                        for r in m.rr[..m.rr_count].iter().rev() {
                            c.routes.extend_from_slice(b"Route: ");
                            c.routes.extend_from_slice(r);
                            c.routes.extend_from_slice(b"\r\n");
                        }
                        c.st = St::Answered;
                        let b = sipmsg::uri_addr(m.contact)
                            .and_then(|a| self.backend_idx.get(&a).copied())
                            .unwrap_or(self.cfg.backends.len() as u16);
                        c.backend = b;
                        let att = c.attempt;
                        self.answered_by[b as usize] += 1;
                        let a = self.shared.active[b as usize].fetch_add(1, Ordering::Relaxed) + 1;
                        self.shared.peak[b as usize].fetch_max(a, Ordering::Relaxed);
                        self.r.answered += 1;
                        self.send_indialog(j, threads, b"ACK", 1, None);
                        // A caller who cancelled and lost the race to the 200 hangs up at once.
                        let hold = if self.calls[j].cancel != 0 { 0 } else { self.cfg.hold.as_nanos() as u64 };
                        self.heap.push(Reverse((now + hold, j as u32, att, Tk::Bye)));
                    } else if matches!(st, St::Answered | St::ByeSent) {
                        // The 200 was retransmitted: our ACK was lost or late; ACK again.
                        self.send_indialog(j, threads, b"ACK", 1, None);
                    }
                    0
                }
                _ => {
                    let totag = sipmsg::tag(m.to).unwrap_or(b"").to_vec();
                    if !current {
                        // A retransmitted final response of an earlier attempt: ACK it again.
                        let keep = self.calls[j].attempt;
                        self.calls[j].attempt = attempt;
                        self.send_non2xx_ack(j, threads, &totag);
                        self.calls[j].attempt = keep;
                        return 0;
                    }
                    self.send_non2xx_ack(j, threads, &totag);
                    if m.status == 503 {
                        self.r.responses_503 += 1;
                    }
                    if !matches!(st, St::Calling | St::Proceeding) {
                        return 0;
                    }
                    if m.status == 487 && self.calls[j].cancel != 0 {
                        self.r.cancelled += 1;
                        self.calls[j].st = St::Done;
                        self.complete();
                        return 1;
                    }
                    if m.status == 503 && self.cfg.retry_503 && self.calls[j].attempt == 0 {
                        // Like an upstream carrier: try once more, at once, as a new call leg.
                        self.r.retries += 1;
                        let c = &mut self.calls[j];
                        c.attempt = 1;
                        c.last_seq = 0;
                        self.start_call(j, threads, now);
                        return 0;
                    }
                    if m.status == 503 {
                        self.r.rejected_503 += 1;
                    } else {
                        self.r.other_failures += 1;
                    }
                    self.fail(j);
                    1
                }
            }
        } else if m.cseq_method.eq_ignore_ascii_case(b"CANCEL") && m.status >= 200 && current {
            // Answered: stop retransmitting; the INVITE's 487 (or 200) decides the call.
            if self.calls[j].cancel == 1 {
                self.calls[j].cancel = 2;
            }
            0
        } else if m.cseq_method.eq_ignore_ascii_case(b"BYE") && m.status >= 200 && current {
            if self.calls[j].st == St::ByeSent {
                self.end_concurrency(j);
                self.calls[j].st = St::Done;
                self.complete();
                return 1;
            }
            0
        } else {
            0
        }
    }
}

fn parse_call_id(cid: &[u8], run: u64) -> Option<(u64, u8)> {
    let s = std::str::from_utf8(cid).ok()?;
    let s = s.strip_suffix("@fsroute-bench")?;
    let mut it = s.split('-');
    let idx = it.next()?.parse().ok()?;
    let att = it.next()?.parse().ok()?;
    let r: u64 = it.next()?.parse().ok()?;
    (r == run).then_some((idx, att))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_round_trip_and_ignore_other_runs() {
        assert_eq!(parse_call_id(b"42-1-7@fsroute-bench", 7), Some((42, 1)));
        assert_eq!(parse_call_id(b"42-1-7@fsroute-bench", 8), None);
        assert_eq!(parse_call_id(b"garbage", 7), None);
    }

    #[test]
    fn calls_are_split_over_threads_without_gaps() {
        let total = 10;
        let sum: u64 = (0..3).map(|k| my_calls(total, k, 3)).sum();
        assert_eq!(sum, total);
        assert_eq!(my_calls(2, 3, 4), 0);
    }
}
