//! Weighted rendezvous (highest-random-weight) hashing, fsroute's default for the hash algorithms.
//! Every eligible destination scores the call independently and the best score wins, so taking one
//! destination out moves only the calls it was winning; OpenSIPS's cumulative-weight pick reshuffles
//! calls between the survivors too. The hash is our own fixed-seed function: the mapping is part of
//! fsroute's on-the-wire behaviour (a CANCEL or ACK handled by another instance or after an upgrade must
//! land where its INVITE went), so it must not depend on std's unspecified `DefaultHasher`.

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
    /// 1 / weight, so a pick multiplies instead of dividing.
    pub(crate) inv_weight: f64,
}

/// Maps 64 random bits to u in the open interval (0, 1): the top 52 bits, centred in their cell, so u
/// is never 0 (ln = -inf) nor 1 (ln = 0, a score of 0 that would beat every weight). 53 bits would not
/// do: 2^53 - 0.5 is not representable and rounds up to exactly 1.0.
#[inline(always)]
fn unit(x: u64) -> f64 {
    ((x >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// Picks among `candidates` (active destinations with weight > 0, or all active ones at weight 1).
///
/// Score = -ln(u) / w with u uniform in (0, 1): an Exp(w) variable, and the minimum of independent
/// Exp(w_i) lands on i with probability w_i / Σw, which is exactly the weighting we want (the same as
/// maximising -w / ln(u)). `f64::ln` comes from the platform libm; two libms can differ in the last ulp,
/// which could only flip a pick whose two best scores are within ~1e-16 of each other, i.e. never in
/// practice. Exact ties go to the earlier destination.
#[inline]
pub(crate) fn pick(candidates: &[Candidate], call_hash: u64) -> Option<usize> {
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

    #[test]
    fn unit_interval_stays_open_at_the_extremes() {
        for x in [0u64, 1, u64::MAX, u64::MAX - 1, 1 << 63] {
            let u = unit(x);
            assert!(u > 0.0 && u < 1.0, "{x:#x} -> {u}");
            assert!((-u.ln()).is_finite() && -u.ln() > 0.0);
        }
    }
}
