"""SVC benchmark: scikit-learn's SVC(C=3, gamma="auto") against unlearn-svm on CIFAR-scale
membership-inference features (see gen_features.py). Run through scripts/bench-svc.sh.

For each feature set: writes the inputs under bench/out/svc/, times scikit-learn's fit and
predict, runs `cargo run --release -p unlearn-svm --example svc_bench` on the same files, and
prints one table row: fit and predict seconds of both, prediction agreement, largest decision
value difference, support-vector counts. Also writes bench/out/svc/results.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from sklearn.svm import SVC

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_features import FEATURES, generate  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/svc")
    ap.add_argument("--features", default=",".join(FEATURES))
    ap.add_argument("--cargo-target-dir", default=os.environ.get("CARGO_TARGET_DIR"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, train_y, test, test_y = generate()
    env = dict(os.environ)
    if args.cargo_target_dir:
        env["CARGO_TARGET_DIR"] = args.cargo_target_dir

    rows = []
    for name in args.features.split(","):
        xtr, xte = train[name], test[name]
        d = xtr.shape[1]
        base = os.path.join(args.out, name)
        xtr.astype("<f4").tofile(base + ".train_x.f32")
        train_y.astype(np.uint8).tofile(base + ".train_y.u8")
        xte.astype("<f4").tofile(base + ".test_x.f32")

        # scikit-learn gets exactly the float32 values, converted to float64 as it would itself.
        model = SVC(C=3.0, gamma="auto", kernel="rbf")
        t = time.perf_counter()
        model.fit(xtr.astype(np.float64), train_y)
        sk_fit = time.perf_counter() - t
        t = time.perf_counter()
        sk_pred = model.predict(xte.astype(np.float64))
        sk_predict = time.perf_counter() - t
        sk_dec = model.decision_function(xte.astype(np.float64))

        cmd = ["cargo", "run", "--quiet", "--release", "-p", "unlearn-svm", "--example",
               "svc_bench", "--", str(d), base + ".train_x.f32", base + ".train_y.u8",
               base + ".test_x.f32", base + ".ours"]
        res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        ours = json.loads(res.stdout.strip().splitlines()[-1])
        our_pred = np.fromfile(base + ".ours.pred.u8", dtype=np.uint8).astype(bool)
        our_dec = np.fromfile(base + ".ours.dec.f64", dtype="<f8")

        row = {
            "feature": name,
            "n_train": int(len(train_y)),
            "n_features": int(d),
            "n_test": int(len(test_y)),
            "sklearn_fit_s": sk_fit,
            "ours_fit_s": ours["fit_s"],
            "sklearn_predict_s": sk_predict,
            "ours_predict_s": ours["predict_s"],
            "agreement": float((our_pred == sk_pred).mean()),
            "max_abs_dec_diff": float(np.abs(our_dec - sk_dec).max()),
            "sklearn_n_support": int(model.n_support_.sum()),
            "ours_n_support": ours["n_support"],
            "sklearn_iter": int(np.sum(model.n_iter_)),
            "ours_iter": ours["iterations"],
            "sklearn_intercept": float(model.intercept_[0]),
            "ours_intercept": ours["intercept"],
            "attack_accuracy": float((sk_pred == test_y).mean()),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    hdr = (f"{'feature':<8} {'n':>6} {'d':>3} {'sk fit s':>9} {'ours fit s':>10} {'speedup':>7} "
           f"{'sk pred s':>9} {'ours pred s':>11} {'agree %':>8} {'max|dDec|':>9} "
           f"{'nSV sk/ours':>13} {'iter sk/ours':>13}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['feature']:<8} {r['n_train']:>6} {r['n_features']:>3} {r['sklearn_fit_s']:>9.2f} "
              f"{r['ours_fit_s']:>10.2f} {r['sklearn_fit_s'] / r['ours_fit_s']:>6.1f}x "
              f"{r['sklearn_predict_s']:>9.2f} {r['ours_predict_s']:>11.2f} "
              f"{100 * r['agreement']:>8.2f} {r['max_abs_dec_diff']:>9.1e} "
              f"{r['sklearn_n_support']:>6}/{r['ours_n_support']:<6} "
              f"{r['sklearn_iter']:>6}/{r['ours_iter']:<6}")


if __name__ == "__main__":
    main()
