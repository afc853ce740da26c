"""The training-probe series behind figures 5 and 6 (PAPER.md Sec. 5), as one small long table.

From a sweep directory, pick the runs that matter, per (variant, size) of a transfer axis:
  best    the run at the variant's own grid-optimal LR at that size;
  common  the run at one common LR for every variant and size (default: the reference variant's
          optimum at the base size, i.e. the LR a muP proxy would hand over; SP is judged at it);
a run that is both is labelled `best+common`. Then read their metrics.jsonl into `probes.csv`:

    run_id, variant, size, lr, selection, step, tokens, metric, value

one row per logged (step, metric): the loop's train rows (train_loss, lr, grad_norm, moe/imbalance,
moe/router_z) and the probe rows (probe/max_attn_logit, probe/logit_rms, probe/attn_logit_rms,
probe/update_rel/<role>, probe/act_rms/<module>, probe/eps_dominance/<role>,
probe/wd_tau_steps/<role>, probe/wd_tau_tokens/<role>; training/probes.py). tokens = step x the
run's tokens per step. A few hundred kB for a 4-width x 2-variant study: small enough to commit,
and figures 5 and 6 and the optimizer monitors are rebuilt from it alone (`write_probe_outputs`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

PROBES_FILE = "probes.csv"
COLUMNS = ("run_id", "variant", "size", "lr", "selection", "step", "tokens", "metric", "value")

# Exact names, or prefixes ending in "/". probe/grad_norm/<role> is left out by default (figure 5
# uses the global gradient norm); pass metrics=... to keep it.
DEFAULT_METRICS = ("train_loss", "lr", "grad_norm", "moe/imbalance", "moe/router_z", "moe/router_entropy",
                   "probe/max_attn_logit", "probe/logit_rms", "probe/attn_logit_rms", "probe/update_rel/",
                   "probe/act_rms/", "probe/eps_dominance/", "probe/wd_tau_steps/", "probe/wd_tau_tokens/")


def _wanted(metric: str, metrics: Iterable[str]) -> bool:
    return any(metric == m or (m.endswith("/") and metric.startswith(m)) for m in metrics)


def reference_variant(variants: Iterable[str]) -> str:
    """The variant whose proxy optimum defines the common LR: the first non-SP one (muP), else SP."""
    from lrscale.analysis.transfer import variant_order
    order = variant_order(variants)
    return next((v for v in order if not v.startswith("sp")), order[0])


def select_runs(df: pd.DataFrame, *, common_lr: float | None = None, reference: str | None = None,
                tolerance_log2: float = 0.5) -> pd.DataFrame:
    """The runs figures 5 and 6 show: per (variant, size) the best-LR run (the LR of the lowest mean
    loss over seeds, its lowest seed) and the run at the common
    LR (nearest grid LR within `tolerance_log2` octaves; none if the grid has no such LR).

    df: one row per run (analysis.transfer.load_transfer). Returns run_id, variant, size, lr,
    selection, batch_tokens; `.attrs["common_lr"]` and `.attrs["reference"]` say what was used."""
    from lrscale.analysis.transfer import loss_per_lr, usable
    ok = usable(df)
    if ok.empty:
        raise ValueError("no run finished with a finite loss: nothing to select for figures 5 and 6")
    reference = reference or reference_variant(df["variant"])
    if common_lr is None:
        ref = ok[ok["variant"] == reference]
        ref = ref[ref["size"] == ref["size"].min()]
        common_lr = float(loss_per_lr(ref)["mean"].idxmin())
    picks: dict[str, set] = {}
    for (variant, size), g in df.groupby(["variant", "size"]):
        per_lr = loss_per_lr(g)
        if len(per_lr):  # the lowest mean over seeds; its lowest-seed run
            picks.setdefault(per_lr.at[per_lr["mean"].idxmin(), "run_id"], set()).add("best")
        dist = np.abs(np.log2(g["lr"].astype(float) / common_lr))
        if len(g) and dist.min() <= tolerance_log2:
            picks.setdefault(g.loc[dist.idxmin(), "run_id"], set()).add("common")
    sel = df[df["run_id"].isin(picks)][["run_id", "variant", "size", "lr", "batch_tokens"]].copy()
    sel["selection"] = ["+".join(sorted(picks[r])) for r in sel["run_id"]]
    sel = sel.sort_values(["variant", "size", "lr"]).reset_index(drop=True)
    sel.attrs.update(common_lr=common_lr, reference=reference)
    return sel


def extract_probes(source: str | Path, runs: pd.DataFrame, *, metrics: Iterable[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """The long table of the selected runs' metrics.jsonl (schema: COLUMNS). List-valued entries
    (moe/tokens_per_expert) and rows without a step are skipped; a step logged twice (a resumed
    run) keeps its last value."""
    from lrscale.training.io import read_jsonl
    metrics = tuple(metrics)
    out = []
    for r in runs.to_dict("records"):
        per_step = int(r.get("batch_tokens") or 0)
        for row in read_jsonl(Path(source) / "runs" / r["run_id"] / "metrics.jsonl"):
            if "step" not in row:
                continue
            step = int(row["step"])
            for k, v in row.items():
                if k == "step" or isinstance(v, (list, dict, str)) or v is None or not _wanted(k, metrics):
                    continue
                out.append((r["run_id"], r["variant"], r["size"], r["lr"], r["selection"], step, step * per_step,
                            k, float(v)))
    table = pd.DataFrame(out, columns=list(COLUMNS))
    table = table.drop_duplicates(["run_id", "step", "metric"], keep="last")
    return table.sort_values(["variant", "size", "lr", "metric", "step"]).reset_index(drop=True)


def write_probes(table: pd.DataFrame, out: str | Path) -> Path:
    path = Path(out) / PROBES_FILE
    table.to_csv(path, index=False, float_format="%.6g")
    return path


def read_probes(path: str | Path) -> pd.DataFrame:
    """probes.csv back as a DataFrame (`inf` cells, e.g. tau without decay, stay infinite)."""
    path = Path(path)
    path = path / PROBES_FILE if path.is_dir() else path
    table = pd.read_csv(path, dtype={"run_id": str, "variant": str, "selection": str, "metric": str})
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; expected {list(COLUMNS)} "
                         f"(written by analysis.probe_series.write_probes)")
    return table


def has_selection(table: pd.DataFrame, selection: str) -> pd.Series:
    """Rows of runs selected as `selection` ("best" or "common"), including `best+common`."""
    return table["selection"].str.split("+").apply(lambda s: selection in s)


def series(table: pd.DataFrame, run_id: str, metric: str) -> pd.DataFrame:
    """One run's (step, value) series of one metric, in step order."""
    s = table[(table["run_id"] == run_id) & (table["metric"] == metric)]
    return s.sort_values("step")[["step", "tokens", "value"]]


def write_probe_outputs(table: pd.DataFrame, out: str | Path, *, axis: str = "d_model",
                        caption: str = "") -> dict[str, str]:
    """Everything drawn from the probes table: figure 5 and spikes.csv (analysis/stability.py),
    figure 6 and feature_learning_slopes.csv (feature_learning.py), and the optimizer monitors
    eps_dominance.csv, wd_timescale.csv, monitors.png (optimizer_monitors.py) when logged.
    Returns {name: file name} of what was written."""
    from lrscale.analysis import feature_learning, optimizer_monitors, stability
    out = Path(out)
    written = {}
    stability.spike_table(table).to_csv(out / stability.SPIKES_FILE, index=False)
    written["spikes"] = stability.SPIKES_FILE
    stability.plot_stability(table, out / stability.FIGURE_FILE, axis=axis, caption=caption)
    written["fig5"] = stability.FIGURE_FILE
    slopes = feature_learning.feature_learning_slopes(table)
    if len(slopes):
        slopes.to_csv(out / feature_learning.SLOPES_FILE, index=False, float_format="%.6g")
        written["slopes"] = feature_learning.SLOPES_FILE
        feature_learning.plot_feature_learning(table, out / feature_learning.FIGURE_FILE, axis=axis, caption=caption)
        written["fig6"] = feature_learning.FIGURE_FILE
    written.update(optimizer_monitors.write_monitors(table, out, caption=caption))
    return written


def write_probe_figures(sweep_dir: str | Path, df: pd.DataFrame, out: str | Path, *, axis: str = "d_model",
                        hardware: str = "unknown", common_lr: float | None = None) -> dict:
    """From a sweep directory: select the runs, write probes.csv, then `write_probe_outputs`.
    Returns what was written, the selection used and the monitors' plain-language notes; {} when
    no selected run logged a probe."""
    runs = select_runs(df, common_lr=common_lr)
    table = extract_probes(sweep_dir, runs)
    if not table["metric"].str.startswith("probe/").any():
        return {}
    table = read_probes(write_probes(table, out))  # from the rounded table, so the folder reproduces exactly
    caption = (f"runs at each variant's best LR and at the common LR {runs.attrs['common_lr']:.3g} "
               f"({runs.attrs['reference']} optimum at the base size) | hardware: {hardware}")
    written = {"probes": PROBES_FILE, **write_probe_outputs(table, out, axis=axis, caption=caption)}
    from lrscale.analysis.optimizer_monitors import eps_dominance_table, monitor_notes, wd_timescale_table
    return {"files": written, "common_lr": runs.attrs["common_lr"], "reference": runs.attrs["reference"],
            "caption": caption, "monitor_notes": monitor_notes(eps_dominance_table(table), wd_timescale_table(table)),
            "runs": runs.drop(columns=["batch_tokens"]).to_dict(orient="records")}


def common_lr_of(table: pd.DataFrame) -> float:
    """The common LR a probes table was selected at (nan if it has no common selection)."""
    lrs = table.loc[has_selection(table, "common"), "lr"]
    return float(np.exp(np.log(lrs).median())) if len(lrs) else math.nan
