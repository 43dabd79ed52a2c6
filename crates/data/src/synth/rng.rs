//! Seeding and the two distributions the generator needs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// SplitMix64's finaliser: spreads nearby inputs over the whole 64-bit range.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG of one item, a function of (seed, stream, index) only, so the output does not depend
/// on which thread draws which item or in what order.
pub fn item_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let key = mix(mix(mix(seed) ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ index);
    ChaCha8Rng::seed_from_u64(key)
}

/// Uniform in [lo, hi).
pub fn uniform(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// Standard normal (Box-Muller).
pub fn normal(rng: &mut impl Rng) -> f32 {
    let u1 = 1.0 - rng.random::<f32>(); // (0, 1]: ln is finite
    let u2 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}
