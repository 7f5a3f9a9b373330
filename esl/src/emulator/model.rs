//! The emulated box's capacity model and session counters: the single source of the
//! numbers both faces report, so the SIP UAS (503 when full, slower answers under load)
//! and the ESL server (HEARTBEAT, `api status`) always tell the same story.

use std::time::{Duration, Instant};

/// Share of the CPU that a completely full box spends on calls.
pub const LOAD_CPU_PCT: f64 = 60.0;

/// Static capacity parameters of one emulated box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CapacityModel {
    pub max_sessions: u64,
    /// Channels one call occupies (2 where FreeSWITCH bridges the call onward).
    pub channels_per_call: u64,
    /// CPU percent busy with other work, whatever the call load.
    pub background_cpu: u32,
    /// Answer delay of an idle box.
    pub answer_delay: Duration,
}

impl CapacityModel {
    /// Session-Count: channels in use.
    pub fn session_count(&self, active_calls: u64) -> u64 {
        active_calls.saturating_mul(self.channels_per_call)
    }

    /// FreeSWITCH refuses new sessions once `Session-Count >= Max-Sessions`.
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

    /// Idle-CPU in millionths of a percent: `100 − background − 60 × load`, rounded to a
    /// whole percent as FreeSWITCH's per-second samples are, clamped to [0, 100].
    pub fn idle_cpu_micro(&self, active_calls: u64) -> u32 {
        let idle = 100.0 - f64::from(self.background_cpu) - LOAD_CPU_PCT * self.load(active_calls);
        let whole = idle.round().clamp(0.0, 100.0) as u32;
        whole * 1_000_000
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

const FIVE_MIN: Duration = Duration::from_secs(300);

/// Live counters, in calls and in sessions (channels).
#[derive(Debug)]
pub struct Counters {
    pub active_calls: u64,
    pub peak_calls: u64,
    pub calls_answered: u64,
    pub calls_rejected: u64,
    pub calls_cancelled: u64,
    pub session_since_startup: u64,
    pub session_peak_max: u64,
    session_peak_five_min: u64,
    five_min_start: Instant,
    /// Sessions created in the current whole second, and when it began.
    sec_start: Instant,
    created_this_sec: u64,
    pub sps_last: u64,
    pub sps_max: u64,
    sps_five_min: u64,
    sps_five_min_start: Instant,
}

impl Counters {
    pub fn new(now: Instant) -> Counters {
        Counters {
            active_calls: 0,
            peak_calls: 0,
            calls_answered: 0,
            calls_rejected: 0,
            calls_cancelled: 0,
            session_since_startup: 0,
            session_peak_max: 0,
            session_peak_five_min: 0,
            five_min_start: now,
            sec_start: now,
            created_this_sec: 0,
            sps_last: 0,
            sps_max: 0,
            sps_five_min: 0,
            sps_five_min_start: now,
        }
    }

    /// Rolls the one-second and five-minute windows forward to `now`.
    pub fn tick(&mut self, now: Instant, model: &CapacityModel) {
        let elapsed = now.saturating_duration_since(self.sec_start);
        if elapsed >= Duration::from_secs(1) {
            // A second with no activity in between counts as zero.
            self.sps_last = if elapsed < Duration::from_secs(2) {
                self.created_this_sec
            } else {
                0
            };
            self.sps_max = self.sps_max.max(self.sps_last);
            self.created_this_sec = 0;
            self.sec_start += Duration::from_secs(elapsed.as_secs());
        }
        // Tumbling windows that restart from the current figures (ESL.md §3.5).
        if now.saturating_duration_since(self.five_min_start) >= FIVE_MIN {
            self.five_min_start = now;
            self.session_peak_five_min = model.session_count(self.active_calls);
        }
        if now.saturating_duration_since(self.sps_five_min_start) >= FIVE_MIN {
            self.sps_five_min_start = now;
            self.sps_five_min = 0;
        }
        self.sps_five_min = self.sps_five_min.max(self.sps_last);
    }

    pub fn admit(&mut self, now: Instant, model: &CapacityModel) {
        self.tick(now, model);
        self.active_calls += 1;
        self.peak_calls = self.peak_calls.max(self.active_calls);
        let k = model.channels_per_call;
        self.session_since_startup += k;
        self.created_this_sec += k;
        let sessions = model.session_count(self.active_calls);
        self.session_peak_max = self.session_peak_max.max(sessions);
        self.session_peak_five_min = self.session_peak_five_min.max(sessions);
    }

    pub fn release(&mut self) {
        self.active_calls = self.active_calls.saturating_sub(1);
    }

    /// Session-Per-Sec: the *remaining* budget of the current second.
    pub fn sps_remaining(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.created_this_sec)
    }

    pub fn session_peak_five_min(&self) -> u64 {
        self.session_peak_five_min
    }

    pub fn sps_five_min(&self) -> u64 {
        self.sps_five_min
    }

    /// Forgets the per-boot figures, as a FreeSWITCH restart does. Active calls stay:
    /// the emulator's SIP side keeps running.
    pub fn reset_boot(&mut self, now: Instant, model: &CapacityModel) {
        let active = self.active_calls;
        let (answered, rejected, cancelled, peak) = (
            self.calls_answered,
            self.calls_rejected,
            self.calls_cancelled,
            self.peak_calls,
        );
        *self = Counters::new(now);
        self.active_calls = active;
        self.calls_answered = answered;
        self.calls_rejected = rejected;
        self.calls_cancelled = cancelled;
        self.peak_calls = peak;
        self.session_peak_max = model.session_count(active);
        self.session_peak_five_min = self.session_peak_max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(max: u64, k: u64, bg: u32) -> CapacityModel {
        CapacityModel {
            max_sessions: max,
            channels_per_call: k,
            background_cpu: bg,
            answer_delay: Duration::from_millis(100),
        }
    }

    #[test]
    fn idle_cpu_falls_with_load_from_the_background_level() {
        let m = model(100, 2, 10);
        assert_eq!(m.idle_cpu_micro(0), 90_000_000);
        assert_eq!(m.idle_cpu_micro(25), 60_000_000); // 50 sessions of 100: 90 - 30
        assert_eq!(m.idle_cpu_micro(50), 30_000_000);
        assert_eq!(m.idle_cpu_micro(500), 30_000_000, "load saturates at 1");
        assert_eq!(model(100, 1, 95).idle_cpu_micro(100), 0, "clamped at zero");
    }

    #[test]
    fn full_means_session_count_reaches_max_sessions() {
        let m = model(10, 2, 0);
        assert!(!m.is_full(4));
        assert!(m.is_full(5));
        assert!(model(0, 1, 0).is_full(0));
        assert_eq!(model(0, 1, 0).load(0), 1.0);
    }

    #[test]
    fn answer_delay_grows_quadratically_with_load() {
        let m = model(10, 1, 0);
        assert_eq!(m.answer_delay_at(0), Duration::from_millis(100));
        assert_eq!(m.answer_delay_at(5), Duration::from_millis(200));
        assert_eq!(m.answer_delay_at(10), Duration::from_millis(500));
    }

    #[test]
    fn counters_track_peaks_and_the_per_second_budget() {
        let m = model(100, 2, 0);
        let t0 = Instant::now();
        let mut c = Counters::new(t0);
        c.admit(t0, &m);
        c.admit(t0, &m);
        c.release();
        assert_eq!(
            (
                c.active_calls,
                c.peak_calls,
                c.session_since_startup,
                c.session_peak_max
            ),
            (1, 2, 4, 4)
        );
        assert_eq!(c.sps_remaining(30), 26);
        c.tick(t0 + Duration::from_millis(1500), &m);
        assert_eq!((c.sps_last, c.sps_max, c.sps_remaining(30)), (4, 4, 30));
        c.tick(t0 + Duration::from_secs(5), &m);
        assert_eq!((c.sps_last, c.sps_max), (0, 4));
    }
}
