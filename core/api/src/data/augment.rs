//! Training-time augmentation on the device (as the reference code's torchvision transforms): random crop with zero padding and random
//! horizontal flip, for a whole batch at once. The random draws come from a host generator, so
//! the same seed gives the same batches on every device.

use rand::RngExt;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Pad each side by this many zero pixels, then crop back to the original size at a random
    /// offset (0: no cropping).
    #[schemars(range(min = 0, max = 1024))]
    pub crop_padding: i64,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
}

impl Augment {
    pub const NONE: Augment = Augment {
        crop_padding: 0,
        flip: false,
    };
    /// CIFAR's and SVHN's: 4-pixel padding and horizontal flips.
    pub const CROP_FLIP: Augment = Augment {
        crop_padding: 4,
        flip: true,
    };

    pub fn is_none(&self) -> bool {
        *self == Augment::NONE
    }

    /// Augments `x` (`[B, C, H, W]`, any device), drawing offsets and flips from `rng`.
    pub fn apply(&self, x: &Tensor, rng: &mut impl rand::Rng) -> Tensor {
        if self.is_none() {
            return x.shallow_clone();
        }
        let b = x.size()[0] as usize;
        let p = self.crop_padding;
        let mut draw = |hi: i64| {
            (0..b)
                .map(|_| if hi > 0 { rng.random_range(0..=hi) } else { 0 })
                .collect::<Vec<i64>>()
        };
        let dy = draw(2 * p);
        let dx = draw(2 * p);
        let flips: Vec<bool> = (0..b).map(|_| self.flip && rng.random_bool(0.5)).collect();
        self.apply_with(x, &dy, &dx, &flips)
    }

    /// Crops `x` padded by `crop_padding` at rows `dy[i]..dy[i]+H`, columns `dx[i]..dx[i]+W`
    /// (offsets into the padded image) and mirrors the samples where `flip[i]`.
    pub fn apply_with(&self, x: &Tensor, dy: &[i64], dx: &[i64], flip: &[bool]) -> Tensor {
        let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
        let device = x.device();
        let p = self.crop_padding;
        let mut out = x.shallow_clone();
        if p > 0 {
            let padded = x.constant_pad_nd([p, p, p, p]);
            // Gather rows then columns with per-sample index grids: [B, C, H, W+2p] -> [B, C, H, W].
            let c = x.size()[1];
            let ar_h = Tensor::arange(h, (Kind::Int64, device));
            let ar_w = Tensor::arange(w, (Kind::Int64, device));
            let oy = Tensor::from_slice(dy).to_device(device).view([b, 1]);
            let ox = Tensor::from_slice(dx).to_device(device).view([b, 1]);
            let rows = (oy + ar_h.view([1, h]))
                .view([b, 1, h, 1])
                .expand([b, c, h, w + 2 * p], false);
            let cols = (ox + ar_w.view([1, w]))
                .view([b, 1, 1, w])
                .expand([b, c, h, w], false);
            out = padded.gather(2, &rows, false).gather(3, &cols, false);
        }
        if flip.iter().any(|&f| f) {
            let f: Vec<bool> = flip.to_vec();
            let mask = Tensor::from_slice(&f).to_device(device).view([b, 1, 1, 1]);
            out = out.flip([3]).where_self(&mask, &out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Crop and flip against a direct per-pixel computation.
    #[test]
    fn crop_and_flip_match_a_pixel_loop() {
        let (b, c, h, w, p) = (3i64, 2i64, 5i64, 4i64, 2i64);
        let x = Tensor::arange(b * c * h * w, (Kind::Float, Device::Cpu)).view([b, c, h, w]) + 1.0;
        let aug = Augment {
            crop_padding: p,
            flip: true,
        };
        let (dy, dx, fl) = ([0i64, 2, 4], [4i64, 1, 0], [false, true, true]);
        let y = aug.apply_with(&x, &dy, &dx, &fl);
        assert_eq!(y.size(), x.size());
        for i in 0..b {
            for ch in 0..c {
                for r in 0..h {
                    for col in 0..w {
                        // output column `col` reads padded column `col` (or `w-1-col` when flipped)
                        let src_col = if fl[i as usize] { w - 1 - col } else { col };
                        let (pr, pc) = (r + dy[i as usize] - p, src_col + dx[i as usize] - p);
                        let want = if (0..h).contains(&pr) && (0..w).contains(&pc) {
                            x.double_value(&[i, ch, pr, pc])
                        } else {
                            0.0
                        };
                        assert_eq!(
                            y.double_value(&[i, ch, r, col]),
                            want,
                            "sample {i} ch {ch} ({r},{col})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn no_augmentation_is_the_identity_and_draws_are_seeded() {
        let x = Tensor::rand([4, 3, 8, 8], (Kind::Float, Device::Cpu));
        let mut r = crate::rng::rng(0, "t");
        assert!(Augment::NONE.apply(&x, &mut r).equal(&x));
        let a = Augment::CROP_FLIP.apply(&x, &mut crate::rng::rng(5, "aug"));
        let b = Augment::CROP_FLIP.apply(&x, &mut crate::rng::rng(5, "aug"));
        assert!(a.equal(&b));
        assert!(!a.equal(&x));
    }
}
