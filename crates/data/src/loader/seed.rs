//! Seeds derived from (run seed, epoch, position), so that every random choice of an epoch is
//! fixed by those numbers alone: independent of thread count, of batches consumed before, and
//! of whether the run was resumed.

/// splitmix64's finaliser: a bijective mix, so distinct inputs never collide.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn combine(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |h, &p| mix(h ^ mix(p)))
}

// Distinct tags keep the order stream and the augmentation streams apart.
const ORDER: u64 = 1;
const SAMPLE: u64 = 2;

/// Seed of the sample order (shuffle or balanced draw) of `epoch`.
pub(crate) fn order_seed(seed: u64, epoch: usize) -> u64 {
    combine(&[ORDER, seed, epoch as u64])
}

/// Seed of the augmentation of the sample at `position` within `epoch`.
pub(crate) fn sample_seed(seed: u64, epoch: usize, position: usize) -> u64 {
    combine(&[SAMPLE, seed, epoch as u64, position as u64])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn seeds_are_distinct_across_tags_epochs_and_positions() {
        let mut seen = HashSet::new();
        for e in 0..20 {
            assert!(seen.insert(order_seed(3, e)));
            for p in 0..200 {
                assert!(seen.insert(sample_seed(3, e, p)));
            }
        }
        assert_ne!(order_seed(3, 0), order_seed(4, 0));
    }
}
