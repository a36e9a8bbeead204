"""Regenerate svm/tests/fixtures/sklearn_svc.json: small data sets fitted with scikit-learn's
SVC (libsvm C-SVC, RBF kernel), with its decision values on query points, intercept, support
vectors and dual coefficients. Used by svm/tests/sklearn_fixture.rs.

Run from the repository root:  .venv/bin/python bench/svc/make_fixture.py

All features are float32 values (stored exactly in the JSON as doubles), as unlearn-svm takes
f32 input; scikit-learn fits on the same values converted to float64.
"""

import json
import os

import numpy as np
import sklearn
from sklearn.svm import SVC

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "svm", "tests", "fixtures",
                   "sklearn_svc.json")


def f32(a):
    return np.asarray(a, dtype=np.float32)


def gauss_1d(rng):
    # 300 samples: two overlapping 1-D Gaussians (members shifted right).
    n = 300
    y = rng.random(n) < 0.5
    x = np.where(y, rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n))[:, None]
    q = np.linspace(-3.0, 4.0, 141)[:, None]
    return f32(x), y, f32(q)


def softmax_10d(rng):
    # 200 samples: 10-class probability vectors, members more peaked on their class.
    n = 200
    y = rng.random(n) < 0.5
    cls = rng.integers(0, 10, n)
    x = np.empty((n, 10))
    for i in range(n):
        a = np.full(10, 0.3)
        a[cls[i]] = 8.0 if y[i] else 2.5
        x[i] = rng.dirichlet(a)
    qcls = rng.integers(0, 10, 120)
    q = np.empty((120, 10))
    for i in range(120):
        a = np.full(10, 0.3)
        a[qcls[i]] = rng.choice([2.5, 8.0])
        q[i] = rng.dirichlet(a)
    return f32(x), y, f32(q)


def correct_01(rng):
    # 250 samples of the 0/1 "correctness" feature: only two distinct points, with duplicates
    # of both labels at each (members correct 95% of the time, non-members 75%).
    n = 250
    y = rng.random(n) < 0.5
    x = np.where(y, rng.random(n) < 0.95, rng.random(n) < 0.75).astype(float)[:, None]
    # (0.5 is left out: by symmetry its decision value is 0 up to rounding.)
    q = np.array([0.0, 1.0, 0.25, 0.4, 0.6, 0.75, -1.0, 2.0])[:, None]
    return f32(x), y, f32(q)


def conf_beta(rng):
    # 400 samples of a confidence-like feature in (0, 1) from Beta laws.
    n = 400
    y = rng.random(n) < 0.5
    x = np.where(y, rng.beta(6.0, 0.6, n), rng.beta(3.0, 0.9, n))[:, None]
    q = np.concatenate([np.linspace(0.0, 1.0, 101), x[:40, 0]])[:, None]
    return f32(x), y, f32(q)


CASES = [
    # name, generator, C, gamma
    ("gauss_1d", gauss_1d, 3.0, "auto"),
    ("softmax_10d", softmax_10d, 3.0, "auto"),
    ("correct_01", correct_01, 3.0, "auto"),
    ("conf_beta", conf_beta, 3.0, "auto"),
    ("gauss_1d_c0.5_g2", gauss_1d, 0.5, 2.0),
]


def main():
    out = {"sklearn_version": sklearn.__version__, "cases": []}
    for name, gen, c, gamma in CASES:
        # A fixed seed per data set (the same data for the two gauss_1d cases).
        rng = np.random.default_rng(sum(map(ord, name.split("_c")[0])))
        x, y, q = gen(rng)
        model = SVC(C=c, gamma=gamma, kernel="rbf", tol=1e-3, shrinking=True)
        model.fit(x.astype(np.float64), y)
        dec = model.decision_function(q.astype(np.float64))
        pred = model.predict(q.astype(np.float64))
        assert list(model.classes_) == [False, True]
        out["cases"].append({
            "name": name,
            "c": c,
            "gamma": gamma,
            "n_features": int(x.shape[1]),
            "x": [float(v) for v in x.ravel()],
            "y": [bool(v) for v in y],
            "queries": [float(v) for v in q.ravel()],
            "decision": [float(v) for v in dec],
            "predict": [bool(v) for v in pred],
            "intercept": float(model.intercept_[0]),
            "n_support": int(model.n_support_.sum()),
            "n_iter": int(np.sum(model.n_iter_)),
            "support": [int(v) for v in model.support_],
            "dual_coef": [float(v) for v in model.dual_coef_[0]],
        })
        print(f"{name}: n={len(y)} d={x.shape[1]} nSV={model.n_support_.sum()} "
              f"b={model.intercept_[0]:.6f} iter={np.sum(model.n_iter_)}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(out, fh, indent=None, separators=(",", ":"))
        fh.write("\n")


if __name__ == "__main__":
    main()
