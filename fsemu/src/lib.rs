//! The FreeSWITCH emulator: a FreeSWITCH box for tests and benchmarks, built on the sans-IO
//! codec of `fsroute-esl` (the same codec fsroute's ESL client uses): an ESL server (docs/ESL.md §9)
//! and a SIP UAS on UDP that share one admission and load model, so what the box reports over
//! ESL is what its SIP side does, and what it refuses is what a real FreeSWITCH refuses
//! (docs/ADMISSION.md). It is a test tool, not the product: plain std threads, a mutex around
//! the counters, and no production binary links it (`fsroute` only through its `demo`
//! feature). [`Emulator::start`] binds both sockets and returns an [`EmulatorHandle`]
//! through which tests change the reported numbers, drive `fsctl`-like controls (pause,
//! sps, max sessions, shutdown), inject faults, kill or restart the ESL side and read call
//! and refusal counters, with no control plane involved. The `fsemu` binary
//! (`src/bin/fsemu.rs`) runs one box from the command line.

pub mod esl_server;
mod fsctl;
pub mod model;
pub mod sip;
pub mod uas;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

pub use model::{
    BootLimits, CapacityModel, Counters, Refusal, Refusals, Reported, ShutdownMode,
    DEFAULT_CPU_PER_SESSION, DEFAULT_IDLE_CPU_SMOOTHING,
};

use fsroute_esl::serialize::{HeartbeatParams, StatusParams};

/// Faults the ESL side can inject into every connection (docs/ESL.md §9 "fault knobs").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Every frame is written in tiny pieces (1–7 bytes), each its own segment.
    Split,
    /// Connections stop reading and writing but stay open; new ones get no greeting.
    Stall,
    /// Each connection receives one unframeable blob, then carries on as normal.
    Garbage,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Fault::None),
            "split" => Ok(Fault::Split),
            "stall" => Ok(Fault::Stall),
            "garbage" => Ok(Fault::Garbage),
            _ => Err(format!("unknown fault {s:?} (none, split, stall, garbage)")),
        }
    }
}

/// When the UAS answers INVITE and OPTIONS with 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Respond503 {
    /// Like FreeSWITCH: by its admission rules (Max-Sessions, sessions per second,
    /// min-idle-cpu, pause, shutdown; see [`model`]).
    #[default]
    WhenFull,
    Always,
    /// Admit beyond capacity (the counters then exceed Max-Sessions).
    Never,
}

impl std::str::FromStr for Respond503 {
    type Err = String;
    fn from_str(s: &str) -> Result<Respond503, String> {
        match s.to_ascii_lowercase().as_str() {
            "when-full" | "full" => Ok(Respond503::WhenFull),
            "always" => Ok(Respond503::Always),
            "never" => Ok(Respond503::Never),
            _ => Err(format!(
                "unknown 503 policy {s:?} (when-full, always, never)"
            )),
        }
    }
}

#[derive(Clone)]
pub struct EmulatorConfig {
    /// UDP address of the SIP UAS (port 0 picks one).
    pub sip: SocketAddr,
    /// TCP address of the ESL server (port 0 picks one).
    pub esl: SocketAddr,
    pub password: String,
    pub max_sessions: u64,
    /// How long an answered call lasts before the UAS hangs up with BYE.
    pub hold: Duration,
    /// HEARTBEAT interval (FreeSWITCH's `event-heartbeat-interval`, default 20 s).
    pub heartbeat: Duration,
    /// Answer delay of an idle box; grows with load.
    pub answer_delay: Duration,
    /// CPU percent busy with other work: Idle-CPU never rises above `100 − this`.
    pub background_cpu: u32,
    /// Idle-CPU points one session costs (default [`DEFAULT_CPU_PER_SESSION`], a fixed
    /// figure, not derived from `max_sessions`).
    pub cpu_per_session: f64,
    /// FreeSWITCH's `min-idle-cpu` in percent; 0 leaves it unset.
    pub min_idle_cpu: f64,
    /// FreeSWITCH's `cpu-idle-smoothing-depth`: Idle-CPU is the mean of this many
    /// one-second samples (0 is taken as 1).
    pub idle_cpu_smoothing: u32,
    pub channels_per_call: u64,
    /// FreeSWITCH's `sessions-per-second`: only N − 1 new sessions get through per
    /// box-second.
    pub sessions_per_second: u64,
    /// One-way network delay: every SIP datagram is handled this long after it arrived
    /// and leaves this long after it was produced; ESL frames the box writes leave this
    /// late too.
    pub network_delay: Duration,
    pub hostname: String,
    pub fault: Fault,
    pub respond_503: Respond503,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("sip", &self.sip)
            .field("esl", &self.esl)
            .field("password", &"<redacted>")
            .field("max_sessions", &self.max_sessions)
            .field("hold", &self.hold)
            .field("heartbeat", &self.heartbeat)
            .field("answer_delay", &self.answer_delay)
            .field("background_cpu", &self.background_cpu)
            .field("cpu_per_session", &self.cpu_per_session)
            .field("min_idle_cpu", &self.min_idle_cpu)
            .field("idle_cpu_smoothing", &self.idle_cpu_smoothing)
            .field("channels_per_call", &self.channels_per_call)
            .field("sessions_per_second", &self.sessions_per_second)
            .field("network_delay", &self.network_delay)
            .field("hostname", &self.hostname)
            .field("fault", &self.fault)
            .field("respond_503", &self.respond_503)
            .finish()
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        EmulatorConfig {
            sip: any,
            esl: any,
            password: "ClueCon".to_owned(),
            max_sessions: 1000,
            hold: Duration::from_secs(60),
            heartbeat: Duration::from_secs(20),
            answer_delay: Duration::from_millis(50),
            background_cpu: 5,
            cpu_per_session: DEFAULT_CPU_PER_SESSION,
            min_idle_cpu: 0.0,
            idle_cpu_smoothing: DEFAULT_IDLE_CPU_SMOOTHING,
            channels_per_call: 1,
            sessions_per_second: 30,
            network_delay: Duration::ZERO,
            hostname: "fsemu".to_owned(),
            fault: Fault::None,
            respond_503: Respond503::WhenFull,
        }
    }
}

impl EmulatorConfig {
    pub fn model(&self) -> CapacityModel {
        CapacityModel {
            max_sessions: self.max_sessions,
            channels_per_call: self.channels_per_call.max(1),
            background_cpu: self.background_cpu.min(100),
            cpu_per_session: if self.cpu_per_session.is_finite() {
                self.cpu_per_session
            } else {
                DEFAULT_CPU_PER_SESSION
            },
            answer_delay: self.answer_delay,
        }
    }

    /// What every boot starts from; `fsctl` changes the live copy only.
    pub fn boot_limits(&self) -> BootLimits {
        BootLimits {
            sps_limit: self.sessions_per_second,
            min_idle_cpu_micro: model::percent_to_micro(self.min_idle_cpu),
            idle_cpu_smoothing: self.idle_cpu_smoothing.max(1),
        }
    }
}

/// Per-boot identity: a restart makes a new one.
pub(crate) struct Boot {
    pub core_uuid: String,
    pub started: Instant,
}

pub(crate) struct Shared {
    pub cfg: EmulatorConfig,
    /// Limits, flags and counters; the live load model lives inside.
    pub counters: Mutex<Counters>,
    pub reported: Mutex<Option<Reported>>,
    pub boot: Mutex<Boot>,
    /// Event-Sequence: one counter for every event of this boot.
    pub sequence: AtomicU64,
    pub fault: AtomicU8,
    pub respond_503: AtomicU8,
    pub heartbeats_stopped: AtomicBool,
    pub shutdown: AtomicBool,
    pub esl: esl_server::EslRuntime,
    /// Actual bound addresses.
    pub sip_addr: SocketAddr,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked emulator thread must not take the whole test tool down with poison.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn fault_to_u8(f: Fault) -> u8 {
    match f {
        Fault::None => 0,
        Fault::Split => 1,
        Fault::Stall => 2,
        Fault::Garbage => 3,
    }
}

fn policy_to_u8(p: Respond503) -> u8 {
    match p {
        Respond503::WhenFull => 0,
        Respond503::Always => 1,
        Respond503::Never => 2,
    }
}

/// A random version-4 UUID in canonical text form.
pub(crate) fn uuid_v4() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A consistent snapshot of what the box reports right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub session_count: u64,
    pub max_sessions: u64,
    pub idle_cpu_micro: u32,
    pub active_calls: u64,
    pub session_since_startup: u64,
    pub session_peak_max: u64,
    pub session_peak_five_min: u64,
    /// Session-Per-Sec: the budget left in the current box-second.
    pub sps_remaining: u64,
    pub sps_last: u64,
    pub sps_max: u64,
    pub sps_five_min: u64,
    /// The configured (live) `sessions-per-second`.
    pub sps_limit: u64,
    /// `min-idle-cpu` in millionths of a percent (0: unset).
    pub min_idle_cpu_micro: u32,
}

impl Shared {
    pub fn fault(&self) -> Fault {
        match self.fault.load(Ordering::Relaxed) {
            1 => Fault::Split,
            2 => Fault::Stall,
            3 => Fault::Garbage,
            _ => Fault::None,
        }
    }

    pub fn respond_503(&self) -> Respond503 {
        match self.respond_503.load(Ordering::Relaxed) {
            1 => Respond503::Always,
            2 => Respond503::Never,
            _ => Respond503::WhenFull,
        }
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut c = lock(&self.counters);
        c.tick(now);
        let live = Reported {
            session_count: c.session_count(),
            max_sessions: c.model.max_sessions,
            idle_cpu_micro: c.idle_cpu_micro(),
        };
        let r = lock(&self.reported).unwrap_or(live);
        Snapshot {
            session_count: r.session_count,
            max_sessions: r.max_sessions,
            idle_cpu_micro: r.idle_cpu_micro,
            active_calls: c.active_calls,
            session_since_startup: c.session_since_startup,
            session_peak_max: c.session_peak_max.max(r.session_count),
            session_peak_five_min: c.session_peak_five_min().max(r.session_count),
            sps_remaining: c.sps_remaining(),
            sps_last: c.sps_last,
            sps_max: c.sps_max,
            sps_five_min: c.sps_five_min(),
            sps_limit: c.sps_limit,
            min_idle_cpu_micro: c.min_idle_cpu_micro,
        }
    }

    /// Runs admission for a new INVITE under the current 503 policy; on success returns
    /// the answer delay at the new load.
    pub fn admit_call(&self, now: Instant) -> Result<Duration, Option<Refusal>> {
        let mut c = lock(&self.counters);
        match self.respond_503() {
            Respond503::Always => {
                c.tick(now);
                c.calls_rejected += 1;
                Err(None)
            }
            Respond503::Never => {
                c.admit_unchecked(now);
                Ok(c.model.answer_delay_at(c.active_calls))
            }
            Respond503::WhenFull => c
                .admit(now)
                .map(|()| c.model.answer_delay_at(c.active_calls))
                .map_err(Some),
        }
    }

    /// Whether OPTIONS gets 503: sofia's pre-check (full, paused, stopping) answers
    /// OPTIONS as it answers INVITE, without spending any budget.
    pub fn options_refused(&self, now: Instant) -> bool {
        match self.respond_503() {
            Respond503::Always => true,
            Respond503::Never => false,
            Respond503::WhenFull => {
                let mut c = lock(&self.counters);
                c.tick(now);
                c.precheck().is_err()
            }
        }
    }

    /// A call's session(s) ended; finishes a pending shutdown when it was the last.
    pub fn release_call(&self, now: Instant) {
        let done = lock(&self.counters).release(now);
        if done {
            self.go_down();
        }
    }

    /// The box has shut down: SIP falls silent (see [`uas`]).
    pub fn is_down(&self) -> bool {
        lock(&self.counters).down
    }

    /// `fsctl shutdown elegant|asap`: SHUTDOWN_REQUESTED to subscribers, then down at
    /// once if no session is left.
    pub fn request_shutdown(&self, mode: ShutdownMode) {
        if self.is_down() {
            return;
        }
        esl_server::fire_shutdown_requested(self, mode);
        let done = lock(&self.counters).request_shutdown(mode);
        if done {
            self.go_down();
        }
    }

    fn go_down(&self) {
        tracing::info!(core_uuid = %lock(&self.boot).core_uuid, "fsemu shut down: no sessions left");
        esl_server::shutdown(self);
    }

    fn uptime_us(&self, now: Instant) -> (String, u64) {
        let b = lock(&self.boot);
        (
            b.core_uuid.clone(),
            now.saturating_duration_since(b.started).as_micros() as u64,
        )
    }

    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn heartbeat_params(&self, now: Instant) -> HeartbeatParams {
        let s = self.snapshot(now);
        let (core_uuid, uptime_us) = self.uptime_us(now);
        let timestamp_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let ipv4 = match self.sip_addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(_) => "127.0.0.1".to_owned(),
        };
        HeartbeatParams {
            core_uuid,
            hostname: self.cfg.hostname.clone(),
            switchname: self.cfg.hostname.clone(),
            ipv4,
            ipv6: "::1".to_owned(),
            timestamp_us,
            utc_offset_secs: 0,
            calling_line: 95,
            sequence: self.next_sequence(),
            event_info: "System Ready".to_owned(),
            uptime_us,
            version: VERSION.to_owned(),
            session_count: s.session_count,
            max_sessions: s.max_sessions,
            session_per_sec: s.sps_remaining,
            session_per_sec_last: s.sps_last,
            session_per_sec_max: s.sps_max,
            session_per_sec_five_min: s.sps_five_min,
            session_since_startup: s.session_since_startup,
            session_peak_max: s.session_peak_max,
            session_peak_five_min: s.session_peak_five_min,
            idle_cpu_micro: s.idle_cpu_micro,
        }
    }

    pub fn status_params(&self, now: Instant) -> StatusParams {
        let s = self.snapshot(now);
        let (_, uptime_us) = self.uptime_us(now);
        StatusParams {
            uptime_us,
            version_human: VERSION_HUMAN.to_owned(),
            ready: true,
            session_since_startup: s.session_since_startup,
            session_count: s.session_count,
            session_peak_max: s.session_peak_max,
            session_peak_five_min: s.session_peak_five_min,
            session_per_sec_last: s.sps_last,
            sessions_per_sec_limit: s.sps_limit,
            session_per_sec_max: s.sps_max,
            session_per_sec_five_min: s.sps_five_min,
            max_sessions: s.max_sessions,
            min_idle_cpu_micro: s.min_idle_cpu_micro,
            idle_cpu_micro: s.idle_cpu_micro,
            stack_size_kib: 240,
            stack_max_kib: 8192,
        }
    }
}

pub(crate) const VERSION: &str = "1.10.12-release~64bit";
pub(crate) const VERSION_HUMAN: &str = "1.10.12-release 64bit";

pub struct Emulator;

impl Emulator {
    /// Binds the SIP and ESL sockets and starts the threads.
    pub fn start(cfg: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
        let udp = UdpSocket::bind(cfg.sip)?;
        let sip_addr = udp.local_addr()?;
        let listener = TcpListener::bind(cfg.esl)?;
        let esl_addr = listener.local_addr()?;
        let now = Instant::now();
        let shared = Arc::new(Shared {
            counters: Mutex::new(Counters::new(now, cfg.model(), cfg.boot_limits())),
            reported: Mutex::new(None),
            boot: Mutex::new(Boot {
                core_uuid: uuid_v4(),
                started: now,
            }),
            sequence: AtomicU64::new(0),
            fault: AtomicU8::new(fault_to_u8(cfg.fault)),
            respond_503: AtomicU8::new(policy_to_u8(cfg.respond_503)),
            heartbeats_stopped: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            esl: esl_server::EslRuntime::new(),
            sip_addr,
            cfg,
        });
        esl_server::start_listener(&shared, listener)?;
        let mut threads = Vec::new();
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("fsemu-heartbeat".into())
                .spawn(move || esl_server::heartbeat_loop(s))?,
        );
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("fsemu-sip".into())
                .spawn(move || uas::run(s, udp))?,
        );
        tracing::info!(sip = %sip_addr, esl = %esl_addr, core_uuid = %lock(&shared.boot).core_uuid, "fsemu started");
        Ok(EmulatorHandle {
            shared,
            threads,
            esl_addr,
            sip_addr,
        })
    }
}

/// Controls one running emulator. Dropping it stops everything.
pub struct EmulatorHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    esl_addr: SocketAddr,
    sip_addr: SocketAddr,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("sip", &self.sip_addr)
            .field("esl", &self.esl_addr)
            .finish()
    }
}

impl EmulatorHandle {
    pub fn esl_addr(&self) -> SocketAddr {
        self.esl_addr
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.sip_addr
    }

    /// The load model, with the live Max-Sessions.
    pub fn model(&self) -> CapacityModel {
        lock(&self.shared.counters).model
    }

    /// Time on the box's own clock: its 1 s ticks fall on whole seconds of this.
    pub fn uptime(&self) -> Duration {
        lock(&self.shared.counters).uptime(Instant::now())
    }

    /// INVITEs refused by the admission rules, per reason (forced `Respond503::Always`
    /// refusals are only in [`EmulatorHandle::calls_rejected`]).
    pub fn refusals(&self) -> Refusals {
        lock(&self.shared.counters).refusals
    }

    /// `fsctl pause inbound` (true) or `fsctl resume inbound` (false).
    pub fn pause_inbound(&self, pause: bool) {
        lock(&self.shared.counters).no_new_inbound = pause;
    }

    /// `fsctl sps N`: the live sessions-per-second limit, used from the next tick on (as
    /// FreeSWITCH, which refills the budget only on its tick). 0 is ignored, as there.
    pub fn set_sps(&self, sps: u64) {
        if sps > 0 {
            lock(&self.shared.counters).sps_limit = sps;
        }
    }

    /// `fsctl max_sessions N`; 0 is ignored, as FreeSWITCH does.
    pub fn set_max_sessions(&self, max_sessions: u64) {
        if max_sessions > 0 {
            lock(&self.shared.counters).model.max_sessions = max_sessions;
        }
    }

    /// `fsctl min_idle_cpu PCT` (0 disables).
    pub fn set_min_idle_cpu(&self, percent: f64) {
        lock(&self.shared.counters).min_idle_cpu_micro = model::percent_to_micro(percent);
    }

    /// `fsctl shutdown elegant`: SHUTDOWN_REQUESTED (`Event-Info: elegant`), calls are
    /// still accepted, and the box shuts down once Session-Count reaches 0.
    pub fn shutdown_elegant(&self) {
        self.shared.request_shutdown(ShutdownMode::Elegant);
    }

    /// `fsctl shutdown asap`: like elegant, but new calls are refused at once.
    pub fn shutdown_asap(&self) {
        self.shared.request_shutdown(ShutdownMode::Asap);
    }

    /// Whether a requested shutdown has completed (ESL closed, SIP silent).
    pub fn is_down(&self) -> bool {
        self.shared.is_down()
    }

    pub fn core_uuid(&self) -> String {
        lock(&self.shared.boot).core_uuid.clone()
    }

    /// Overrides the three weighting figures in heartbeats and `api status`. Admission
    /// on the SIP side still follows the live model.
    pub fn set_reported(&self, session_count: u64, max_sessions: u64, idle_cpu_micro: u32) {
        *lock(&self.shared.reported) = Some(Reported {
            session_count,
            max_sessions,
            idle_cpu_micro,
        });
    }

    /// Back to reporting the live model.
    pub fn clear_reported(&self) {
        *lock(&self.shared.reported) = None;
    }

    pub fn set_fault(&self, fault: Fault) {
        self.shared
            .fault
            .store(fault_to_u8(fault), Ordering::Relaxed);
    }

    pub fn set_respond_503(&self, policy: Respond503) {
        self.shared
            .respond_503
            .store(policy_to_u8(policy), Ordering::Relaxed);
    }

    /// Stops (or resumes) HEARTBEAT events while connections stay up.
    pub fn stop_heartbeats(&self, stop: bool) {
        self.shared
            .heartbeats_stopped
            .store(stop, Ordering::Relaxed);
    }

    /// Like `kill -9` of FreeSWITCH's ESL side: the listener closes and every connection
    /// is shut down without a notice. SIP keeps running. Returns once the port is closed.
    pub fn kill(&self) {
        esl_server::kill(&self.shared);
    }

    /// Closes every ESL connection with no notice; the listener stays open.
    pub fn drop_connections(&self) {
        esl_server::drop_connections(&self.shared, None);
    }

    /// Sends every ESL connection the 31-byte shutdown notice, then closes it.
    pub fn shutdown_connections(&self) {
        esl_server::drop_connections(&self.shared, Some(fsroute_esl::serialize::SHUTDOWN_NOTICE));
    }

    /// A FreeSWITCH restart: kill (if still running), then listen again on the same
    /// address with a new Core-UUID, Event-Sequence and uptime from zero; limits, pause
    /// and shutdown state go back to the configuration (a shut-down box comes back).
    pub fn restart(&self) -> std::io::Result<()> {
        esl_server::kill(&self.shared);
        let now = Instant::now();
        *lock(&self.shared.boot) = Boot {
            core_uuid: uuid_v4(),
            started: now,
        };
        self.shared.sequence.store(0, Ordering::Relaxed);
        lock(&self.shared.counters).reset_boot(
            now,
            self.shared.cfg.max_sessions,
            self.shared.cfg.boot_limits(),
        );
        let listener = TcpListener::bind(self.esl_addr)?;
        esl_server::start_listener(&self.shared, listener)?;
        tracing::info!(esl = %self.esl_addr, core_uuid = %self.core_uuid(), "fsemu ESL restarted");
        Ok(())
    }

    pub fn active_calls(&self) -> u64 {
        lock(&self.shared.counters).active_calls
    }

    pub fn peak_calls(&self) -> u64 {
        lock(&self.shared.counters).peak_calls
    }

    pub fn calls_answered(&self) -> u64 {
        lock(&self.shared.counters).calls_answered
    }

    pub fn calls_rejected(&self) -> u64 {
        lock(&self.shared.counters).calls_rejected
    }

    pub fn calls_cancelled(&self) -> u64 {
        lock(&self.shared.counters).calls_cancelled
    }

    /// What a heartbeat sent now would report.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot(Instant::now())
    }

    /// Open ESL connections.
    pub fn esl_connections(&self) -> usize {
        self.shared.esl.connection_count()
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        esl_server::kill(&self.shared);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
