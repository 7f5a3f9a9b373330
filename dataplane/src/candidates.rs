//! The one way fsroute tries candidates for a call: ask a ranking for the best candidate not yet
//! tried, ask the candidate to take the call, and on a refusal (another shard took the last unit,
//! a box's gate closed) move on to the next best. The dispatcher's admission, the load_balancer's
//! `lb_route` and a failover's next attempt all go through [`select_with`]; only their ranking
//! and what "take the call" means differ. Model: pingora's `select_with(key, max_iterations,
//! accept)`.

/// Candidates already tried, by index: bit `i` for candidate `i`. Sets and groups are small; an
/// index past the mask's 64 bits cannot be marked, and [`select_with`]'s iteration bound is what
/// ends the search then.
pub type Tried = u64;

/// Bits of [`Tried`]: indices at or past it cannot be marked.
pub const TRIED_BITS: usize = 64;

pub fn is_tried(tried: Tried, i: usize) -> bool {
    i < TRIED_BITS && (tried >> i) & 1 == 1
}

/// `tried` with candidate `i` marked (unchanged when `i` cannot be marked).
pub fn mark_tried(tried: Tried, i: usize) -> Tried {
    if i < TRIED_BITS {
        tried | 1 << i
    } else {
        tried
    }
}

/// The first candidate `accept` takes, with what it gave, trying at most `max_iterations`.
/// `rank(skip)` names the best candidate not in `skip` (None: no candidate left); each one
/// `accept` refuses is added to `skip` before the next call.
pub fn select_with<T>(
    tried: Tried,
    max_iterations: usize,
    mut rank: impl FnMut(Tried) -> Option<usize>,
    mut accept: impl FnMut(usize) -> Option<T>,
) -> Option<(usize, T)> {
    let mut skip = tried;
    for _ in 0..max_iterations {
        let i = rank(skip)?;
        if let Some(taken) = accept(i) {
            return Some((i, taken));
        }
        skip = mark_tried(skip, i);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_candidate_is_skipped_and_the_next_best_takes_the_call() {
        // Candidates ranked 0, 1, 2; candidate 0 refuses.
        let rank = |skip: Tried| (0..3).find(|&i| !is_tried(skip, i));
        let got = select_with(0, 3, rank, |i| (i != 0).then_some(i * 10));
        assert_eq!(got, Some((1, 10)));
    }

    #[test]
    fn candidates_already_tried_are_never_offered() {
        let rank = |skip: Tried| (0..3).find(|&i| !is_tried(skip, i));
        assert_eq!(select_with(0b011, 3, rank, Some), Some((2, 2)));
        assert_eq!(select_with(0b111, 3, rank, Some), None);
    }

    #[test]
    fn the_iteration_bound_ends_a_search_that_cannot_mark_its_candidate() {
        let mut asked = 0;
        let got = select_with(0, 5, |_| Some(100), |_| {
            asked += 1;
            None::<()>
        });
        assert_eq!((got, asked), (None, 5));
    }
}
