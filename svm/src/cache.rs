//! Least-recently-used cache of kernel-matrix rows.
//!
//! Row `i` holds `K(x_i, x_k)` for the first `len` columns `k < len` in the solver's current
//! (permuted) order; a row is extended on demand when a longer prefix is asked for. The memory
//! budget counts stored f32 values. When the solver swaps two positions (shrinking), the rows
//! and the columns of every cached row are swapped too.

use crate::kernel::KernelData;
use rayon::prelude::*;

/// Columns per parallel task when computing one row; smaller rows are computed on the calling
/// thread (the rayon hand-off costs more than it saves).
const PAR_CHUNK: usize = 32768;

pub(crate) struct RowCache {
    rows: Vec<Vec<f32>>,
    /// Doubly linked LRU list over cached rows; index `rows.len()` is the sentinel, its `next`
    /// is the least recently used row.
    prev: Vec<usize>,
    next: Vec<usize>,
    budget: usize,
    used: usize,
    parallel: bool,
    /// Column swaps not yet applied to the cached rows, and whether their first indices are
    /// non-decreasing (as shrinking produces them), which allows stopping early.
    pending: Vec<(usize, usize)>,
    pending_sorted: bool,
}

impl RowCache {
    /// `budget`: number of f32 values the cache may hold (at least two full rows are allowed).
    pub(crate) fn new(l: usize, budget: usize, parallel: bool) -> RowCache {
        let s = l;
        RowCache {
            rows: vec![Vec::new(); l],
            prev: vec![s; l + 1],
            next: vec![s; l + 1],
            budget: budget.max(2 * l),
            used: 0,
            parallel,
            pending: Vec::new(),
            pending_sorted: true,
        }
    }

    fn sentinel(&self) -> usize {
        self.rows.len()
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn push_back(&mut self, i: usize) {
        let s = self.sentinel();
        let last = self.prev[s];
        self.next[last] = i;
        self.prev[i] = last;
        self.next[i] = s;
        self.prev[s] = i;
    }

    /// Drop row `i` (which must be cached) entirely.
    fn evict(&mut self, i: usize) {
        self.unlink(i);
        self.used -= std::mem::take(&mut self.rows[i]).len();
    }

    /// Make sure row `i` holds at least `len` columns, evicting least recently used rows (never
    /// `protect`) as needed, and mark it most recently used.
    fn ensure(&mut self, i: usize, len: usize, kd: &KernelData, protect: usize) {
        if !self.pending.is_empty() {
            self.flush_swaps();
        }
        let have = self.rows[i].len();
        if have > 0 {
            self.unlink(i);
        }
        if have < len {
            let need = len - have;
            let s = self.sentinel();
            let mut cur = self.next[s];
            while self.used + need > self.budget && cur != s {
                let nx = self.next[cur];
                if cur != protect {
                    self.evict(cur);
                }
                cur = nx;
            }
            let row = &mut self.rows[i];
            row.reserve_exact(need);
            row.resize(len, 0.0);
            compute(kd, i, have, &mut row[have..], self.parallel);
            self.used += need;
        }
        self.push_back(i);
    }

    /// The first `len` columns of row `i`.
    pub(crate) fn get(&mut self, i: usize, len: usize, kd: &KernelData) -> &[f32] {
        self.ensure(i, len, kd, usize::MAX);
        &self.rows[i][..len]
    }

    /// The first `len` columns of rows `i` and `j`.
    pub(crate) fn get_pair(
        &mut self,
        i: usize,
        j: usize,
        len: usize,
        kd: &KernelData,
    ) -> (&[f32], &[f32]) {
        self.ensure(i, len, kd, usize::MAX);
        self.ensure(j, len, kd, i);
        (&self.rows[i][..len], &self.rows[j][..len])
    }

    /// Positions `i < j` exchange their samples. The rows move at once; the columns of the
    /// cached rows are swapped in one batch before the next row is read.
    pub(crate) fn swap_index(&mut self, i: usize, j: usize) {
        debug_assert!(i < j);
        let ci = !self.rows[i].is_empty();
        let cj = !self.rows[j].is_empty();
        if ci {
            self.unlink(i);
        }
        if cj {
            self.unlink(j);
        }
        self.rows.swap(i, j);
        if cj {
            self.push_back(i);
        }
        if ci {
            self.push_back(j);
        }
        if let Some(&(last, _)) = self.pending.last() {
            self.pending_sorted &= last <= i;
        }
        self.pending.push((i, j));
    }

    /// Apply the pending column swaps to every cached row, in order.
    fn flush_swaps(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let sorted = std::mem::replace(&mut self.pending_sorted, true);
        let s = self.sentinel();
        let mut cur = self.next[s];
        while cur != s {
            let nx = self.next[cur];
            let row = &mut self.rows[cur];
            let len = row.len();
            for &(i, j) in &pending {
                if i >= row.len() {
                    if sorted {
                        break;
                    }
                } else if j < row.len() {
                    row.swap(i, j);
                } else {
                    // Column i would need the value for the sample now at i, which this row
                    // never computed: keep the valid prefix only.
                    row.truncate(i);
                }
            }
            let new_len = row.len();
            self.used -= len - new_len;
            if new_len == 0 {
                self.evict(cur);
            }
            cur = nx;
        }
        self.pending = pending;
        self.pending.clear();
    }
}

fn compute(kd: &KernelData, i: usize, start: usize, out: &mut [f32], parallel: bool) {
    if parallel && out.len() >= 2 * PAR_CHUNK {
        out.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| kd.row(i, start + c * PAR_CHUNK, chunk));
    } else {
        kd.row(i, start, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random row requests of random lengths and random swaps, with budgets from two rows to
    /// everything: every row read must equal a fresh computation in the current order.
    #[test]
    fn rows_stay_correct_under_swaps_and_evictions() {
        let n = 37;
        let x: Vec<f32> = (0..n * 2)
            .map(|k| ((k * 7919 % 113) as f32) / 40.0)
            .collect();
        let order: Vec<usize> = (0..n).collect();
        let mut state = 12345u64;
        let mut next = |m: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % m
        };
        for budget in [0, 3 * n, 10 * n, n * n] {
            let mut kd = KernelData::new(&x, 2, &order, 0.7);
            let mut cache = RowCache::new(n, budget, false);
            for _ in 0..3000 {
                match next(4) {
                    0 => {
                        // A batch of swaps with non-decreasing first index, like shrinking.
                        let mut i = next(n - 1);
                        for _ in 0..next(4) {
                            if i >= n - 1 {
                                break;
                            }
                            let j = i + 1 + next(n - 1 - i);
                            cache.swap_index(i, j);
                            kd.swap(i, j);
                            i += 1 + next(3);
                        }
                    }
                    1 => {
                        // An out-of-order swap.
                        let i = next(n - 1);
                        let j = i + 1 + next(n - 1 - i);
                        cache.swap_index(i, j);
                        kd.swap(i, j);
                    }
                    _ => {
                        let (i, j, len) = (next(n), next(n), 1 + next(n));
                        let mut want_i = vec![0.0f32; len];
                        let mut want_j = vec![0.0f32; len];
                        kd.row(i, 0, &mut want_i);
                        kd.row(j, 0, &mut want_j);
                        if i != j {
                            let (ri, rj) = cache.get_pair(i, j, len, &kd);
                            assert_eq!((ri, rj), (&want_i[..], &want_j[..]));
                        } else {
                            assert_eq!(cache.get(i, len, &kd), &want_i[..]);
                        }
                        assert!(cache.used <= cache.budget);
                        let total: usize = cache.rows.iter().map(Vec::len).sum();
                        assert_eq!(total, cache.used);
                    }
                }
            }
        }
    }
}
