//! C-SVC with an RBF kernel, numerically compatible with scikit-learn's
//! `SVC(kernel="rbf", C=.., gamma=..)` (libsvm's C-SVC).
//!
//! The dual is solved by SMO with second-order working-set selection (Fan, Chen & Lin 2005),
//! shrinking with gradient reconstruction, and an LRU cache of kernel rows (f32, as libsvm); the
//! dual variables and gradients are f64. The stopping rule is libsvm's: the maximal violating
//! pair's gap is below `tol`. The bias is the mean over free support vectors, or the midpoint of
//! the feasible interval when there are none.
//!
//! Compatibility details that make the iterates follow scikit-learn's:
//! * the class `false` is libsvm's first (internal +1) class, as scikit-learn sorts the labels,
//!   and the solver sees the `false` samples first, then the `true` ones, each in input order;
//! * selection ties go to the last index;
//! * the decision function has scikit-learn's sign: positive for the `true` class
//!   (`classes_[1]`), i.e. `sum_s dual_coef_s K(sv_s, x) + intercept`.
//!
//! Built for membership-inference attacks, where members are labelled `true`.

mod cache;
mod kernel;
mod solver;

use kernel::{KernelData, SupportSet};
use rayon::prelude::*;

/// The RBF kernel width: `K(a, b) = exp(-gamma * |a - b|^2)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Gamma {
    /// `1 / n_features` (scikit-learn's `gamma="auto"`).
    Auto,
    /// A fixed positive value.
    Value(f64),
}

/// Training parameters; the defaults are `SVC(C=3, gamma="auto")` with scikit-learn's other
/// defaults (tol 1e-3, 200 MB cache, shrinking on, no iteration limit).
#[derive(Clone, Debug, PartialEq)]
pub struct SvcParams {
    /// Box constraint C (> 0).
    pub c: f64,
    pub gamma: Gamma,
    /// Stopping tolerance on the maximal KKT violation (> 0).
    pub tol: f64,
    /// Kernel-row cache size in MiB (at least two full rows are always allowed).
    pub cache_mb: usize,
    pub shrinking: bool,
    /// Stop after this many SMO iterations. `None`: at most `max(10^7, 100 n)`.
    pub max_iter: Option<usize>,
}

impl Default for SvcParams {
    fn default() -> Self {
        SvcParams {
            c: 3.0,
            gamma: Gamma::Auto,
            tol: 1e-3,
            cache_mb: 200,
            shrinking: true,
            max_iter: None,
        }
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum SvmError {
    #[error("empty input: no samples or no features")]
    EmptyInput,
    #[error("x has {len} values, which is not a multiple of n_features = {n_features}")]
    ShapeMismatch { len: usize, n_features: usize },
    #[error("y has {labels} labels but x has {samples} samples")]
    LabelLengthMismatch { labels: usize, samples: usize },
    #[error("non-finite value {value} at sample {sample}, feature {feature}")]
    NonFinite {
        sample: usize,
        feature: usize,
        value: f32,
    },
    #[error("invalid parameter {name} = {value}: must be finite and > 0")]
    InvalidParameter { name: &'static str, value: f64 },
}

#[derive(Clone, Copy, Debug)]
enum Fitted {
    /// Trained on one class only.
    Constant(bool),
    Svm {
        intercept: f64,
        iterations: usize,
    },
}

/// A fitted binary C-SVC.
#[derive(Clone, Debug)]
pub struct Svc {
    n_features: usize,
    gamma: f64,
    fitted: Fitted,
    sv: SupportSet,
    /// Training-set indices of the support vectors, ascending.
    support: Vec<usize>,
}

fn check_param(name: &'static str, value: f64) -> Result<(), SvmError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(SvmError::InvalidParameter { name, value })
    }
}

fn check_x(x: &[f32], n_features: usize) -> Result<usize, SvmError> {
    if n_features == 0 {
        return Err(SvmError::EmptyInput);
    }
    if !x.len().is_multiple_of(n_features) {
        return Err(SvmError::ShapeMismatch {
            len: x.len(),
            n_features,
        });
    }
    if let Some(k) = x.iter().position(|v| !v.is_finite()) {
        return Err(SvmError::NonFinite {
            sample: k / n_features,
            feature: k % n_features,
            value: x[k],
        });
    }
    Ok(x.len() / n_features)
}

impl Svc {
    /// Fit on `x` (row-major, `n x n_features`) with labels `y` (`true` = positive class,
    /// e.g. members).
    ///
    /// If every label is the same the model is constant ([`Svc::is_constant`]) and predicts
    /// that label everywhere (scikit-learn refuses such input).
    pub fn fit(
        x: &[f32],
        n_features: usize,
        y: &[bool],
        params: &SvcParams,
    ) -> Result<Svc, SvmError> {
        check_param("c", params.c)?;
        check_param("tol", params.tol)?;
        let gamma = match params.gamma {
            Gamma::Auto => 1.0 / n_features.max(1) as f64,
            Gamma::Value(g) => {
                check_param("gamma", g)?;
                g
            }
        };
        let n = check_x(x, n_features)?;
        if n == 0 {
            return Err(SvmError::EmptyInput);
        }
        if y.len() != n {
            return Err(SvmError::LabelLengthMismatch {
                labels: y.len(),
                samples: n,
            });
        }
        let empty = SupportSet {
            gamma,
            cols: vec![Vec::new(); n_features],
            coef: Vec::new(),
        };
        if y.iter().all(|&v| v == y[0]) {
            return Ok(Svc {
                n_features,
                gamma,
                fitted: Fitted::Constant(y[0]),
                sv: empty,
                support: Vec::new(),
            });
        }
        // libsvm's internal +1 class is scikit-learn's classes_[0] = false; samples grouped by
        // class in that order.
        let order: Vec<usize> = (0..n)
            .filter(|&k| !y[k])
            .chain((0..n).filter(|&k| y[k]))
            .collect();
        let yint: Vec<f64> = order
            .iter()
            .map(|&k| if y[k] { -1.0 } else { 1.0 })
            .collect();
        let kernel = KernelData::new(x, n_features, &order, gamma);
        let cache_floats = params.cache_mb.saturating_mul(1 << 20) / std::mem::size_of::<f32>();
        let max_iter = params
            .max_iter
            .unwrap_or_else(|| n.saturating_mul(100).max(10_000_000));
        let sol = solver::solve(solver::Problem {
            kernel,
            y: &yint,
            c: params.c,
            tol: params.tol,
            shrinking: params.shrinking,
            max_iter,
            cache_floats,
            parallel: rayon::current_num_threads() > 1,
        });
        let mut alpha = vec![0.0; n];
        for (k, &a) in sol.alpha.iter().enumerate() {
            alpha[order[k]] = a;
        }
        let support: Vec<usize> = (0..n).filter(|&k| alpha[k] > 0.0).collect();
        let coef = support
            .iter()
            .map(|&k| if y[k] { alpha[k] } else { -alpha[k] })
            .collect();
        let cols = (0..n_features)
            .map(|f| support.iter().map(|&k| x[k * n_features + f]).collect())
            .collect();
        Ok(Svc {
            n_features,
            gamma,
            // Internal decision sum(a y K) - rho is scikit-learn's with the opposite sign.
            fitted: Fitted::Svm {
                intercept: sol.rho,
                iterations: sol.iterations,
            },
            sv: SupportSet { gamma, cols, coef },
            support,
        })
    }

    /// scikit-learn's `decision_function`: positive for the `true` class. For a constant model:
    /// +1 (trained on `true` only) or -1 everywhere. Empty `x` gives an empty result.
    pub fn decision_function(&self, x: &[f32]) -> Result<Vec<f64>, SvmError> {
        let n = check_x(x, self.n_features)?;
        let intercept = match self.fitted {
            Fitted::Constant(c) => return Ok(vec![if c { 1.0 } else { -1.0 }; n]),
            Fitted::Svm { intercept, .. } => intercept,
        };
        let d = self.n_features;
        let mut out = vec![0.0; n];
        out.par_chunks_mut(64).enumerate().for_each(|(c, chunk)| {
            let mut q = vec![0.0f64; d];
            for (k, o) in chunk.iter_mut().enumerate() {
                let s = c * 64 + k;
                for (qf, &v) in q.iter_mut().zip(&x[s * d..(s + 1) * d]) {
                    *qf = f64::from(v);
                }
                *o = self.sv.weighted_sum(&q) + intercept;
            }
        });
        Ok(out)
    }

    /// `true` where the decision value is >= 0. As in scikit-learn (libsvm votes for
    /// `classes_[1]` unless its internal decision value is > 0), an exact 0 predicts `true`.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<bool>, SvmError> {
        if let Fitted::Constant(c) = self.fitted {
            let n = check_x(x, self.n_features)?;
            return Ok(vec![c; n]);
        }
        Ok(self
            .decision_function(x)?
            .into_iter()
            .map(|v| v >= 0.0)
            .collect())
    }

    /// Number of support vectors (samples with a non-zero dual variable).
    pub fn n_support(&self) -> usize {
        self.support.len()
    }

    /// SMO iterations used by the fit (scikit-learn's `n_iter_`); 0 for a constant model.
    pub fn iterations(&self) -> usize {
        match self.fitted {
            Fitted::Constant(_) => 0,
            Fitted::Svm { iterations, .. } => iterations,
        }
    }

    /// Trained on a single class: predicts that class everywhere.
    pub fn is_constant(&self) -> bool {
        matches!(self.fitted, Fitted::Constant(_))
    }

    /// Training-set indices of the support vectors, ascending (scikit-learn's `support_`,
    /// though scikit-learn groups them by class).
    pub fn support(&self) -> &[usize] {
        &self.support
    }

    /// Dual coefficients `y_s alpha_s` (y = +1 for `true`) of the support vectors, in the order of
    /// [`Svc::support`] (scikit-learn's `dual_coef_`).
    pub fn dual_coef(&self) -> &[f64] {
        &self.sv.coef
    }

    /// The intercept (scikit-learn's `intercept_`); 0 for a constant model.
    pub fn intercept(&self) -> f64 {
        match self.fitted {
            Fitted::Constant(_) => 0.0,
            Fitted::Svm { intercept, .. } => intercept,
        }
    }

    /// The kernel width used.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }
}
