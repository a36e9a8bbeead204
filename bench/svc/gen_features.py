"""Deterministic CIFAR-scale membership-inference features for the SVC benchmark.

Simulates the softmax output of a 10-class model on 10,000 members + 10,000 non-members (the
shadow set the attack SVC is fitted on) and 4,500 targets (half members, half non-members), and
derives the per-sample attack features:

* conf    - confidence on the true class, p_y (1-D)
* entropy - Shannon entropy of the probability vector (1-D)
* mentr   - modified entropy (Song & Mittal 2021) (1-D)
* correct - 1.0 if argmax == y else 0.0 (1-D, only two distinct values: heavy duplicates)
* softmax - the whole probability vector (10-D)

Members' confidence is concentrated near 1, non-members' is lower and spread (Beta laws).
"""

import numpy as np

N_CLASSES = 10
FEATURES = ("conf", "entropy", "mentr", "correct", "softmax")


def _softmax_outputs(rng, n, member):
    y = rng.integers(0, N_CLASSES, size=n)
    if member:
        p_y = rng.beta(6.0, 0.6, size=n)
    else:
        p_y = rng.beta(3.0, 0.9, size=n)
    p_y = np.clip(p_y, 1e-6, 1.0 - 1e-6)
    # The remaining mass goes to the other 9 classes, spiky (Dirichlet with small alpha) so that
    # some low-confidence samples are misclassified.
    rest = rng.dirichlet(np.full(N_CLASSES - 1, 0.25), size=n)
    probs = np.empty((n, N_CLASSES))
    for i in range(n):
        others = (1.0 - p_y[i]) * rest[i]
        probs[i] = np.insert(others, y[i], p_y[i])
    return probs, y


def _features(probs, y):
    n = len(y)
    eps = 1e-30
    p_y = probs[np.arange(n), y]
    entropy = -(probs * np.log(np.maximum(probs, eps))).sum(axis=1)
    log_1mp = np.log(np.maximum(1.0 - probs, eps))
    mentr = -(1.0 - p_y) * np.log(np.maximum(p_y, eps))
    mask = np.ones_like(probs, dtype=bool)
    mask[np.arange(n), y] = False
    mentr -= (probs * log_1mp * mask).sum(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    return {
        "conf": p_y[:, None],
        "entropy": entropy[:, None],
        "mentr": mentr[:, None],
        "correct": correct[:, None],
        "softmax": probs,
    }


def make_split(rng, n_members, n_non_members):
    pm, ym = _softmax_outputs(rng, n_members, True)
    pn, yn = _softmax_outputs(rng, n_non_members, False)
    probs = np.vstack([pm, pn])
    y = np.concatenate([ym, yn])
    member = np.concatenate([np.ones(n_members, bool), np.zeros(n_non_members, bool)])
    # Shuffle so that the two classes are interleaved, as a real attack data set would be.
    perm = rng.permutation(len(member))
    feats = _features(probs[perm], y[perm])
    # The model's output is float32.
    return {k: v.astype(np.float32) for k, v in feats.items()}, member[perm]


def generate(seed=20240617, n_members=10_000, n_non_members=10_000, n_targets=4_500):
    rng = np.random.default_rng(seed)
    train, train_y = make_split(rng, n_members, n_non_members)
    test, test_y = make_split(rng, n_targets // 2, n_targets - n_targets // 2)
    return train, train_y, test, test_y
