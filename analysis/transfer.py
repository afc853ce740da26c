"""muTransfer at small scale (PAPER.md Sec. 5, figure 3): validation loss against peak LR for
each width (or depth), one panel per parametrization, and how far the optimal LR drifts
from the base shape's.

Reads a sweep directory written by `python train.py +experiment=transfer_width` (or
transfer_depth): results.jsonl, plus each run's config.yaml for its depth rule. Per
(parametrization, size) the optimum is the grid minimum and, where 3+ LRs finished, the
Eq. 2 fit L(eta) = L_min + C (ln eta - a)^2 over the 5 LRs nearest the minimum
(analysis.fitting.fit_lr_curve). Drift = log2(eta*_size / eta*_base): 0 is perfect transfer,
-1 means the optimum halved.

    python -m analysis.transfer sweeps/transfer_width                    # axis d_model
    python -m analysis.transfer sweeps/transfer_depth --axis n_layers
    python -m analysis.transfer SWEEP --out experiments/<study>/         # where to write

Writes transfer.png, transfer.csv, transfer.md, transfer.json and stability.csv (each run's
training-probe summary: spikes, max attention logit, logit RMS, router imbalance and z) into
--out, default the sweep dir.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback

from lrscale.analysis.fitting import InsufficientDataError, fit_lr_curve
from lrscale.analysis.results import load_results

AXES = {"d_model": "width (d_model)", "n_layers": "depth (n_layers)"}


def _run_parametrization(sweep_dir: Path, run_id: str, name: str) -> str:
    """A label for the run's parametrization: its name plus the depth rule if one is on."""
    cfg_path = sweep_dir / "runs" / run_id / "config.yaml"
    alpha = 0.0
    if cfg_path.exists():
        from omegaconf import OmegaConf
        alpha = float(OmegaConf.load(cfg_path).parametrization.get("depth_alpha", 0.0))
    if not alpha:
        return name
    return {1.0: f"{name} + CompleteP depth", 0.5: f"{name} + Depth-muP"}.get(alpha, f"{name}, depth_alpha={alpha:g}")


def load_transfer(sweep_dir: str | Path, axis: str = "d_model") -> pd.DataFrame:
    """One row per run at its last measured budget: variant, size, lr, val_loss, status."""
    if axis not in AXES:
        raise ValueError(f"axis {axis!r} is unknown; valid: {', '.join(AXES)}")
    sweep_dir = Path(sweep_dir)
    df = load_results(sweep_dir)
    df = df[df["status"] != "failed"]
    last = df.sort_values("steps").groupby("run_id", as_index=False).tail(1)
    last = last.assign(variant=[_run_parametrization(sweep_dir, r, p)
                                for r, p in zip(last["run_id"], last["parametrization"])],
                       size=last[axis].astype(int))
    return last[["run_id", "variant", "parametrization", "size", "d_model", "n_layers", "lr", "val_loss",
                 "status", "tokens", "n_active", "wall_time_s", "data_fingerprint"]].reset_index(drop=True)


def optima(df: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, size): grid optimum, Eq. 2 optimum, and their drift from the smallest size."""
    rows = []
    for (variant, size), g in df.groupby(["variant", "size"]):
        ok = g[(g["status"] == "ok") & np.isfinite(g["val_loss"])]
        row: dict[str, Any] = {"variant": variant, "size": int(size), "n_lrs": int(g["lr"].nunique()),
                               "n_diverged": int((g["status"] == "diverged").sum())}
        if ok.empty:
            rows.append(row)
            continue
        best = ok.loc[ok["val_loss"].idxmin()]
        row.update(best_lr=float(best["lr"]), best_loss=float(best["val_loss"]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = fit_lr_curve(ok["lr"], ok["val_loss"], window=5)
            row.update(eta_star=fit.eta_star if fit.convex else math.nan, eq2_edge=fit.edge or "",
                       eq2_loss_min=fit.loss_min if fit.convex else math.nan, eq2_r2=fit.r2)
        except InsufficientDataError:
            pass
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("best_lr", "eta_star"):
        if col not in out:
            out[col] = math.nan
        base = out.sort_values("size").groupby("variant")[col].transform("first")
        out[f"drift_{col}_log2"] = np.log2(out[col] / base)
    return out.sort_values(["variant", "size"]).reset_index(drop=True)


def plot_transfer(df: pd.DataFrame, opt: pd.DataFrame, path: Path, *, axis: str, caption: str) -> Path:
    """Figure 3: loss vs LR, one line per size, one panel per variant; stars mark the grid optimum,
    x marks diverged runs (drawn at the top of the panel)."""
    from matplotlib import cm, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = sorted(df["variant"].unique(), key=lambda v: (v != "sp", v))
    sizes = sorted(df["size"].unique())
    fig = Figure(figsize=(5.2 * len(variants), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(variants), sharey=True, squeeze=False).ravel())
    norm = colors.LogNorm(min(sizes), max(sizes) * 1.0001)
    cmap = colors.LinearSegmentedColormap.from_list("viridis_dark", cm.viridis(np.linspace(0, 0.85, 64)))
    ok_all = df[(df["status"] == "ok") & np.isfinite(df["val_loss"])]
    lo, hi = ok_all["val_loss"].min(), ok_all["val_loss"].quantile(0.9)
    for ax, variant in zip(axes, variants):
        for size in sizes:
            g = df[(df["variant"] == variant) & (df["size"] == size)].sort_values("lr")
            ok = g[(g["status"] == "ok") & np.isfinite(g["val_loss"])]
            c = cmap(norm(size))
            ax.plot(ok["lr"], ok["val_loss"], "o-", color=c, ms=4, lw=1.2, label=f"{axis} {size}")
            bad = g[g["status"] != "ok"]
            if len(bad):
                ax.plot(bad["lr"], np.full(len(bad), 0.97), "x", color=c, ms=7, transform=ax.get_xaxis_transform())
            o = opt[(opt["variant"] == variant) & (opt["size"] == size)]
            if len(o) and np.isfinite(o["best_lr"].iloc[0]):
                ax.plot(o["best_lr"], o["best_loss"], "*", ms=13, color=c, mec="k", mew=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("peak LR η (base LR; μP scales hidden groups)")
        ax.set_title(variant, fontsize=10)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.15 * (hi - lo))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final validation loss")
    axes[-1].legend(fontsize=8, title="★ grid optimum, × diverged", title_fontsize=7)
    caption = "\n".join(textwrap.wrap(caption, width=int(60 * len(variants))))
    fig.suptitle(f"Fig. 3: μTransfer across {AXES[axis]}: loss vs peak LR per {axis}\n{caption}", fontsize=9)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


STABILITY_COLUMNS = ("loss_spikes", "grad_norm_max", "max_attn_logit_max", "logit_rms_final",
                     "attn_logit_rms_final", "moe_imbalance_max", "moe_router_z_max")


def stability(sweep_dir: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Per run, the stability summary of its metrics.jsonl (training/probes.py `summarize_probes`):
    the PAPER.md Sec. 5 figure 5 quantities, one row per (variant, size, lr)."""
    from lrscale.training.io import read_jsonl
    from lrscale.training.probes import summarize_probes

    rows = []
    for r in df.to_dict("records"):
        path = sweep_dir / "runs" / r["run_id"] / "metrics.jsonl"
        s = summarize_probes(read_jsonl(path)) if path.exists() else {}
        rows.append({"variant": r["variant"], "size": r["size"], "lr": r["lr"], "status": r["status"],
                     **{k: s.get(k, math.nan) for k in STABILITY_COLUMNS}})
    return pd.DataFrame(rows).sort_values(["variant", "size", "lr"]).reset_index(drop=True)


def _markdown(opt: pd.DataFrame, axis: str) -> str:
    head = f"| variant | {axis} | best LR (grid) | best loss | η* (Eq. 2) | drift log2 (grid) | drift log2 (Eq. 2) | diverged |"
    lines = [head, "|" + "---|" * 8]
    f = lambda x, fmt: "–" if x is None or not np.isfinite(x) else format(x, fmt)  # noqa: E731
    for r in opt.to_dict("records"):
        edge = f" ({r['eq2_edge']} edge)" if r.get("eq2_edge") else ""
        lines.append(f"| {r['variant']} | {r['size']} | {f(r.get('best_lr'), '.3g')} | {f(r.get('best_loss'), '.4f')} | "
                     f"{f(r.get('eta_star'), '.3g')}{edge} | {f(r.get('drift_best_lr_log2'), '+.2f')} | "
                     f"{f(r.get('drift_eta_star_log2'), '+.2f')} | {r['n_diverged']} |")
    return "\n".join(lines) + "\n"


def write_transfer(sweep_dir: str | Path, out: str | Path | None = None, *, axis: str = "d_model",
                   hardware: str = "unknown") -> dict:
    """Load, find optima, write transfer.{png,csv,md,json}; returns the JSON summary."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    df = load_transfer(sweep_dir, axis)
    opt = optima(df)
    tokens = int(df["tokens"].max())
    fps = ", ".join(sorted(df["data_fingerprint"].dropna().astype(str).unique())) or "none recorded"
    caption = (f"{len(df)} runs, {tokens:,} tokens each, N active {df['n_active'].min():,}–{df['n_active'].max():,} | "
               f"data: {fps} | hardware: {hardware}")
    plot_transfer(df, opt, out / "transfer.png", axis=axis, caption=caption)
    opt.to_csv(out / "transfer.csv", index=False)
    stab = stability(sweep_dir, df)
    stab.to_csv(out / "stability.csv", index=False, float_format="%.4g")
    (out / "transfer.md").write_text(_markdown(opt, axis))
    summary = {"sweep_dir": str(sweep_dir), "axis": axis, "caption": caption, "n_runs": len(df),
               "optima": json.loads(opt.to_json(orient="records")),
               "runs": json.loads(df.to_json(orient="records"))}
    (out / "transfer.json").write_text(json.dumps(summary, indent=1))
    return summary


class TransferCallback(Callback):
    """Hydra callback (configs/experiment/transfer_*.yaml): write the transfer figure and table
    into sweep.dir when the multirun ends. A failure is reported, never fatal: the runs are on
    disk and `python -m analysis.transfer` re-plots them."""

    def __init__(self, axis: str = "d_model"):
        self.axis = axis

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        from lrscale.training.sweep import hardware_line
        sweep_dir = Path(config.sweep.dir)
        try:
            write_transfer(sweep_dir, axis=self.axis, hardware=hardware_line(sweep_dir, config.hardware))
            print(f"[transfer] transfer.png, transfer.md and transfer.json written to {sweep_dir}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - the sweep's data is safe; re-plot by hand
            print(f"[transfer] plotting failed ({type(e).__name__}: {e}); re-run "
                  f"`python -m analysis.transfer {sweep_dir} --axis {self.axis}`", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir")
    p.add_argument("--axis", choices=tuple(AXES), default="d_model")
    p.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    p.add_argument("--hardware", default="unknown", help="where the runs ran, for the caption")
    a = p.parse_args(argv)
    try:
        s = write_transfer(a.sweep_dir, a.out, axis=a.axis, hardware=a.hardware)
    except (FileNotFoundError, ValueError) as e:
        print(f"[transfer] {e}", file=sys.stderr)
        return 2
    print(_markdown(pd.DataFrame(s["optima"]), a.axis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
