//! The emulated box's admission rules, load model and session counters: the single source
//! of the numbers both faces report, so the SIP UAS (which INVITEs it refuses, how fast it
//! answers) and the ESL server (HEARTBEAT, `api status`, `fsctl`) always tell the same story.
//!
//! Admission follows FreeSWITCH 1.10 (docs/ADMISSION.md): sofia's pre-check on every INVITE
//! (`Session-Count >= Max-Sessions`, not running, inbound not ready), then, for each of the
//! `k` sessions a call creates, `switch_core_session_request_uuid`'s checks in its own order:
//! direction paused, shutting down, Idle-CPU below `min-idle-cpu`, the per-second budget
//! (decremented *before* the `<= 0` test, so only N − 1 get through), `count + 1 >
//! Max-Sessions`. The budget, the Idle-CPU samples and the five-minute windows move on the
//! box's own 1 s tick, whose phase is the moment the box booted (as FreeSWITCH's timer
//! thread is), not the wall clock. Ticks are applied lazily, before every change and every
//! report, so the state between two events is exactly what a ticking box would hold.

use std::time::{Duration, Instant};

/// Idle-CPU points one session costs when the configuration does not say (60 points for a
/// full default box of 1000 sessions, the old emulator's figure).
pub const DEFAULT_CPU_PER_SESSION: f64 = 0.06;

/// FreeSWITCH's `cpu-idle-smoothing-depth` default.
pub const DEFAULT_IDLE_CPU_SMOOTHING: u32 = 30;

/// FreeSWITCH resets its five-minute peaks every 300 ticks.
const FIVE_MIN_TICKS: u64 = 300;

/// Static load parameters of one emulated box (`max_sessions` is the live value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CapacityModel {
    pub max_sessions: u64,
    /// Channels one call occupies (2 where FreeSWITCH bridges the call onward).
    pub channels_per_call: u64,
    /// CPU percent busy with other work, whatever the call load.
    pub background_cpu: u32,
    /// Idle-CPU points one session costs.
    pub cpu_per_session: f64,
    /// Answer delay of an idle box.
    pub answer_delay: Duration,
}

impl CapacityModel {
    /// Session-Count: channels in use.
    pub fn session_count(&self, active_calls: u64) -> u64 {
        active_calls.saturating_mul(self.channels_per_call)
    }

    /// sofia's pre-check: no new INVITE once `Session-Count >= Max-Sessions`.
    pub fn is_full(&self, active_calls: u64) -> bool {
        self.session_count(active_calls) >= self.max_sessions
    }

    /// Session-Count / Max-Sessions in [0, 1]; a box without capacity is fully loaded.
    pub fn load(&self, active_calls: u64) -> f64 {
        if self.max_sessions == 0 {
            return 1.0;
        }
        (self.session_count(active_calls) as f64 / self.max_sessions as f64).min(1.0)
    }

    /// One per-second Idle-CPU sample: `100 − background − cost × sessions`, rounded to a
    /// whole percent as FreeSWITCH's `/proc/stat` samples are, clamped to [0, 100].
    pub fn idle_sample(&self, sessions: u64) -> u32 {
        let idle = 100.0 - f64::from(self.background_cpu) - self.cpu_per_session * sessions as f64;
        if idle.is_nan() {
            return 0;
        }
        idle.round().clamp(0.0, 100.0) as u32
    }

    /// A loaded box answers later: `base × (1 + 4 × load²)`.
    pub fn answer_delay_at(&self, active_calls: u64) -> Duration {
        let l = self.load(active_calls);
        self.answer_delay.mul_f64(1.0 + 4.0 * l * l)
    }
}

/// Values that replace the live figures in heartbeats and `api status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported {
    pub session_count: u64,
    pub max_sessions: u64,
    pub idle_cpu_micro: u32,
}

/// Why the box answered an INVITE with 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `Session-Count >= Max-Sessions` before, or `+ 1 >` for one of the call's sessions.
    Sessions,
    /// The sessions-per-second budget of the current box-second is spent.
    Sps,
    /// Smoothed Idle-CPU below `min-idle-cpu`.
    Cpu,
    /// `fsctl pause` (inbound, outbound for B-legs, or all).
    Paused,
    /// `fsctl shutdown asap` requested, or the box has shut down.
    Shutdown,
}

/// INVITEs refused, per reason, so a benchmark can say which limit bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    pub sessions: u64,
    pub sps: u64,
    pub cpu: u64,
    pub paused: u64,
    pub shutdown: u64,
}

impl Refusals {
    fn count(&mut self, r: Refusal) {
        let slot = match r {
            Refusal::Sessions => &mut self.sessions,
            Refusal::Sps => &mut self.sps,
            Refusal::Cpu => &mut self.cpu,
            Refusal::Paused => &mut self.paused,
            Refusal::Shutdown => &mut self.shutdown,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.sessions + self.sps + self.cpu + self.paused + self.shutdown
    }
}

/// `fsctl shutdown` flavours that wait for the sessions to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Keeps accepting calls; shuts down when Session-Count reaches 0.
    Elegant,
    /// Refuses new calls at once (FreeSWITCH sets `SCF_NO_NEW_SESSIONS`), then the same.
    Asap,
}

/// The ring of whole-percent samples whose mean FreeSWITCH reports as Idle-CPU.
#[derive(Clone, Debug)]
pub struct IdleCpu {
    ring: Vec<u32>,
    next: usize,
    sum: u64,
}

impl IdleCpu {
    /// FreeSWITCH fills the ring with 100 at start, so a fresh box looks idle.
    pub fn new(depth: u32) -> IdleCpu {
        let depth = depth.max(1) as usize;
        IdleCpu {
            ring: vec![100; depth],
            next: 0,
            sum: 100 * depth as u64,
        }
    }

    pub fn push(&mut self, sample: u32) {
        let sample = sample.min(100);
        self.sum = self.sum - u64::from(self.ring[self.next]) + u64::from(sample);
        self.ring[self.next] = sample;
        self.next = (self.next + 1) % self.ring.len();
    }

    /// The mean in millionths of a percent (what `%f` prints, to the last digit).
    pub fn micro(&self) -> u32 {
        let n = self.ring.len() as u64;
        ((self.sum * 1_000_000 + n / 2) / n) as u32
    }

    /// `profile_time < min_idle_time`, compared exactly rather than after rounding.
    pub fn below(&self, min_micro: u32) -> bool {
        u128::from(self.sum) * 1_000_000 < u128::from(min_micro) * self.ring.len() as u128
    }
}

/// Percent (as configured) to millionths, clamped to [0, 100].
pub fn percent_to_micro(p: f64) -> u32 {
    if p.is_nan() {
        return 0;
    }
    (p.clamp(0.0, 100.0) * 1_000_000.0).round() as u32
}

/// The box's live state: limits that `fsctl` changes, pause and shutdown flags, and the
/// counters behind every reported figure.
#[derive(Debug)]
pub struct Counters {
    /// The load model; its `max_sessions` is the live limit (`fsctl max_sessions`).
    pub model: CapacityModel,
    /// Configured `sessions-per-second` (`fsctl sps`).
    pub sps_limit: u64,
    /// `min-idle-cpu` in millionths of a percent; 0 means unset.
    pub min_idle_cpu_micro: u32,
    /// `SCF_NO_NEW_SESSIONS`: `fsctl pause` without a direction, or `shutdown asap`.
    pub no_new_sessions: bool,
    /// `SCF_NO_NEW_INBOUND_SESSIONS`: `fsctl pause inbound`.
    pub no_new_inbound: bool,
    /// `SCF_NO_NEW_OUTBOUND_SESSIONS`: `fsctl pause outbound`; refuses B-legs.
    pub no_new_outbound: bool,
    /// `SCF_SHUTDOWN_REQUESTED`, with its flavour.
    pub shutdown_requested: Option<ShutdownMode>,
    /// The box has shut down: SIP is silent, ESL closed.
    pub down: bool,
    pub active_calls: u64,
    pub peak_calls: u64,
    pub calls_answered: u64,
    pub calls_rejected: u64,
    pub calls_cancelled: u64,
    pub refusals: Refusals,
    pub session_since_startup: u64,
    pub session_peak_max: u64,
    session_peak_five_min: u64,
    /// `runtime.sps`: the budget left in this box-second; negative once over-spent.
    budget: i64,
    pub sps_last: u64,
    pub sps_max: u64,
    sps_five_min: u64,
    /// Ticks since the five-minute peaks were last reset (`sps_interval_ticks`).
    interval_ticks: u64,
    booted: Instant,
    ticks_done: u64,
    cpu: IdleCpu,
}

/// Settings a boot starts from (a restart goes back to them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootLimits {
    pub sps_limit: u64,
    pub min_idle_cpu_micro: u32,
    pub idle_cpu_smoothing: u32,
}

impl Counters {
    pub fn new(now: Instant, model: CapacityModel, limits: BootLimits) -> Counters {
        let budget = i64::try_from(limits.sps_limit).unwrap_or(i64::MAX);
        Counters {
            model,
            sps_limit: limits.sps_limit,
            min_idle_cpu_micro: limits.min_idle_cpu_micro,
            no_new_sessions: false,
            no_new_inbound: false,
            no_new_outbound: false,
            shutdown_requested: None,
            down: false,
            active_calls: 0,
            peak_calls: 0,
            calls_answered: 0,
            calls_rejected: 0,
            calls_cancelled: 0,
            refusals: Refusals::default(),
            session_since_startup: 0,
            session_peak_max: 0,
            session_peak_five_min: 0,
            budget,
            sps_last: 0,
            sps_max: 0,
            sps_five_min: 0,
            interval_ticks: 0,
            booted: now,
            ticks_done: 0,
            cpu: IdleCpu::new(limits.idle_cpu_smoothing),
        }
    }

    pub fn session_count(&self) -> u64 {
        self.model.session_count(self.active_calls)
    }

    fn limit_i64(&self) -> i64 {
        i64::try_from(self.sps_limit).unwrap_or(i64::MAX)
    }

    /// Applies every whole box-second tick up to `now`, in FreeSWITCH's order: Idle-CPU
    /// sample, `sps_last = total − left`, five-minute resets, peaks, budget refilled.
    pub fn tick(&mut self, now: Instant) {
        let due = now.saturating_duration_since(self.booted).as_secs();
        while self.ticks_done < due {
            self.ticks_done += 1;
            let sessions = self.session_count();
            self.cpu.push(self.model.idle_sample(sessions));
            self.sps_last =
                u64::try_from(self.limit_i64().saturating_sub(self.budget)).unwrap_or(0);
            if self.interval_ticks >= FIVE_MIN_TICKS {
                self.sps_five_min = 0;
                self.interval_ticks = 0;
                self.session_peak_five_min = sessions;
            }
            self.interval_ticks += 1;
            self.sps_max = self.sps_max.max(self.sps_last);
            self.sps_five_min = self.sps_five_min.max(self.sps_last);
            self.budget = self.limit_i64();
        }
    }

    /// Whether sofia's `switch_core_ready_inbound()` holds.
    fn inbound_ready(&self) -> bool {
        !(self.no_new_sessions || self.no_new_inbound)
    }

    fn stopping(&self) -> bool {
        self.down || (self.no_new_sessions && self.shutdown_requested.is_some())
    }

    /// sofia's check on every INVITE, OPTIONS, NOTIFY and INFO before anything is created
    /// (no budget spent): full, not running, or inbound not ready.
    pub fn precheck(&self) -> Result<(), Refusal> {
        if self.stopping() {
            return Err(Refusal::Shutdown);
        }
        if !self.inbound_ready() {
            return Err(Refusal::Paused);
        }
        if self.model.is_full(self.active_calls) {
            return Err(Refusal::Sessions);
        }
        Ok(())
    }

    /// One `switch_core_session_request_uuid` without `SOF_NO_LIMITS`.
    fn request_session(&mut self, outbound: bool, existing: u64) -> Result<(), Refusal> {
        let paused = if outbound {
            self.no_new_outbound
        } else {
            self.no_new_inbound
        };
        if paused {
            return Err(Refusal::Paused);
        }
        if self.stopping() {
            return Err(Refusal::Shutdown);
        }
        if self.no_new_sessions {
            return Err(Refusal::Paused);
        }
        if self.min_idle_cpu_micro > 0 && self.cpu.below(self.min_idle_cpu_micro) {
            return Err(Refusal::Cpu);
        }
        self.budget = self.budget.saturating_sub(1);
        if self.budget <= 0 {
            return Err(Refusal::Sps);
        }
        if existing + 1 > self.model.max_sessions {
            return Err(Refusal::Sessions);
        }
        self.session_since_startup += 1;
        Ok(())
    }

    /// Admits a new call by FreeSWITCH's rules, or says why not (and counts it).
    pub fn admit(&mut self, now: Instant) -> Result<(), Refusal> {
        self.tick(now);
        let outcome = self.precheck().and_then(|()| {
            let base = self.session_count();
            (0..self.model.channels_per_call)
                .try_for_each(|leg| self.request_session(leg > 0, base + leg))
        });
        match outcome {
            Ok(()) => {
                self.occupy();
                Ok(())
            }
            Err(r) => {
                self.refusals.count(r);
                self.calls_rejected += 1;
                Err(r)
            }
        }
    }

    /// Admits beyond every limit (`Respond503::Never`); the budget is still spent.
    pub fn admit_unchecked(&mut self, now: Instant) {
        self.tick(now);
        let k = self.model.channels_per_call;
        self.budget = self
            .budget
            .saturating_sub(i64::try_from(k).unwrap_or(i64::MAX));
        self.session_since_startup += k;
        self.occupy();
    }

    fn occupy(&mut self) {
        self.active_calls += 1;
        self.peak_calls = self.peak_calls.max(self.active_calls);
        let sessions = self.session_count();
        self.session_peak_max = self.session_peak_max.max(sessions);
        self.session_peak_five_min = self.session_peak_five_min.max(sessions);
    }

    /// A call ended. Returns true when this completes a requested shutdown.
    pub fn release(&mut self, now: Instant) -> bool {
        self.tick(now);
        self.active_calls = self.active_calls.saturating_sub(1);
        self.shutdown_due()
    }

    /// A requested shutdown finishes once no session is left. Returns true exactly once.
    pub fn shutdown_due(&mut self) -> bool {
        if self.shutdown_requested.is_some() && !self.down && self.active_calls == 0 {
            self.down = true;
            return true;
        }
        false
    }

    /// `fsctl shutdown elegant|asap`. Returns true if the box is to go down now.
    pub fn request_shutdown(&mut self, mode: ShutdownMode) -> bool {
        if self.down {
            return false;
        }
        self.shutdown_requested = Some(mode);
        if mode == ShutdownMode::Asap {
            self.no_new_sessions = true;
        }
        self.shutdown_due()
    }

    /// `fsctl shutdown cancel`: clears the request only; like FreeSWITCH, an `asap`'s
    /// `SCF_NO_NEW_SESSIONS` stays until `fsctl resume`.
    pub fn cancel_shutdown(&mut self) {
        if !self.down {
            self.shutdown_requested = None;
        }
    }

    /// Session-Per-Sec: the budget *left* in the current box-second, never below 0.
    pub fn sps_remaining(&self) -> u64 {
        u64::try_from(self.budget).unwrap_or(0)
    }

    /// Idle-CPU as reported: the mean of the smoothing ring.
    pub fn idle_cpu_micro(&self) -> u32 {
        self.cpu.micro()
    }

    pub fn session_peak_five_min(&self) -> u64 {
        self.session_peak_five_min
    }

    pub fn sps_five_min(&self) -> u64 {
        self.sps_five_min
    }

    /// Time on the box's own clock.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.booted)
    }

    /// A FreeSWITCH restart: per-boot figures, limits and flags start again from the
    /// configuration. Active calls stay: the emulator's SIP side keeps its dialogs.
    pub fn reset_boot(&mut self, now: Instant, initial_max_sessions: u64, limits: BootLimits) {
        let mut model = self.model;
        model.max_sessions = initial_max_sessions;
        let mut fresh = Counters::new(now, model, limits);
        fresh.active_calls = self.active_calls;
        fresh.calls_answered = self.calls_answered;
        fresh.calls_rejected = self.calls_rejected;
        fresh.calls_cancelled = self.calls_cancelled;
        fresh.refusals = self.refusals;
        fresh.peak_calls = self.peak_calls;
        fresh.session_peak_max = fresh.session_count();
        fresh.session_peak_five_min = fresh.session_peak_max;
        *self = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(max: u64, k: u64, bg: u32, cost: f64) -> CapacityModel {
        CapacityModel {
            max_sessions: max,
            channels_per_call: k,
            background_cpu: bg,
            cpu_per_session: cost,
            answer_delay: Duration::from_millis(100),
        }
    }

    fn limits(sps: u64, min_idle: f64, depth: u32) -> BootLimits {
        BootLimits {
            sps_limit: sps,
            min_idle_cpu_micro: percent_to_micro(min_idle),
            idle_cpu_smoothing: depth,
        }
    }

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn idle_sample_is_background_plus_cost_per_session_rounded_and_clamped() {
        let m = model(1000, 1, 10, 0.5);
        assert_eq!(m.idle_sample(0), 90);
        assert_eq!(m.idle_sample(40), 70);
        assert_eq!(m.idle_sample(3), 89, "88.5 rounds up");
        assert_eq!(m.idle_sample(500), 0, "clamped at zero");
        assert_eq!(model(10, 1, 0, -5.0).idle_sample(10), 100, "clamped at 100");
        assert_eq!(model(10, 1, 0, f64::NAN).idle_sample(1), 0);
    }

    #[test]
    fn idle_cpu_is_the_mean_of_a_ring_that_starts_full_of_100() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0, model(100, 1, 10, 5.0), limits(30, 0.0, 3));
        assert_eq!(c.idle_cpu_micro(), 100_000_000, "no sample yet");
        c.admit(t0).unwrap();
        c.admit(t0).unwrap();
        c.tick(secs(t0, 1.0));
        // One sample of 100 − 10 − 5 × 2 = 80 among two 100s.
        assert_eq!(c.idle_cpu_micro(), 93_333_333);
        c.tick(secs(t0, 2.5));
        assert_eq!(c.idle_cpu_micro(), 86_666_667);
        c.tick(secs(t0, 3.0));
        assert_eq!(c.idle_cpu_micro(), 80_000_000);
        c.release(secs(t0, 3.2));
        c.tick(secs(t0, 4.0));
        assert_eq!(c.idle_cpu_micro(), 81_666_667, "(80 + 80 + 85) / 3");
        let mut one = Counters::new(t0, model(100, 2, 0, 3.0), limits(30, 0.0, 1));
        for _ in 0..3 {
            one.admit(t0).unwrap();
        }
        one.tick(secs(t0, 1.0));
        assert_eq!(one.idle_cpu_micro(), 82_000_000, "100 − 3 × 6 sessions");
    }

    #[test]
    fn sps_budget_admits_n_minus_one_per_box_second_then_refills_on_the_tick() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0, model(1000, 1, 0, 0.0), limits(5, 0.0, 30));
        let first: Vec<bool> = (0..8).map(|_| c.admit(secs(t0, 0.2)).is_ok()).collect();
        assert_eq!(first, [true, true, true, true, false, false, false, false]);
        assert_eq!(c.refusals.sps, 4);
        assert_eq!(c.sps_remaining(), 0, "over-spent budget is reported as 0");
        // Just before the box's tick nothing is refilled; right after it is.
        assert!(c.admit(secs(t0, 0.999)).is_err());
        assert!(c.admit(secs(t0, 1.001)).is_ok());
        assert_eq!(
            c.sps_last, 9,
            "sps_last counts every decrement, refused ones too"
        );
        assert_eq!(c.sps_remaining(), 4);
        let second = (0..6).filter(|_| c.admit(secs(t0, 1.5)).is_ok()).count();
        assert_eq!(second, 3, "4 in this second in all");
        c.tick(secs(t0, 2.0));
        assert_eq!((c.sps_last, c.sps_max), (7, 9));
        c.tick(secs(t0, 3.0));
        assert_eq!((c.sps_last, c.sps_remaining()), (0, 5));
    }

    #[test]
    fn every_session_of_a_bridged_call_spends_budget() {
        let t0 = Instant::now();
        // Budget 7 with k = 2: 6,5 | 4,3 | 2,1 | 0 → the fourth call's A-leg is refused.
        let mut c = Counters::new(t0, model(1000, 2, 0, 0.0), limits(7, 0.0, 30));
        let admitted = (0..6).filter(|_| c.admit(t0).is_ok()).count();
        assert_eq!(admitted, 3);
        assert_eq!(c.session_count(), 6);
        assert_eq!(c.session_since_startup, 6);
        // Budget 6: the third call's B-leg takes the budget to 0 after its A-leg passed.
        let mut c = Counters::new(t0, model(1000, 2, 0, 0.0), limits(6, 0.0, 30));
        assert_eq!((0..4).filter(|_| c.admit(t0).is_ok()).count(), 2);
        assert_eq!(c.refusals.sps, 2);
    }

    #[test]
    fn max_sessions_refuses_when_the_call_does_not_fit() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0, model(5, 2, 0, 0.0), limits(1000, 0.0, 30));
        assert!(c.admit(t0).is_ok());
        assert!(c.admit(t0).is_ok());
        // 4 sessions: the A-leg fits (5), the B-leg would be the 6th.
        assert_eq!(c.admit(t0), Err(Refusal::Sessions));
        c.model.max_sessions = 4;
        // Full by sofia's pre-check: no budget is spent on it.
        let left = c.sps_remaining();
        assert_eq!(c.admit(t0), Err(Refusal::Sessions));
        assert_eq!(c.sps_remaining(), left);
        assert_eq!(c.refusals.sessions, 2);
    }

    #[test]
    fn min_idle_cpu_refuses_on_the_smoothed_value_without_spending_budget() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0, model(1000, 1, 0, 10.0), limits(30, 75.0, 1));
        assert!(c.admit(t0).is_ok());
        assert!(c.admit(t0).is_ok(), "still 100 until the first sample");
        c.tick(secs(t0, 1.0));
        assert_eq!(c.idle_cpu_micro(), 80_000_000);
        assert!(c.admit(secs(t0, 1.1)).is_ok(), "80 >= 75");
        c.tick(secs(t0, 2.0));
        let left = c.sps_remaining();
        assert_eq!(c.admit(secs(t0, 2.1)), Err(Refusal::Cpu), "70 < 75");
        assert_eq!(c.sps_remaining(), left);
        assert_eq!(c.refusals.cpu, 1);
        let mut busy = Counters::new(t0, model(1000, 1, 60, 0.0), limits(30, 50.0, 30));
        busy.tick(secs(t0, 14.0));
        assert!(
            busy.admit(secs(t0, 14.0)).is_ok(),
            "mean (16·100 + 14·40)/30 = 72"
        );
        busy.tick(secs(t0, 30.0));
        assert_eq!(busy.idle_cpu_micro(), 40_000_000);
        assert_eq!(busy.admit(secs(t0, 30.0)), Err(Refusal::Cpu));
    }

    #[test]
    fn pause_and_shutdown_flags_refuse_with_their_own_reasons() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0, model(100, 2, 0, 0.0), limits(1000, 0.0, 30));
        c.no_new_inbound = true;
        assert_eq!(c.admit(t0), Err(Refusal::Paused));
        c.no_new_inbound = false;
        c.no_new_outbound = true;
        assert_eq!(c.admit(t0), Err(Refusal::Paused), "the B-leg is outbound");
        c.no_new_outbound = false;
        assert!(c.admit(t0).is_ok());
        assert!(!c.request_shutdown(ShutdownMode::Elegant), "a call is up");
        assert!(c.admit(t0).is_ok(), "elegant keeps accepting");
        assert!(!c.release(t0));
        assert!(c.release(t0), "the last call's end completes the shutdown");
        assert!(!c.release(t0), "only once");
        assert_eq!(c.admit(t0), Err(Refusal::Shutdown));
        let mut a = Counters::new(t0, model(100, 1, 0, 0.0), limits(1000, 0.0, 30));
        a.admit(t0).unwrap();
        assert!(!a.request_shutdown(ShutdownMode::Asap));
        assert_eq!(a.admit(t0), Err(Refusal::Shutdown));
        a.cancel_shutdown();
        assert_eq!(
            a.admit(t0),
            Err(Refusal::Paused),
            "asap's no-new-sessions stays"
        );
        assert_eq!(
            a.refusals,
            Refusals {
                shutdown: 1,
                paused: 1,
                ..Refusals::default()
            }
        );
    }

    #[test]
    fn five_minute_windows_reset_every_300_ticks() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0, model(100, 1, 0, 0.0), limits(30, 0.0, 30));
        for _ in 0..3 {
            c.admit(t0).unwrap();
        }
        c.release(t0);
        c.tick(secs(t0, 1.0));
        assert_eq!((c.sps_five_min(), c.session_peak_five_min()), (3, 3));
        c.tick(secs(t0, 301.0));
        assert_eq!((c.sps_five_min(), c.session_peak_five_min()), (0, 2));
        assert_eq!((c.sps_max, c.session_peak_max), (3, 3));
    }

    #[test]
    fn answer_delay_grows_quadratically_with_load() {
        let m = model(10, 1, 0, 0.0);
        assert_eq!(m.answer_delay_at(0), Duration::from_millis(100));
        assert_eq!(m.answer_delay_at(5), Duration::from_millis(200));
        assert_eq!(m.answer_delay_at(10), Duration::from_millis(500));
        assert!(model(0, 1, 0, 0.0).is_full(0));
    }
}
