//! Deterministic shuffling: the order of epoch `e` is a function of `(seed, e)` alone, so
//! a resumed run sees exactly the batches an uninterrupted one would.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Write into `order` a permutation of `0..n`: the example order of `epoch` for `seed`
/// (a Fisher–Yates shuffle driven by ChaCha8 seeded from both). `order` is reused, so
/// after the first epoch this allocates nothing.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..n);
    // mix the epoch into the seed with a 64-bit odd-constant multiply (SplitMix64's), so
    // consecutive epochs get unrelated streams
    let mixed = seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mixed);
    order.shuffle(&mut rng);
}
