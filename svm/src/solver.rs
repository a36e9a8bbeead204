//! SMO solver for the C-SVC dual
//!
//! ```text
//!   min_a  1/2 a'Qa - e'a    s.t.  0 <= a_t <= C,  y'a = 0,     Q_st = y_s y_t K(x_s, x_t)
//! ```
//!
//! following Fan, Chen & Lin (2005), "Working set selection using second order information for
//! training support vector machines" (JMLR 6), and the shrinking / gradient-reconstruction and
//! bias rules described in Chang & Lin, "LIBSVM: a library for support vector machines" (2011).
//!
//! Instead of the gradient `G = Qa - e` the solver keeps `F_t = -y_t G_t`; its update
//! `F_t -= y_i da_i K_it + y_j da_j K_jt` does not depend on `y_t`, so the cache stores plain
//! kernel rows. In these terms, with
//! `I_up = {t : a_t < C, y_t = +1} u {t : a_t > 0, y_t = -1}` and
//! `I_low = {t : a_t < C, y_t = -1} u {t : a_t > 0, y_t = +1}`:
//!
//! * WSS 3 picks `i = argmax_{I_up} F_t` and, among `t` in `I_low` with `F_t < F_i`, the `j`
//!   that minimises `-(F_i - F_t)^2 / (K_ii + K_tt - 2 K_it)` (the second-order gain).
//! * The solution is `tol`-optimal when `max_{I_up} F - min_{I_low} F < tol`.
//! * `H_t = -sum_{s : a_s = C} C y_s K_st` is maintained so that the gradient of variables
//!   removed by shrinking (all at a bound, so constant) can be rebuilt from the free ones:
//!   `F_t = H_t + y_t - sum_{s free} a_s y_s K_st`.
//!
//! Ties in the selection go to the last index, and the order of floating-point operations
//! mirrors the textbook form of each formula, so that the iterates follow the reference
//! implementation closely.

use crate::cache::RowCache;
use crate::kernel::KernelData;

/// Curvature used when `K_ii + K_jj - 2 K_ij <= 0` (duplicate points).
const TAU: f64 = 1e-12;

pub(crate) struct Solution {
    /// Indexed like the `order` passed to [`solve`]: `alpha[k]` belongs to sample `order[k]`.
    pub(crate) alpha: Vec<f64>,
    pub(crate) rho: f64,
    pub(crate) iterations: usize,
}

pub(crate) struct Problem<'a> {
    pub(crate) kernel: KernelData,
    /// +1 / -1 per position.
    pub(crate) y: &'a [f64],
    pub(crate) c: f64,
    pub(crate) tol: f64,
    pub(crate) shrinking: bool,
    pub(crate) max_iter: usize,
    /// Cache budget in f32 values.
    pub(crate) cache_floats: usize,
    pub(crate) parallel: bool,
}

struct Solver {
    l: usize,
    active: usize,
    y: Vec<f64>,
    f: Vec<f64>,
    h: Vec<f64>,
    alpha: Vec<f64>,
    /// Membership of I_up / I_low.
    up: Vec<bool>,
    low: Vec<bool>,
    /// Original position of the sample now at each position.
    perm: Vec<usize>,
    c: f64,
    tol: f64,
    unshrunk: bool,
    kd: KernelData,
    cache: RowCache,
}

pub(crate) fn solve(p: Problem<'_>) -> Solution {
    let l = p.y.len();
    let mut s = Solver {
        l,
        active: l,
        y: p.y.to_vec(),
        // a = 0: G = -e, so F = y.
        f: p.y.to_vec(),
        h: vec![0.0; l],
        alpha: vec![0.0; l],
        up: p.y.iter().map(|&y| y > 0.0).collect(),
        low: p.y.iter().map(|&y| y < 0.0).collect(),
        perm: (0..l).collect(),
        c: p.c,
        tol: p.tol,
        unshrunk: false,
        kd: p.kernel,
        cache: RowCache::new(l, p.cache_floats, p.parallel),
    };
    let iterations = s.run(p.shrinking, p.max_iter);
    let rho = s.rho();
    let mut alpha = vec![0.0; l];
    for (k, &a) in s.alpha.iter().enumerate() {
        alpha[s.perm[k]] = a;
    }
    Solution {
        alpha,
        rho,
        iterations,
    }
}

impl Solver {
    fn run(&mut self, shrinking: bool, max_iter: usize) -> usize {
        let period = self.l.min(1000);
        let mut counter = period + 1;
        let mut iter = 0;
        while iter < max_iter {
            counter -= 1;
            if counter == 0 {
                counter = period;
                if shrinking {
                    self.shrink();
                }
            }
            let (i, j) = match self.select() {
                Some(ij) => ij,
                None => {
                    // Optimal on the active set: check again on the whole problem.
                    self.reconstruct_gradient();
                    self.active = self.l;
                    match self.select() {
                        Some(ij) => {
                            counter = 1;
                            ij
                        }
                        None => break,
                    }
                }
            };
            iter += 1;
            self.step(i, j);
        }
        if self.active < self.l {
            self.reconstruct_gradient();
            self.active = self.l;
        }
        iter
    }

    fn set_flags(&mut self, t: usize) {
        let a = self.alpha[t];
        let (not_upper, not_lower) = (a < self.c, a > 0.0);
        if self.y[t] > 0.0 {
            self.up[t] = not_upper;
            self.low[t] = not_lower;
        } else {
            self.up[t] = not_lower;
            self.low[t] = not_upper;
        }
    }

    /// WSS 3; `None` when the active set is `tol`-optimal.
    fn select(&mut self) -> Option<(usize, usize)> {
        let n = self.active;
        let f = &self.f[..n];
        let mut gmax = f64::NEG_INFINITY;
        let mut imax = usize::MAX;
        for (t, (&ft, &u)) in f.iter().zip(&self.up[..n]).enumerate() {
            if u && ft >= gmax {
                gmax = ft;
                imax = t;
            }
        }
        if imax == usize::MAX {
            return None;
        }
        let ki = self.cache.get(imax, n, &self.kd);
        let mut gmax2 = f64::NEG_INFINITY;
        let mut jmin = usize::MAX;
        let mut objmin = f64::INFINITY;
        for (t, ((&ft, &lo), &k)) in f.iter().zip(&self.low[..n]).zip(ki).enumerate() {
            if lo {
                if -ft >= gmax2 {
                    gmax2 = -ft;
                }
                let b = gmax - ft;
                if b > 0.0 {
                    let a = 2.0 - 2.0 * f64::from(k);
                    let obj = if a > 0.0 {
                        -(b * b) / a
                    } else {
                        -(b * b) / TAU
                    };
                    if obj <= objmin {
                        objmin = obj;
                        jmin = t;
                    }
                }
            }
        }
        if gmax + gmax2 < self.tol || jmin == usize::MAX {
            None
        } else {
            Some((imax, jmin))
        }
    }

    /// Solve the two-variable sub-problem on (i, j) and update F and H.
    fn step(&mut self, i: usize, j: usize) {
        let n = self.active;
        let c = self.c;
        let (ki, kj) = self.cache.get_pair(i, j, n, &self.kd);
        let (yi, yj) = (self.y[i], self.y[j]);
        let (old_ai, old_aj) = (self.alpha[i], self.alpha[j]);
        let (mut ai, mut aj) = (old_ai, old_aj);
        let mut quad = 2.0 - 2.0 * f64::from(ki[j]);
        if quad <= 0.0 {
            quad = TAU;
        }
        let gap = yi * (self.f[i] - self.f[j]);
        if yi != yj {
            // a_i - a_j is conserved.
            let delta = gap / quad;
            let diff = ai - aj;
            ai += delta;
            aj += delta;
            if diff > 0.0 {
                if aj < 0.0 {
                    aj = 0.0;
                    ai = diff;
                } else if ai > c {
                    ai = c;
                    aj = c - diff;
                }
            } else if ai < 0.0 {
                ai = 0.0;
                aj = -diff;
            } else if aj > c {
                aj = c;
                ai = c + diff;
            }
        } else {
            // a_i + a_j is conserved.
            let delta = -gap / quad;
            let sum = ai + aj;
            ai -= delta;
            aj += delta;
            if sum > c {
                if ai > c {
                    ai = c;
                    aj = sum - c;
                } else if aj > c {
                    aj = c;
                    ai = sum - c;
                }
            } else if aj < 0.0 {
                aj = 0.0;
                ai = sum;
            } else if ai < 0.0 {
                ai = 0.0;
                aj = sum;
            }
        }
        let si = yi * (ai - old_ai);
        let sj = yj * (aj - old_aj);
        for ((ft, &a), &b) in self.f[..n].iter_mut().zip(ki).zip(kj) {
            *ft -= si * f64::from(a) + sj * f64::from(b);
        }
        self.alpha[i] = ai;
        self.alpha[j] = aj;
        self.set_flags(i);
        self.set_flags(j);
        for (t, was_upper) in [(i, old_ai >= c), (j, old_aj >= c)] {
            let now_upper = self.alpha[t] >= c;
            if was_upper != now_upper {
                let w = if was_upper {
                    c * self.y[t]
                } else {
                    -c * self.y[t]
                };
                let row = self.cache.get(t, self.l, &self.kd);
                for (h, &k) in self.h.iter_mut().zip(row) {
                    *h += w * f64::from(k);
                }
            }
        }
    }

    fn is_free(&self, t: usize) -> bool {
        self.alpha[t] > 0.0 && self.alpha[t] < self.c
    }

    /// Recompute F on the shrunk (inactive) positions from H and the free variables.
    fn reconstruct_gradient(&mut self) {
        let (n, l) = (self.active, self.l);
        if n == l {
            return;
        }
        for t in n..l {
            self.f[t] = self.h[t] + self.y[t];
        }
        let free: Vec<usize> = (0..n).filter(|&t| self.is_free(t)).collect();
        if free.len() * l > 2 * n * (l - n) {
            // Few inactive positions: one short row each.
            for t in n..l {
                let row = self.cache.get(t, n, &self.kd);
                let mut ft = self.f[t];
                for &s in &free {
                    ft -= self.y[s] * self.alpha[s] * f64::from(row[s]);
                }
                self.f[t] = ft;
            }
        } else {
            for &s in &free {
                let w = self.y[s] * self.alpha[s];
                let row = self.cache.get(s, l, &self.kd);
                for (ft, &k) in self.f[n..].iter_mut().zip(&row[n..]) {
                    *ft -= w * f64::from(k);
                }
            }
        }
    }

    fn can_shrink(&self, t: usize, gmax1: f64, gmax2: f64) -> bool {
        match (self.up[t], self.low[t]) {
            (true, true) => false,
            (true, false) => -self.f[t] > gmax2,
            (false, _) => self.f[t] > gmax1,
        }
    }

    fn shrink(&mut self) {
        let n = self.active;
        let mut gmax1 = f64::NEG_INFINITY; // max_{I_up} F
        let mut gmax2 = f64::NEG_INFINITY; // max_{I_low} -F
        for t in 0..n {
            let ft = self.f[t];
            if self.up[t] && ft >= gmax1 {
                gmax1 = ft;
            }
            if self.low[t] && -ft >= gmax2 {
                gmax2 = -ft;
            }
        }
        if !self.unshrunk && gmax1 + gmax2 <= self.tol * 10.0 {
            // Close to the end: give every variable one more chance.
            self.unshrunk = true;
            self.reconstruct_gradient();
            self.active = self.l;
        }
        let mut t = 0;
        while t < self.active {
            if self.can_shrink(t, gmax1, gmax2) {
                self.active -= 1;
                while self.active > t {
                    if !self.can_shrink(self.active, gmax1, gmax2) {
                        self.swap(t, self.active);
                        break;
                    }
                    self.active -= 1;
                }
            }
            t += 1;
        }
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.cache.swap_index(i, j);
        self.kd.swap(i, j);
        self.y.swap(i, j);
        self.f.swap(i, j);
        self.h.swap(i, j);
        self.alpha.swap(i, j);
        self.up.swap(i, j);
        self.low.swap(i, j);
        self.perm.swap(i, j);
    }

    /// The bias: mean of -F over free variables, else the midpoint of the feasible interval.
    fn rho(&self) -> f64 {
        let mut ub = f64::INFINITY;
        let mut lb = f64::NEG_INFINITY;
        let mut n_free = 0usize;
        let mut sum = 0.0;
        for t in 0..self.l {
            let yg = -self.f[t];
            let a = self.alpha[t];
            let pos = self.y[t] > 0.0;
            if a >= self.c {
                if pos {
                    lb = lb.max(yg);
                } else {
                    ub = ub.min(yg);
                }
            } else if a <= 0.0 {
                if pos {
                    ub = ub.min(yg);
                } else {
                    lb = lb.max(yg);
                }
            } else {
                n_free += 1;
                sum += yg;
            }
        }
        if n_free > 0 {
            sum / n_free as f64
        } else {
            (ub + lb) / 2.0
        }
    }
}
