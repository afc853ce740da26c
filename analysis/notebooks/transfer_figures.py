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
# # μTransfer on the CPU: figure 3 for every transfer axis, from the committed tables
#
# Rebuilds, for each committed study `experiments/2026-11-*_transfer_<axis>_cpu/`, the
# figure and table of PAPER.md §5 figure 3 with the analysis library, from the folder's
# results table (`results.csv` or `results.jsonl`) and `run_config.csv` alone, and checks the
# recomputed optima against the committed table. Exit code 1 when a committed number does not
# reproduce. An axis whose folder does not exist yet is skipped with a note.
#
#     python analysis/notebooks/transfer_figures.py --out /tmp/transfer_figures
#     python analysis/notebooks/transfer_figures.py --root /path/to/studies --out DIR   # other folders
#     jupytext --to notebook analysis/notebooks/transfer_figures.py                      # to open it in Jupyter
#
# | axis | folder suffix | analysis | committed table checked |
# |---|---|---|---|
# | width (d_model) | `transfer_width_cpu` | `analysis.transfer` | `transfer.csv` |
# | depth (n_layers) | `transfer_depth_cpu` | `analysis.transfer` | `transfer.csv` |
# | experts (num_experts) | `transfer_experts_cpu` | `analysis.transfer` | `transfer.csv` |
# | granularity (`model.moe.d_expert`) | `transfer_granularity_cpu` | `analysis.transfer` | `transfer.csv` |
# | horizon (tokens) | `transfer_horizon_cpu` | `analysis.horizon` | `horizon.csv`, β in `horizon.json` |
# | weight decay | `transfer_wd_cpu` | `analysis.weight_decay` | `weight_decay.csv` |
# | module-wise LRs | `transfer_ablation_cpu` | `analysis.modulewise` | `modulewise.csv` |

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
        if (path / "analysis" / "transfer.py").exists():
            return path
    raise FileNotFoundError("run this from inside the repository (analysis/transfer.py not found above it)")


REPO = repo_root()
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from lrscale.analysis.transfer import run_analysis  # noqa: E402

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)

parser = argparse.ArgumentParser(description="Rebuild figure 3 for every committed transfer study.")
parser.add_argument("--root", type=Path, default=REPO / "experiments", help="folder holding the study folders")
parser.add_argument("--out", type=Path, default=Path("transfer_figures"), help="where the outputs go")
args, _ = parser.parse_known_args()  # known only: Jupyter passes its own arguments

# (axis folder name, analysis, committed summary, committed table, row keys, columns that must reproduce)
STUDIES = [
    ("width", "transfer", "transfer.json", "transfer.csv", ["variant", "size"],
     ["best_lr", "best_loss", "eta_star", "drift_eta_star_log2"]),
    ("depth", "transfer", "transfer.json", "transfer.csv", ["variant", "size"],
     ["best_lr", "best_loss", "eta_star", "drift_eta_star_log2"]),
    ("experts", "transfer", "transfer.json", "transfer.csv", ["variant", "size"],
     ["best_lr", "best_loss", "eta_star", "drift_eta_star_log2"]),
    ("granularity", "transfer", "transfer.json", "transfer.csv", ["variant", "size"],
     ["best_lr", "best_loss", "eta_star", "drift_eta_star_log2"]),
    ("horizon", "horizon", "horizon.json", "horizon.csv", ["variant", "tokens"],
     ["best_lr", "eta_star", "drift_log2", "drift_rule_paper_log2"]),
    ("wd", "weight_decay", "weight_decay.json", "weight_decay.csv", ["variant", "width", "tokens"],
     ["best_eta", "best_decay", "eta_star", "lambda_star", "tau_tokens_star"]),
    ("ablation", "modulewise", "modulewise.json", "modulewise.csv", ["variant", "size"],
     ["best_lr", "best_loss", "eta_star", "eq2_C", "dloss_x2"]),
]


def same(a, b, rtol: float = 1e-6) -> bool:
    """Equal within rtol; nan equals nan and inf equals inf (an unfitted or diverged cell must stay so)."""
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


def compare(committed: pd.DataFrame, new: pd.DataFrame, keys: list[str], cols: list[str], where: str) -> list[str]:
    """Cells of `cols` that differ, and rows present on one side only."""
    c, n = committed.set_index(keys), new.set_index(keys)
    bad = [f"{where}: row {k} is committed but not recomputed" for k in c.index.difference(n.index)]
    bad += [f"{where}: row {k} is recomputed but not committed" for k in n.index.difference(c.index)]
    for k in c.index.intersection(n.index):
        for col in cols:
            if col in c.columns and not same(c.at[k, col], n.at[k, col]):
                bad.append(f"{where}: {k} {col} committed {c.at[k, col]} != recomputed {n.at[k, col]}")
    return bad


# %% [markdown]
# ## Recompute every committed study
# Settings (axis, variant keys, budget) come from the committed summary JSON, the hardware line
# from its caption; the outputs go to `--out/<study folder>/`.

# %%
failures: list[str] = []
done = []
for axis_name, analysis, summary_file, table_file, keys, cols in STUDIES:
    folders = sorted(args.root.glob(f"2026-11-*_transfer_{axis_name}_cpu"))
    if not folders:
        print(f"[skip] {axis_name}: no {args.root}/2026-11-*_transfer_{axis_name}_cpu/ committed yet")
        continue
    study = folders[-1]
    if not (study / summary_file).exists():
        failures.append(f"{study.name}: {summary_file} missing (commit the analysis outputs with the study)")
        continue
    meta = json.loads((study / summary_file).read_text())
    hardware = meta.get("caption", "").split("hardware: ", 1)[-1] or "see the study's README"
    kwargs = {"variant_keys": meta.get("variant_keys") or []}
    if analysis == "transfer":
        kwargs.update(axis=meta.get("axis", "d_model"), tokens=meta.get("tokens") or "last", probes=False)
    elif analysis == "horizon":
        kwargs.update(axis="tokens", base_tokens=meta.get("base_tokens"))
    elif analysis == "weight_decay":
        kwargs.update(window=meta.get("window", 5), tau_role=meta.get("tau_role", "auto"))
    out = args.out / study.name
    result = run_analysis(analysis, study, out, hardware=hardware, **kwargs)
    new = pd.read_csv(out / table_file)
    failures += compare(pd.read_csv(study / table_file), new, keys, cols, study.name)
    if analysis == "horizon":
        for variant, b in meta["beta"].items():
            got = result["beta"][variant]["beta"]
            if not same(b["beta"] if b["beta"] is not None else math.nan, got if got is not None else math.nan):
                failures.append(f"{study.name}: {variant} beta committed {b['beta']} != recomputed {got}")
    print(f"== {study.name} ({analysis}): wrote {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(result.get("markdown") or (out / "transfer.md").read_text())
    done.append(study.name)

# %% [markdown]
# ## Same as committed?

# %%
print(f"{len(done)} stud{'y' if len(done) == 1 else 'ies'} recomputed: {', '.join(done) or 'none'}")
if failures:
    print("NOT REPRODUCED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("every committed optimum reproduced")
