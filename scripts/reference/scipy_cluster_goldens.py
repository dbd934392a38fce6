#!/usr/bin/env python3
"""Writes tests/golden/cluster_scipy.json: SciPy linkage, fcluster(criterion='distance') ids and
dendrogram leaf order for a few fixed random distance matrices.

The matrices themselves are written into the golden, so the Rust test (tests/cluster_golden.rs)
does not need NumPy's random generator. Run from the repository root:

    python3 scripts/reference/scipy_cluster_goldens.py

Needs numpy and scipy; no network.
"""
import json
import os

import numpy as np
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import pdist

METHODS = ["average", "single", "complete", "ward", "weighted"]


def matrices():
    rng = np.random.default_rng(20261126)
    out = []
    # Euclidean points in 3-D (ward is exact here), n = 7 and 12.
    for n in (7, 12):
        pts = rng.normal(size=(n, 3))
        out.append((f"euclid{n}", pdist(pts)))
    # Clumpy points: three blobs plus two outliers, like heads that form groups.
    centres = rng.normal(scale=4.0, size=(3, 2))
    pts = np.concatenate([c + 0.3 * rng.normal(size=(4, 2)) for c in centres] + [rng.normal(scale=6.0, size=(2, 2))])
    out.append(("blobs14", pdist(pts)))
    # A random symmetric (non-metric) dissimilarity in [0, ln 2), like JS values, n = 10.
    n = 10
    d = rng.uniform(0.0, np.log(2.0), size=n * (n - 1) // 2)
    out.append(("js10", d))
    return out


def thresholds(z):
    """Midpoints between consecutive distinct merge heights, plus one below and one above all."""
    h = np.unique(z[:, 2])
    mids = list((h[:-1] + h[1:]) / 2.0)
    return [float(h[0] / 2.0)] + [float(m) for m in mids] + [float(h[-1] * 1.5 + 1e-3)]


def main():
    cases = []
    for name, cond in matrices():
        n = int(round((1 + np.sqrt(1 + 8 * len(cond))) / 2))
        for method in METHODS:
            z = linkage(cond, method=method)
            cuts = []
            for t in thresholds(z):
                ids = fcluster(z, t, criterion="distance")
                cuts.append({"threshold": t, "ids": [int(i) for i in ids]})
            cases.append(
                {
                    "name": name,
                    "method": method,
                    "n": n,
                    "condensed": [float(x) for x in cond],
                    "linkage": [[int(r[0]), int(r[1]), float(r[2]), int(r[3])] for r in z],
                    "leaves": [int(i) for i in leaves_list(z)],
                    "cuts": cuts,
                }
            )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "tests", "golden", "cluster_scipy.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"generator": "scripts/reference/scipy_cluster_goldens.py", "cases": cases}, f, indent=1)
    print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
    main()
