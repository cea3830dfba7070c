//! One ChaCha8 block at a time, exactly as `rand_chacha::ChaCha8Rng` lays out its keystream.
//!
//! Every draw of the simulator addresses its own position (stream, word), so a buffered
//! generator seeks before each draw and then computes four blocks (its buffer) to hand out
//! one 64-bit word. This computes only the block holding the word. The layout is the one of
//! `rand_chacha` 0.10 (64-bit block counter in state words 12–13, 64-bit stream in 14–15,
//! words little-endian, a `u64` as word `i` low and `i + 1` high); the tests compare it with
//! `rand_chacha` bit for bit.

const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
const DOUBLE_ROUNDS: usize = 4;

/// The ChaCha8 keystream of one 256-bit key, addressed by (stream, block).
#[derive(Clone, Debug)]
pub struct Block {
    key: [u32; 8],
}

impl Block {
    pub fn new(seed: [u8; 32]) -> Block {
        let mut key = [0u32; 8];
        for (word, bytes) in key.iter_mut().zip(seed.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        Block { key }
    }

    /// The 16 words of block `block` of stream `stream`.
    pub fn words(&self, stream: u64, block: u64) -> [u32; 16] {
        // Rows of the state, four lanes each: written lane-wise so the compiler can keep
        // each row in one vector register.
        let a0 = CONSTANTS;
        let b0 = [self.key[0], self.key[1], self.key[2], self.key[3]];
        let c0 = [self.key[4], self.key[5], self.key[6], self.key[7]];
        let d0 = [
            block as u32,
            (block >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ];
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for _ in 0..DOUBLE_ROUNDS {
            quarter_rounds(&mut a, &mut b, &mut c, &mut d);
            // Diagonals into columns, the second half of the double round, and back.
            b = rotate_lanes(b, 1);
            c = rotate_lanes(c, 2);
            d = rotate_lanes(d, 3);
            quarter_rounds(&mut a, &mut b, &mut c, &mut d);
            b = rotate_lanes(b, 3);
            c = rotate_lanes(c, 2);
            d = rotate_lanes(d, 1);
        }
        let mut out = [0u32; 16];
        for lane in 0..4 {
            out[lane] = a[lane].wrapping_add(a0[lane]);
            out[4 + lane] = b[lane].wrapping_add(b0[lane]);
            out[8 + lane] = c[lane].wrapping_add(c0[lane]);
            out[12 + lane] = d[lane].wrapping_add(d0[lane]);
        }
        out
    }

    /// The 64-bit number at word offset `word` of `stream` (an even offset: both halves lie
    /// in one block).
    pub fn u64_at(&self, stream: u64, word: u64) -> u64 {
        debug_assert!(word.is_multiple_of(2), "a u64 starts at an even word");
        let words = self.words(stream, word / 16);
        let i = (word % 16) as usize;
        (u64::from(words[i + 1]) << 32) | u64::from(words[i])
    }
}

/// Four quarter rounds at once, one per lane (column).
#[inline(always)]
fn quarter_rounds(a: &mut [u32; 4], b: &mut [u32; 4], c: &mut [u32; 4], d: &mut [u32; 4]) {
    for lane in 0..4 {
        a[lane] = a[lane].wrapping_add(b[lane]);
        d[lane] = (d[lane] ^ a[lane]).rotate_left(16);
        c[lane] = c[lane].wrapping_add(d[lane]);
        b[lane] = (b[lane] ^ c[lane]).rotate_left(12);
        a[lane] = a[lane].wrapping_add(b[lane]);
        d[lane] = (d[lane] ^ a[lane]).rotate_left(8);
        c[lane] = c[lane].wrapping_add(d[lane]);
        b[lane] = (b[lane] ^ c[lane]).rotate_left(7);
    }
}

/// Lane `i` of the result is lane `i + by` of `row` (mod 4).
#[inline(always)]
fn rotate_lanes(row: [u32; 4], by: usize) -> [u32; 4] {
    [
        row[by % 4],
        row[(1 + by) % 4],
        row[(2 + by) % 4],
        row[(3 + by) % 4],
    ]
}

#[cfg(test)]
mod tests {
    use super::Block;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn reference(seed: u64, stream: u64, word: u128) -> u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        rng.set_word_pos(word);
        rng.next_u64()
    }

    #[test]
    fn whole_blocks_match_rand_chacha() {
        for seed in [0u64, 1, 11_000, u64::MAX] {
            let rng = ChaCha8Rng::seed_from_u64(seed);
            let block = Block::new(rng.get_seed());
            for (stream, index) in [(0u64, 0u64), (1, 0), (5 << 32 | 17, 3), (u64::MAX, 1 << 40)] {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(stream);
                rng.set_word_pos(u128::from(index) * 16);
                let expected: Vec<u32> = (0..16).map(|_| rng.next_u32()).collect();
                assert_eq!(
                    block.words(stream, index).to_vec(),
                    expected,
                    "{seed} {stream} {index}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn every_addressed_u64_matches_rand_chacha(
            seed in any::<u64>(),
            stream in any::<u64>(),
            draw in any::<u32>(),
        ) {
            let block = Block::new(ChaCha8Rng::seed_from_u64(seed).get_seed());
            let word = u64::from(draw) * 2;
            prop_assert_eq!(block.u64_at(stream, word), reference(seed, stream, u128::from(word)));
        }
    }
}
