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
# # Fitting vs Transfer at the held-out target: figure 4 and the table, from the committed tables
#
# Rebuilds `comparison.json`, `report.md` and `fig4_<target>.png` of
# `experiments/2026-11-30_compare_cpu/{moe,dense}/` from their results tables alone (one
# `results.jsonl` per arm) and the design the sweeper recorded (`design.json`), with the analysis
# library; then checks the predictions and verdicts against the committed `comparison.json`.
#
#     python analysis/notebooks/compare_figures.py --out /tmp/compare_figures
#     jupytext --to notebook analysis/notebooks/compare_figures.py   # to open it in Jupyter
#
# The tables came from `python train.py +experiment=compare` and `+experiment=compare_dense`
# (see the study's README): tiny MoE and dense transformers on the embedded corpus, 2 CPU cores.

# %%
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def repo_root() -> Path:
    """The repository root, whether this runs as a script or as a notebook."""
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    for path in (here, *here.parents):
        if (path / "analysis" / "compare.py").exists():
            return path
    raise FileNotFoundError("run this from inside the repository (analysis/compare.py not found above it)")


REPO = repo_root()
sys.path.insert(0, str(REPO))

from lrscale.analysis import compare as cmp  # noqa: E402

STUDY = REPO / "experiments" / "2026-11-30_compare_cpu"
parser = argparse.ArgumentParser(description="Rebuild figure 4 and the comparison table from the committed tables.")
parser.add_argument("--study", type=Path, default=STUDY, help="a folder with one comparison per family subfolder")
parser.add_argument("--out", type=Path, default=Path("compare_figures"), help="where the outputs go")
args, _ = parser.parse_known_args()

# %% [markdown]
# ## Recompute everything from the tables, family by family

# %%
if not args.study.is_dir():
    print(f"{args.study} does not exist: no committed comparison to rebuild")
    sys.exit(0)
failures = []
for family_dir in sorted(p for p in args.study.iterdir() if (p / "design.json").exists()):
    design = json.loads((family_dir / "design.json").read_text())
    committed = json.loads((family_dir / "comparison.json").read_text())
    preds = cmp.predict_all(family_dir, design)
    hardware = committed["caption"].split("hardware: ", 1)[-1]
    comparison = cmp.build_comparison(family_dir, design, preds, hardware=hardware)
    comparison["root"] = committed["root"]  # where the campaign ran, for the report's title
    paths = cmp.write_comparison(family_dir, comparison, preds, out=args.out / family_dir.name)
    print(f"== {design['family']}: wrote {', '.join(p.name for p in paths.values())} to {args.out / family_dir.name}")

    # The predictions must come out as committed (they are a pure function of the tables) ...
    for name, ps in preds.items():
        for p, c in zip(ps, committed["predictions"][name]):
            if p.paradigm != c["paradigm"] or not math.isclose(p.lr, c["lr"], rel_tol=1e-9):
                failures.append(f"{family_dir.name}/{name}: {p.paradigm} lr {p.lr} != committed {c['lr']}")
    # ... and so must each verdict.
    for t, tc in zip(comparison["targets"], committed["targets"]):
        for k, v in t["verdicts"].items():
            vc = tc["verdicts"][k]
            same = (v["loss"] == vc["loss"] or (vc["loss"] is None and math.isnan(v["loss"])))
            if not same:
                failures.append(f"{family_dir.name}/{t['name']}: {k} loss {v['loss']} != committed {vc['loss']}")
        print(f"   target {t['name']}: N = {t['N']:,.0f}, D = {t['D']:,.0f}")
        for v in t["verdicts"].values():
            print(f"     {cmp.LABELS[v['paradigm']]:<52} η {v['lr']:.4g}  loss {v['loss']:.4f}  regret "
                  f"{v['regret_pct']:+.2f}%  ({v['regret_sigmas']:+.1f} σ)  η/η* {v['error_ratio_vs_eta_star']:.2f}")
        h = t.get("head_to_head")
        if h:
            print(f"     head to head: Fitting − Transfer = {h['fitting_minus_transfer']:+.4f} nats "
                  f"({h['margin_in_se']:+.1f} SE) -> {h['winner']}")

print("reproduced" if not failures else "NOT reproduced:\n" + "\n".join(failures))
if failures:
    sys.exit(1)
