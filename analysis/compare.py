"""Fitting vs Transfer at a held-out target (PAPER.md §2 "Transfer protocol", §5 figure 4).

The paper's headline is a comparison: at a target larger than anything tuned, which
paradigm picks the better peak learning rate?

  Fitting    an SP grid (sizes x LRs x budgets) -> Eq. 2 per (N, D) -> Eq. 6 -> η*_fit(N_t, D_t)
  Transfer   a μP proxy (the base shape) swept over LRs -> η*_proxy, carried to the target by
             the μP width and depth rules (the parametrization does that per parameter group;
             the base LR carries over unchanged), the expert count (a finite dimension in μP:
             no change, arXiv 2508.09752) and the token-horizon rule η·(D_t/D_p)^−β
  Truth      a direct LR sweep at the target, under SP and under μP -> Eq. 2 -> true η*

and each paradigm's verdict: real runs at its predicted LR, their loss regret against the
direct sweep's best loss (in % and in units of the seed-to-seed spread), the LR error ratio
predicted/true, and the compute each search spent.

This module is pure analysis on sweep tables (`analysis.results.load_results`): the planning
helpers (`Lattice`, `plan_*`) say which runs to add; the Hydra sweeper that runs the
experiment (hydra_plugins/lrscale/compare_sweeper.py) calls them. Layout of a comparison:

    <root>/fitting/                              the Fitting arm's SP grid (a fit sweep)
    <root>/proxy/                                the μP proxy sweep
    <root>/targets/<name>/{sp,mup}/              direct sweeps at the target
    <root>/targets/<name>/verdict_<paradigm>/    runs at each paradigm's predicted LR
    <root>/predictions.json  comparison.json  report.md  fig4_<name>.png

Eq. 2 is fitted on the `window` LRs nearest each curve's lowest loss. Loss-vs-LR curves are
asymmetric here (steep above the optimum, shallow below), so a quadratic in ln η over a wide
grid puts the optimum too low; a √2-spaced lattice with a window of 5 (a ×4 span) keeps the
quadratic local. The paper's Eq. 2 over every LR is kept as the baseline in `sensitivity`.
"""
from __future__ import annotations

import math
import os
import textwrap
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lrscale.analysis.fitting import InsufficientDataError, fit_lr_curve, fit_sweep
from lrscale.training.io import jsonable
from lrscale.analysis.results import load_results, usable_mask

PARADIGMS = ("fitting", "transfer", "transfer_nohorizon")
LABELS = {"fitting": "Fitting (Eq. 6, SP)", "transfer": "Transfer (μP + horizon rule)",
          "transfer_nohorizon": "Transfer (μP, no horizon rule)",
          "transfer_fitted_beta": "Transfer (μP + horizon rule, β fitted on the proxy)"}
PANEL_OF = {"fitting": "sp", "transfer": "mup", "transfer_nohorizon": "mup", "transfer_fitted_beta": "mup"}


class ComparisonError(ValueError):
    """The comparison cannot go on; the message says what is missing and what to add."""


# ---- the LR lattice ----------------------------------------------------------------------

@dataclass(frozen=True)
class Lattice:
    """Every LR of a comparison lies on base·spacing^k (k integer), rounded to 4 significant
    digits so that configs and run directories read well. Predicted LRs are the only
    exception: each paradigm's verdict runs use its prediction as it is."""
    base: float = 1e-3
    spacing: float = 2 ** 0.5

    def index(self, lr: float) -> int:
        return int(round(math.log(lr / self.base) / math.log(self.spacing)))

    def lr(self, k: int) -> float:
        return float(f"{self.base * self.spacing ** k:.4g}")

    def around(self, centers: list[float], n: int) -> list[float]:
        """n consecutive lattice LRs whose span covers every centre, padded evenly on both sides."""
        ks = [self.index(c) for c in centers]
        lo, hi = min(ks), max(ks)
        pad = max(0, n - (hi - lo + 1))
        lo -= pad // 2
        hi += pad - pad // 2
        return [self.lr(k) for k in range(lo, hi + 1)]

    def beyond(self, lrs: list[float], side: str, n: int = 2) -> list[float]:
        """The next n lattice LRs below the smallest or above the largest of `lrs`."""
        ks = [self.index(x) for x in lrs]
        if side == "below":
            return [self.lr(min(ks) - i) for i in range(1, n + 1)]
        return [self.lr(max(ks) + i) for i in range(1, n + 1)]


# ---- predictions ---------------------------------------------------------------------------

@dataclass
class Prediction:
    """One paradigm's answer for the target: the base LR to train it with, and an interval."""
    paradigm: str
    parametrization: str
    lr: float
    lo: float
    hi: float
    interval: str              # what [lo, hi] is
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return jsonable(asdict(self))


def _quiet_lr_fit(lrs, losses, window):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_lr_curve(lrs, losses, window=window, warn=False)


def fitting_prediction(df: pd.DataFrame, N: float, D: float, *, n_kind: str = "n_active_nonembed",
                       window: int | None = 5, n_boot: int = 1000, level: float = 0.95):
    """η*_fit at (N, D) from the Fitting arm's SP grid: Eq. 2 per (N, D), Eq. 6 over the optima.

    The interval is Eq. 6's prediction interval at the target (the law's uncertainty there plus
    the scatter of optima around it). Returns (Prediction, SweepFit)."""
    try:
        sf = fit_sweep(df, n_kind, window=window, parametrization="sp", n_boot=n_boot)
    except InsufficientDataError as e:
        raise ComparisonError(f"the Fitting arm cannot fit its law: {e}") from None
    if sf.law is None:
        raise ComparisonError("the Fitting arm has too few bracketed optima for Eq. 6: "
                              + "; ".join(sf.warnings[-3:]) + ". Widen fitting.lrs around the edge optima")
    law = sf.law
    lr = float(law.predict(N, D))
    lo, hi = law.predict_interval(N, D, level=level)
    s = sf.scale()
    return Prediction(
        "fitting", "sp", lr, float(lo), float(hi), f"Eq. 6 {level:.0%} prediction interval",
        {"law": {"c": law.c, "alpha": law.alpha, "beta": law.beta, "alpha_ci": list(law.alpha_ci),
                 "beta_ci": list(law.beta_ci), "r2": law.r2, "n_points": law.n_points},
         "N": float(N), "D": float(D), "n_kind": n_kind, "window": window,
         "extrapolation": {"N": float(N) / s["N_max"], "D": float(D) / s["D_max"]}}), sf


def proxy_optima(df: pd.DataFrame, *, window: int | None = 5) -> pd.DataFrame:
    """Eq. 2 on the proxy sweep at each of its budgets: D, eta_star, CI, edge, best grid LR."""
    rows = []
    ok = df[usable_mask(df)]
    for D, g in ok.groupby("tokens"):
        if g["lr"].nunique() < 3:
            continue
        fit = _quiet_lr_fit(g["lr"], g["val_loss"], window)
        best = g.loc[g["val_loss"].idxmin()]
        rows.append({"D": float(D), "eta_star": fit.eta_star if fit.convex else math.nan,
                     "lo": fit.eta_ci[0], "hi": fit.eta_ci[1], "edge": fit.edge, "best_lr": float(best["lr"]),
                     "best_loss": float(best["val_loss"]), "n_lrs": int(g["lr"].nunique())})
    return pd.DataFrame(rows).sort_values("D").reset_index(drop=True) if rows else pd.DataFrame(rows)


def transfer_predictions(df: pd.DataFrame, D_target: float, *, parametrization: str, beta: float = 0.3509,
                         window: int | None = 5) -> list[Prediction]:
    """The μP proxy's optimum at its own horizon (its longest budget), carried to the target.

    Width, depth and expert count need no change of the base LR: the target's parametrization
    applies the per-group multipliers. The horizon rule multiplies by (D_t/D_p)^−β (PAPER.md §3,
    β = 0.3509 is the paper's D exponent); without it the proxy's LR is used as it is. With
    three or more proxy budgets, a third prediction uses β fitted on the proxy's own optima.
    The interval is Eq. 2's delta-method interval on the proxy optimum, carried the same way."""
    opt = proxy_optima(df, window=window)
    if opt.empty or not np.isfinite(opt["eta_star"].iloc[-1]):
        raise ComparisonError("the μP proxy sweep has no Eq. 2 optimum at its horizon (need >= 3 LRs with a "
                              "finite loss and a convex curve); widen proxy.lrs")
    last = opt.iloc[-1]
    if last["edge"]:
        warnings.warn(f"the proxy optimum is at the {last['edge']} edge of its LR grid; widen proxy.lrs")
    D_p, eta = float(last["D"]), float(last["eta_star"])
    details = {"eta_proxy": eta, "D_proxy": D_p, "D_target": float(D_target), "edge": last["edge"],
               "best_lr_proxy": float(last["best_lr"]), "window": window}
    out = []
    for paradigm, b in (("transfer", beta), ("transfer_nohorizon", 0.0)):
        f = (D_target / D_p) ** (-b)
        out.append(Prediction(paradigm, parametrization, eta * f, last["lo"] * f, last["hi"] * f,
                              "proxy Eq. 2 95% CI (delta method), carried", {**details, "beta": b, "factor": f}))
    good = opt[np.isfinite(opt["eta_star"]) & opt["edge"].isna()]
    if len(good) >= 3:
        slope = float(np.polyfit(np.log(good["D"]), np.log(good["eta_star"]), 1)[0])
        f = (D_target / D_p) ** slope
        out.append(Prediction("transfer_fitted_beta", parametrization, eta * f, last["lo"] * f, last["hi"] * f,
                              "proxy Eq. 2 95% CI (delta method), carried",
                              {**details, "beta": -slope, "factor": f, "beta_fitted_on": good["D"].tolist()}))
    return out


# ---- ground truth and verdicts ---------------------------------------------------------------

def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """Per LR at the run's final budget: mean loss over seeds, seed count, and the status mix."""
    last = df[df["tokens"] == df["tokens"].max()]
    ok = last[usable_mask(last)]
    g = ok.groupby("lr")["val_loss"]
    out = pd.DataFrame({"loss": g.mean(), "n_seeds": g.size(), "loss_min": g.min(), "loss_max": g.max()})
    out["n_diverged"] = last[~usable_mask(last)].groupby("lr").size().reindex(out.index).fillna(0).astype(int)
    return out.reset_index().sort_values("lr").reset_index(drop=True)


def ground_truth(df: pd.DataFrame, *, window: int | None = 5) -> dict:
    """The direct sweep's answer: best measured LR (seed means), Eq. 2's η* with its interval."""
    means = seed_means(df)
    if means.empty:
        raise ComparisonError("the direct sweep has no finished run at the target")
    best = means.loc[means["loss"].idxmin()]
    out = {"best_lr": float(best["lr"]), "best_loss": float(best["loss"]), "best_n_seeds": int(best["n_seeds"]),
           "eta_star": math.nan, "lo": math.nan, "hi": math.nan, "edge": None, "loss_min_eq2": math.nan,
           "lrs": means["lr"].tolist(), "losses": means["loss"].tolist(), "n_seeds": means["n_seeds"].tolist()}
    last = df[(df["tokens"] == df["tokens"].max()) & usable_mask(df)]
    if last["lr"].nunique() >= 3:
        fit = _quiet_lr_fit(last["lr"], last["val_loss"], window)
        out.update(edge=fit.edge, convex=bool(fit.convex))
        if fit.convex:
            out.update(eta_star=fit.eta_star, lo=fit.eta_ci[0], hi=fit.eta_ci[1], loss_min_eq2=fit.loss_min)
    n_div = int((~usable_mask(df[df["tokens"] == df["tokens"].max()])).sum())
    out["n_diverged"] = n_div
    return out


def seed_spread(*dfs: pd.DataFrame) -> tuple[float, int]:
    """Pooled seed-to-seed standard deviation of the final loss over every LR run with >= 2 seeds
    (the unbiased per-LR variance, pooled by degrees of freedom); (nan, 0) with no replicate."""
    ss, dof = 0.0, 0
    for df in dfs:
        if df is None or df.empty:
            continue
        last = df[(df["tokens"] == df["tokens"].max()) & usable_mask(df)]
        for _, g in last.groupby(["parametrization", "lr"]):
            if len(g) >= 2:
                v = g["val_loss"].to_numpy(dtype=float)
                ss += float(((v - v.mean()) ** 2).sum())
                dof += len(v) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def interpolate_loss(truth: dict, lr: float) -> float:
    """The direct sweep's loss at `lr`, piecewise linear in ln η between seed-mean points;
    nan outside the sampled range (no extrapolation)."""
    x, y = np.log(truth["lrs"]), np.asarray(truth["losses"], dtype=float)
    u = math.log(lr)
    if x.size == 0 or u < x.min() - 1e-12 or u > x.max() + 1e-12:
        return math.nan
    return float(np.interp(u, x, y))


def verdict(pred: Prediction, runs: pd.DataFrame | None, truth: dict, sigma: float) -> dict:
    """How well a paradigm did at the target: its real runs' mean loss against the direct
    sweep's best (regret in % and in seed-spread units) and its LR against the true η*."""
    out = {"paradigm": pred.paradigm, "lr": pred.lr, "interval": [pred.lo, pred.hi],
           "error_ratio_vs_eta_star": pred.lr / truth["eta_star"] if np.isfinite(truth["eta_star"]) else math.nan,
           "error_ratio_vs_best_lr": pred.lr / truth["best_lr"],
           "interval_covers_eta_star": bool(pred.lo <= truth["eta_star"] <= pred.hi)
           if np.isfinite(truth["eta_star"]) else None,
           "loss": math.nan, "n_seeds": 0, "seed_losses": [], "n_diverged": 0,
           "loss_interpolated": interpolate_loss(truth, pred.lr)}
    if runs is not None and not runs.empty:
        last = runs[runs["tokens"] == runs["tokens"].max()]
        ok = last[usable_mask(last)]
        out["seed_losses"] = ok["val_loss"].tolist()
        out["n_seeds"] = int(len(ok))
        out["n_diverged"] = int(len(last) - len(ok))
        if len(ok) and not out["n_diverged"]:
            out["loss"] = float(ok["val_loss"].mean())
    regret = out["loss"] - truth["best_loss"]
    out["regret"] = regret
    out["regret_pct"] = 100.0 * regret / truth["best_loss"]
    out["regret_sigmas"] = regret / sigma if sigma and np.isfinite(sigma) and sigma > 0 else math.nan
    return out


def sweep_flops(df: pd.DataFrame | None, seeds: tuple[int, ...] | None = None) -> float:
    """Compute a sweep spent: run_flops summed over its runs (decay branches included)."""
    if df is None or df.empty:
        return 0.0
    runs = df.drop_duplicates("run_id", keep="last")
    if seeds is not None:
        runs = runs[runs["seed"].isin(seeds)]
    return float(runs["run_flops"].sum())


# ---- what to run next --------------------------------------------------------------------------

def plan_extension(df: pd.DataFrame, lattice: Lattice, n: int = 2) -> list[float]:
    """Lattice LRs to add when the direct sweep's best seed-mean loss sits at an end of its grid
    (the optimum is then not bracketed); [] when bracketed, or when that end diverged already."""
    means = seed_means(df)
    if len(means) < 2:
        return []
    i = int(means["loss"].idxmin())
    lrs = sorted(df["lr"].unique().tolist())
    if i == 0 and means["lr"].iloc[0] <= min(lrs) * (1 + 1e-9):
        return lattice.beyond(lrs, "below", n)
    if i == len(means) - 1 and means["lr"].iloc[-1] >= max(lrs) * (1 - 1e-9):
        return lattice.beyond(lrs, "above", n)
    return []


def plan_replicates(df: pd.DataFrame, n: int = 2) -> list[float]:
    """The n LRs nearest the optimum: the best seed-mean LR and its better neighbours, so that
    the best loss the paradigms are judged against is itself a mean over seeds."""
    means = seed_means(df)
    if means.empty:
        return []
    order = means.sort_values("loss")
    best = int(order.index[0])
    near = [best]
    for j in order.index[1:]:
        if len(near) >= n:
            break
        if min(abs(int(j) - k) for k in near) == 1:
            near.append(int(j))
    return sorted(float(means["lr"].iloc[k]) for k in near)


# ---- one target, everything together ---------------------------------------------------------

def load_arm(path: Path) -> pd.DataFrame | None:
    """An arm's results table (analysis.results.load_results), or None before its first row."""
    if not (Path(path) / "results.jsonl").exists():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_results(path)


def compare_target(root: Path, name: str, predictions: list[Prediction], *, window: int | None = 5,
                   flops: dict | None = None) -> dict:
    """Ground truth under SP and μP, each paradigm's verdict, the seed spread and the compute."""
    base = Path(root) / "targets" / name
    sweeps = {panel: load_arm(base / panel) for panel in ("sp", "mup")}
    truth = {panel: ground_truth(df, window=window) for panel, df in sweeps.items() if df is not None}
    runs = {p.paradigm: load_arm(base / f"verdict_{p.paradigm}") for p in predictions}
    sigma, dof = seed_spread(*sweeps.values(), *runs.values())
    verdicts = {}
    for p in predictions:
        panel = PANEL_OF[p.paradigm]
        if panel in truth:
            verdicts[p.paradigm] = verdict(p, runs.get(p.paradigm), truth[panel], sigma)
    sp_best, mu_best = (truth[k]["best_loss"] if k in truth else math.nan for k in ("sp", "mup"))
    out = {"name": name, "truth": truth, "verdicts": verdicts, "seed_sigma": sigma, "seed_sigma_dof": dof,
           "sp_best_minus_mup_best": sp_best - mu_best,
           "compute": {"direct_sp": sweep_flops(sweeps.get("sp"), (0,)),
                       "direct_mup": sweep_flops(sweeps.get("mup"), (0,)), **(flops or {})}}
    f, t = verdicts.get("fitting"), verdicts.get("transfer")
    if f and t:
        margin = f["loss"] - t["loss"]  # > 0: Transfer's runs ended lower
        # Each side is a mean over its seeds: the margin's standard error is sigma * sqrt(1/n_f + 1/n_t).
        se = sigma * math.sqrt(1 / max(f["n_seeds"], 1) + 1 / max(t["n_seeds"], 1)) if np.isfinite(sigma) else math.nan
        z = margin / se if se and np.isfinite(se) else math.nan
        out["head_to_head"] = {"fitting_minus_transfer": margin, "margin_se": se, "margin_in_se": z,
                               "winner": "transfer" if margin > 0 else "fitting" if margin < 0 else "tie",
                               "beyond_seed_noise": bool(abs(z) >= 2) if np.isfinite(z) else None,
                               "regret_pct": {"fitting": f["regret_pct"], "transfer": t["regret_pct"]}}
    return out


def sensitivity(fitting_df: pd.DataFrame, proxy_df: pd.DataFrame, N: float, D: float, truth: dict,
                *, mup: str, beta: float, lattice: Lattice, windows=(None, 3, 5, 7)) -> pd.DataFrame:
    """How the two predictions (and the loss they would get, read off the direct sweeps) move
    with the Eq. 2 window and the LR spacing: window None is the paper's Eq. 2 over every LR;
    the second spacing keeps every other lattice LR (×2 on the default √2 lattice: the paper's
    grid). No new runs: losses are interpolated between the direct sweep's points (nan outside
    its range)."""
    rows = []
    for spacing in (f"x{lattice.spacing:.3g}", f"x{lattice.spacing ** 2:.3g}"):
        keep_f, keep_p = fitting_df, proxy_df
        if spacing != f"x{lattice.spacing:.3g}":
            k0 = lattice.index(float(proxy_df["lr"].min()))
            even = lambda d: d[[(lattice.index(x) - k0) % 2 == 0 for x in d["lr"]]]  # noqa: E731
            keep_f, keep_p = even(fitting_df), even(proxy_df)
        for w in windows:
            row = {"spacing": spacing, "window": "all (paper)" if w is None else w}
            for name, fn in (("fitting", lambda: fitting_prediction(keep_f, N, D, window=w, n_boot=0)[0]),
                             ("transfer", lambda: transfer_predictions(keep_p, D, parametrization=mup, beta=beta,
                                                                       window=w)[0])):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        p = fn()
                    panel = truth.get(PANEL_OF[name])
                    loss = interpolate_loss(panel, p.lr) if panel else math.nan
                    row[f"{name}_lr"] = p.lr
                    row[f"{name}_loss"] = loss
                    row[f"{name}_regret_pct"] = 100 * (loss - panel["best_loss"]) / panel["best_loss"] if panel else math.nan
                except (ComparisonError, InsufficientDataError, ValueError):
                    row[f"{name}_lr"] = row[f"{name}_loss"] = row[f"{name}_regret_pct"] = math.nan
            rows.append(row)
    return pd.DataFrame(rows)


# ---- the whole analysis, from the tables ----------------------------------------------------------

def predict_all(root: Path, design: dict) -> dict[str, list[Prediction]]:
    """Every paradigm's prediction at every target, from the Fitting and proxy tables under root.

    `design` is what the sweeper planned (design.json): n_kind, window (0 = all LRs), n_boot,
    horizon_beta, mup and the targets with their N and D. Predicted LRs are rounded to 4
    significant digits, which is what the verdict runs train at (the exact value stays in
    details["exact_lr"])."""
    root = Path(root)
    fit_df, proxy_df = load_arm(root / "fitting"), load_arm(root / "proxy")
    if fit_df is None or proxy_df is None:
        raise ComparisonError(f"no results under {root}/fitting or {root}/proxy yet: run the sweep first")
    window = design["window"] or None
    out = {}
    for t in design["targets"]:
        fit, _ = fitting_prediction(fit_df, t["N"], t["D"], n_kind=design["n_kind"], window=window,
                                    n_boot=design["n_boot"])
        preds = [fit, *transfer_predictions(proxy_df, t["D"], parametrization=design["mup"],
                                            beta=design["horizon_beta"], window=window)]
        for p in preds:
            p.details["exact_lr"] = p.lr
            p.lr = float(f"{p.lr:.4g}")
        out[t["name"]] = preds
    return out


def build_comparison(root: Path, design: dict, predictions: dict[str, list[Prediction]], *,
                     hardware: str) -> dict:
    """comparison.json's content: per target the ground truth, the verdicts, the head-to-head,
    the compute and the sensitivity; plus the Fitting law, the proxy optimum and the captions."""
    root = Path(root)
    fit_df, proxy_df = load_arm(root / "fitting"), load_arm(root / "proxy")
    window = design["window"] or None
    lattice = Lattice(**design["lattice"])
    _, sf = fitting_prediction(fit_df, design["targets"][0]["N"], design["targets"][0]["D"],
                               n_kind=design["n_kind"], window=window, n_boot=0)
    fps = sorted({str(f) for df in (fit_df, proxy_df) for f in df["data_fingerprint"].dropna().unique()})
    flops = {"fitting": sweep_flops(fit_df), "transfer": sweep_flops(proxy_df)}
    targets = []
    for t in design["targets"]:
        r = compare_target(root, t["name"], predictions[t["name"]], window=window, flops=flops)
        one = load_arm(root / "targets" / t["name"] / "sp")
        r["compute"]["one_target_run"] = float(one["run_flops"].max()) if one is not None else math.nan
        r.update(N=t["N"], D=t["D"], model=t["model"])
        r["sensitivity"] = sensitivity(fit_df, proxy_df, t["N"], t["D"], r["truth"], mup=design["mup"],
                                       beta=design["horizon_beta"], lattice=lattice).to_dict("records")
        targets.append(r)
    by = {p.paradigm: p for p in predictions[design["targets"][0]["name"]]}
    return {"family": design["family"], "root": str(root), "n_kind": design["n_kind"], "window": design["window"],
            "lattice": design["lattice"], "fit_scale": sf.scale(),
            "caption": f"data: {', '.join(fps) or 'none recorded'} | hardware: {hardware}",
            "predictions_meta": {"law": by["fitting"].details["law"], "eta_proxy": by["transfer"].details["eta_proxy"],
                                 "D_proxy": by["transfer"].details["D_proxy"], "beta": design["horizon_beta"]},
            "predictions": {name: [p.to_json() for p in ps] for name, ps in predictions.items()},
            "targets": targets, "design": design}


# ---- outputs ------------------------------------------------------------------------------------

def _g(x, fmt=".3g") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def plot_target(result: dict, predictions: list[Prediction], sweeps: dict, path: Path, *, caption: str) -> Path:
    """Figure 4 for one target: loss vs LR of the direct sweeps (seed means joined, each seed a
    dot, diverged runs an x at the top), SP and μP panels; each paradigm's runs at its predicted
    LR (a filled diamond, its interval as a bar; hollow where no run was made and the loss is read
    off the sweep) and the true η* (Eq. 2) with its interval as a band."""
    from matplotlib import ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    colors = {"fitting": "tab:red", "transfer": "tab:blue", "transfer_nohorizon": "tab:cyan",
              "transfer_fitted_beta": "tab:purple"}
    all_losses = [v for t in result["truth"].values() for v in t["losses"]]
    verdict_losses = [v["loss"] for v in result["verdicts"].values() if np.isfinite(v["loss"])]
    lo_y = min(all_losses + verdict_losses)
    for ax, panel, title in ((axes[0], "sp", "SP"), (axes[1], "mup", "μP")):
        t, df = result["truth"].get(panel), sweeps.get(panel)
        if t is None:
            ax.set_visible(False)
            continue
        ax.plot(t["lrs"], t["losses"], "o-", color="0.3", ms=4, lw=1.2, label="direct sweep (seed mean)")
        last = df[df["tokens"] == df["tokens"].max()]
        ok = last[usable_mask(last)]
        ax.plot(ok["lr"], ok["val_loss"], ".", color="0.55", ms=3)
        bad = last[~usable_mask(last)]
        if len(bad):
            ax.plot(bad["lr"], np.full(len(bad), 0.97), "x", color="k", ms=7, transform=ax.get_xaxis_transform(),
                    label="diverged")
        if np.isfinite(t["eta_star"]):
            ax.axvspan(t["lo"], t["hi"], color="0.88", zorder=0)
            ax.axvline(t["eta_star"], color="0.4", ls="--", lw=1, label=f"true η* {t['eta_star']:.3g} (Eq. 2, 95% CI)")
        for p in predictions:
            if PANEL_OF[p.paradigm] != panel:
                continue
            v = result["verdicts"].get(p.paradigm, {})
            ran = np.isfinite(v.get("loss", math.nan))
            y = v["loss"] if ran else v.get("loss_interpolated", math.nan)
            c = colors[p.paradigm]
            seeds = v.get("seed_losses") or []
            ax.plot([p.lr] * len(seeds), seeds, ".", color=c, ms=5)
            if np.isfinite(y):
                what = f"regret {_g(v.get('regret_pct'), '+.2f')}%" if ran else "no runs, read off the sweep"
                ax.errorbar([p.lr], [y], xerr=[[p.lr - p.lo], [p.hi - p.lr]], fmt="D", color=c, ms=7, capsize=3,
                            mfc=c if ran else "white", label=f"{LABELS[p.paradigm]}: η {p.lr:.3g}, {what}")
        ax.set_xscale("log")
        # The view spans the sweep and the predictions; a wider interval is cut at the frame.
        xs = [*t["lrs"], *(p.lr for p in predictions if PANEL_OF[p.paradigm] == panel)]
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("peak LR η (base LR; μP scales the hidden groups)")
        ax.set_title(f"{title} at the target", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
    top = np.nanpercentile(all_losses, 80) if all_losses else 1.0
    axes[0].set_ylim(lo_y - 0.1 * (top - lo_y) - 1e-3, top + 0.25 * (top - lo_y) + 1e-3)
    axes[0].set_ylabel("final validation loss (nats/token)")
    fig.suptitle("Fig. 4: Fitting vs Transfer at a held-out target\n"
                 + "\n".join(textwrap.wrap(caption, width=150)), fontsize=9)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def report_markdown(comparison: dict) -> str:
    """report.md: the predictions, the ground truth, each verdict and the sensitivity."""
    c = comparison
    lines = [f"# Fitting vs Transfer: {c['family']} (`{c['root']}`)", "",
             f"{c['caption']}", ""]
    for t in c["targets"]:
        lines += [f"## Target `{t['name']}`: N = {t['N']:,.0f} ({c['n_kind']}), D = {t['D']:,.0f} tokens", "",
                  f"{t['N'] / c['fit_scale']['N_max']:.2f}× the largest fitted N and "
                  f"{t['D'] / c['fit_scale']['D_max']:.2f}× the largest fitted D.", ""]
        lines += ["| paradigm | predicted η | interval | η / true η* | η / best LR | runs (seeds) | loss | "
                  "regret | regret / σ |", "|" + "---|" * 9]
        for v in t["verdicts"].values():
            lines.append(f"| {LABELS[v['paradigm']]} | {_g(v['lr'], '.4g')} | [{_g(v['interval'][0])}, "
                         f"{_g(v['interval'][1])}] | {_g(v['error_ratio_vs_eta_star'], '.2f')} | "
                         f"{_g(v['error_ratio_vs_best_lr'], '.2f')} | {v['n_seeds']}"
                         f"{' + %d diverged' % v['n_diverged'] if v['n_diverged'] else ''} | {_g(v['loss'], '.4f')} | "
                         f"{_g(v['regret_pct'], '+.2f')}% | {_g(v['regret_sigmas'], '+.1f')} |")
        lines += ["", "| direct sweep | best LR | best loss (seeds) | η* (Eq. 2) | 95% CI | edge | diverged |",
                  "|" + "---|" * 7]
        for panel, tr in t["truth"].items():
            lines.append(f"| {panel.upper() if panel == 'sp' else 'μP'} | {_g(tr['best_lr'], '.4g')} | "
                         f"{_g(tr['best_loss'], '.4f')} ({tr['best_n_seeds']}) | {_g(tr['eta_star'], '.4g')} | "
                         f"[{_g(tr['lo'])}, {_g(tr['hi'])}] | {tr['edge'] or '–'} | {tr['n_diverged']} |")
        lines += ["", f"Seed-to-seed spread σ = {_g(t['seed_sigma'], '.4f')} nats ({t['seed_sigma_dof']} degrees of "
                  f"freedom, pooled over every LR run with two seeds). SP best − μP best = "
                  f"{_g(t['sp_best_minus_mup_best'], '+.4f')} nats.", ""]
        h = t.get("head_to_head")
        if h:
            lines += [f"**Head to head:** Fitting − Transfer = {_g(h['fitting_minus_transfer'], '+.4f')} nats "
                      f"(± {_g(h['margin_se'], '.4f')} standard error, {_g(h['margin_in_se'], '+.1f')} SE): "
                      f"**{h['winner']}** trains the target better"
                      + (", by more than twice the seed noise." if h["beyond_seed_noise"]
                         else " — within the seed noise (|margin| < 2 SE): not a decisive win."), ""]
        comp = t["compute"]
        one = comp.get("one_target_run", math.nan)
        lines += ["| search | FLOPs | target-run equivalents |", "|---|---|---|"]
        for k, label in (("fitting", "Fitting: SP grid"), ("transfer", "Transfer: μP proxy sweep"),
                         ("direct_sp", "direct sweep at the target, SP (seed 0)"),
                         ("direct_mup", "direct sweep at the target, μP (seed 0)")):
            if k in comp:
                lines.append(f"| {label} | {comp[k]:.3g} | {comp[k] / one:.2f} |")
        if t.get("sensitivity"):
            lines += ["", "Sensitivity to the Eq. 2 window and the LR spacing (no new runs: loss read off the "
                      "direct sweeps between their points; – outside them):", "",
                      "| spacing | Eq. 2 window | η_fit | regret | η_transfer | regret |", "|" + "---|" * 6]
            for r in t["sensitivity"]:
                lines.append(f"| {r['spacing'].replace('x', '×')} | {r['window']} | "
                             f"{_g(r['fitting_lr'], '.4g')} | {_g(r['fitting_regret_pct'], '+.2f')}% | "
                             f"{_g(r['transfer_lr'], '.4g')} | {_g(r['transfer_regret_pct'], '+.2f')}% |")
        lines.append("")
    p = c["predictions_meta"]
    lines += ["## Predictions", "", f"- Fitting: Eq. 6 η* = {p['law']['c']:.4g}·N^{p['law']['alpha']:.3f}"
              f"·D^{p['law']['beta']:.3f} (α CI [{_g(p['law']['alpha_ci'][0])}, {_g(p['law']['alpha_ci'][1])}], "
              f"β CI [{_g(p['law']['beta_ci'][0])}, {_g(p['law']['beta_ci'][1])}], R² {p['law']['r2']:.3f}, "
              f"{p['law']['n_points']} optima).",
              f"- Transfer: proxy η* = {p['eta_proxy']:.4g} at D = {p['D_proxy']:,.0f} tokens; horizon rule "
              f"β = {p['beta']:.4g}.", ""]
    return "\n".join(lines) + "\n"


def write_comparison(root: Path, comparison: dict, predictions: dict[str, list[Prediction]],
                     out: Path | None = None) -> dict[str, Path]:
    """comparison.json, report.md and one figure 4 per target, written atomically into `out`
    (default: root, the comparison whose tables the figures read)."""
    from lrscale.training.io import write_json, write_text

    root = Path(root)
    out = Path(out) if out else root
    out.mkdir(parents=True, exist_ok=True)
    paths = {"comparison.json": out / "comparison.json", "report.md": out / "report.md"}
    write_json(paths["comparison.json"], jsonable(comparison))
    write_text(paths["report.md"], report_markdown(comparison))
    for t in comparison["targets"]:
        path = out / f"fig4_{t['name']}.png"
        cap = (f"{comparison['family']} target {t['name']}: N = {t['N']:,.0f} ({comparison['n_kind']}), "
               f"D = {t['D']:,.0f} tokens; {comparison['caption']}")
        sweeps = {panel: load_arm(root / "targets" / t["name"] / panel) for panel in ("sp", "mup")}
        paths[path.name] = plot_target(t, predictions[t["name"]], sweeps, path, caption=cap)
    return paths
