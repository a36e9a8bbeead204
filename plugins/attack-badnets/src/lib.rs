//! BadNets backdoor attack (Gu et al., 2017): a seeded subset of `n` training samples gets a black square
//! trigger of side `size`, 2 pixels in from the bottom-right corner (rows and columns
//! `[H-2-size, H-2) x [W-2-size, W-2)`, every channel set to 0), and is relabelled to the target
//! class. At test time the same trigger is stamped on clean images; the attack succeeds when the
//! model then predicts the target class.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unlearn_api::method::{
    Attack, AttackCtx, AttackMethod, MethodConfig, MethodError, Poisoning, poison_by_trigger,
};
use unlearn_api::register_attack;
use unlearn_api::tch::Tensor;

/// BadNets: stamp a black square on `n` training images and relabel them to `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BadNetsConfig {
    /// Number of training samples to poison, drawn at random with the run's seed (they become the
    /// forget set of the cleanse). The default, 50, fits tiny data sets; CIFAR-sized training sets
    /// usually need a few hundred (around 1%) for a reliable backdoor. Must not exceed the
    /// training set.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub n: usize,
    /// Side s in pixels of the square trigger, placed 2 pixels in from the bottom-right corner;
    /// the images must be at least s + 2 pixels high and wide.
    #[schemars(range(min = 1, max = 4096))]
    pub size: usize,
    /// The target class t that poisoned samples are relabelled to (must be a class of the data).
    #[schemars(range(max = 1_000_000))]
    pub target: usize,
}

impl Default for BadNetsConfig {
    fn default() -> Self {
        BadNetsConfig {
            n: 50,
            size: 4,
            target: 0,
        }
    }
}

impl MethodConfig for BadNetsConfig {
    fn check(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if self.n == 0 {
            issues.push(("n".into(), "must poison at least one sample".into()));
        }
        if self.size == 0 {
            issues.push((
                "size".into(),
                "the trigger must be at least 1 pixel wide".into(),
            ));
        }
        issues
    }
}

pub struct BadNets {
    config: BadNetsConfig,
}

impl BadNets {
    pub fn config(&self) -> &BadNetsConfig {
        &self.config
    }

    /// Checks that the trigger fits images of height `h` and width `w`.
    fn check_fits(&self, h: i64, w: i64) -> Result<(), MethodError> {
        let s = self.config.size as i64;
        if h < s + 2 || w < s + 2 {
            return Err(MethodError::Failed(format!(
                "BadNets: size = {s}: the trigger, {s}x{s} pixels 2 pixels in from the \
                 bottom-right corner, does not fit {h}x{w} images (size must be at most {})",
                (h.min(w) - 2).max(0)
            )));
        }
        Ok(())
    }
}

impl AttackMethod for BadNets {
    type Config = BadNetsConfig;
    const NAME: &'static str = "BadNets";
    const SUMMARY: &'static str = "BadNets backdoor: a black square trigger in the bottom-right corner, relabelled to a target class";
    fn new(config: BadNetsConfig) -> Self {
        BadNets { config }
    }
}

impl Attack for BadNets {
    fn poison(&self, ctx: &AttackCtx<'_>) -> Result<Poisoning, MethodError> {
        let [_, h, w] = ctx.data.train.image_shape();
        self.check_fits(h, w)?;
        poison_by_trigger(self, ctx, self.config.n, "badnets")
    }

    fn trigger(&self, images: &Tensor) -> Result<Tensor, MethodError> {
        let size = images.size();
        let &[_, _, h, w] = size.as_slice() else {
            return Err(MethodError::Failed(format!(
                "BadNets: the trigger needs a batch of images [N, C, H, W], got shape {size:?}"
            )));
        };
        self.check_fits(h, w)?;
        let s = self.config.size as i64;
        let _g = unlearn_api::tch::no_grad_guard();
        let out = images.copy();
        let mut square = out.f_narrow(2, h - 2 - s, s)?.f_narrow(3, w - 2 - s, s)?;
        let _ = square.f_fill_(0)?;
        Ok(out)
    }

    fn target(&self) -> usize {
        self.config.target
    }
}

register_attack!(BadNets);

#[cfg(test)]
mod tests {
    use super::*;
    use unlearn_api::method::TaskData;
    use unlearn_api::registry::Registry;
    use unlearn_api::tch::{Device, Kind};

    fn attack(n: usize, size: usize, target: usize) -> BadNets {
        BadNets::new(BadNetsConfig { n, size, target })
    }

    /// Random u8 images `[n, c, h, w]` with every pixel in 1..=255 (so a zeroed pixel shows).
    fn images(n: i64, c: i64, h: i64, w: i64, seed: i64) -> Tensor {
        unlearn_api::tch::manual_seed(seed);
        Tensor::randint_low(1, 256, [n, c, h, w], (Kind::Uint8, Device::Cpu))
    }

    fn pixels(t: &Tensor) -> Vec<u8> {
        Vec::<u8>::try_from(t.flatten(0, -1)).unwrap()
    }

    fn task(samples: usize, channels: usize, size: usize) -> TaskData {
        unlearn_api::testing::synthetic_task(samples, channels, size)
    }

    fn ctx(data: &TaskData, seed: u64) -> AttackCtx<'_> {
        AttackCtx {
            data,
            seed,
            label: "BadNets".into(),
        }
    }

    #[test]
    fn trigger_blackens_exactly_the_square_in_every_channel() {
        // Digits (8x8), MNIST (28x28), CIFAR (32x32x3), and a non-square image.
        let shapes = [(1i64, 8i64, 8i64), (1, 28, 28), (3, 32, 32), (3, 10, 13)];
        let n = 3i64;
        for ((c, h, w), s) in shapes
            .into_iter()
            .flat_map(|shape| [1usize, 3, 4, 6].map(|s| (shape, s)))
            .filter(|&((_, h, w), s)| s as i64 + 2 <= h.min(w))
        {
            let x = images(n, c, h, w, 7);
            let before = pixels(&x);
            let y = attack(1, s, 0).trigger(&x).unwrap();
            assert_eq!(y.size(), x.size());
            assert_eq!(y.kind(), Kind::Uint8);
            assert_eq!(pixels(&x), before, "the input is not modified");
            let after = pixels(&y);
            let s = s as i64;
            let mut i = 0;
            let mut zeroed = 0;
            for _ in 0..n {
                for _ in 0..c {
                    for r in 0..h {
                        for col in 0..w {
                            let inside = (h - 2 - s..h - 2).contains(&r)
                                && (w - 2 - s..w - 2).contains(&col);
                            let want = if inside { 0 } else { before[i] };
                            assert_eq!(after[i], want, "{c}x{h}x{w}, s={s}: row {r} col {col}");
                            zeroed += inside as i64;
                            i += 1;
                        }
                    }
                }
            }
            assert_eq!(zeroed, n * c * s * s);
        }
    }

    #[test]
    fn trigger_keeps_float_dtype_and_rejects_what_does_not_fit() {
        let x = Tensor::ones([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        let y = attack(1, 4, 0).trigger(&x).unwrap();
        assert_eq!(y.kind(), Kind::Float);
        assert_eq!(y.sum(Kind::Double).double_value(&[]), 2.0 * (64.0 - 16.0));
        assert_eq!(y.double_value(&[0, 0, 2, 2]), 0.0);
        assert_eq!(y.double_value(&[0, 0, 5, 5]), 0.0);
        assert_eq!(y.double_value(&[0, 0, 6, 6]), 1.0);
        assert_eq!(y.double_value(&[0, 0, 1, 5]), 1.0);
        // 6 + 2 = 8 fits exactly; 7 does not.
        assert!(attack(1, 6, 0).trigger(&x).is_ok());
        let e = attack(1, 7, 0).trigger(&x).unwrap_err().to_string();
        assert!(e.contains("size = 7") && e.contains("8x8"), "{e}");
        let e = attack(1, 2, 0)
            .trigger(&Tensor::ones([8, 8], (Kind::Float, Device::Cpu)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[N, C, H, W]"), "{e}");
    }

    #[test]
    fn poisoning_picks_n_sorted_rows_triggers_and_relabels_them() {
        let data = task(200, 3, 10);
        let a = attack(30, 3, 4);
        let p = a.poison(&ctx(&data, 5)).unwrap();
        assert_eq!(p.rows.len(), 30);
        assert!(p.rows.windows(2).all(|w| w[0] < w[1]), "{:?}", p.rows);
        assert!(p.rows.iter().all(|&r| r < data.train.len()));
        assert_eq!(p.images.size(), [30, 3, 10, 10]);
        assert_eq!(p.images.kind(), data.train.images.kind());
        assert_eq!(p.labels.kind(), Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(&p.labels).unwrap(), vec![4; 30]);
        // Each poisoned image is its clean row with the trigger, row by row.
        let clean = data.train.subset(&p.rows);
        for (k, &row) in p.rows.iter().enumerate() {
            let one = data.train.images.narrow(0, row as i64, 1);
            let want = a.trigger(&one).unwrap();
            assert!(
                p.images.narrow(0, k as i64, 1).equal(&want),
                "row {row} is its triggered clean image"
            );
        }
        assert!(
            !p.images.equal(&clean.images),
            "the trigger changed something"
        );
        // Train itself is untouched.
        assert!(data.train.images.equal(&task(200, 3, 10).train.images));
        assert_eq!(a.target(), 4);
    }

    #[test]
    fn poisoning_is_deterministic_by_seed() {
        let data = task(200, 1, 8);
        let a = BadNets::new(BadNetsConfig::default());
        let p = a.poison(&ctx(&data, 9)).unwrap();
        let q = a.poison(&ctx(&data, 9)).unwrap();
        assert_eq!(p.rows, q.rows);
        assert!(p.images.equal(&q.images));
        assert!(p.labels.equal(&q.labels));
        let r = a.poison(&ctx(&data, 10)).unwrap();
        assert_ne!(p.rows, r.rows, "another seed draws other rows");
        // All of train can be poisoned.
        let all = attack(data.train.len(), 4, 0)
            .poison(&ctx(&data, 1))
            .unwrap();
        assert_eq!(all.rows, (0..data.train.len()).collect::<Vec<_>>());
    }

    #[test]
    fn poisoning_errors_name_the_field() {
        let data = task(40, 1, 8);
        let e = attack(21, 4, 0)
            .poison(&ctx(&data, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n = 21") && e.contains("only 20"), "{e}");
        let e = attack(5, 4, 5)
            .poison(&ctx(&data, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("target = 5") && e.contains("5 classes"), "{e}");
        let e = attack(5, 7, 0)
            .poison(&ctx(&data, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("size = 7") && e.contains("8x8"), "{e}");
    }

    #[test]
    fn config_defaults_rules_and_registration() {
        let r = Registry::builtin().unwrap();
        let m = r
            .get_kind("BadNets", unlearn_api::method::Kind::Attack)
            .unwrap();
        let d = &m.default_config;
        assert_eq!(d.as_object().unwrap().len(), 3, "{d}");
        assert!(d["n"] == 50 && d["size"] == 4 && d["target"] == 0, "{d}");
        // A JSON object with the given fields (serde_json is not a dependency of this crate).
        let config = |fields: &[(&str, i64)]| {
            let mut v = d.clone();
            let o = v.as_object_mut().unwrap();
            o.clear();
            for &(k, x) in fields {
                o.insert(k.to_string(), x.into());
            }
            v
        };
        let a = m.build_attack(&config(&[])).ok().unwrap();
        assert_eq!(a.target(), 0);
        let a = m
            .build_attack(&config(&[("target", 3), ("size", 2)]))
            .ok()
            .unwrap();
        assert_eq!(a.target(), 3);
        let issues = m
            .build_attack(&config(&[("n", 0), ("size", 0)]))
            .err()
            .unwrap();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["/n", "/size"]);
        let issues = m.build_attack(&config(&[("trigger", 3)])).err().unwrap();
        assert!(issues[0].message.contains("trigger"), "{issues:?}");
        unlearn_api::conformance::assert_conforms(m);
    }
}
