# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The CPU Fitting grid: figures from the committed results table
#
# Rebuilds figures 1a, 1b, 2 and 7 (PAPER.md §5) of
# `experiments/2026-11-22_fit_grid_cpu/` from its `results.jsonl` alone, with the
# analysis library, and checks the refit against the committed `fit.json`.
#
#     python analysis/notebooks/fit_grid_figures.py --out /tmp/fit_grid_figures
#     jupytext --to notebook analysis/notebooks/fit_grid_figures.py   # to open it in Jupyter
#
# The table came from `python train.py +experiment=fit_grid` (see the study's README):
# 4 tiny MoE sizes x 6 peak LRs x 3 WSD budgets on the embedded corpus, 2 CPU cores.

# %%
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def repo_root() -> Path:
    """The repository root, whether this runs as a script or as a notebook."""
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    for path in (here, *here.parents):
        if (path / "analysis" / "fitting.py").exists():
            return path
    raise FileNotFoundError("run this from inside the repository (analysis/fitting.py not found above it)")


REPO = repo_root()
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from lrscale.analysis import fit_all_n_kinds, fit_sweep, load_results  # noqa: E402
from lrscale.analysis.plots import plot_all  # noqa: E402

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)

STUDY = REPO / "experiments" / "2026-11-22_fit_grid_cpu"

parser = argparse.ArgumentParser(description="Rebuild the CPU Fitting-grid figures from its results table.")
parser.add_argument("--table", type=Path, default=STUDY / "results.jsonl", help="results.jsonl of a sweep")
parser.add_argument("--out", type=Path, default=Path("fit_grid_figures"), help="where the PNGs go")
parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for Eq. 6's intervals")
args, _ = parser.parse_known_args()  # known only: Jupyter passes its own arguments

# %% [markdown]
# ## The table
# One row per (run, token budget): a WSD decay branch or the run's end.

# %%
df = load_results(args.table)
committed = args.table.with_name("fit.json")
meta = json.loads(committed.read_text())["meta"] if committed.exists() else {}
hardware = meta.get("hardware", "see the study's README")
print(f"{len(df)} rows, {df['run_id'].nunique()} runs; status: {df['status'].value_counts().to_dict()}")
print(df.groupby("model")[["n_total", "n_active", "n_active_nonembed"]].first().sort_values("n_total"))

# %% [markdown]
# ## The fit: Eq. 2 per (N, D), Eq. 4 per (N, η), Eq. 6 over the optima
# N counted as active non-embedding parameters, as in the campaign's automatic fit.

# %%
sf = fit_sweep(df, "n_active_nonembed", n_boot=args.n_boot, seed=0)
law = sf.law
if law is None:
    sys.exit("Eq. 6 could not be fitted from this table: " + "; ".join(sf.warnings))
print(f"eta* = {law.c:.4g} * N^{law.alpha:.4f} * D^{law.beta:.4f}   R2 {law.r2:.3f}")
print(f"alpha 95% CI [{law.alpha_ci[0]:.4f}, {law.alpha_ci[1]:.4f}], "
      f"beta 95% CI [{law.beta_ci[0]:.4f}, {law.beta_ci[1]:.4f}]")
print("paper (arXiv 2601.05049 Eq. 6): alpha -0.2219, beta -0.3509")
print(sf.optima[["model", "N", "D", "eta_star", "eta_ci_lo", "eta_ci_hi", "edge", "used_in_law"]])

# %% [markdown]
# The other ways of counting N (PAPER.md §2): same optima, different α.

# %%
for kind, other in fit_all_n_kinds(df, n_boot=200, seed=0).items():
    if other.law is not None:
        print(f"{kind:>18}: alpha {other.law.alpha:+.4f}  beta {other.law.beta:+.4f}  R2 {other.law.r2:.3f}")

# %% [markdown]
# ## Figures 1a, 1b, 2, 7

# %%
args.out.mkdir(parents=True, exist_ok=True)
paths = plot_all(sf, args.out, hardware=hardware)
for name, path in paths.items():
    print(f"wrote {path}")

# %% [markdown]
# ## Same as the committed fit?
# The bootstrap is seeded, so the refit reproduces the committed exponents.

# %%
if committed.exists():
    old = json.loads(committed.read_text())["law"]
    same = all(abs(old[k] - getattr(law, k)) < 1e-6 for k in ("alpha", "beta"))
    print(f"committed fit.json: alpha {old['alpha']:.4f}, beta {old['beta']:.4f} -> "
          f"{'reproduced' if same else 'DIFFERENT (was the table or the library changed?)'}")
