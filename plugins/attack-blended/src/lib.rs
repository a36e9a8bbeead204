//! Blended backdoor attack (Chen et al., 2017, "Targeted Backdoor Attacks on Deep Learning
//! Systems Using Data Poisoning"): a fixed random pattern `P`, one image's shape with uniform random
//! pixels, is mixed into an image `x` with weight `alpha`:
//!
//! ```text
//! x' = clamp(round((1 - alpha) * x + alpha * P * m / 255), 0, m)
//! ```
//!
//! computed per pixel in f64 (`(1 - alpha) * x` plus `alpha * P` scaled to the data set's pixel
//! range `[0, m]`, in that order), rounded half to even (libtorch's `round`) and stored back as
//! u8. `m` is the `max_value` of the data set the attack poisoned (255 for 8-bit images, 16 for
//! the digits; 255 before it has poisoned one), so the pattern is a blend, not an out-of-range
//! blotch, on every data set. A seeded subset of `n` training samples is
//! blended and relabelled to the target class; at test time the same blend is applied to clean
//! images, and the attack succeeds when the model then predicts the target class.
//!
//! The pattern depends only on `pattern_seed` and the image shape `[C, H, W]`: pixel `k` of the
//! row-major `[C, H, W]` layout is the top byte of the `k`-th output of SplitMix64 started at
//! `pattern_seed`, so every value in 0..=255 is equally likely and the pattern is the same on
//! every device and for every data set of that shape.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unlearn_api::method::{
    Attack, AttackCtx, AttackMethod, MethodConfig, MethodError, Poisoning, poison_by_trigger,
};
use unlearn_api::register_attack;
use unlearn_api::tch::{Kind, Tensor};

/// Blended: mix a fixed random pattern into `n` training images and relabel them to `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BlendedConfig {
    /// Number of training samples to poison, drawn at random with the run's seed (they become the
    /// forget set of the cleanse). The default, 50, fits tiny data sets; CIFAR-sized training sets
    /// usually need a few hundred (around 1%) for a reliable backdoor. Must not exceed the
    /// training set.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub n: usize,
    /// Blend weight alpha of the pattern, 0 < alpha <= 1: x' = round((1 - alpha) x + alpha P).
    /// 0.2 is the paper's common setting for poisoning training data; 1 replaces the image by the
    /// pattern.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub alpha: f64,
    /// The target class t that poisoned samples are relabelled to (must be a class of the data).
    #[schemars(range(max = 1_000_000))]
    pub target: usize,
    /// Seed of the random pattern P (uniform pixels in 0..=255), independent of the run's seed so
    /// that the trigger stays the same across runs.
    #[schemars(range(max = u64::MAX))]
    pub pattern_seed: u64,
}

impl Default for BlendedConfig {
    fn default() -> Self {
        BlendedConfig {
            n: 50,
            alpha: 0.2,
            target: 0,
            pattern_seed: 0,
        }
    }
}

impl MethodConfig for BlendedConfig {
    fn check(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if self.n == 0 {
            issues.push(("n".into(), "must poison at least one sample".into()));
        }
        // Written so that NaN fails too.
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            issues.push((
                "alpha".into(),
                format!(
                    "the blend weight must satisfy 0 < alpha <= 1, got {}",
                    self.alpha
                ),
            ));
        }
        issues
    }
}

pub struct Blended {
    config: BlendedConfig,
    /// The pixel scale of the data set it poisoned (its `max_value`, as f64 bits): the pattern
    /// spans [0, scale], so that a set stored on another scale than 8 bits (the digits: 0..=16)
    /// gets the same blend as an 8-bit one. 255 until `poison` has seen a data set.
    scale: std::sync::atomic::AtomicU64,
}

/// The pattern P for images `[c, h, w]` and `seed`: `c * h * w` bytes in row-major order.
pub fn pattern(seed: u64, c: usize, h: usize, w: usize) -> Vec<u8> {
    // SplitMix64 (Steele, Lea and Flood, 2014); its top byte is uniform on 0..=255.
    let mut state = seed;
    (0..c * h * w)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 56) as u8
        })
        .collect()
}

impl Blended {
    pub fn config(&self) -> &BlendedConfig {
        &self.config
    }
}

impl AttackMethod for Blended {
    type Config = BlendedConfig;
    const NAME: &'static str = "Blended";
    const SUMMARY: &'static str = "Blended backdoor (Chen et al. 2017): a fixed random pattern mixed into the image with weight alpha, relabelled to a target class";
    fn new(config: BlendedConfig) -> Self {
        Blended {
            config,
            scale: std::sync::atomic::AtomicU64::new(255f64.to_bits()),
        }
    }
}

impl Attack for Blended {
    fn poison(&self, ctx: &AttackCtx<'_>) -> Result<Poisoning, MethodError> {
        // The test-time trigger then blends on the scale of this data set too.
        self.scale.store(
            ctx.data.train.max_value.to_bits(),
            std::sync::atomic::Ordering::Relaxed,
        );
        poison_by_trigger(self, ctx, self.config.n, "blended")
    }

    fn trigger(&self, images: &Tensor) -> Result<Tensor, MethodError> {
        let size = images.size();
        let &[_, c, h, w] = size.as_slice() else {
            return Err(MethodError::Failed(format!(
                "Blended: the trigger needs a batch of images [N, C, H, W], got shape {size:?}"
            )));
        };
        if images.kind() != Kind::Uint8 {
            return Err(MethodError::Failed(format!(
                "Blended: the blend needs u8 images (pixel values 0..=255), got {:?}",
                images.kind()
            )));
        }
        let _g = unlearn_api::tch::no_grad_guard();
        let a = self.config.alpha;
        let scale = f64::from_bits(self.scale.load(std::sync::atomic::Ordering::Relaxed));
        let p = pattern(self.config.pattern_seed, c as usize, h as usize, w as usize);
        let p = Tensor::from_slice(&p)
            .f_view([1, c, h, w])?
            .f_to_kind(Kind::Double)?
            .f_mul_scalar(scale / 255.0)?
            .f_to_device(images.device())?;
        // (1 - a) x + a P in f64, per pixel and in this order, then half-to-even rounding.
        let mixed = images
            .f_to_kind(Kind::Double)?
            .f_mul_scalar(1.0 - a)?
            .f_add(&p.f_mul_scalar(a)?)?;
        Ok(mixed
            .f_round()?
            .f_clamp(0.0, scale)?
            .f_to_kind(Kind::Uint8)?)
    }

    fn target(&self) -> usize {
        self.config.target
    }
}

register_attack!(Blended);

#[cfg(test)]
mod tests {
    use super::*;
    use unlearn_api::method::TaskData;
    use unlearn_api::registry::Registry;
    use unlearn_api::tch::Device;

    fn attack(n: usize, alpha: f64, target: usize, pattern_seed: u64) -> Blended {
        Blended::new(BlendedConfig {
            n,
            alpha,
            target,
            pattern_seed,
        })
    }

    fn pixels(t: &Tensor) -> Vec<u8> {
        Vec::<u8>::try_from(t.flatten(0, -1)).unwrap()
    }

    /// A crafted batch `[2, c, h, w]`: a ramp through every value, with 0 and 255 at the corners.
    fn crafted(c: usize, h: usize, w: usize) -> Vec<u8> {
        let len = 2 * c * h * w;
        let mut v: Vec<u8> = (0..len).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        v[0] = 0;
        v[1] = 255;
        v[len - 1] = 0;
        v[len - 2] = 255;
        v
    }

    /// The blend of one pixel, computed independently of the tensor code.
    fn blend(x: u8, p: u8, a: f64) -> u8 {
        blend_on(x, p, a, 255.0)
    }

    /// The blend on a data set whose pixels go from 0 to `scale` (the pattern scaled to it).
    fn blend_on(x: u8, p: u8, a: f64, scale: f64) -> u8 {
        ((1.0 - a) * x as f64 + a * (p as f64 * (scale / 255.0)))
            .round_ties_even()
            .clamp(0.0, scale) as u8
    }

    #[test]
    fn blend_matches_a_per_pixel_f64_computation() {
        for (c, h, w) in [(1usize, 8usize, 8usize), (1, 28, 28), (3, 32, 32)] {
            let x = crafted(c, h, w);
            let t = Tensor::from_slice(&x).view([2, c as i64, h as i64, w as i64]);
            for (alpha, seed) in [(0.2, 0u64), (0.5, 3), (0.37, 11), (1.0, 0)] {
                let y = attack(1, alpha, 0, seed).trigger(&t).unwrap();
                assert_eq!(y.size(), t.size());
                assert_eq!(y.kind(), Kind::Uint8);
                assert_eq!(pixels(&t), x, "the input is not modified");
                let p = pattern(seed, c, h, w);
                let got = pixels(&y);
                let mut ties = 0;
                for (i, (&xi, &gi)) in x.iter().zip(&got).enumerate() {
                    let pi = p[i % p.len()];
                    assert_eq!(gi, blend(xi, pi, alpha), "{c}x{h}x{w} a={alpha} pixel {i}");
                    ties += (alpha == 0.5 && (xi as u32 + pi as u32) % 2 == 1) as usize;
                }
                if alpha == 0.5 {
                    // Half the sums are odd: ties, rounded to even, are exercised.
                    assert!(ties > x.len() / 4, "{ties}");
                }
            }
        }
        // The rounding rule on exact ties: 0.5 -> 0, 1.5 -> 2 (half to even).
        let one = |x: u8, p_seed_pixel: u8| {
            // alpha = 0.5 with x and the pattern's first pixel.
            ((x as f64 + p_seed_pixel as f64) * 0.5).round_ties_even() as u8
        };
        let p0 = pattern(0, 1, 1, 1)[0];
        for x in [0u8, 1, 2, 3, 254, 255] {
            let t = Tensor::from_slice(&[x]).view([1, 1, 1, 1]);
            let y = attack(1, 0.5, 0, 0).trigger(&t).unwrap();
            assert_eq!(pixels(&y), [one(x, p0)], "x={x} p={p0}");
        }
    }

    #[test]
    fn alpha_one_gives_the_pattern_on_every_image() {
        let (c, h, w) = (3usize, 32usize, 32usize);
        let t = Tensor::from_slice(&crafted(c, h, w)).view([2, 3, 32, 32]);
        let y = attack(1, 1.0, 0, 5).trigger(&t).unwrap();
        let p = pattern(5, c, h, w);
        let got = pixels(&y);
        assert_eq!(&got[..p.len()], p.as_slice());
        assert_eq!(&got[p.len()..], p.as_slice());
    }

    #[test]
    fn the_pattern_is_fixed_by_its_seed_and_uniform_looking() {
        let p = pattern(0, 3, 32, 32);
        assert_eq!(p, pattern(0, 3, 32, 32));
        let q = pattern(1, 3, 32, 32);
        let same = p.iter().zip(&q).filter(|(a, b)| a == b).count();
        assert!(same < p.len() / 50, "{same} equal pixels");
        // Roughly uniform on 0..=255: the mean near 127.5 and both ends reached.
        let mean = p.iter().map(|&v| v as f64).sum::<f64>() / p.len() as f64;
        assert!((mean - 127.5).abs() < 8.0, "{mean}");
        assert_eq!(*p.iter().min().unwrap(), 0);
        assert_eq!(*p.iter().max().unwrap(), 255);
        // Through the trigger: two calls (and two instances) agree; another pattern_seed differs.
        let t = Tensor::zeros([1, 3, 32, 32], (Kind::Uint8, Device::Cpu));
        let a = attack(1, 1.0, 0, 0).trigger(&t).unwrap();
        assert!(a.equal(&attack(1, 1.0, 0, 0).trigger(&t).unwrap()));
        assert!(a.equal(&attack(7, 1.0, 2, 0).trigger(&t).unwrap()));
        assert!(!a.equal(&attack(1, 1.0, 0, 1).trigger(&t).unwrap()));
    }

    #[test]
    fn trigger_rejects_other_dtypes_and_shapes() {
        let a = attack(1, 0.2, 0, 0);
        let e = a
            .trigger(&Tensor::ones([2, 1, 8, 8], (Kind::Float, Device::Cpu)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("u8") && e.contains("Float"), "{e}");
        let e = a
            .trigger(&Tensor::ones([8, 8], (Kind::Uint8, Device::Cpu)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[N, C, H, W]"), "{e}");
    }

    fn task(samples: usize, channels: usize, size: usize) -> TaskData {
        unlearn_api::testing::synthetic_task(samples, channels, size)
    }

    fn ctx(data: &TaskData, seed: u64) -> AttackCtx<'_> {
        AttackCtx {
            data,
            seed,
            label: "Blended".into(),
        }
    }

    #[test]
    fn poisoning_picks_n_sorted_rows_blends_and_relabels_them() {
        let data = task(200, 3, 10);
        let a = attack(30, 0.2, 4, 0);
        let p = a.poison(&ctx(&data, 5)).unwrap();
        assert_eq!(p.rows.len(), 30);
        assert!(p.rows.windows(2).all(|w| w[0] < w[1]), "{:?}", p.rows);
        assert!(p.rows.iter().all(|&r| r < data.train.len()));
        assert_eq!(p.images.size(), [30, 3, 10, 10]);
        assert_eq!(p.images.kind(), data.train.images.kind());
        assert_eq!(p.labels.kind(), Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(&p.labels).unwrap(), vec![4; 30]);
        assert!(unlearn_api::method::poisoning_issues(&data.train, &p).is_empty());
        // Each poisoned image is its clean row, blended pixel by pixel on the data set's scale
        // (the synthetic set's pixels go from 0 to 16, like the digits').
        let scale = data.train.max_value;
        assert_eq!(scale, 16.0);
        let pat = pattern(0, 3, 10, 10);
        for (k, &row) in p.rows.iter().enumerate() {
            let clean = pixels(&data.train.images.narrow(0, row as i64, 1));
            let want: Vec<u8> = clean
                .iter()
                .zip(&pat)
                .map(|(&x, &q)| blend_on(x, q, 0.2, scale))
                .collect();
            let got = pixels(&p.images.narrow(0, k as i64, 1));
            assert_eq!(got, want, "row {row}");
            assert!(got.iter().all(|&v| v as f64 <= scale));
        }
        // The test-time trigger blends on the same scale.
        let x = data.test.images.narrow(0, 0, 1);
        let want: Vec<u8> = pixels(&x)
            .iter()
            .zip(&pat)
            .map(|(&v, &q)| blend_on(v, q, 0.2, scale))
            .collect();
        assert_eq!(pixels(&a.trigger(&x).unwrap()), want);
        // Train itself is untouched.
        assert!(data.train.images.equal(&task(200, 3, 10).train.images));
        assert_eq!(a.target(), 4);
    }

    #[test]
    fn poisoning_is_deterministic_by_seed() {
        let data = task(200, 1, 8);
        let a = Blended::new(BlendedConfig::default());
        let p = a.poison(&ctx(&data, 9)).unwrap();
        let q = a.poison(&ctx(&data, 9)).unwrap();
        assert_eq!(p.rows, q.rows);
        assert!(p.images.equal(&q.images));
        assert!(p.labels.equal(&q.labels));
        let r = a.poison(&ctx(&data, 10)).unwrap();
        assert_ne!(p.rows, r.rows, "another seed draws other rows");
        // All of train can be poisoned.
        let all = attack(data.train.len(), 0.2, 0, 0)
            .poison(&ctx(&data, 1))
            .unwrap();
        assert_eq!(all.rows, (0..data.train.len()).collect::<Vec<_>>());
    }

    #[test]
    fn poisoning_errors_name_the_field() {
        let data = task(40, 1, 8);
        let e = attack(21, 0.2, 0, 0)
            .poison(&ctx(&data, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n = 21") && e.contains("only 20"), "{e}");
        let e = attack(5, 0.2, 5, 0)
            .poison(&ctx(&data, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("target = 5") && e.contains("5 classes"), "{e}");
    }

    #[test]
    fn config_defaults_rules_and_registration() {
        let r = Registry::builtin().unwrap();
        let m = r
            .get_kind("Blended", unlearn_api::method::Kind::Attack)
            .unwrap();
        let d = &m.default_config;
        assert_eq!(d.as_object().unwrap().len(), 4, "{d}");
        assert!(
            d["n"] == 50 && d["alpha"] == 0.2 && d["target"] == 0 && d["pattern_seed"] == 0,
            "{d}"
        );
        let a = m.build_attack(d).ok().unwrap();
        assert_eq!(a.target(), 0);
        let mut v = d.clone();
        v["target"] = 3.into();
        v["alpha"] = 1.0.into();
        assert_eq!(m.build_attack(&v).ok().unwrap().target(), 3);
        for (n, alpha) in [(0, 0.0), (0, -0.5), (0, 1.5)] {
            let mut v = d.clone();
            v["n"] = n.into();
            v["alpha"] = alpha.into();
            let issues = m.build_attack(&v).err().unwrap();
            let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
            paths.sort();
            paths.dedup();
            assert_eq!(paths, ["/alpha", "/n"], "alpha = {alpha}: {issues:?}");
        }
        let issues = BlendedConfig {
            alpha: f64::NAN,
            ..Default::default()
        }
        .check();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].0, "alpha");
        let mut v = d.clone();
        v.as_object_mut().unwrap().insert("size".into(), 3.into());
        let issues = m.build_attack(&v).err().unwrap();
        assert!(issues[0].message.contains("size"), "{issues:?}");
        unlearn_api::conformance::assert_conforms(m);
    }
}
