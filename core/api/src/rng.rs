//! Seeded randomness for everything that decides *which* samples are used (splits, forget sets,
//! batch order). It lives on the host, independent of libtorch's generators, so the same seed gives
//! the same indices on every device.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// A generator for `seed`, separated into independent streams by `purpose` (so that, say, the split
/// and the forget set drawn with the same seed are unrelated).
pub fn rng(seed: u64, purpose: &str) -> ChaCha8Rng {
    // FNV-1a of the purpose, mixed into the seed.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in purpose.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h.rotate_left(17))
}

/// `0..n` in a seeded random order.
pub fn permutation(n: usize, seed: u64, purpose: &str) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut rng(seed, purpose));
    v
}

/// Standard-normal noise shaped like each of `like` (same kind and device), drawn on the host
/// from core's seeded generator ([`rng`] with `seed` and `purpose`, Box-Muller), in
/// order. The same seed gives the same noise on every device, and no global libtorch generator
/// is involved, so methods running in other threads cannot change the draws.
pub fn normal_like(
    like: &[tch::Tensor],
    seed: u64,
    purpose: &str,
) -> Result<Vec<tch::Tensor>, tch::TchError> {
    use rand::RngExt;
    let mut r = rng(seed, purpose);
    like.iter()
        .map(|t: &tch::Tensor| {
            let n = t.numel();
            let mut v = Vec::with_capacity(n + 1);
            while v.len() < n {
                // u1 in (0, 1], so ln(u1) is finite
                let u1 = 1.0 - r.random::<f64>();
                let u2 = r.random::<f64>();
                let radius = (-2.0 * u1.ln()).sqrt();
                let angle = std::f64::consts::TAU * u2;
                v.push((radius * angle.cos()) as f32);
                v.push((radius * angle.sin()) as f32);
            }
            v.truncate(n);
            tch::Tensor::f_from_slice(&v)?
                .f_view(t.size().as_slice())?
                .f_to_kind(t.kind())?
                .f_to_device(t.device())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_seeded_and_purpose_separated() {
        let a = permutation(100, 7, "split");
        assert_eq!(a, permutation(100, 7, "split"));
        assert_ne!(a, permutation(100, 8, "split"));
        assert_ne!(a, permutation(100, 7, "forget"));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }
}
