"""Fraction of the data CPD's curriculum sees, per difficulty scale, start fraction and budget.

The uniform-difficulty rule (`kdbench.curriculum.uniform_difficulty_subsets`) averages
difficulty values, so the subset sizes depend on the scale of the profile. This script
builds the subsets for

  * simulated POCL profiles: the reciprocal-rank fusion (k = 60) of two rankings of N
    examples whose Spearman-like correlation is rho (a Gaussian copula), rescaled to [0, 1]
    as `kdbench.difficulty.score` does; and
  * the measured profiles committed under results/*/difficulty/*.csv (if any),

at N and E of today's default (3,000 examples, 5 epochs), of the lead's redesigned budget
(15 and 20 epochs) and of Dolly (14,000 examples, 20 epochs), and reports the fraction of
example-epochs seen relative to training on all data every epoch (`kdbench.curriculum.
data_fraction`). No training; a few seconds.

    python benchmarks/cpd_data_fraction.py     # writes benchmarks/results/cpd_data_fraction.md
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from kdbench import curriculum as C  # noqa: E402
from kdbench.difficulty import rrf  # noqa: E402

SETTINGS = [(3000, 5), (3000, 15), (3000, 20), (14000, 20)]  # (N, E)
START_FRACTIONS = [0.2, 0.6]
RHOS = [0.0, 0.5, 0.9]


def simulated_rrf(n: int, rho: float, seed: int = 0, k: int = 60) -> np.ndarray:
    """Rescaled difficulty (max − score)/(max − min) of the RRF of two correlated rankings."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = rho * a + np.sqrt(1 - rho ** 2) * rng.standard_normal(n)
    ranks = [pd.Series(x).rank(method="average").to_numpy() for x in (a, b)]
    s = rrf(ranks[0], ranks[1], k)
    return (s.max() - s) / (s.max() - s.min())


def resample(d: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A measured profile drawn with replacement to size n (keeps its shape)."""
    return np.random.default_rng(seed).choice(d, size=n, replace=True)


def profiles() -> dict[str, np.ndarray]:
    out = {f"simulated RRF, rho={r:g}": simulated_rrf(20000, r) for r in RHOS}
    for path in sorted(REPO.glob("results/*/difficulty/*.csv")):
        d = pd.read_csv(path)["difficulty"].to_numpy(dtype=float)
        out[f"measured {path.parent.parent.name}/{path.stem}"] = d
    return out


def rows() -> list[dict]:
    out = []
    for name, base in profiles().items():
        for n, e in SETTINGS:
            d = resample(base, n)
            median = float(np.median(d))
            for f0 in START_FRACTIONS:
                for scale in C.SCALES:
                    subsets = C.build_subsets(d, e, start_fraction=f0, scale=scale)
                    out.append({"profile": name, "median d": median, "N": n, "E": e,
                                "start_fraction": f0, "scale": scale,
                                "data_fraction": C.data_fraction(subsets, n)})
            stages = C.build_subsets(d, e, curriculum="stages")
            out.append({"profile": name, "median d": median, "N": n, "E": e,
                        "start_fraction": np.nan, "scale": "stages (POCL)",
                        "data_fraction": C.data_fraction(stages, n)})
    return out


def main() -> None:
    df = pd.DataFrame(rows())
    df["column"] = [s if s.startswith("stages") else f"{s}, f0={f:g}"
                    for s, f in zip(df["scale"], df["start_fraction"])]
    wide = df.pivot_table(index=["profile", "median d", "N", "E"], columns="column",
                          values="data_fraction", sort=False).reset_index()
    cols = [c for c in wide.columns if c not in ("profile", "median d", "N", "E")]
    lines = ["# CPD: fraction of the data seen per difficulty scale", "",
             "Written by `python benchmarks/cpd_data_fraction.py` (no training). Data fraction = "
             "example-epochs seen / (E × N) for the uniform-difficulty rule at start fraction f0 on "
             "each scale, and for POCL's four stages. Percentile scale: (1 + f0)/2 for any profile "
             "and E ≥ 2 (up to rounding). Raw scale: depends on the profile's shape (the rescaled "
             "rank fusion has its median d near 1). Simulated profiles: the rank fusion (k = 60) of "
             "two rankings with correlation rho; measured profiles (results/*/difficulty/) are "
             "resampled to N.", "",
             "| profile | median d | N | E | " + " | ".join(cols) + " |",
             "|---|---|---|---|" + "---|" * len(cols)]
    for r in wide.itertuples(index=False):
        vals = " | ".join(f"{v:.3f}" for v in r[4:])
        lines.append(f"| {r[0]} | {r[1]:.3f} | {r[2]:,} | {r[3]} | {vals} |")
    out = HERE / "results" / "cpd_data_fraction.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
