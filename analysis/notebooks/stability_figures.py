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
# # Training stability and feature learning, SP vs μP: figures 5 and 6 from the committed probe tables
#
# For every committed transfer study `experiments/2026-11-*_transfer_*_cpu/` that holds a
# `probes.csv` (the long table of training-probe series, `analysis/probe_series.py`), rebuild
# with the analysis library:
# - figure 5 (`fig5_stability.png`) and the spike table (`spikes.csv`): max attention logit,
#   output-logit RMS, gradient norm and loss with their spikes, router imbalance and z, at each
#   variant's best LR and at the common LR;
# - figure 6 (`fig6_feature_learning.png`) and `feature_learning_slopes.csv`: relative update per
#   role and activation RMS per module against width, with log-log slopes over training;
# - the optimizer monitors (`eps_dominance.csv`, `wd_timescale.csv`, `monitors.png`) when logged.
#
# Then check them against the committed tables: spike counts, slopes and monitor verdicts must
# reproduce, and the spike counts must equal the runs' own count in `stability.csv`
# (`training.probes.summarize_probes`, same rule). Exit code 1 when one does not.
#
#     python analysis/notebooks/stability_figures.py --out /tmp/stability_figures
#     python analysis/notebooks/stability_figures.py --root /path/to/studies --out DIR

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
        if (path / "analysis" / "probe_series.py").exists():
            return path
    raise FileNotFoundError("run this from inside the repository (analysis/probe_series.py not found above it)")


REPO = repo_root()
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from lrscale.analysis import feature_learning, optimizer_monitors, stability  # noqa: E402
from lrscale.analysis.probe_series import PROBES_FILE, read_probes, write_probe_outputs  # noqa: E402

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)

parser = argparse.ArgumentParser(description="Rebuild figures 5 and 6 from the committed probes tables.")
parser.add_argument("--root", type=Path, default=REPO / "experiments", help="folder holding the study folders")
parser.add_argument("--out", type=Path, default=Path("stability_figures"), help="where the outputs go")
args, _ = parser.parse_known_args()


def same(a, b, rtol: float = 1e-4) -> bool:
    """Equal within rtol (probes.csv keeps 6 significant digits); nan equals nan."""
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=1e-9)


def compare(committed: Path, new: Path, keys: list[str], cols: list[str], where: str) -> list[str]:
    if not committed.exists():
        return []
    c, n = pd.read_csv(committed).set_index(keys), pd.read_csv(new).set_index(keys)
    bad = [f"{where}/{committed.name}: row {k} not recomputed" for k in c.index.difference(n.index)]
    for k in c.index.intersection(n.index):
        for col in cols:
            if col in c.columns and not same(c.at[k, col], n.at[k, col]):
                bad.append(f"{where}/{committed.name}: {k} {col} committed {c.at[k, col]} != recomputed {n.at[k, col]}")
    return bad


# %% [markdown]
# ## Rebuild every study that committed a probes table

# %%
failures: list[str] = []
done = []
for study in sorted(args.root.glob("2026-11-*_transfer_*_cpu")):
    if not (study / PROBES_FILE).exists():
        print(f"[skip] {study.name}: no {PROBES_FILE} committed (written by `python -m analysis.transfer SWEEP --out "
              f"{study}` from the sweep directory)")
        continue
    table = read_probes(study)
    meta = json.loads((study / "transfer.json").read_text()) if (study / "transfer.json").exists() else {}
    axis = meta.get("axis", "d_model")
    caption = (meta.get("probe_outputs") or {}).get("caption", "")
    out = args.out / study.name
    out.mkdir(parents=True, exist_ok=True)
    written = write_probe_outputs(table, out, axis=axis, caption=caption)
    print(f"== {study.name}: {table['run_id'].nunique()} runs, {len(table)} rows; wrote {', '.join(written.values())}")

    failures += compare(study / stability.SPIKES_FILE, out / stability.SPIKES_FILE, ["run_id"],
                        ["loss_spikes", "grad_norm_spikes", "max_attn_logit_max", "logit_rms_max"], study.name)
    failures += compare(study / feature_learning.SLOPES_FILE, out / feature_learning.SLOPES_FILE,
                        ["variant", "kind", "module", "step"], ["slope", "reference"], study.name)
    failures += compare(study / optimizer_monitors.EPS_FILE, out / optimizer_monitors.EPS_FILE, ["run_id", "role"],
                        ["max", "verdict"], study.name)
    failures += compare(study / optimizer_monitors.TAU_FILE, out / optimizer_monitors.TAU_FILE, ["run_id", "role"],
                        ["tau_tokens_peak", "verdict"], study.name)

    # The spike counts from the table must be the runs' own (summary.json -> stability.csv).
    spikes = pd.read_csv(out / stability.SPIKES_FILE)
    if (study / "stability.csv").exists():
        own = pd.read_csv(study / "stability.csv").set_index(["variant", "size", "lr"])["loss_spikes"]
        own = own[~own.index.duplicated(keep=False)]  # several seeds at one (variant, size, lr): not comparable
        for r in spikes.to_dict("records"):
            k = (r["variant"], r["size"], r["lr"])
            if k in own.index and pd.notna(own[k]) and int(own[k]) != int(r["loss_spikes"]):
                failures.append(f"{study.name}: {k} loss spikes {r['loss_spikes']} in probes.csv "
                                f"but {own[k]} in stability.csv")
    print(spikes[["variant", "size", "lr", "selection", "loss_spikes", "grad_norm_spikes", "max_attn_logit_max"]])

    slopes = pd.read_csv(out / feature_learning.SLOPES_FILE) if (out / feature_learning.SLOPES_FILE).exists() else None
    if slopes is not None:
        ref = slopes[slopes["reference"]]
        print("slopes of log value vs log", axis, "at the last peak-LR probe step:")
        print(ref.pivot_table(index=["kind", "module"], columns="variant", values="slope").round(2))
    eps, tau = optimizer_monitors.eps_dominance_table(table), optimizer_monitors.wd_timescale_table(table)
    for note in optimizer_monitors.monitor_notes(eps, tau):
        print("monitor:", note)
    done.append(study.name)

# %% [markdown]
# ## Same as committed?

# %%
print(f"{len(done)} stud{'y' if len(done) == 1 else 'ies'} with probes rebuilt: {', '.join(done) or 'none'}")
if failures:
    print("NOT REPRODUCED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("every committed probe number reproduced")
