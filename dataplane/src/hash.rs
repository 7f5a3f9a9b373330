//! A small fixed-seed 64-bit hash for the fast path: shard ownership of a Call-ID, transaction and
//! dialog keys, stateless branches. It must be identical on every shard and every run (unlike
//! std's RandomState), and cheap on 20-80 byte inputs; it is not a defence against crafted
//! collisions, which only cost a shared bucket in the per-shard maps, never a misroute of another call.

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// murmur3's 64-bit finaliser: a bijection with full avalanche. It ends every hash here and is
/// what rendezvous hashing absorbs words with.
#[inline(always)]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Feeds one byte string into a running hash; the length goes in too, so ("ab","c") != ("a","bc").
#[inline]
pub fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ v).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K).rotate_left(29);
    (h ^ bytes.len() as u64).wrapping_mul(K)
}

#[inline]
pub fn finish(h: u64) -> u64 {
    fmix64(h)
}

#[inline]
pub fn hash_one(seed: u64, bytes: &[u8]) -> u64 {
    finish(mix(seed, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_frozen_across_releases() {
        // Shard ownership and branches must not change under a rolling upgrade of a cluster.
        assert_eq!(hash_one(0, b"a84b4c76e66710@pc33.atlanta.com"), FROZEN);
    }
    const FROZEN: u64 = 9_208_906_492_352_873_173;

    #[test]
    fn boundaries_between_parts_matter() {
        assert_ne!(finish(mix(mix(0, b"ab"), b"c")), finish(mix(mix(0, b"a"), b"bc")));
    }

    #[test]
    fn owner_spread_is_even_over_two_shards() {
        let mut counts = [0u32; 2];
        for i in 0..100_000u32 {
            let cid = format!("{i:08x}-call@127.0.0.1");
            counts[(hash_one(7, cid.as_bytes()) % 2) as usize] += 1;
        }
        assert!((49_000..=51_000).contains(&counts[0]), "{counts:?}");
    }
}
