"""muTransfer at small scale (PAPER.md Sec. 5, figure 3): validation loss against peak LR for
each size on a transfer axis, one panel per variant, and how far the optimal LR drifts from the
base size's, with an interval.

Reads a sweep directory written by `python train.py +experiment=transfer_<axis>` (results.jsonl
plus each run's config.yaml) or a committed experiment folder (results.csv plus run_config.csv,
see analysis/run_configs.py). The axis is a results column (d_model, n_layers, num_experts,
top_k, tokens) or ANY dotted config key (model.moe.d_expert, optim.weight_decay, ...). A
variant is the parametrization, its depth rule, and the values of `--variant-keys`.

Per (variant, size): the grid optimum; the Eq. 2 fit L(eta) = L_min + C (ln eta - a)^2 over the
5 LRs nearest the minimum (analysis.fitting.fit_lr_curve) with its 95% delta-method interval on
eta*; and the drift log2(eta*_size / eta*_base) (0: perfect transfer, -1: the optimum halved)
with a 95% interval from the two fits' standard errors propagated in log space
(analysis.drift.log2_drift). Diverged runs are counted and drawn as x.

    python -m analysis.transfer sweeps/transfer_width                    # axis d_model
    python -m analysis.transfer sweeps/transfer_depth --axis n_layers
    python -m analysis.transfer sweeps/transfer_experts --axis num_experts
    python -m analysis.transfer sweeps/transfer_granularity --axis model.moe.d_expert
    python -m analysis.transfer sweeps/transfer_horizon --axis tokens            # horizon.* (analysis/horizon.py)
    python -m analysis.transfer sweeps/transfer_wd --analysis weight_decay       # weight_decay.*
    python -m analysis.transfer sweeps/transfer_ablation --analysis modulewise   # modulewise.*
    python -m analysis.transfer SWEEP --out experiments/<study>/ --hardware "..."

A sweep started by `train.py +experiment=transfer_*` records its analysis, axis and variant keys in
study.json (TransferCallback), and every output folder gets one too, so that a bare
`python -m analysis.transfer <dir>` redoes the right analysis; flags override it.

Writes transfer.png, transfer.csv, transfer.md, transfer.json, stability.csv (each run's
training-probe summary) and run_config.csv (the config values used, so the folder can be
re-analysed without run directories) into --out, default the sweep dir. When the runs logged
probes it also writes probes.csv and figures 5 and 6 (analysis/probe_series.py, stability.py,
feature_learning.py, optimizer_monitors.py).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from lrscale.analysis.drift import log2_drift
from lrscale.analysis.fitting import InsufficientDataError, LrFit, fit_lr_curve
from lrscale.analysis.plots import new_figure, save_figure, log_scale
from lrscale.analysis.run_configs import (DEPTH_KEY, RESULT_AXES, axis_label, export_study_tables,
                                          load_runs)

AXES = RESULT_AXES  # the fast-path axes; any dotted config key works too
EQ2_WINDOW = 5      # Eq. 2 is fitted over the 5 LRs nearest the grid minimum: the quadratic only holds near it
ANALYSES = ("auto", "transfer", "horizon", "weight_decay", "modulewise")

_RUN_COLUMNS = ("run_id", "variant", "parametrization", "size", "d_model", "n_layers", "num_experts", "top_k",
                "lr", "val_loss", "status", "tokens", "steps", "batch_tokens", "n_active", "wall_time_s",
                "data_fingerprint")


def load_transfer(sweep_dir: str | Path, axis: str = "d_model", *, variant_keys: Iterable[str] = (),
                  tokens: str | int = "last") -> pd.DataFrame:
    """One row per run at its last measured budget (or at budget `tokens`): variant, size, lr,
    val_loss, status, plus a column per dotted variant key / axis key."""
    variant_keys = list(variant_keys)
    df = load_runs(sweep_dir, axis, variant_keys=variant_keys, tokens=tokens)
    extra = [c for c in dict.fromkeys([*variant_keys, axis, "peak_lr"]) if c in df.columns and c not in _RUN_COLUMNS]
    return df[[*_RUN_COLUMNS, *extra]].reset_index(drop=True)


def usable(g: pd.DataFrame) -> pd.DataFrame:
    return g[(g["status"] == "ok") & np.isfinite(g["val_loss"].astype(float))]


def loss_per_lr(g: pd.DataFrame) -> pd.DataFrame:
    """Per LR of a group's usable runs: mean, std and count of the final loss over seeds, and
    `run_id`, the run of the lowest seed there; rows sorted by LR. The best LR is the row of the
    lowest mean (`.idxmin()` of "mean"), so one lucky seed does not pick it."""
    ok = usable(g)
    if "seed" in ok:
        ok = ok.sort_values("seed", kind="stable")
    cols = {"mean": ("val_loss", "mean"), "std": ("val_loss", "std"), "count": ("val_loss", "count")}
    if "run_id" in ok:
        cols["run_id"] = ("run_id", "first")
    return ok.groupby("lr").agg(**cols)


def eq2_fit(g: pd.DataFrame, lr_col: str = "lr", window: int | None = EQ2_WINDOW) -> LrFit | None:
    """Eq. 2 on a group's usable rows, quietly (edges and non-convexity are flagged on the fit);
    None when fewer than 3 LRs finished."""
    ok = usable(g)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_lr_curve(ok[lr_col], ok["val_loss"], window=window, warn=False)
    except InsufficientDataError:
        return None


def fit_columns(fit: LrFit | None) -> dict:
    """The Eq. 2 columns of an optimum row; nan when there is no fit or no minimum."""
    if fit is None or not fit.convex:
        return {"eta_star": math.nan, "eta_ci_lo": math.nan, "eta_ci_hi": math.nan, "ln_eta_star": math.nan,
                "ln_eta_se": math.nan, "eq2_dof": math.nan, "eq2_C": fit.C if fit else math.nan,
                "eq2_edge": (fit.edge or "") if fit else "", "eq2_loss_min": math.nan,
                "eq2_r2": fit.r2 if fit else math.nan}
    return {"eta_star": fit.eta_star, "eta_ci_lo": fit.eta_ci[0], "eta_ci_hi": fit.eta_ci[1], "ln_eta_star": fit.a,
            "ln_eta_se": fit.a_se, "eq2_dof": fit.n_points - 3, "eq2_C": fit.C, "eq2_edge": fit.edge or "",
            "eq2_loss_min": fit.loss_min, "eq2_r2": fit.r2}


def add_drift(out: pd.DataFrame, base_of: pd.Series, *, level: float = 0.95, prefix: str = "drift_eta_star_log2",
              a: str = "ln_eta_star", se: str = "ln_eta_se", dof: str = "eq2_dof") -> pd.DataFrame:
    """Columns prefix, prefix_lo, prefix_hi: log2 drift of each row's fitted optimum from its base
    row (`base_of`: index of the base row per row), interval by `analysis.drift.log2_drift`."""
    vals = []
    for i, b in zip(out.index, base_of):
        r, r0 = out.loc[i], out.loc[b]
        if i == b:
            d = (0.0, 0.0, 0.0) if np.isfinite(r[a]) else (math.nan,) * 3
        else:
            x = log2_drift(r[a], r[se], r[dof], r0[a], r0[se], r0[dof], level)
            d = (x.log2, x.lo, x.hi)
        vals.append(d)
    v = np.array(vals, dtype=float).reshape(-1, 3)
    return out.assign(**{prefix: v[:, 0], f"{prefix}_lo": v[:, 1], f"{prefix}_hi": v[:, 2]})


def optima(df: pd.DataFrame, *, window: int | None = EQ2_WINDOW, level: float = 0.95) -> pd.DataFrame:
    """Per (variant, size): grid optimum, Eq. 2 optimum with its interval, n diverged, and both
    optima's drift from the variant's smallest size (Eq. 2 drift with an interval)."""
    rows = []
    for (variant, size), g in df.groupby(["variant", "size"]):
        ok = usable(g)
        row: dict[str, Any] = {"variant": variant, "size": size, "n_lrs": int(g["lr"].nunique()),
                               "n_diverged": int((g["status"] == "diverged").sum())}
        if not ok.empty:
            best = ok.loc[ok["val_loss"].idxmin()]
            row.update(best_lr=float(best["lr"]), best_loss=float(best["val_loss"]))
        row.update(fit_columns(eq2_fit(g, window=window) if not ok.empty else None))
        rows.append(row)
    out = pd.DataFrame(rows)
    if "best_lr" not in out:
        out["best_lr"] = out["best_loss"] = math.nan
    out = out.sort_values(["variant", "size"]).reset_index(drop=True)
    base_of = out.groupby("variant")["size"].transform(lambda s: s.idxmin())
    out["drift_best_lr_log2"] = np.log2(out["best_lr"] / out.loc[base_of, "best_lr"].to_numpy())
    return add_drift(out, base_of, level=level)


def variant_order(variants: Iterable[str]) -> list[str]:
    """SP first (the baseline), then the rest alphabetically."""
    return sorted(set(variants), key=lambda v: (not v.startswith("sp"), v))


def size_colors(sizes):
    """A dark viridis colour per size (log scale when sizes span a factor > 2 and are positive)."""
    from matplotlib import cm, colors
    sizes = sorted(sizes)
    lo, hi = float(min(sizes)), float(max(sizes))
    log = lo > 0 and hi / lo > 2
    norm = colors.LogNorm(lo, hi * 1.0001) if log else colors.Normalize(lo, hi if hi > lo else lo + 1)
    cmap = colors.LinearSegmentedColormap.from_list("viridis_dark", cm.viridis(np.linspace(0, 0.85, 64)))
    return {s: cmap(norm(s)) for s in sizes}


def fmt_size(size) -> str:
    return f"{size:,}" if isinstance(size, (int, np.integer)) else f"{size:g}"


def draw_lr_curves(ax, g: pd.DataFrame, opt: pd.DataFrame, *, key: str = "size", label: str = "",
                   colors: dict | None = None, lr_col: str = "lr") -> None:
    """Loss vs LR, one line per value of `key`; * the grid optimum, x diverged runs (top of the panel)."""
    colors = colors or size_colors(g[key].unique())
    for value in sorted(g[key].unique()):
        s = g[g[key] == value].sort_values(lr_col)
        ok = usable(s)
        c = colors[value]
        ax.plot(ok[lr_col], ok["val_loss"], "o-", color=c, ms=4, lw=1.2, label=f"{label}{fmt_size(value)}")
        bad = s[s["status"] != "ok"]
        if len(bad):
            ax.plot(bad[lr_col], np.full(len(bad), 0.97), "x", color=c, ms=7, mew=1.5,
                    transform=ax.get_xaxis_transform())
        o = opt[opt[key] == value]
        if len(o) and np.isfinite(o["best_lr"].iloc[0]):
            ax.plot(o["best_lr"], o["best_loss"], "*", ms=13, color=c, mec="k", mew=0.6)
    log_scale(ax, "x", base=2)
    ax.grid(alpha=0.3)


def loss_ylim(df: pd.DataFrame) -> tuple[float, float]:
    ok = usable(df)
    if ok.empty:
        return (0.0, 1.0)
    lo, hi = ok["val_loss"].min(), ok["val_loss"].quantile(0.9)
    pad = (hi - lo) or 1.0
    return lo - 0.05 * pad, hi + 0.15 * pad


def draw_drift(ax, opt: pd.DataFrame, *, key: str = "size", prefix: str = "drift_eta_star_log2",
               grid_col: str | None = "drift_best_lr_log2", ylabel: str = "drift log2(η*/η*_base)") -> None:
    """Drift against size per variant: Eq. 2 drift with its interval, grid drift as open markers."""
    from matplotlib import cm
    variants = variant_order(opt["variant"])
    palette = cm.tab10(np.arange(len(variants)) % 10)
    for i, (variant, c) in enumerate(zip(variants, palette)):
        o = opt[opt["variant"] == variant].sort_values(key)
        x = o[key].astype(float) * (1 + 0.03 * (i - (len(variants) - 1) / 2))  # dodge overlapping bars
        y = o[prefix].to_numpy(float)
        err = np.abs(np.vstack([y - o[f"{prefix}_lo"].to_numpy(float), o[f"{prefix}_hi"].to_numpy(float) - y]))
        ax.errorbar(x, y, yerr=np.where(np.isfinite(err), err, 0), fmt="o-", color=c, ms=4, lw=1.2, capsize=3,
                    label=variant)
        if grid_col:
            ax.plot(x, o[grid_col], "s", mfc="none", color=c, ms=6)
    ax.axhline(0, color="k", lw=0.8)
    log_scale(ax, "x", base=2)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot_transfer(df: pd.DataFrame, opt: pd.DataFrame, path: Path, *, axis: str, caption: str) -> Path:
    """Figure 3: loss vs LR, one line per size, one panel per variant (* grid optimum, x diverged),
    and a last panel with each variant's drift of eta* (Eq. 2, 95% interval; squares: grid)."""
    variants = variant_order(df["variant"])
    fig, axes = new_figure(1, len(variants) + 1, panel_size=(5.0, 4.4), extra_height=0.6)
    axes = axes.ravel()
    colors = size_colors(df["size"].unique())
    ylim = loss_ylim(df)
    for ax, variant in zip(axes, variants):
        draw_lr_curves(ax, df[df["variant"] == variant], opt[opt["variant"] == variant],
                       label=f"{axis} ", colors=colors)
        ax.set_xlabel("peak LR η (base LR; μP scales hidden groups)")
        ax.set_title(variant, fontsize=10)
        ax.set_ylim(*ylim)
    axes[0].set_ylabel("final validation loss")
    axes[len(variants) - 1].legend(fontsize=8, title="★ grid optimum, × diverged", title_fontsize=7)
    draw_drift(axes[-1], opt)
    axes[-1].set_xlabel(axis_label(axis))
    axes[-1].set_title("drift of η* (Eq. 2, 95% CI; □ grid)", fontsize=10)
    axes[-1].legend(fontsize=7)
    caption = "\n".join(textwrap.wrap(caption, width=int(55 * (len(variants) + 1))))
    fig.suptitle(f"Fig. 3: μTransfer across {axis_label(axis)}: loss vs peak LR per {axis}\n{caption}", fontsize=9)
    return save_figure(fig, path)


STABILITY_COLUMNS = ("loss_spikes", "grad_norm_max", "max_attn_logit_max", "logit_rms_final",
                     "attn_logit_rms_final", "moe_imbalance_max", "moe_router_z_max")


def stability(sweep_dir: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Per run, the stability summary of its metrics.jsonl (training/probes.py `summarize_probes`):
    the PAPER.md Sec. 5 figure 5 quantities, one row per (variant, size, lr)."""
    from lrscale.training.io import read_jsonl
    from lrscale.training.probes import summarize_probes

    rows = []
    for r in df.to_dict("records"):
        path = Path(sweep_dir) / "runs" / r["run_id"] / "metrics.jsonl"
        s = summarize_probes(read_jsonl(path)) if path.exists() else {}
        rows.append({"variant": r["variant"], "size": r["size"], "lr": r["lr"], "status": r["status"],
                     **{k: s.get(k, math.nan) for k in STABILITY_COLUMNS}})
    return pd.DataFrame(rows).sort_values(["variant", "size", "lr"]).reset_index(drop=True)


def _finite(x) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and bool(np.isfinite(x))


def _f(x, fmt: str) -> str:
    return format(x, fmt) if _finite(x) else "–"


def _ci(lo, hi, fmt: str) -> str:
    return f"[{format(lo, fmt)}, {format(hi, fmt)}]" if _finite(lo) and _finite(hi) else "–"


def markdown(opt: pd.DataFrame, axis: str) -> str:
    head = (f"| variant | {axis} | best LR (grid) | best loss | η* (Eq. 2) | η* 95% CI | drift log2 (grid) | "
            f"drift log2 (Eq. 2) | drift 95% CI | diverged |")
    lines = [head, "|" + "---|" * 10]
    for r in opt.to_dict("records"):
        edge = f" ({r['eq2_edge']} edge)" if r.get("eq2_edge") else ""
        eta_ci = _ci(r.get("eta_ci_lo", math.nan), r.get("eta_ci_hi", math.nan), ".3g")
        drift_ci = _ci(r.get("drift_eta_star_log2_lo", math.nan), r.get("drift_eta_star_log2_hi", math.nan), "+.2f")
        lines.append(f"| {r['variant']} | {fmt_size(r['size'])} | {_f(r.get('best_lr'), '.3g')} | "
                     f"{_f(r.get('best_loss'), '.4f')} | {_f(r.get('eta_star'), '.3g')}{edge} | {eta_ci} | "
                     f"{_f(r.get('drift_best_lr_log2'), '+.2f')} | {_f(r.get('drift_eta_star_log2'), '+.2f')} | "
                     f"{drift_ci} | {r['n_diverged']} |")
    return "\n".join(lines) + "\n"


_markdown = markdown  # the name earlier callers used


def caption_for(df: pd.DataFrame, hardware: str) -> str:
    fps = ", ".join(sorted(df["data_fingerprint"].dropna().astype(str).unique())) or "none recorded"
    toks = sorted(df["tokens"].unique())
    tok = f"{int(toks[0]):,} tokens each" if len(toks) == 1 else f"{int(toks[0]):,}–{int(toks[-1]):,} tokens"
    return (f"{df['run_id'].nunique()} runs, {tok}, N active {df['n_active'].min():,}–{df['n_active'].max():,} | "
            f"data: {fps} | hardware: {hardware}")


def config_keys_used(axis: str, variant_keys: Iterable[str]) -> list[str]:
    """The config values an analysis of this axis needs from each run (committed as run_config.csv)."""
    keys = [DEPTH_KEY, "parametrization.name", "parametrization.base_d_model", *variant_keys]
    if "." in axis:
        keys.append(axis)
    return list(dict.fromkeys(keys))


def write_transfer(sweep_dir: str | Path, out: str | Path | None = None, *, axis: str = "d_model",
                   hardware: str = "unknown", variant_keys: Iterable[str] = (), tokens: str | int = "last",
                   probes: bool = True, common_lr: float | None = None) -> dict:
    """Load, find optima, write transfer.{png,csv,md,json} and stability.csv; from a sweep directory
    also run_config.csv and a copy of the results table; with
    `probes` and runs that logged probes, also probes.csv and figures 5 and 6. Returns the JSON summary."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    variant_keys = list(variant_keys)
    df = load_transfer(sweep_dir, axis, variant_keys=variant_keys, tokens=tokens)
    opt = optima(df)
    caption = caption_for(df, hardware)
    plot_transfer(df, opt, out / "transfer.png", axis=axis, caption=caption)
    opt.to_csv(out / "transfer.csv", index=False)
    stability(sweep_dir, df).to_csv(out / "stability.csv", index=False, float_format="%.4g")  # nan without runs/
    export_study_tables(sweep_dir, out, df["run_id"], config_keys_used(axis, variant_keys))
    summary = {"sweep_dir": str(sweep_dir), "axis": axis, "variant_keys": variant_keys, "tokens": tokens,
               "caption": caption, "n_runs": len(df), "eq2_window": EQ2_WINDOW,
               "drift_interval": "95%, delta-method se of both Eq. 2 fits propagated in log space, "
                                 "Student t at Welch-Satterthwaite dof",
               "optima": json.loads(opt.to_json(orient="records")),
               "runs": json.loads(df.to_json(orient="records"))}
    if probes and (sweep_dir / "runs").is_dir():
        from lrscale.analysis.probe_series import write_probe_figures
        summary["probe_outputs"] = write_probe_figures(sweep_dir, df, out, axis=axis, hardware=hardware,
                                                       common_lr=common_lr)
    notes = summary.get("probe_outputs", {}).get("monitor_notes", [])
    (out / "transfer.md").write_text(markdown(opt, axis) + ("\nOptimizer monitors (monitors.png):\n" +
                                                            "".join(f"- {n}\n" for n in notes) if notes else ""))
    (out / "transfer.json").write_text(json.dumps(summary, indent=1))
    return summary


STUDY_FILE = "study.json"


def write_study(directory: str | Path, *, analysis: str, axis: str, variant_keys: Iterable[str] = ()) -> Path:
    """Record which analysis a sweep (or a committed folder) is for, so that `python -m analysis.transfer
    <dir>` re-runs it without flags. TransferCallback writes it when the sweep starts."""
    from lrscale.training.io import write_json

    path = Path(directory) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"analysis": analysis, "axis": axis, "variant_keys": list(variant_keys)})
    return path


def read_study(directory: str | Path) -> dict:
    """The recorded study of a directory ({} when it has none)."""
    path = Path(directory) / STUDY_FILE
    if not path.is_file():
        return {}
    study = json.loads(path.read_text())
    if not isinstance(study, dict) or not isinstance(study.get("axis", ""), str):
        raise ValueError(f"{path} is not a study record (expected analysis, axis, variant_keys); delete it "
                         "and pass --axis / --analysis")
    return study


def resolve_analysis(analysis: str, axis: str) -> str:
    """The analysis `auto` stands for: horizon when the axis is tokens, transfer otherwise."""
    if analysis not in ANALYSES:
        raise ValueError(f"analysis {analysis!r} is unknown; valid: {', '.join(ANALYSES)}")
    if analysis == "auto":
        return "horizon" if axis == "tokens" else "transfer"
    return analysis


def run_analysis(analysis: str, sweep_dir, out=None, *, axis: str = "d_model", hardware: str = "unknown",
                 variant_keys: Iterable[str] = (), **kwargs) -> dict:
    """Dispatch to the analysis a study needs (auto: horizon for axis=tokens, else transfer), then record
    it in the output folder's study.json."""
    analysis = resolve_analysis(analysis, axis)
    variant_keys = list(variant_keys)
    if not isinstance(sweep_dir, (str, Path)) and analysis != "weight_decay":
        raise ValueError(f"several sweep directories: only the weight_decay analysis merges them; run the "
                         f"{analysis} analysis on each")
    if analysis == "horizon":
        from lrscale.analysis.horizon import write_horizon
        result = write_horizon(sweep_dir, out, hardware=hardware, variant_keys=variant_keys, **kwargs)
    elif analysis == "weight_decay":
        from lrscale.analysis.weight_decay import write_weight_decay
        result = write_weight_decay(sweep_dir, out, hardware=hardware, variant_keys=variant_keys or None, **kwargs)
    elif analysis == "modulewise":
        from lrscale.analysis.modulewise import write_modulewise
        result = write_modulewise(sweep_dir, out, hardware=hardware, variant_keys=variant_keys, **kwargs)
    else:
        result = write_transfer(sweep_dir, out, axis=axis, hardware=hardware, variant_keys=variant_keys, **kwargs)
    write_study(out if out is not None else sweep_dir, analysis=analysis, axis=axis, variant_keys=variant_keys)
    return result


def _tokens_arg(value: str) -> str | int:
    return value if value in ("last", "all") else int(float(value))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.transfer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", nargs="+",
                   help="a sweep directory, or a committed experiment folder; the weight_decay analysis takes "
                        "several (one per convention, say) and merges them into --out")
    p.add_argument("--axis", default=None,
                   help=f"{', '.join(AXES)}, or a dotted config key (e.g. model.moe.d_expert); tokens = horizon "
                        f"(default: the one recorded in the directory's {STUDY_FILE}, else d_model)")
    p.add_argument("--variant-keys", nargs="*", default=None,
                   help="dotted config keys whose values split variants (e.g. optim.weight_decay_mode "
                        f"parametrization.wd_convention; default: as recorded in {STUDY_FILE})")
    p.add_argument("--analysis", choices=ANALYSES, default=None,
                   help=f"auto: horizon for --axis tokens, transfer otherwise (default: as recorded in "
                        f"{STUDY_FILE}, else auto)")
    p.add_argument("--tokens", type=_tokens_arg, default="last", help="transfer: last (default) or a budget")
    p.add_argument("--base-tokens", type=float, default=None, help="horizon: D0 (default: the smallest budget)")
    p.add_argument("--common-lr", type=float, default=None,
                   help="figure 5/6: the common LR (default: the reference variant's optimum at the base size)")
    p.add_argument("--no-probes", action="store_true", help="transfer, modulewise: skip probes.csv and figures 5 and 6")
    p.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    p.add_argument("--hardware", default="unknown", help="where the runs ran, for the caption")
    a = p.parse_args(argv)
    sources, a.sweep_dir = a.sweep_dir, a.sweep_dir[0]   # the first source's study.json speaks for all
    try:
        study = read_study(a.sweep_dir)
    except ValueError as e:
        print(f"[transfer] {e}", file=sys.stderr)
        return 2
    a.axis = a.axis or study.get("axis") or "d_model"
    a.analysis = a.analysis or study.get("analysis") or "auto"
    a.variant_keys = a.variant_keys if a.variant_keys is not None else list(study.get("variant_keys") or [])
    if study:
        print(f"[transfer] {a.sweep_dir}/{STUDY_FILE}: {a.analysis} analysis, axis {a.axis}"
              + (f", variants by {' '.join(a.variant_keys)}" if a.variant_keys else ""), file=sys.stderr)
    analysis = resolve_analysis(a.analysis, a.axis)
    kwargs: dict = {}
    if analysis == "transfer":
        kwargs = {"tokens": a.tokens, "probes": not a.no_probes, "common_lr": a.common_lr}
    elif analysis == "modulewise":
        kwargs = {"probes": not a.no_probes, "common_lr": a.common_lr}
    elif analysis == "horizon" and a.base_tokens:
        kwargs = {"base_tokens": a.base_tokens}
    try:
        s = run_analysis(analysis, sources if len(sources) > 1 else a.sweep_dir, a.out, axis=a.axis,
                         hardware=a.hardware, variant_keys=a.variant_keys, **kwargs)
    except (FileNotFoundError, ValueError) as e:
        print(f"[transfer] {e}", file=sys.stderr)
        return 2
    print(s.get("markdown") or markdown(pd.DataFrame(s["optima"]), a.axis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
