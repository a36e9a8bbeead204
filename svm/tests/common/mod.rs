//! Helpers shared by the integration tests: a tiny deterministic RNG and an exact f64 RBF.
#![allow(dead_code)]

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `exp(-gamma |a - b|^2)` in f64 with the standard library's `exp`.
pub fn rbf(a: &[f32], b: &[f32], gamma: f64) -> f64 {
    let d2: f64 = a
        .iter()
        .zip(b)
        .map(|(&u, &v)| {
            let d = f64::from(u) - f64::from(v);
            d * d
        })
        .sum();
    (-gamma * d2).exp()
}
