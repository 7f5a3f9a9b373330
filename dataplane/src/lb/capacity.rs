//! FreeSWITCH heartbeat → load_balancer capacity under `capacity_model = "opensips"`, counted in
//! calls: OpenSIPS's idea, which counts each call twice (docs/ADMISSION.md, "Why not OpenSIPS's
//! formula"); the default model lives in `controlplane/src/headroom.rs` and `crate::admission`. Pure integer arithmetic: Idle-CPU arrives as fixed-point millionths of a
//! percent, so 78.400000 % of 1000 sessions is exactly 784 calls (a float gives 783.99… and truncates to
//! 783), and nothing here can wrap the way OpenSIPS's negative float → unsigned conversion does (#3294).

/// 100 % Idle-CPU in millionths of a percent, the unit of `esl`'s `idle_cpu_micro`.
pub const HUNDRED_PERCENT_MICRO: u32 = 100_000_000;

/// What one heartbeat says about a box, in calls (not FreeSWITCH sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsCapacity {
    /// `floor(c × M / k)`: the calls the box can carry at all, scaled by its idle CPU.
    pub capacity: u32,
    /// `max(0, ceil(S / k) − p_hb)`: calls that reached the box some other way than through fsroute.
    pub others: u32,
    /// `max(0, capacity − others)`: the most calls fsroute may hold on the box until the next heartbeat.
    /// This is what goes into [`super::LbResource::effective`].
    pub effective: u32,
}

impl FsCapacity {
    /// `max(0, effective − p)` with `p` = fsroute's calls on the box now: every call fsroute routes or
    /// ends between two heartbeats moves this by exactly one (the fix for OpenSIPS #3297, where a call
    /// costs only `1 − c`).
    pub fn available(&self, p: u32) -> u32 {
        self.effective.saturating_sub(p)
    }
}

/// Capacity from one heartbeat. `idle_cpu_micro` is Idle-CPU in millionths of a percent (`78.400000` →
/// `78_400_000`; values above 100 % are read as 100 %), `max_sessions` M and `session_count` S as reported,
/// `channels_per_call` k the FreeSWITCH sessions one call occupies (a bridged call is 2; config validation
/// rejects 0, and here 0 is read as 1 so a bad value can never divide by zero), `p_hb` fsroute's own calls
/// on the box when the heartbeat arrived.
///
/// `capacity = floor(c × M / k)`, `others = max(0, ceil(S / k) − p_hb)`, `effective = max(0, capacity −
/// others)`. Products are taken in `u128` (10⁸ × 2⁶⁴ fits), differences saturate at 0 and results that
/// do not fit a `u32` saturate at `u32::MAX`.
pub fn capacity_from_heartbeat(
    idle_cpu_micro: u32,
    max_sessions: u64,
    session_count: u64,
    channels_per_call: u32,
    p_hb: u32,
) -> FsCapacity {
    let k = u64::from(channels_per_call.max(1));
    let idle = u128::from(idle_cpu_micro.min(HUNDRED_PERCENT_MICRO));
    let capacity =
        idle * u128::from(max_sessions) / (u128::from(HUNDRED_PERCENT_MICRO) * u128::from(k));
    let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
    // Sessions are counted in calls rounding up: one half-set-up bridged call still takes a call's room.
    let others = session_count.div_ceil(k).saturating_sub(u64::from(p_hb));
    let others = u32::try_from(others).unwrap_or(u32::MAX);
    FsCapacity {
        capacity,
        others,
        effective: capacity.saturating_sub(others),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE_78_4: u32 = 78_400_000;

    #[test]
    fn architecture_vector_784_capacity_60_others_684_available_674_after_ten_more_calls() {
        let cap = capacity_from_heartbeat(IDLE_78_4, 1000, 100, 1, 40);
        assert_eq!(
            cap,
            FsCapacity {
                capacity: 784,
                others: 60,
                effective: 724
            }
        );
        assert_eq!(cap.available(40), 684);
        assert_eq!(cap.available(50), 674);
    }

    #[test]
    fn architecture_vector_half_idle_box_with_all_sessions_busy_has_nothing_available() {
        let cap = capacity_from_heartbeat(50_000_000, 20, 20, 1, 0);
        assert_eq!((cap.capacity, cap.others, cap.effective), (10, 20, 0));
        assert_eq!(cap.available(0), 0);
    }

    #[test]
    fn idle_78_4_percent_of_1000_sessions_is_exactly_784_in_fixed_point() {
        assert_eq!(
            capacity_from_heartbeat(IDLE_78_4, 1000, 0, 1, 0).capacity,
            784
        );
        // Floors only when the exact product is fractional.
        assert_eq!(
            capacity_from_heartbeat(99_999_999, 100, 0, 1, 0).capacity,
            99
        );
        assert_eq!(capacity_from_heartbeat(33_333_334, 3, 0, 1, 0).capacity, 1);
        assert_eq!(capacity_from_heartbeat(33_333_333, 3, 0, 1, 0).capacity, 0);
        assert_eq!(
            capacity_from_heartbeat(HUNDRED_PERCENT_MICRO, 1000, 0, 1, 0).capacity,
            1000
        );
    }

    #[test]
    fn idle_cpu_above_100_percent_is_read_as_100() {
        assert_eq!(
            capacity_from_heartbeat(150_000_000, 1000, 0, 1, 0).capacity,
            1000
        );
        assert_eq!(
            capacity_from_heartbeat(u32::MAX, 1000, 0, 1, 0).capacity,
            1000
        );
    }

    #[test]
    fn channels_per_call_two_halves_capacity_and_counts_sessions_in_calls_rounding_up() {
        let cap = capacity_from_heartbeat(IDLE_78_4, 1000, 101, 2, 20);
        // floor(784 / 2) = 392; ceil(101 / 2) = 51 calls on the box, 20 of them fsroute's.
        assert_eq!((cap.capacity, cap.others, cap.effective), (392, 31, 361));
        // An odd session budget cannot hold half a call.
        assert_eq!(
            capacity_from_heartbeat(HUNDRED_PERCENT_MICRO, 1001, 0, 2, 0).capacity,
            500
        );
        assert_eq!(
            capacity_from_heartbeat(HUNDRED_PERCENT_MICRO, 1000, 1, 2, 0).others,
            1
        );
    }

    #[test]
    fn channels_per_call_zero_is_read_as_one_instead_of_dividing_by_zero() {
        assert_eq!(
            capacity_from_heartbeat(IDLE_78_4, 1000, 100, 0, 40),
            capacity_from_heartbeat(IDLE_78_4, 1000, 100, 1, 40)
        );
    }

    #[test]
    fn more_own_calls_than_reported_sessions_never_makes_others_negative() {
        // fsroute routed 40 calls, the heartbeat was sampled before most of them arrived.
        let cap = capacity_from_heartbeat(HUNDRED_PERCENT_MICRO, 100, 10, 1, 40);
        assert_eq!((cap.capacity, cap.others, cap.effective), (100, 0, 100));
    }

    #[test]
    fn box_reporting_more_sessions_than_max_has_zero_effective_not_a_wrapped_huge_number() {
        // OpenSIPS #3294: c × (M − (S − p)) < 0 stored into an unsigned int becomes 4294967295.
        let cap = capacity_from_heartbeat(50_000_000, 20, 30, 1, 5);
        assert_eq!((cap.capacity, cap.others, cap.effective), (10, 25, 0));
        assert_eq!(cap.available(5), 0);
        assert_eq!(cap.available(u32::MAX), 0);
    }

    #[test]
    fn max_sessions_zero_means_no_capacity() {
        let cap = capacity_from_heartbeat(HUNDRED_PERCENT_MICRO, 0, 0, 1, 0);
        assert_eq!(cap.effective, 0);
    }

    #[test]
    fn extreme_reports_saturate_instead_of_overflowing() {
        let cap = capacity_from_heartbeat(HUNDRED_PERCENT_MICRO, u64::MAX, 0, 1, 0);
        assert_eq!((cap.capacity, cap.effective), (u32::MAX, u32::MAX));
        let cap = capacity_from_heartbeat(HUNDRED_PERCENT_MICRO, u64::MAX, u64::MAX, 1, 0);
        assert_eq!((cap.others, cap.effective), (u32::MAX, 0));
        let cap = capacity_from_heartbeat(
            HUNDRED_PERCENT_MICRO,
            u64::MAX,
            u64::MAX,
            u32::MAX,
            u32::MAX,
        );
        // M / k = 2³² + 1 calls does not fit and saturates; ceil(S / k) − p_hb = 2³² + 1 − (2³² − 1) = 2.
        assert_eq!(
            (cap.capacity, cap.others, cap.effective),
            (u32::MAX, 2, u32::MAX - 2)
        );
    }
}
