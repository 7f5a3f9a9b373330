//! Where a datagram's line feeds, colons and NUL bytes are, 64 bytes at a time: three bitmaps per
//! block (SSE2 on x86_64, a plain loop elsewhere), computed only as far as the header walk reads.
//! The fast walk (`scan::parse`) finds a line's end and its name's colon with a few bit operations
//! instead of two `memchr` calls per line, and learns whether the header block holds a NUL without
//! a third (docs/SIP.md, "The fast scanner").

const BLOCK: usize = 64;

/// The bitmaps of one block: bit i stands for byte `64 * block + i`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Block {
    lf: u64,
    colon: u64,
    nul: u64,
}

/// The lines of a datagram in order: each call to `next_line` gives the next LF and the first
/// colon before it on that line. Bits already handed out are cleared from the cached block, so a
/// line costs a few bit operations; every block before the cached one has been looked at once,
/// which makes `first_nul` the lowest NUL offset up to the end of the cached block.
pub(super) struct Marks<'a> {
    buf: &'a [u8],
    /// Index of the cached block.
    at: usize,
    /// The cached block's LFs and colons not yet handed out.
    lf: u64,
    colon: u64,
    /// Offset of the first NUL in the blocks looked at so far, `usize::MAX` if none.
    pub(super) first_nul: usize,
}

impl<'a> Marks<'a> {
    /// Lines from offset `from` on.
    pub(super) fn new(buf: &'a [u8], from: usize) -> Self {
        let mut m = Marks { buf, at: from / BLOCK, lf: 0, colon: 0, first_nul: usize::MAX };
        if from < buf.len() {
            m.load(!0u64 << (from % BLOCK));
        }
        m
    }

    /// The next LF, and the first colon between the end of the previous line and it. `None`
    /// when no LF follows.
    #[inline]
    pub(super) fn next_line(&mut self) -> Option<(Option<usize>, usize)> {
        let mut colon = None;
        loop {
            if self.lf != 0 {
                let lf_bit = self.lf & self.lf.wrapping_neg();
                // Only colons before the LF belong to this line; the rest are the next lines'.
                let below = lf_bit - 1;
                let c = self.colon & below;
                if colon.is_none() && c != 0 {
                    colon = Some(self.at * BLOCK + c.trailing_zeros() as usize);
                }
                self.colon &= !(below | lf_bit);
                self.lf ^= lf_bit;
                return Some((colon, self.at * BLOCK + lf_bit.trailing_zeros() as usize));
            }
            if colon.is_none() && self.colon != 0 {
                colon = Some(self.at * BLOCK + self.colon.trailing_zeros() as usize);
            }
            self.at += 1;
            if self.at * BLOCK >= self.buf.len() {
                self.lf = 0;
                self.colon = 0;
                return None;
            }
            self.load(!0);
        }
    }

    /// Caches block `at`, keeping the bits of `live`.
    #[inline]
    fn load(&mut self, live: u64) {
        let start = self.at * BLOCK;
        let rest = &self.buf[start..];
        let b = if rest.len() >= BLOCK {
            block(rest[..BLOCK].try_into().expect("64 bytes"))
        } else {
            // The tail: padded with bytes that are none of the three, so no bit needs masking.
            let mut pad = [b' '; BLOCK];
            pad[..rest.len()].copy_from_slice(rest);
            block(&pad)
        };
        self.lf = b.lf & live;
        self.colon = b.colon & live;
        let nul = b.nul & live;
        if nul != 0 && self.first_nul == usize::MAX {
            self.first_nul = start + nul.trailing_zeros() as usize;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block(b: &[u8; BLOCK]) -> Block {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8, _mm_setzero_si128};
    // SAFETY: SSE2 is part of the x86_64 baseline, and each unaligned load reads 16 of the 64
    // bytes `b` holds.
    unsafe {
        let (lf, colon, zero) = (_mm_set1_epi8(b'\n' as i8), _mm_set1_epi8(b':' as i8), _mm_setzero_si128());
        let mut out = Block::default();
        for i in 0..4 {
            let v = _mm_loadu_si128(b.as_ptr().add(16 * i) as *const __m128i);
            let bits = |c| u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, c)) as u16) << (16 * i);
            out.lf |= bits(lf);
            out.colon |= bits(colon);
            out.nul |= bits(zero);
        }
        out
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn block(b: &[u8; BLOCK]) -> Block {
    block_by_bytes(b)
}

/// The bitmaps byte by byte: the other architectures' block, and the x86_64 one's oracle.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn block_by_bytes(b: &[u8; BLOCK]) -> Block {
    let mut out = Block::default();
    for (i, &c) in b.iter().enumerate() {
        let bit = 1u64 << i;
        match c {
            b'\n' => out.lf |= bit,
            b':' => out.colon |= bit,
            0 => out.nul |= bit,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The lines `next_line` must give, by plain slice searches.
    fn lines_by_memchr(buf: &[u8], mut from: usize) -> Vec<(Option<usize>, usize)> {
        let mut out = Vec::new();
        while let Some(lf) = memchr::memchr(b'\n', &buf[from.min(buf.len())..]).map(|p| p + from) {
            out.push((memchr::memchr(b':', &buf[from..lf]).map(|c| c + from), lf));
            from = lf + 1;
        }
        out
    }

    fn lines(buf: &[u8], from: usize) -> (Vec<(Option<usize>, usize)>, usize) {
        let mut m = Marks::new(buf, from);
        let mut out = Vec::new();
        while let Some(l) = m.next_line() {
            out.push(l);
        }
        (out, m.first_nul)
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        // Mostly the three marked bytes and text, so lines are short and cross block edges.
        prop::collection::vec(prop_oneof![Just(b'\n'), Just(b':'), Just(0u8), Just(b'\r'), any::<u8>(), Just(b'a')], 0..400)
    }

    proptest! {
        #[test]
        fn the_block_bitmaps_equal_a_byte_by_byte_scan(b in prop::collection::vec(any::<u8>(), BLOCK)) {
            let b: [u8; BLOCK] = b.try_into().unwrap();
            prop_assert_eq!(block(&b), block_by_bytes(&b));
        }

        #[test]
        fn lines_read_in_order_match_memchr(buf in bytes(), from in 0usize..80) {
            let from = from.min(buf.len());
            let (got, first_nul) = lines(&buf, from);
            prop_assert_eq!(&got, &lines_by_memchr(&buf, from));
            // Every block has been looked at once the last LF is found.
            let nul = buf[from..].iter().position(|&c| c == 0).map_or(usize::MAX, |n| n + from);
            prop_assert_eq!(first_nul, nul);
        }
    }

    #[test]
    fn a_colon_after_the_line_feed_belongs_to_the_next_line() {
        assert_eq!(lines(b"Subject\nVia: x\n", 0).0, [(None, 7), (Some(11), 14)]);
    }

    #[test]
    fn a_line_longer_than_a_block_finds_its_colon_and_end() {
        let mut buf = vec![b'x'; 150];
        buf[100] = b':';
        buf.push(b'\n');
        assert_eq!(lines(&buf, 3).0, [(Some(100), 150)]);
    }
}
