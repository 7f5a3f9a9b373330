//! Weighted rendezvous (highest-random-weight) hashing, fsroute's default for the hash algorithms.
//! Every eligible destination scores the call independently and the best score wins, so taking one
//! destination out moves only the calls it was winning; OpenSIPS's cumulative-weight pick reshuffles
//! calls between the survivors too. The hash is our own fixed-seed function: the mapping is part of
//! fsroute's on-the-wire behaviour (a CANCEL or ACK handled by another instance or after an upgrade must
//! land where its INVITE went), so it must not depend on std's unspecified `DefaultHasher`, nor on a
//! libm: scores are integers (equal weights compare the hash bits, unequal weights a fixed-point
//! `-log2`, see `pick`), so every platform and version maps a call alike. They replaced an f64
//! `-ln(u) / w` score: equal weights pick exactly as it did, unequal weights except for near ties
//! (docs/OPENSIPS.md §1.3), so the change moved no call in the tests.

use super::log2_table::{INV_C, LOG2_C, SERIES_Q63, SLOPE};
use crate::hash::fmix64;

/// Domain seeds, so a call key can never hash like a member key. Frozen: changing them remaps calls.
const CALL_SEED: u64 = 0x6673_726f_7574_6543; // "fsrouteC"
const MEMBER_SEED: u64 = 0x6673_726f_7574_654d; // "fsrouteM"

/// Absorbs one length-prefixed part. The prefix makes a sequence of parts unambiguous, so
/// `("ab", "c")` and `("a", "bc")` are different keys even though their bytes concatenate alike.
#[inline]
fn absorb(mut h: u64, part: &[u8]) -> u64 {
    h = fmix64(h ^ part.len() as u64);
    let mut chunks = part.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = fmix64(h ^ w);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut buf = [0u8; 8];
        buf[..tail.len()].copy_from_slice(tail);
        h = fmix64(h ^ u64::from_le_bytes(buf));
    }
    h
}

/// The 64-bit rendezvous hash of a call's keys (k2 may be empty). Exposed so a caller that already
/// hashed a call (e.g. to pick its owning shard) can reuse it with [`super::Selector::pick_rendezvous`].
pub fn rendezvous_call_hash(k1: &[u8], k2: &[u8]) -> u64 {
    absorb(absorb(CALL_SEED, k1), k2)
}

/// A destination's identity hash. `ordinal` separates destinations that share a URI (the n-th repeat
/// of a key gets ordinal n), which would otherwise tie on every call and leave the later copy idle.
pub(crate) fn member_key_hash(key: &str, ordinal: u64) -> u64 {
    let h = absorb(MEMBER_SEED, key.as_bytes());
    if ordinal == 0 {
        h
    } else {
        fmix64(h ^ ordinal.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) index: u32,
    pub(crate) key_hash: u64,
    /// > 0 and at most `u32::MAX` (a member's weight, or 1 when every active weight is 0).
    pub(crate) weight: u64,
}

/// Fractional bits of [`neg_log2_unit`].
pub(crate) const SCORE_FRAC_BITS: u32 = 44;

/// `a * b` for Q63 fixed-point values (truncated).
#[inline(always)]
fn mul_q63(a: u64, b: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) >> 63) as u64
}

/// `-log2(u)` in Q44 fixed point, where u = (2·(x >> 12) + 1) / 2^53 lies in the open interval
/// (0, 1): the top 52 bits, centred in their cell, so u is never 0 (an infinite score) nor 1 (a
/// score of 0 that would beat every weight). Within 2^-41 of the exact value (tested): the table
/// reduces the mantissa 1.f to 1 + t with t < 2^-8, and the series to t^4 leaves less than
/// t^5 log2(e) / 5 < 2^-41.7; the roundings add about 2^-44.
#[inline(always)]
pub(crate) fn neg_log2_unit(x: u64) -> u64 {
    let v = ((x >> 12) << 1) | 1; // u = v / 2^53, 1 <= v < 2^53
    let lz = v.leading_zeros(); // 11..=63
    let m = v << lz; // v's mantissa 1.f in Q63
    let i = ((m >> 55) & 0xff) as usize; // c = 1 + i/256 <= 1.f < c + 1/256
    let t = mul_q63(m & ((1 << 55) - 1), INV_C[i]); // 1.f / c - 1, in [0, 2^-8)
    let s = &SERIES_Q63;
    let p = s[0] - mul_q63(s[1] - mul_q63(s[2] - mul_q63(s[3], t), t), t);
    let log2_mantissa = LOG2_C[i] + mul_q63(p, t); // log2(1.f) in Q63
    let rounded = (log2_mantissa + (1 << (62 - SCORE_FRAC_BITS))) >> (63 - SCORE_FRAC_BITS);
    // -log2(u) = 53 - log2(v) = 53 - (63 - lz) - log2(1.f). Saturating: within 2^-41 of 1.0,
    // log2(1.f) may round to just past it, and u so close to 1 scores 0 either way.
    ((u64::from(lz) - 10) << SCORE_FRAC_BITS).saturating_sub(rounded)
}

/// A lower bound on [`neg_log2_unit`]`(x)`, for a fraction of its cost: the tangent of log2 at the
/// table cell's start lies above the curve (log2 is concave), so it bounds log2(1.f) from above,
/// within t^2 log2(e) / 2 < 2^-16.5; 16 units of Q44 (2^-40) cover `neg_log2_unit`'s own error.
#[inline(always)]
pub(crate) fn neg_log2_unit_lower(x: u64) -> u64 {
    let v = ((x >> 12) << 1) | 1;
    let lz = v.leading_zeros();
    let m = v << lz;
    let i = ((m >> 55) & 0xff) as usize;
    let above = LOG2_C[i] + mul_q63(m & ((1 << 55) - 1), SLOPE[i]) + 2;
    ((u64::from(lz) - 10) << SCORE_FRAC_BITS).saturating_sub((above >> (63 - SCORE_FRAC_BITS)) + 17)
}

/// Picks among `candidates` (active destinations with weight > 0, or all active ones at weight 1);
/// `equal_weights` says they all have the same weight (the [`super::Selector`] knows it once).
///
/// Score = -log2(u) / w with u uniform in (0, 1): an Exp(w ln 2) variable, and the minimum of
/// independent Exp(w_i) lands on i with probability w_i / Σw, which is exactly the weighting we want.
/// Exact ties go to the earlier destination.
///
/// With equal weights the score falls as u grows, so the pick is the candidate with the largest
/// hash bits u is made of: an integer compare, exactly the pick of the float score used before
/// (`-ln(u) / w` in f64, kept in the tests as the oracle). With unequal weights -log2(u) is the
/// fixed point [`neg_log2_unit`] and candidates compare by cross-multiplying (L_i · w_best <
/// L_best · w_i in 128 bits, exact for the fixed-point values); a candidate whose lower bound
/// ([`neg_log2_unit_lower`]) already loses is not scored, which changes no pick. It differs from the float score only
/// where the two best scores are within about 2^-41 of each other (in -log2 units, relative to
/// scores of order 1): 0 of 1,000,000 calls mapped differently in the test.
#[inline]
pub(crate) fn pick(candidates: &[Candidate], equal_weights: bool, call_hash: u64) -> Option<usize> {
    let (first, rest) = candidates.split_first()?;
    let mut best = first.index;
    if equal_weights {
        let mut best_bits = fmix64(call_hash ^ first.key_hash) >> 12;
        for c in rest {
            let bits = fmix64(call_hash ^ c.key_hash) >> 12;
            if bits > best_bits {
                best_bits = bits;
                best = c.index;
            }
        }
    } else {
        let mut best_score = u128::from(neg_log2_unit(fmix64(call_hash ^ first.key_hash)));
        let mut best_weight = u128::from(first.weight);
        for c in rest {
            let h = fmix64(call_hash ^ c.key_hash);
            let weight = u128::from(c.weight);
            // Cannot beat the best (a tie goes to the best, the earlier): skip the full score.
            if u128::from(neg_log2_unit_lower(h)) * best_weight >= best_score * weight {
                continue;
            }
            let score = u128::from(neg_log2_unit(h));
            if score * best_weight < best_score * weight {
                best_score = score;
                best_weight = weight;
                best = c.index;
            }
        }
    }
    Some(best as usize)
}

/// A candidate as the float pick had it (1 / weight precomputed, so a pick multiplies).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct FloatCandidate {
    index: u32,
    key_hash: u64,
    inv_weight: f64,
}

#[cfg(any(test, feature = "testing"))]
impl From<&Candidate> for FloatCandidate {
    fn from(c: &Candidate) -> Self {
        FloatCandidate { index: c.index, key_hash: c.key_hash, inv_weight: 1.0 / c.weight as f64 }
    }
}

/// Maps 64 random bits to u in (0, 1) the way the float score did (53 bits would not do: 2^53 - 0.5
/// is not representable and rounds up to exactly 1.0).
#[cfg(any(test, feature = "testing"))]
fn unit(x: u64) -> f64 {
    ((x >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// The float pick fsroute shipped before integer scores (`-ln(u) / w` in f64, with the libm's `ln`):
/// the oracle the tests hold [`pick`] to, and the "before" of the dispatch bench.
#[cfg(any(test, feature = "testing"))]
#[inline]
pub(crate) fn float_pick(candidates: &[FloatCandidate], call_hash: u64) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut best_score = f64::INFINITY;
    for c in candidates {
        let score = -unit(fmix64(call_hash ^ c.key_hash)).ln() * c.inv_weight;
        if score < best_score {
            best_score = score;
            best = Some(c.index as usize);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_hash_separates_key_boundaries() {
        assert_ne!(
            rendezvous_call_hash(b"ab", b"c"),
            rendezvous_call_hash(b"a", b"bc")
        );
        assert_ne!(
            rendezvous_call_hash(b"abc", b""),
            rendezvous_call_hash(b"", b"abc")
        );
        assert_ne!(
            rendezvous_call_hash(b"ab", b""),
            rendezvous_call_hash(b"ab\0", b"")
        );
    }

    #[test]
    fn call_hash_is_frozen() {
        // These literals pin the hash function itself; if this fails, calls move across an upgrade.
        assert_eq!(
            rendezvous_call_hash(b"a84b4c76e66710@pc33.atlanta.com", b""),
            GOLDEN_HASH_CALLID
        );
        assert_eq!(
            rendezvous_call_hash(b"alice", b"atlanta.com"),
            GOLDEN_HASH_FROM
        );
        assert_eq!(member_key_hash("sip:10.0.0.1:5060", 0), GOLDEN_HASH_MEMBER);
    }

    const GOLDEN_HASH_CALLID: u64 = 9_980_125_184_949_707_657;
    const GOLDEN_HASH_FROM: u64 = 5_556_685_629_461_727_256;
    const GOLDEN_HASH_MEMBER: u64 = 11_350_850_821_176_028_598;

    #[test]
    fn duplicate_member_keys_get_distinct_hashes() {
        assert_ne!(member_key_hash("sip:a", 0), member_key_hash("sip:a", 1));
        assert_ne!(member_key_hash("sip:a", 1), member_key_hash("sip:a", 2));
    }

    fn candidates(weights: &[u64]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate {
                index: i as u32,
                key_hash: member_key_hash(&format!("sip:10.0.0.{i}:5060"), 0),
                weight,
            })
            .collect()
    }

    /// Call hashes from a fixed splitmix64 sequence (what `rendezvous_call_hash` outputs is as mixed).
    fn call_hashes(n: usize) -> impl Iterator<Item = u64> {
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        (0..n).map(move |_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            fmix64(x)
        })
    }

    const CALLS: usize = 1_000_000;

    #[test]
    fn unit_interval_stays_open_at_the_extremes() {
        for x in [0u64, 1, u64::MAX, u64::MAX - 1, 1 << 63] {
            let u = unit(x);
            assert!(u > 0.0 && u < 1.0, "{x:#x} -> {u}");
            assert!((-u.ln()).is_finite() && -u.ln() > 0.0);
        }
        assert_eq!(neg_log2_unit(0), 53 << SCORE_FRAC_BITS, "u = 2^-53");
        assert!(neg_log2_unit(u64::MAX) < 2, "u = 1 - 2^-53 scores (about) 0");
    }

    #[test]
    fn fixed_point_log2_is_within_2_pow_minus_41_of_the_float_one() {
        let scale = (1u64 << SCORE_FRAC_BITS) as f64;
        // Random bits, every table cell's edges, and the extremes of every exponent.
        let edges = (0..256u64).flat_map(|i| [(256 + i) << 55, ((256 + i) << 55) | ((1 << 55) - 1)]).flat_map(|m| (0..52).map(move |e| m >> e));
        let extremes = (0..64).flat_map(|e| [1u64 << e, (1u64 << e).wrapping_sub(1), u64::MAX >> e]);
        let (mut worst, mut loosest) = (0f64, 0f64);
        for x in call_hashes(CALLS).chain(edges).chain(extremes) {
            let want = -unit(x).log2();
            let got = neg_log2_unit(x);
            worst = worst.max((got as f64 / scale - want).abs());
            // The bound the pick skips candidates by never exceeds the score it stands for.
            let lower = neg_log2_unit_lower(x);
            assert!(lower <= got, "{x:#x}: bound {lower} above score {got}");
            loosest = loosest.max((got - lower) as f64 / scale);
        }
        eprintln!("fixed-point -log2: lower bound at most {loosest:e} below");
        assert!(loosest < (-15f64).exp2(), "bound loose by {loosest:e}");
        eprintln!("fixed-point -log2: worst error {worst:e} (2^{:.1})", worst.log2());
        assert!(worst < (-41f64).exp2(), "worst error {worst:e}");
    }

    #[test]
    fn equal_weights_pick_exactly_what_the_float_score_picked_over_a_million_calls() {
        for (n, weight) in [(2, 1), (3, 7), (4, 50), (16, 1), (64, u64::from(u32::MAX))] {
            let c = candidates(&vec![weight; n]);
            let f: Vec<FloatCandidate> = c.iter().map(FloatCandidate::from).collect();
            let differ = call_hashes(CALLS).filter(|&h| pick(&c, true, h) != float_pick(&f, h)).count();
            assert_eq!(differ, 0, "{n} destinations of weight {weight}");
            // The weighted path agrees too, so the flag is only a shortcut.
            let differ = call_hashes(CALLS / 10).filter(|&h| pick(&c, false, h) != pick(&c, true, h)).count();
            assert_eq!(differ, 0, "{n} destinations of weight {weight}, weighted path");
        }
    }

    #[test]
    fn unequal_weights_map_a_million_calls_like_the_float_score_but_for_near_ties() {
        let sets: [&[u64]; 5] = [
            &[50, 30, 20],
            &[10, 47, 84, 30],
            &[1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597],
            &[1, u64::from(u32::MAX)],
            &[10_007, 10_009, 10_011, 10_013, 10_015, 10_017, 10_019, 10_021],
        ];
        let mut total = 0;
        for w in sets {
            let c = candidates(w);
            let f: Vec<FloatCandidate> = c.iter().map(FloatCandidate::from).collect();
            let differ = call_hashes(CALLS).filter(|&h| pick(&c, false, h) != float_pick(&f, h)).count();
            eprintln!("weights {w:?}: {differ} of {CALLS} calls map differently from the float score");
            total += differ;
        }
        // A near tie (two scores within ~2^-41) has probability ~1e-12 per call: a few differences
        // in 5M would mean the fixed point is much worse than its bound.
        assert!(total <= 2, "{total} calls moved");
    }
}
