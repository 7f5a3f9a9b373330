//! The smooth weighted round-robin schedule behind algorithm 4. It is built once per routing-table
//! rebuild, so a pick is one array read at `cursor % len` and shards need no shared RR state (OpenSIPS
//! keeps `last`/`rr_count` in shared memory and races on it).
//!
//! The order is nginx's smooth weighted round-robin (every step each member gains its weight, the
//! largest total is served and pays back the sum), which interleaves 5/1/1 as `a a b a c a a`. It was
//! chosen over a Sainte-Laguë/stride order (`a a a b c a a` for 5/1/1) because it keeps every member
//! closer to its ideal share at every prefix: over random weight sets its worst lag was ~1.1 picks
//! against ~1.8.

/// Longest schedule we build; longer weight sums are scaled down proportionally.
pub(crate) const MAX_SCHEDULE: usize = 65_536;
/// Building costs len × members steps; bound it so a huge set cannot stall the control plane. Sets of
/// up to 128 eligible members get the full 65,536 slots; larger ones get fewer (but never fewer than one
/// slot per member), which coarsens their weights. Dispatcher sets are tens of boxes, not thousands.
const BUILD_BUDGET: usize = 1 << 23;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Reduces weights by their gcd and, if their sum exceeds `cap`, scales them to about `cap` while
/// keeping every member at least 1 (a destination with weight > 0 must get some calls).
fn normalise(weights: &mut [u64], cap: u64) {
    let g = weights.iter().copied().fold(0, gcd);
    if g > 1 {
        for w in weights.iter_mut() {
            *w /= g;
        }
    }
    let total: u64 = weights.iter().sum();
    if total > cap {
        for w in weights.iter_mut() {
            // round(w * cap / total) in u128, so huge weights cannot overflow.
            let scaled = (u128::from(*w) * u128::from(cap) * 2 + u128::from(total))
                / (u128::from(total) * 2);
            *w = (scaled as u64).max(1);
        }
        let g = weights.iter().copied().fold(0, gcd);
        if g > 1 {
            for w in weights.iter_mut() {
                *w /= g;
            }
        }
    }
}

/// Above this many eligible members the nginx order (len × members steps) gives way to a stride
/// order built with a heap in len × log(members) steps, so a 10,000-box set costs milliseconds on
/// the control plane instead of a hundred.
const NGINX_MAX_MEMBERS: usize = BUILD_BUDGET / MAX_SCHEDULE;

/// Builds the schedule for `members` = (member index, weight) pairs, every weight > 0.
pub(crate) fn build_schedule(members: &[(u32, u64)]) -> Vec<u32> {
    if members.is_empty() {
        return Vec::new();
    }
    let n = members.len();
    if n > NGINX_MAX_MEMBERS {
        return build_stride_schedule(members);
    }
    let cap = (BUILD_BUDGET / n).clamp(1, MAX_SCHEDULE).max(n) as u64;
    let mut weights: Vec<u64> = members.iter().map(|&(_, w)| w).collect();
    normalise(&mut weights, cap);
    let total: u64 = weights.iter().sum();
    let weights: Vec<i64> = weights.iter().map(|&w| w as i64).collect();
    let total_i = total as i64;

    let mut current = vec![0i64; n];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..n {
            current[i] += weights[i];
            // Strict '>' keeps ties on the earlier member, like nginx.
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total_i;
        schedule.push(members[best].0);
    }
    debug_assert!(
        current.iter().all(|&c| c == 0),
        "one period must return every member to zero"
    );
    schedule
}

/// Stride order: member i's j-th slot falls at virtual time (j + i/n)/w_i, served in time order.
/// The phase i/n spreads members of equal weight over the period (with a common phase, hundreds
/// of weight-1 boxes would all fall at one instant and be served back to back). Exact fractions.
fn build_stride_schedule(members: &[(u32, u64)]) -> Vec<u32> {
    use std::cmp::{Ordering, Reverse};
    use std::collections::BinaryHeap;

    #[derive(PartialEq, Eq)]
    struct Slot {
        num: u64,
        den: u64,
        pos: usize,
    }
    impl Ord for Slot {
        fn cmp(&self, o: &Self) -> Ordering {
            (u128::from(self.num) * u128::from(o.den))
                .cmp(&(u128::from(o.num) * u128::from(self.den)))
                .then(self.pos.cmp(&o.pos))
        }
    }
    impl PartialOrd for Slot {
        fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
            Some(self.cmp(o))
        }
    }

    let mut weights: Vec<u64> = members.iter().map(|&(_, w)| w).collect();
    normalise(&mut weights, (MAX_SCHEDULE as u64).max(members.len() as u64));
    let total: u64 = weights.iter().sum();
    let n = members.len() as u64;
    let mut heap: BinaryHeap<Reverse<Slot>> = weights
        .iter()
        .enumerate()
        .map(|(pos, &w)| Reverse(Slot { num: pos as u64, den: n * w, pos }))
        .collect();
    let mut schedule = Vec::with_capacity(total as usize);
    while let Some(Reverse(slot)) = heap.pop() {
        schedule.push(members[slot.pos].0);
        // The next slot of this member, until it has had its w slots this period.
        let next = slot.num + n;
        if next < slot.den {
            heap.push(Reverse(Slot { num: next, den: slot.den, pos: slot.pos }));
        }
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ws: &[u64]) -> Vec<(u32, u64)> {
        ws.iter().enumerate().map(|(i, &w)| (i as u32, w)).collect()
    }

    #[test]
    fn weights_five_one_one_interleave_smoothly() {
        assert_eq!(
            build_schedule(&members(&[5, 1, 1])),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(build_schedule(&members(&[1, 1])), vec![0, 1]);
        assert_eq!(build_schedule(&members(&[1, 1, 1])), vec![0, 1, 2]);
        // Equal non-unit weights reduce by their gcd to the same alternation (OpenSIPS #1889).
        assert_eq!(build_schedule(&members(&[7, 7, 7])), vec![0, 1, 2]);
    }

    #[test]
    fn schedule_is_reduced_by_the_gcd() {
        assert_eq!(build_schedule(&members(&[50, 30, 20])).len(), 10);
    }

    #[test]
    fn schedule_keeps_the_caller_indices() {
        assert_eq!(build_schedule(&[(7, 1), (3, 2)]), vec![3, 7, 3]);
    }

    #[test]
    fn oversized_weight_sums_are_capped_but_keep_small_members() {
        let s = build_schedule(&members(&[u64::from(u32::MAX), 1, 1_000_000]));
        assert!(s.len() <= MAX_SCHEDULE + 3, "len {}", s.len());
        let count = |m| s.iter().filter(|&&x| x == m).count();
        assert!(count(1) >= 1, "weight-1 member must keep a slot");
        assert!(count(2) >= 1);
        let share0 = count(0) as f64 / s.len() as f64;
        assert!(
            (share0 - 4294.967295 / 4295.967296).abs() < 1e-3,
            "share {share0}"
        );
    }

    #[test]
    fn every_prefix_stays_within_two_picks_of_the_ideal_share() {
        let sets: [&[u64]; 5] = [
            &[5, 1, 1],
            &[50, 30, 20],
            &[3, 7, 11, 13],
            &[100, 1],
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ];
        for ws in sets {
            let s = build_schedule(&members(ws));
            let total: u64 = ws.iter().sum::<u64>() / ws.iter().copied().fold(0, gcd);
            let w: Vec<f64> = ws.iter().map(|&x| x as f64).collect();
            let wsum: f64 = w.iter().sum();
            let mut counts = vec![0f64; ws.len()];
            for (t, &m) in s.iter().enumerate() {
                counts[m as usize] += 1.0;
                for i in 0..ws.len() {
                    let ideal = (t + 1) as f64 * w[i] / wsum;
                    assert!(
                        (counts[i] - ideal).abs() < 2.0,
                        "weights {ws:?} member {i} at {t}"
                    );
                }
            }
            assert_eq!(s.len() as u64, total);
        }
    }
}

#[cfg(test)]
mod large_set_tests {
    use super::*;

    #[test]
    fn a_ten_thousand_member_set_builds_a_stride_schedule_with_exact_shares() {
        let members: Vec<(u32, u64)> = (0..10_000u32).map(|i| (i, u64::from(i % 3 + 1))).collect();
        let s = build_schedule(&members);
        // Weights 1,2,3 repeating: the sum (20,000) fits, so every member gets exactly its weight.
        assert_eq!(s.len(), 19_999);
        let mut counts = vec![0u32; 10_000];
        for &m in &s {
            counts[m as usize] += 1;
        }
        assert!(counts.iter().enumerate().all(|(i, &c)| c == i as u32 % 3 + 1));
    }

    #[test]
    fn the_stride_order_interleaves_instead_of_bunching() {
        let members: Vec<(u32, u64)> = (0..300u32).map(|i| (i, if i == 0 { 300 } else { 1 })).collect();
        let s = build_schedule(&members);
        // Member 0 holds half the weight: no long run of it, no long gap between its slots.
        let longest_run = s.split(|&m| m != 0).map(<[u32]>::len).max().unwrap();
        assert!(longest_run <= 2, "{longest_run}");
    }
}
