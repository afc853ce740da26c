"""Transfer of weight decay (PAPER.md Sec. 3 "Weight decay", Sec. 5 figure 3): which convention keeps
the optimal decay fixed as the model widens and trains longer: the coefficient lambda, or the
AdamW EMA timescale tau = 1/(eta * lambda) counted in tokens (Wang & Aitchison, arXiv 2405.13698)?

Input: (eta, lambda) grids at several widths (d_model) and budgets (tokens, decay branches), one
grid per variant = optim.weight_decay_mode (coupled | independent | timescale) x
parametrization.wd_convention (none | mup) (x parametrization). The decay grid key is
optim.weight_decay, or optim.wd_timescale_tokens in timescale mode. Runs with lambda = 0 are the
no-decay baseline (reported, not fitted).

Per (variant, width, D):
- the grid optimum (eta, lambda) and its implied tau;
- a 2-D quadratic in (ln eta, ln decay) over the window of grid values nearest the grid minimum,
  the 2-D form of Eq. 2: L = q0 + g.z + z'Hz/2; optimum z* = -H^-1 g, with a delta-method
  covariance (coefficient covariance s^2 (A'A)^-1, Jacobian of z* by central differences);
- the implied lambda*, tau* (steps and tokens) and eta* as linear functions of z*, each with a
  95% interval (Student t at the fit's residual dof).
Per variant, the drift of lambda*, tau* and eta* from the smallest width at the smallest budget
(analysis.drift.log2_drift), and the slopes of log lambda*, log tau* against log width and log D
(analysis.drift.fit_log_linear): a slope interval around 0 means that quantity transfers.

Implied tau, per step, for a parameter with unit LR and WD multipliers (optim/groups.py):
  coupled      decay lr_group * lambda     ->  tau_steps = 1 / (eta * lambda)
  independent  decay schedule * lambda     ->  tau_steps = 1 / lambda
  timescale    decay 1 / tau_iter          ->  tau_steps = wd_timescale_tokens / tokens_per_step,
               (lambda reported as its coupled equivalent 1 / (eta * tau_steps))
tau_tokens = tau_steps * tokens per step. Hidden weights under muP carry multipliers (LR / m; with
wd_convention=mup also lambda x m), so their tau differs from this nominal one by a width factor.
When the runs logged `probe/wd_tau_tokens/<role>` (training/probes.py), the measured tau of a
hidden role at the peak LR gives that factor and `tau_role_*` columns report the role's own tau*.

    python -m analysis.transfer sweeps/transfer_wd --analysis weight_decay --out DIR
    python -m analysis.transfer sweeps/transfer_wd sweeps/transfer_wd_mup ... --analysis weight_decay --out DIR

Several sweeps (one per convention, as configs/experiment/transfer_wd*.yaml run them) are analysed
as one study side by side; DIR then holds their merged results.csv and run_config.csv.
"""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from lrscale.analysis.drift import _t, fit_log_linear
from lrscale.analysis.fitting import InsufficientDataError
from lrscale.training.io import jsonable
from lrscale.analysis.plots import new_figure, save_figure, log_scale
from lrscale.analysis.run_configs import export_study_tables, load_runs, merge_study_tables
from lrscale.analysis.transfer import _ci, _f, add_drift, caption_for, config_keys_used, usable, variant_order

WD_VARIANT_KEYS = ("optim.weight_decay_mode", "parametrization.wd_convention")
MODE_KEY, LAMBDA_KEY, TAU_KEY = "optim.weight_decay_mode", "optim.weight_decay", "optim.wd_timescale_tokens"
HIDDEN_ROLES = ("expert_in", "mlp_in", "attn_qkv")  # the first one a run logs is the default tau role
TAU_FILE = "wd_tau.csv"
QUANTITIES = ("eta", "lambda", "tau_tokens")


@dataclass
class Quadratic2DFit:
    """L = q0 + q1 u + q2 v + q3 u^2 + q4 u v + q5 v^2 in centred (u, v) = (x - x0, y - y0)."""
    x_star: float
    y_star: float
    cov: np.ndarray          # 2x2 covariance of (x*, y*); nan without residual dof
    loss_min: float
    convex: bool
    edge: str                # "" or e.g. "lr above", "wd below"
    n_points: int
    dof: int
    r2: float


def _window(values: np.ndarray, centre: float, window: int | None) -> np.ndarray:
    grid = np.unique(values)
    if window is None or grid.size <= window:
        return grid
    return grid[np.argsort(np.abs(grid - centre), kind="stable")[:window]]


def fit_quadratic_2d(x, y, loss, *, window: int | None = 5) -> Quadratic2DFit:
    """The 2-D Eq. 2 in log coordinates x = ln eta, y = ln decay. window: keep the `window`
    distinct x and y values nearest the grid minimum (the quadratic only holds near it).
    Needs >= 3 distinct values on each axis and >= 6 points, else InsufficientDataError."""
    x, y, z = (np.asarray(a, dtype=float) for a in (x, y, loss))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[keep], y[keep], z[keep]
    if np.unique(x).size < 3 or np.unique(y).size < 3 or z.size < 6:
        raise InsufficientDataError(f"the 2-D quadratic needs >= 3 LRs and >= 3 decay values with a finite loss "
                                    f"(got {np.unique(x).size} and {np.unique(y).size}, {z.size} points)")
    i = int(np.argmin(z))
    xs, ys = _window(x, x[i], window), _window(y, y[i], window)
    sel = np.isin(x, xs) & np.isin(y, ys)
    xg, yg = np.unique(x), np.unique(y)
    x, y, z = x[sel], y[sel], z[sel]
    x0, y0 = float(x.mean()), float(y.mean())
    u, v = x - x0, y - y0
    A = np.column_stack([np.ones_like(u), u, v, u * u, u * v, v * v])
    coef, *_ = np.linalg.lstsq(A, z, rcond=None)
    resid = z - A @ coef
    dof = z.size - 6
    ss_res, ss_tot = float(resid @ resid), float(((z - z.mean()) ** 2).sum())

    def vertex(q):
        H = np.array([[2 * q[3], q[4]], [q[4], 2 * q[5]]])
        return np.linalg.solve(H, -np.array([q[1], q[2]])), H

    H = np.array([[2 * coef[3], coef[4]], [coef[4], 2 * coef[5]]])
    convex = bool(np.all(np.linalg.eigvalsh(H) > 0))
    if not convex:
        return Quadratic2DFit(math.nan, math.nan, np.full((2, 2), math.nan), math.nan, False, "not convex",
                              int(z.size), dof, 1 - ss_res / ss_tot if ss_tot > 0 else math.nan)
    zs, _ = vertex(coef)
    cov = np.full((2, 2), math.nan)
    if dof > 0:
        ccov = ss_res / dof * np.linalg.pinv(A.T @ A)
        J = np.zeros((2, 6))
        for k in range(1, 6):
            h = 1e-6 * max(1.0, abs(coef[k]))
            dq = np.zeros(6)
            dq[k] = h
            J[:, k] = (vertex(coef + dq)[0] - vertex(coef - dq)[0]) / (2 * h)
        cov = J @ ccov @ J.T
    xs_, ys_ = zs[0] + x0, zs[1] + y0
    uu, vv = zs
    loss_min = float(coef @ np.array([1, uu, vv, uu * uu, uu * vv, vv * vv]))
    edges = []
    for name, val, g, gbest in (("lr", xs_, xg, x[np.argmin(z)]), ("wd", ys_, yg, y[np.argmin(z)])):
        if val <= g[0] or gbest == g[0]:
            edges.append(f"{name} below")
        elif val >= g[-1] or gbest == g[-1]:
            edges.append(f"{name} above")
    return Quadratic2DFit(float(xs_), float(ys_), cov, loss_min, True, ", ".join(edges), int(z.size), dof,
                          1 - ss_res / ss_tot if ss_tot > 0 else math.nan)


def log_maps(mode: str, batch_tokens: float) -> dict[str, tuple[np.ndarray, float]]:
    """ln q = c . (ln eta, ln decay) + k for q in eta, lambda, tau_steps, tau_tokens (see module doc)."""
    lnB = math.log(batch_tokens)
    if mode == "coupled":
        lam, tau = (np.array([0.0, 1.0]), 0.0), (np.array([-1.0, -1.0]), 0.0)
    elif mode == "independent":
        lam, tau = (np.array([0.0, 1.0]), 0.0), (np.array([0.0, -1.0]), 0.0)
    elif mode == "timescale":
        lam, tau = (np.array([-1.0, -1.0]), lnB), (np.array([0.0, 1.0]), -lnB)
    else:
        raise ValueError(f"weight_decay_mode {mode!r} is unknown; valid: coupled, independent, timescale")
    return {"eta": (np.array([1.0, 0.0]), 0.0), "lambda": lam, "tau_steps": tau, "tau_tokens": (tau[0], tau[1] + lnB)}


def measured_tau(source: str | Path, run_ids: Iterable[str], role: str = "auto") -> pd.DataFrame:
    """Per run: the role's shortest logged tau in tokens (at the peak LR) from metrics.jsonl
    (probe/wd_tau_tokens/<role>), else from the source's wd_tau.csv. Empty when neither exists."""
    from lrscale.training.io import read_jsonl
    source = Path(source)
    rows = []
    for run_id in run_ids:
        path = source / "runs" / run_id / "metrics.jsonl"
        if not path.is_file():
            continue
        taus: dict[str, float] = {}
        for r in read_jsonl(path):
            for k, v in r.items():
                if k.startswith("probe/wd_tau_tokens/") and isinstance(v, (int, float)):
                    name = k.rsplit("/", 1)[-1]
                    taus[name] = min(taus.get(name, math.inf), float(v))
        pick = next((h for h in HIDDEN_ROLES if h in taus), None) if role == "auto" else role
        if pick in taus:
            rows.append({"run_id": run_id, "role": pick, "tau_tokens_peak": taus[pick]})
    if not rows and (source / TAU_FILE).is_file():
        t = pd.read_csv(source / TAU_FILE, dtype={"run_id": str})
        return t[t["run_id"].isin(set(run_ids))]
    return pd.DataFrame(rows, columns=["run_id", "role", "tau_tokens_peak"])


def load_weight_decay(source: str | Path, *, variant_keys: Iterable[str] | None = None,
                      tau_role: str = "auto") -> pd.DataFrame:
    """Every (run, budget) row with variant, width (d_model), tokens, eta (trained peak LR), mode,
    decay (the grid value: lambda, or tau in tokens in timescale mode) and, when measured, the
    hidden role's tau factor (measured tau / nominal tau)."""
    keys = list(WD_VARIANT_KEYS if variant_keys is None else variant_keys)
    df = load_runs(source, "d_model", variant_keys=keys, config_keys=(MODE_KEY, LAMBDA_KEY, TAU_KEY), tokens="all")
    mode = df[MODE_KEY].where(df[MODE_KEY].notna(), "coupled").astype(str)  # OptimConfig's default
    eta = df["peak_lr"].astype(float) if "peak_lr" in df else pd.Series(np.nan, index=df.index)
    eta = eta.where(np.isfinite(eta), df["lr"].astype(float))
    lam = pd.to_numeric(df[LAMBDA_KEY], errors="coerce").astype(float)
    tau = pd.to_numeric(df[TAU_KEY], errors="coerce").astype(float)
    decay = np.where(mode == "timescale", tau, lam)
    if not np.isfinite(decay).any():
        raise ValueError(f"no run has a readable {LAMBDA_KEY} / {TAU_KEY}: the weight-decay analysis reads them from "
                         f"runs/<id>/config.yaml or the folder's run_config.csv; commit run_config.csv with the study")
    df = df.assign(width=df["d_model"], eta=eta, mode=mode, decay=decay.astype(float))
    tau_m = measured_tau(source, df["run_id"].unique(), tau_role)
    df["tau_role"], df["tau_factor"] = None, math.nan
    if len(tau_m):
        m = tau_m.set_index("run_id")
        hit = df["run_id"].isin(m.index)
        nominal = [math.exp(c @ np.log([e, d]) + k) if d > 0 else math.nan
                   for e, d, c, k in ((e, d, *log_maps(md, b)["tau_tokens"])
                                      for e, d, md, b in zip(df["eta"], df["decay"], df["mode"], df["batch_tokens"]))]
        df["tau_factor"] = np.where(hit, df["run_id"].map(m["tau_tokens_peak"]) / np.array(nominal), math.nan)
        df.loc[hit, "tau_role"] = df.loc[hit, "run_id"].map(m["role"])
    return df


def _quantity_columns(fit: Quadratic2DFit | None, mode: str, batch: float, level: float) -> dict:
    out = {}
    maps = log_maps(mode, batch)
    for q in (*QUANTITIES, "tau_steps"):
        c, k = maps[q]
        if fit is None or not fit.convex:
            out.update({f"ln_{q}_star": math.nan, f"ln_{q}_se": math.nan, f"{q}_star": math.nan,
                        f"{q}_ci_lo": math.nan, f"{q}_ci_hi": math.nan})
            continue
        ln = float(c @ np.array([fit.x_star, fit.y_star]) + k)
        se = float(math.sqrt(max(c @ fit.cov @ c, 0.0))) if np.all(np.isfinite(fit.cov)) else math.nan
        t = _t(fit.dof, level) if fit.dof > 0 else math.nan
        out.update({f"ln_{q}_star": ln, f"ln_{q}_se": se, f"{q}_star": math.exp(ln),
                    f"{q}_ci_lo": math.exp(ln - t * se), f"{q}_ci_hi": math.exp(ln + t * se)})
    return out


def weight_decay_optima(df: pd.DataFrame, *, window: int | None = 5, level: float = 0.95) -> pd.DataFrame:
    """Per (variant, width, tokens): grid optimum, 2-D fit optimum (eta*, lambda*, tau* with
    intervals), the no-decay loss, and per variant the drift of each from the smallest width at
    the smallest budget. See the module docstring."""
    rows = []
    for (variant, width, D), g in df.groupby(["variant", "width", "tokens"]):
        mode, batch = str(g["mode"].iloc[0]), float(g["batch_tokens"].iloc[0])
        decay = g[g["decay"] > 0]
        ok, none_ = usable(decay), usable(g[~(g["decay"] > 0)])
        row = {"variant": variant, "mode": mode, "width": int(width), "tokens": int(D),
               "n_points": int(len(decay)), "n_diverged": int((decay["status"] == "diverged").sum()),
               "loss_no_decay": float(none_["val_loss"].min()) if len(none_) else math.nan}
        maps = log_maps(mode, batch)
        if len(ok):
            best = ok.loc[ok["val_loss"].idxmin()]
            z = np.log([best["eta"], best["decay"]])
            row.update(best_loss=float(best["val_loss"]), best_eta=float(best["eta"]), best_decay=float(best["decay"]),
                       **{f"best_{q}": math.exp(maps[q][0] @ z + maps[q][1])
                          for q in ("lambda", "tau_steps", "tau_tokens")})
        fit = None
        try:
            fit = fit_quadratic_2d(np.log(ok["eta"]), np.log(ok["decay"]), ok["val_loss"], window=window)
        except InsufficientDataError:
            pass
        row.update(fit_loss_min=fit.loss_min if fit else math.nan, fit_edge=fit.edge if fit else "no fit",
                   fit_dof=fit.dof if fit else math.nan, fit_r2=fit.r2 if fit else math.nan)
        row.update(_quantity_columns(fit, mode, batch, level))
        f = g.loc[g["decay"] > 0, "tau_factor"].astype(float)
        f = f[np.isfinite(f) & (f > 0)]
        role = g["tau_role"].dropna()
        row["tau_role"] = str(role.iloc[0]) if len(role) else ""
        shift = float(np.median(np.log(f))) if len(f) else math.nan
        row["tau_role_factor"] = math.exp(shift) if len(f) else math.nan
        row["ln_tau_role_tokens_star"] = row["ln_tau_tokens_star"] + shift
        row["ln_tau_role_tokens_se"] = row["ln_tau_tokens_se"]
        row["tau_role_tokens_star"] = math.exp(row["ln_tau_role_tokens_star"]) if len(f) else math.nan
        rows.append(row)
    out = pd.DataFrame(rows).sort_values(["variant", "width", "tokens"]).reset_index(drop=True)
    base_of = out.groupby("variant")[["width", "tokens"]].transform(lambda s: s.min())
    base_idx = pd.Series([out.index[(out["variant"] == v) & (out["width"] == w) & (out["tokens"] == d)][0]
                          if ((out["variant"] == v) & (out["width"] == w) & (out["tokens"] == d)).any() else i
                          for i, v, w, d in zip(out.index, out["variant"], base_of["width"], base_of["tokens"])],
                         index=out.index)
    for q in (*QUANTITIES, "tau_role_tokens"):
        out = add_drift(out, base_idx, level=level, prefix=f"drift_{q}_log2", a=f"ln_{q}_star", se=f"ln_{q}_se",
                        dof="fit_dof")
    return out


def weight_decay_summary(opt: pd.DataFrame, *, level: float = 0.95, include_edge: bool = False) -> pd.DataFrame:
    """Per variant and quantity (eta, lambda, tau_tokens, tau_role_tokens): the slopes of log q*
    against log width and log D (those that vary), with intervals, and the spread max - min of
    log2 q*. Optima at a grid edge are left out unless include_edge."""
    rows = []
    for variant, g in opt.groupby("variant"):
        g = g[np.isfinite(g["ln_lambda_star"])]
        if not include_edge:
            g = g[g["fit_edge"] == ""]
        axes = [a for a in ("width", "tokens") if g[a].nunique() > 1]
        for q in (*QUANTITIES, "tau_role_tokens"):
            y = g[f"ln_{q}_star"].to_numpy(float)
            spread = float((np.nanmax(y) - np.nanmin(y)) / math.log(2)) if np.isfinite(y).any() else math.nan
            row = {"variant": variant, "quantity": q, "n_optima": int(np.isfinite(y).sum()), "spread_log2": spread}
            for a in ("width", "tokens"):
                row.update({f"slope_{a}": math.nan, f"slope_{a}_lo": math.nan, f"slope_{a}_hi": math.nan})
            keep = np.isfinite(y)
            if axes and keep.sum() >= len(axes) + 1:
                X = np.log(g.loc[keep, axes].to_numpy(float))
                se = g.loc[keep, f"ln_{q}_se"].to_numpy(float)
                fit = fit_log_linear(X, y[keep], se=se if np.all(np.isfinite(se) & (se > 0)) else None, level=level)
                for j, a in enumerate(axes):
                    row.update({f"slope_{a}": float(fit.slopes[j]), f"slope_{a}_lo": float(fit.slope_ci[j, 0]),
                                f"slope_{a}_hi": float(fit.slope_ci[j, 1])})
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(opt: pd.DataFrame, summary: pd.DataFrame) -> str:
    lines = ["| variant | width | D | best η (grid) | best λ (grid) | τ tokens (grid) | η* (fit) | "
             "λ* (fit) [95% CI] | τ* tokens (fit) [95% CI] | drift log2 λ* | drift log2 τ* | edge | loss, no decay |",
             "|" + "---|" * 13]
    for r in opt.to_dict("records"):
        lines.append(f"| {r['variant']} | {r['width']} | {r['tokens']:,} | {_f(r.get('best_eta'), '.3g')} | "
                     f"{_f(r.get('best_lambda'), '.3g')} | {_f(r.get('best_tau_tokens'), '.3g')} | "
                     f"{_f(r['eta_star'], '.3g')} | "
                     f"{_f(r['lambda_star'], '.3g')} {_ci(r['lambda_ci_lo'], r['lambda_ci_hi'], '.3g')} | "
                     f"{_f(r['tau_tokens_star'], '.3g')} {_ci(r['tau_tokens_ci_lo'], r['tau_tokens_ci_hi'], '.3g')} | "
                     f"{_f(r['drift_lambda_log2'], '+.2f')} | {_f(r['drift_tau_tokens_log2'], '+.2f')} | "
                     f"{r['fit_edge'] or '–'} | {_f(r['loss_no_decay'], '.4f')} |")
    lines += ["", "Slopes of log q* against log width and log D (95% CI); 0 inside the interval: q* transfers.", "",
              "| variant | q | slope vs width | slope vs D | spread log2 | optima |", "|---|---|---|---|---|---|"]
    for r in summary.to_dict("records"):
        if not r["n_optima"]:
            continue
        cell = {a: f"{_f(r[f'slope_{a}'], '+.2f')} {_ci(r[f'slope_{a}_lo'], r[f'slope_{a}_hi'], '+.2f')}"
                for a in ("width", "tokens")}
        lines.append(f"| {r['variant']} | {r['quantity']} | {cell['width']} | {cell['tokens']} | "
                     f"{_f(r['spread_log2'], '.2f')} | {r['n_optima']} |")
    return "\n".join(lines) + "\n"


def plot_weight_decay(opt: pd.DataFrame, path, *, caption: str = "") -> Path:
    """Rows lambda* and tau* (tokens); columns against width (one line per variant and budget) and
    against D (one line per variant and width). Fitted optima with 95% intervals."""
    from matplotlib import cm
    variants = variant_order(opt["variant"])
    colors = dict(zip(variants, cm.tab10(np.arange(len(variants)) % 10)))
    fig, axes = new_figure(2, 2, panel_size=(5.4, 3.8), extra_height=0.8)
    markers = "osD^v<>p"
    for i, (q, label) in enumerate((("lambda", "λ* (fit)"), ("tau_tokens", "τ* = 1/(η·λ), tokens (fit)"))):
        for j, (axis, other) in enumerate((("width", "tokens"), ("tokens", "width"))):
            ax = axes[i, j]
            for variant in variants:
                g = opt[opt["variant"] == variant]
                for k, (val, h) in enumerate(g.groupby(other)):
                    h = h.sort_values(axis)
                    y = h[f"{q}_star"].to_numpy(float)
                    err = np.abs(np.vstack([y - h[f"{q}_ci_lo"].to_numpy(float), h[f"{q}_ci_hi"].to_numpy(float) - y]))
                    ax.errorbar(h[axis], y, yerr=np.where(np.isfinite(err), err, 0), color=colors[variant],
                                marker=markers[k % len(markers)], ms=4, capsize=2, lw=1,
                                label=f"{variant}, {other} {val:,}" if i == 0 else None)
            log_scale(ax, "x", base=2)
            log_scale(ax, "y")
            ax.set_xlabel(axis if axis == "width" else "tokens D")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    axes[0, 1].legend(fontsize=6)
    fig.suptitle("Fig. 3 (weight decay): optimal λ and EMA timescale τ across width and horizon, per convention\n"
                 + "\n".join(textwrap.wrap(caption, width=120)), fontsize=9)
    return save_figure(fig, path)


def write_weight_decay(sweep_dir: str | Path | Sequence[str | Path], out: str | Path | None = None, *,
                       hardware: str = "unknown", variant_keys: Iterable[str] | None = None,
                       window: int | None = 5, tau_role: str = "auto") -> dict:
    """weight_decay.{png,csv,md,json}, weight_decay_summary.csv, and from a sweep directory
    run_config.csv and wd_tau.csv (measured hidden-role tau) into `out`.

    `sweep_dir` may be several sources (one sweep per convention, say): their runs are analysed as
    one study, side by side, and `out` (required then) gets the merged results.csv, run_config.csv
    and wd_tau.csv, so that the folder alone can be analysed again."""
    sources = [Path(s) for s in ([sweep_dir] if isinstance(sweep_dir, (str, Path)) else sweep_dir)]
    if not sources:
        raise ValueError("no sweep directory given")
    if len(sources) > 1 and out is None:
        raise ValueError("several sweeps are merged into one study folder: pass --out DIR")
    out = Path(out) if out else sources[0]
    out.mkdir(parents=True, exist_ok=True)
    keys = list(WD_VARIANT_KEYS if variant_keys is None else variant_keys)
    frames = [load_weight_decay(s, variant_keys=keys, tau_role=tau_role) for s in sources]
    df = pd.concat(frames, ignore_index=True).drop_duplicates(subset=["run_id", "tokens"], keep="first")
    opt = weight_decay_optima(df, window=window)
    summary = weight_decay_summary(opt)
    caption = caption_for(df, hardware)
    plot_weight_decay(opt, out / "weight_decay.png", caption=caption)
    opt.to_csv(out / "weight_decay.csv", index=False)
    summary.to_csv(out / "weight_decay_summary.csv", index=False)
    md = markdown(opt, summary)
    (out / "weight_decay.md").write_text(md)
    table_keys = config_keys_used("d_model", [*keys, MODE_KEY, LAMBDA_KEY, TAU_KEY])
    if len(sources) > 1:
        merge_study_tables(sources, out, df["run_id"].unique(), table_keys)
    elif (sources[0] / "runs").is_dir():
        export_study_tables(sources[0], out, df["run_id"].unique(), table_keys)
    tau = pd.concat([measured_tau(s, f["run_id"].unique(), tau_role) for s, f in zip(sources, frames)],
                    ignore_index=True)
    if len(tau) and (len(sources) > 1 or (sources[0] / "runs").is_dir()):
        tau.drop_duplicates(subset=["run_id"]).to_csv(out / TAU_FILE, index=False)
    result = jsonable({"sweep_dir": ", ".join(map(str, sources)), "analysis": "weight_decay", "variant_keys": keys,
                        "window": window, "tau_role": tau_role, "caption": caption,
                        "optima": json.loads(opt.to_json(orient="records")),
                        "summary": json.loads(summary.to_json(orient="records")), "markdown": md})
    (out / "weight_decay.json").write_text(json.dumps(result, indent=1))
    return result
