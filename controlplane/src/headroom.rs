//! How many more calls one FreeSWITCH box can take, from what it last told us (docs/ADMISSION.md).
//! Pure arithmetic over a box's numbers, in calls and integers: sessions (`M − S`), CPU
//! (`(Idle − min-idle-cpu − margin) / cost`, with `cost` the Idle-CPU one session costs, learned
//! from the box's own heartbeats by [`CpuCostFit`]) and rate (a budget of `sps − 1` starts per
//! second, less what other sources start there). The table builder turns the result into the
//! limits shards admit against; between heartbeats every call moves it by one (see
//! `fsroute_dataplane::admission`).
//!
//! This replaces the OpenSIPS formula `floor(Idle × M / k) − sessions`, which counts each call
//! twice (once as a session, once in the Idle-CPU it lowered); that formula stays available as
//! `capacity_model = "opensips"` (`fsroute_dataplane::lb::capacity`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fsroute_dataplane::lb::HUNDRED_PERCENT_MICRO;

/// Idle-CPU is carried in millionths of a percent (`esl`'s `idle_cpu_micro`): this is 1 %.
pub const PERCENT_MICRO: u64 = 1_000_000;

/// Which limit of the box is the smallest now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    Sessions,
    Cpu,
    Rate,
    /// Not taking calls: stale, draining, or before any numbers with `initial_capacity` 0.
    Closed,
    /// Before the first numbers: `initial_capacity`.
    Initial,
}

impl Binding {
    pub fn name(self) -> &'static str {
        match self {
            Binding::Sessions => "sessions",
            Binding::Cpu => "cpu",
            Binding::Rate => "rate",
            Binding::Closed => "closed",
            Binding::Initial => "initial",
        }
    }
}

/// What a box reported, and what it is configured to refuse (from `api status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoxReport {
    pub session_count: u64,
    pub max_sessions: u64,
    pub idle_cpu_micro: u32,
    /// `sessions-per-second`; None until `api status` has said it.
    pub sps_limit: Option<u64>,
    /// `min-idle-cpu` in millionths of a percent (0 = unset).
    pub min_idle_cpu_micro: u32,
}

/// The operator's knobs for the model (`[control]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// FreeSWITCH sessions one routed call occupies.
    pub channels_per_call: u32,
    /// Idle-CPU points (millionths of a percent) kept free above `min-idle-cpu`.
    pub cpu_margin_micro: u32,
}

/// One box's headroom, in calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    pub sessions: u64,
    pub cpu: u64,
    /// Calls the box may start per rate window; None = no limit known.
    pub rate: Option<u32>,
    /// `min(sessions, cpu)`: what the shards' `used` counter may grow by.
    pub calls: u64,
    pub binding: Binding,
}

/// While a box's CPU cost is only the built-in prior, its CPU headroom grows by at most this many sessions,
/// or by half as many as it carries now, per reading (a slow start): a prior that is wrong for this
/// box can then overfill it by little, and each step spreads its Session-Count so the fit can learn.
pub const SLOW_START_SESSIONS: u64 = 2 * CpuCostFit::MIN_SPREAD;

/// The headroom of a box that reported `r`, with sessions costing `cost` Idle-CPU each (millionths
/// of a percent, and whether it was learned), and `others_sps` sessions per second started there
/// by other sources.
///
/// `predicted_idle` is what the box's learned line says its Idle-CPU will settle at with its
/// current sessions: the reported figure is a moving average that lags a rising load, so the
/// lower of the two is used (in steady state they agree).
pub fn headroom(r: &BoxReport, knobs: &Knobs, cost: (u64, CostSource), predicted_idle: Option<u32>, others_sps: u64) -> Headroom {
    let k = u64::from(knobs.channels_per_call.max(1));
    let sessions = r.max_sessions.saturating_sub(r.session_count) / k;
    let floor = u64::from(r.min_idle_cpu_micro) + u64::from(knobs.cpu_margin_micro);
    let idle = predicted_idle.map_or(r.idle_cpu_micro, |p| p.min(r.idle_cpu_micro));
    let spare = u64::from(idle.min(HUNDRED_PERCENT_MICRO)).saturating_sub(floor);
    let mut cpu_sessions = spare / cost.0.max(1);
    if cost.1 == CostSource::Prior {
        cpu_sessions = cpu_sessions.min(SLOW_START_SESSIONS.max(r.session_count / 2));
    }
    let cpu = cpu_sessions / k;
    // FreeSWITCH decrements its budget before the test `<= 0`, so only sps − 1 get through.
    let rate = r.sps_limit.map(|sps| {
        let calls = sps.saturating_sub(1).saturating_sub(others_sps) / k;
        u32::try_from(calls).unwrap_or(u32::MAX)
    });
    let calls = sessions.min(cpu);
    // The rate budget is per second, the others are concurrent calls: it binds only while its
    // window is spent, which the shards' gate knows (see `BoxAdmission::rate_open`).
    let binding = if cpu < sessions { Binding::Cpu } else { Binding::Sessions };
    Headroom { sessions, cpu, rate, calls, binding }
}

/// Where a CPU cost came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostSource {
    /// Not enough spread in the box's Session-Count yet: the built-in prior, a guess (so CPU
    /// headroom grows by a slow start until the fit takes over).
    Prior,
    /// Not enough spread yet: the operator's `cpu_cost_prior`, trusted as it stands.
    Configured,
    /// A least-squares fit of Idle-CPU against Session-Count over recent heartbeats.
    Fit,
}

/// Learns what one session costs a box in Idle-CPU from its own heartbeats: the slope of a
/// least-squares line through (sessions, Idle-CPU) over the last [`CpuCostFit::WINDOW`] readings,
/// once they have spread over at least [`CpuCostFit::MIN_SPREAD`] sessions. FreeSWITCH reports
/// Idle-CPU as the mean of its last `cpu-idle-smoothing-depth` one-second samples, so each reading
/// is paired with the mean Session-Count of the readings in that window rather than the count now:
/// against the count now the line would lag, and a rising load would look cheaper than it is.
/// Background load (other work on the host) is whatever the line's intercept leaves below 100 %.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuCostFit {
    /// (when, sessions) of recent readings, for the smoothing window's mean.
    recent: VecDeque<(Instant, u64)>,
    /// (mean sessions over the smoothing window, Idle-CPU) per reading.
    samples: VecDeque<(u64, u32)>,
}

impl CpuCostFit {
    pub const WINDOW: usize = 120;
    pub const MIN_SAMPLES: usize = 3;
    pub const MIN_SPREAD: u64 = 5;

    /// One reading taken at `at`; `smoothing` is the span Idle-CPU is averaged over.
    pub fn push(&mut self, at: Instant, session_count: u64, idle_cpu_micro: u32, smoothing: Duration) {
        self.recent.push_back((at, session_count));
        while self.recent.front().is_some_and(|(t, _)| at.saturating_duration_since(*t) >= smoothing.max(Duration::from_millis(1))) {
            self.recent.pop_front();
        }
        let n = self.recent.len().max(1) as u64;
        let mean = self.recent.iter().map(|r| r.1).sum::<u64>().div_ceil(n);
        if self.samples.len() == Self::WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back((mean, idle_cpu_micro));
    }

    /// Forgets the readings (the box restarted: its load history is another box's).
    pub fn clear(&mut self) {
        self.samples.clear();
        self.recent.clear();
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// (slope in millionths of a percent per session, intercept in millionths of a percent), when the
    /// samples have spread.
    fn line(&self) -> Option<(f64, f64)> {
        if self.samples.len() < Self::MIN_SAMPLES {
            return None;
        }
        let lo = self.samples.iter().map(|s| s.0).min()?;
        let hi = self.samples.iter().map(|s| s.0).max()?;
        if hi - lo < Self::MIN_SPREAD {
            return None;
        }
        let n = self.samples.len() as f64;
        let mx = self.samples.iter().map(|s| s.0 as f64).sum::<f64>() / n;
        let my = self.samples.iter().map(|s| f64::from(s.1)).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for &(x, y) in &self.samples {
            let dx = x as f64 - mx;
            sxy += dx * (f64::from(y) - my);
            sxx += dx * dx;
        }
        (sxx > 0.0).then(|| {
            let slope = sxy / sxx;
            (slope, my - slope * mx)
        })
    }

    /// The cost of one session in millionths of a percent: the fit once it has data (never below
    /// `floor`), else `prior`.
    pub fn cost_micro(&self, prior: u64, floor: u64) -> (u64, CostSource) {
        match self.line() {
            Some((slope, _)) => {
                let cost = if slope < 0.0 { (-slope).round() as u64 } else { 0 };
                (cost.max(floor), CostSource::Fit)
            }
            None => (prior.max(floor), CostSource::Prior),
        }
    }

    /// CPU busy with other work (percent, millionths), as the fit's intercept says.
    pub fn background_micro(&self) -> Option<u64> {
        let hundred = f64::from(HUNDRED_PERCENT_MICRO);
        self.line().map(|(_, intercept)| (hundred - intercept).clamp(0.0, hundred) as u64)
    }

    /// Idle-CPU the line predicts for the box once `session_count` sessions have settled: what the
    /// smoothed figure will say when it catches up.
    pub fn predict_idle_micro(&self, session_count: u64) -> Option<u32> {
        let (slope, intercept) = self.line()?;
        let y = intercept + slope.min(0.0) * session_count as f64;
        Some(y.clamp(0.0, f64::from(HUNDRED_PERCENT_MICRO)) as u32)
    }
}

/// Sessions per second started on a box by others than fsroute, from two readings of its
/// `Session-Since-Startup` and fsroute's own starts there in between (each call is `k` sessions).
/// Rounded up: an underestimate would spend the box's budget twice.
pub fn others_sps(since_startup_delta: u64, own_calls_delta: u64, k: u32, elapsed_ms: u64) -> u64 {
    if elapsed_ms == 0 {
        return 0;
    }
    let others = since_startup_delta.saturating_sub(own_calls_delta.saturating_mul(u64::from(k.max(1))));
    (others.saturating_mul(1000)).div_ceil(elapsed_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u32 = PERCENT_MICRO as u32;

    fn fit(cost: u64) -> (u64, CostSource) {
        (cost, CostSource::Fit)
    }

    #[test]
    fn until_the_cost_is_learned_cpu_headroom_grows_by_a_slow_start_step_per_reading() {
        // The prior says 0.1 points a session: 930 sessions of CPU on an idle box. Unproven, it may
        // grow by 10 (or by half as many as the box carries) per reading.
        let h = headroom(&report(0, 1000, 95, None, 0), &knobs(1, 2), (100_000, CostSource::Prior), None, 0);
        assert_eq!((h.cpu, h.binding), (SLOW_START_SESSIONS, Binding::Cpu));
        let h = headroom(&report(12, 1000, 91, None, 0), &knobs(1, 2), (100_000, CostSource::Prior), None, 0);
        assert_eq!(h.cpu, SLOW_START_SESSIONS);
        let h = headroom(&report(60, 1000, 91, None, 0), &knobs(1, 2), (100_000, CostSource::Prior), None, 0);
        assert_eq!(h.cpu, 30);
        let h = headroom(&report(40, 1000, 91, None, 0), &knobs(1, 2), (100_000, CostSource::Fit), None, 0);
        assert_eq!(h.cpu, 890);
        // An operator's own cpu_cost_prior is trusted as it stands: no slow start.
        let h = headroom(&report(40, 1000, 91, None, 0), &knobs(1, 2), (100_000, CostSource::Configured), None, 0);
        assert_eq!(h.cpu, 890);
    }

    fn knobs(k: u32, margin_points: u32) -> Knobs {
        Knobs { channels_per_call: k, cpu_margin_micro: margin_points * P }
    }

    fn report(s: u64, m: u64, idle_points: u32, sps: Option<u64>, min_idle_points: u32) -> BoxReport {
        BoxReport { session_count: s, max_sessions: m, idle_cpu_micro: idle_points * P, sps_limit: sps, min_idle_cpu_micro: min_idle_points * P }
    }

    #[test]
    fn an_idle_box_is_limited_by_max_sessions_and_each_call_counts_once() {
        // The OpenSIPS formula gives floor(0.4 × 1000) − 600 = 0 for this box; it can take 400.
        let h = headroom(&report(600, 1000, 40, None, 0), &knobs(1, 0), fit(P as u64 / 20), None, 0);
        assert_eq!((h.sessions, h.cpu, h.calls, h.binding), (400, 800, 400, Binding::Sessions));
    }

    #[test]
    fn a_box_busy_with_other_work_is_limited_by_cpu_first() {
        // 50 % background, 100 sessions at 0.2 points each: 30 % idle left, min-idle-cpu 10, margin
        // 2: 18 points / 0.2 = 90 sessions, while Max-Sessions would allow 900.
        let h = headroom(&report(100, 1000, 30, Some(30), 10), &knobs(1, 2), fit(200_000), None, 0);
        assert_eq!((h.sessions, h.cpu, h.calls, h.binding), (900, 90, 90, Binding::Cpu));
        // Two channels per call halve it, in calls.
        let h = headroom(&report(100, 1000, 30, None, 10), &knobs(2, 2), fit(200_000), None, 0);
        assert_eq!((h.sessions, h.cpu), (450, 45));
    }

    #[test]
    fn below_the_cpu_floor_there_is_no_cpu_headroom() {
        let h = headroom(&report(10, 1000, 8, None, 10), &knobs(1, 0), fit(100_000), None, 0);
        assert_eq!((h.cpu, h.calls, h.binding), (0, 0, Binding::Cpu));
    }

    #[test]
    fn a_low_sps_limit_binds_as_sps_minus_one_less_others_in_calls() {
        let h = headroom(&report(0, 1000, 100, Some(10), 0), &knobs(1, 0), fit(1_000), None, 0);
        assert_eq!((h.rate, h.binding), (Some(9), Binding::Sessions));
        assert_eq!(h.calls, 1000, "the rate is a gate per window, not a cap on concurrency");
        let h = headroom(&report(0, 1000, 100, Some(10), 0), &knobs(2, 0), fit(1_000), None, 3);
        assert_eq!(h.rate, Some(3), "(10 − 1 − 3) / 2");
        let h = headroom(&report(0, 1000, 100, Some(1), 0), &knobs(1, 0), fit(1_000), None, 0);
        assert_eq!(h.rate, Some(0), "sps 1 admits nothing: FreeSWITCH's test is <= 0 after decrementing");
    }

    #[test]
    fn full_and_overfull_boxes_have_no_headroom_and_nothing_wraps() {
        let h = headroom(&report(1000, 1000, 100, None, 0), &knobs(1, 0), fit(1), None, 0);
        assert_eq!(h.calls, 0);
        let h = headroom(&report(5000, 1000, 100, None, 0), &knobs(1, 0), fit(1), None, 0);
        assert_eq!(h.calls, 0);
        let r = BoxReport { max_sessions: u64::MAX, idle_cpu_micro: u32::MAX, sps_limit: Some(u64::MAX), ..BoxReport::default() };
        let h = headroom(&r, &knobs(1, 0), fit(0), None, 0);
        assert_eq!(h.rate, Some(u32::MAX));
        assert_eq!(h.cpu, 100 * PERCENT_MICRO, "Idle-CPU above 100 % is read as 100 %, cost 0 as 1");
    }

    #[test]
    fn the_cost_fit_learns_the_slope_and_background_of_a_box() {
        let mut fit = CpuCostFit::default();
        assert_eq!(fit.cost_micro(100_000, 10_000), (100_000, CostSource::Prior));
        // Idle = 100 − 30 − 0.25 × S, rounded to whole percent as FreeSWITCH does.
        let t0 = Instant::now();
        for (i, s) in [0u64, 8, 16, 24, 40, 60, 80, 100, 120].into_iter().enumerate() {
            let idle = (70.0 - 0.25 * s as f64).round() as u32;
            fit.push(t0 + Duration::from_secs(10 * i as u64), s, idle * P, Duration::from_secs(1));
        }
        let (cost, src) = fit.cost_micro(100_000, 10_000);
        assert_eq!(src, CostSource::Fit);
        assert!((240_000..=260_000).contains(&cost), "{cost}");
        let bg = fit.background_micro().unwrap();
        assert!((29 * PERCENT_MICRO..=31 * PERCENT_MICRO).contains(&bg), "{bg}");
    }

    #[test]
    fn the_cost_fit_waits_for_spread_and_never_goes_below_its_floor() {
        let mut fit = CpuCostFit::default();
        let t0 = Instant::now();
        let at = |i: u64| t0 + Duration::from_secs(i);
        for i in 0..20 {
            fit.push(at(i), 50, 60 * P, Duration::from_secs(1));
        }
        assert_eq!(fit.cost_micro(100_000, 10_000).1, CostSource::Prior, "no spread in Session-Count");
        // A box whose Idle-CPU does not fall with its sessions costs the floor, not zero.
        for s in 0..20 {
            fit.push(at(20 + s), s * 10, 90 * P, Duration::from_secs(1));
        }
        assert_eq!(fit.cost_micro(100_000, 10_000), (10_000, CostSource::Fit));
        fit.clear();
        assert!(fit.is_empty());
    }

    #[test]
    fn a_smoothed_idle_cpu_is_fitted_against_the_sessions_it_averaged_and_predicts_the_settled_value() {
        // Idle = 100 − 50 − 0.8 × S, reported as the mean of the last 3 one-second samples while the
        // load rises by 5 sessions a second: against the count now, the slope would come out low.
        let t0 = Instant::now();
        let mut fit = CpuCostFit::default();
        let truth = |s: u64| 50.0 - 0.8 * s as f64;
        let mut ring = std::collections::VecDeque::from(vec![truth(0); 3]);
        for i in 0..12u64 {
            let s = 5 * i;
            ring.pop_front();
            ring.push_back(truth(s));
            let reported = ring.iter().sum::<f64>() / 3.0;
            fit.push(t0 + Duration::from_secs(i), s, (reported * 1e6) as u32, Duration::from_secs(3));
        }
        let (cost, _) = fit.cost_micro(100_000, 5_000);
        assert!((760_000..=840_000).contains(&cost), "{cost}");
        // With 55 sessions now, the reported figure still says ~6 %; the line says the box will settle at 6.
        let predicted = fit.predict_idle_micro(55).unwrap();
        assert!((5 * P..=7 * P).contains(&predicted), "{predicted}");
        let r = report(55, 1000, 10, None, 0);
        let h = headroom(&r, &knobs(1, 0), fit.cost_micro(100_000, 5_000), Some(predicted), 0);
        let lagging = headroom(&r, &knobs(1, 0), fit.cost_micro(100_000, 5_000), None, 0);
        assert!(h.cpu < lagging.cpu, "the prediction must win over a lagging report: {} vs {}", h.cpu, lagging.cpu);
    }

    #[test]
    fn others_rate_comes_from_since_startup_less_fsroutes_own_sessions_rounded_up() {
        // 50 sessions created in 2 s, 20 of them fsroute's calls: 15/s from elsewhere.
        assert_eq!(others_sps(50, 20, 1, 2000), 15);
        assert_eq!(others_sps(50, 20, 2, 2000), 5);
        assert_eq!(others_sps(41, 20, 2, 1000), 1, "rounded up");
        assert_eq!(others_sps(10, 20, 1, 1000), 0, "never negative");
        assert_eq!(others_sps(10, 0, 1, 0), 0);
    }
}
