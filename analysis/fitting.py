"""The Fitting paradigm of arXiv 2601.05049 ("How to Set the Learning Rate for
Large-Scale Pre-training?", Zhou et al. 2026): Eq. 2, Eq. 4, Eq. 6 and the pipeline
that chains them over a sweep (PAPER.md §1, §2 "Fitting protocol").

    Eq. 2  L(η) = L_min + C·(ln η − a)²        per (N, D); optimum η* = exp(a)
    Eq. 4  L(D) = L0 + A·D^(−γ)                per (N, η); extrapolates short WSD runs
    Eq. 6  η*(N, D) = c · N^α · D^β            least squares in log space

Pure numpy/scipy (plus pandas for the sweep tables). Every fit returns a small
dataclass; problems that are data rather than bugs (an optimum at the edge of the LR
grid, a non-convex LR curve, too few budgets for Eq. 4) are *flagged* on the result and
collected by `fit_sweep`, never raised. Too few points for a fit to be defined at all
raise `InsufficientDataError` (a ValueError) saying what to add.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, special

from lrscale.training.io import jsonable
from lrscale.analysis.results import N_KINDS, status_counts, usable_mask


class FitWarning(UserWarning):
    """A fit succeeded but its result is suspect (edge optimum, non-convex, at a bound)."""


class InsufficientDataError(ValueError):
    """Too few points for a fit to be defined; the message says what to add."""


# ---------------------------------------------------------------------------
# Eq. 2: loss vs learning rate at fixed (N, D)
# ---------------------------------------------------------------------------

@dataclass
class LrFit:
    """Eq. 2 fit, L(η) = L_min + C·(ln η − a)², a quadratic in ln η.

    `eta_ci` is a delta-method interval on a = ln η* (see `fit_lr_curve`); it is
    (nan, nan) with exactly 3 points (no residual degrees of freedom) or when C ≤ 0.
    `edge` is "below"/"above" when the optimum is not bracketed by the sampled LRs:
    the fitted optimum lies beyond the smallest/largest LR, or the lowest measured loss
    sits at that end of the grid. The quadratic is then extrapolated and η* is biased;
    `suggest_lrs` lists the LRs to add next.
    """
    eta_star: float
    eta_ci: tuple[float, float]
    loss_min: float
    C: float
    a: float
    a_se: float
    r2: float
    edge: str | None
    suggest_lrs: list[float]
    convex: bool
    n_points: int
    lrs: np.ndarray = field(repr=False)
    losses: np.ndarray = field(repr=False)
    coef: np.ndarray = field(repr=False)  # (q0, q1, q2) of L = q0 + q1·u + q2·u², u = ln η − x0
    x0: float = field(repr=False)
    message: str | None = None

    def predict(self, lr) -> np.ndarray:
        u = np.log(np.asarray(lr, dtype=float)) - self.x0
        q0, q1, q2 = self.coef
        return q0 + q1 * u + q2 * u * u

    def to_json(self) -> dict:
        return {"eta_star": self.eta_star, "eta_ci": list(self.eta_ci), "ln_eta_star": self.a,
                "ln_eta_star_se": self.a_se, "loss_min": self.loss_min, "C": self.C,
                "r2": self.r2, "edge": self.edge, "suggest_lrs": list(self.suggest_lrs),
                "convex": self.convex, "n_points": self.n_points, "message": self.message}


def _finite_pairs(x, y, name_x: str, name_y: str, weights=None):
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{name_x} and {name_y} differ in length ({x.size} vs {y.size})")
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float).ravel()
    if w.shape != y.shape:
        raise ValueError(f"weights must have one entry per point ({y.size}), got {w.size}")
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(w)
    if np.any(x[keep] <= 0):
        raise ValueError(f"{name_x} must be positive (they are fitted in log space)")
    if np.any(w[keep] < 0):
        raise ValueError("weights must be non-negative")
    return x[keep], y[keep], w[keep]


def _suggest_beyond(grid: np.ndarray, edge: str, a: float, step: float) -> list[float]:
    """The next factor-`step` LRs beyond the grid edge: at least two, and enough to
    pass the fitted optimum by one step when the fit puts it further out (capped at 6)."""
    lo, hi = math.log(grid[0]), math.log(grid[-1])
    beyond = (lo - a) if edge == "below" else (a - hi)
    n_steps = 2
    if math.isfinite(beyond) and beyond > 0:
        n_steps = min(6, max(2, math.ceil(beyond / math.log(step)) + 1))
    if edge == "below":
        return [float(grid[0] / step ** k) for k in range(1, n_steps + 1)]
    return [float(grid[-1] * step ** k) for k in range(1, n_steps + 1)]


def fit_lr_curve(lrs, losses, *, weights=None, window: int | None = None,
                 ci_level: float = 0.95, step: float = 2.0, warn: bool = True) -> LrFit:
    """Fit Eq. 2 of arXiv 2601.05049, L(η) = L_min + C·(ln η − a)², at one (N, D).

    The model is a quadratic in u = ln η, fitted by (weighted, if `weights`) linear
    least squares; then C = q2, a = x0 − q1/(2 q2), L_min = q0 − q1²/(4 q2).
    Repeated LRs (seeds) are allowed; non-finite losses (diverged) are dropped.

    Confidence interval: **delta method** on the quadratic coefficients. With the
    coefficient covariance s²·(XᵀWX)⁻¹ (s² = weighted residual variance, n − 3 dof),
    se(a)² = g·Σ·g with g = ∂a/∂(q1, q2) = (−1/(2 q2), q1/(2 q2²)); the interval is
    exp(a ± t_{n−3}·se(a)). It is only as good as the quadratic's linearization: wide
    and asymmetric in reality when C is small relative to the noise.

    window: fit only the `window` distinct LRs nearest (in ln η) the lowest mean loss;
    the quadratic only holds near the optimum, far points bias it. Edges are judged
    against the full sampled grid.

    Needs >= 3 distinct LRs (else InsufficientDataError). C ≤ 0 (no minimum) gives
    `convex=False`, eta_star = nan and a message, not an exception.
    """
    lrs, losses, w = _finite_pairs(lrs, losses, "lrs", "losses", weights)
    grid = np.unique(lrs)
    if grid.size < 3:
        raise InsufficientDataError(
            f"Eq. 2 needs finite losses at >= 3 distinct learning rates, got {grid.size} "
            f"({grid.tolist()}); add LRs spaced by factors of 2 around the expected optimum")
    i_best = int(np.argmin([losses[lrs == g].mean() for g in grid]))
    if window is not None:
        lrs, losses, w = _nearest_lrs(lrs, losses, w, grid, i_best, window)
    q = _quadratic_in_ln_lr(lrs, losses, w)
    vertex = _vertex(q, ci_level)
    edge = _edge(grid, i_best, vertex["a"], q["convex"])
    suggest = _suggest_beyond(grid, edge, vertex["a"], step) if edge else []
    message = _lr_fit_message(grid, i_best, q, vertex, edge, suggest)
    if message and warn:
        warnings.warn(message, FitWarning, stacklevel=2)
    return LrFit(eta_star=vertex["eta_star"], eta_ci=vertex["eta_ci"], loss_min=float(vertex["loss_min"]),
                 C=q["q2"], a=float(vertex["a"]), a_se=vertex["a_se"], r2=q["r2"], edge=edge, suggest_lrs=suggest,
                 convex=q["convex"], n_points=int(losses.size), lrs=lrs, losses=losses, coef=q["coef"],
                 x0=q["x0"], message=message)


def _nearest_lrs(lrs, losses, w, grid, i_best: int, window: int):
    """The rows at the `window` distinct LRs nearest (in ln η) the lowest mean loss."""
    if window < 3:
        raise ValueError(f"window={window}: Eq. 2 has 3 parameters, use window >= 3")
    dist = np.abs(np.log(grid) - np.log(grid[i_best]))
    sel = np.isin(lrs, grid[np.argsort(dist, kind="stable")[:window]])
    return lrs[sel], losses[sel], w[sel]


def _quadratic_in_ln_lr(lrs, losses, w) -> dict:
    """Weighted least squares L = q0 + q1·u + q2·u², u = ln η − x0 (x0 centres ln η, which keeps
    the 3×3 normal matrix well conditioned), with what the interval needs."""
    x = np.log(lrs)
    x0 = float(x.mean())
    u = x - x0
    X = np.column_stack([np.ones_like(u), u, u * u])
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(X * sw[:, None], losses * sw, rcond=None)
    resid = losses - X @ coef
    ss_res = float(np.sum(w * resid ** 2))
    y_bar = float(np.sum(w * losses) / np.sum(w))
    ss_tot = float(np.sum(w * (losses - y_bar) ** 2))
    q0, q1, q2 = (float(v) for v in coef)
    return {"coef": np.asarray(coef), "q0": q0, "q1": q1, "q2": q2, "x0": x0, "X": X, "w": w,
            "ss_res": ss_res, "dof": losses.size - 3, "convex": q2 > 0,
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")}


def _vertex(q: dict, ci_level: float) -> dict:
    """a = ln η* = x0 − q1/(2 q2), L_min = q0 − q1²/(4 q2), and the delta-method interval on a
    (nan without residual degrees of freedom); all nan when the quadratic has no minimum."""
    nan = float("nan")
    if not q["convex"]:
        return {"a": nan, "loss_min": nan, "a_se": nan, "eta_star": nan, "eta_ci": (nan, nan)}
    q0, q1, q2 = q["q0"], q["q1"], q["q2"]
    a = q["x0"] - q1 / (2 * q2)
    out = {"a": a, "loss_min": q0 - q1 * q1 / (4 * q2), "a_se": nan, "eta_ci": (nan, nan)}
    if q["dof"] > 0:
        X, w = q["X"], q["w"]
        cov = q["ss_res"] / q["dof"] * np.linalg.pinv(X.T @ (X * w[:, None]))
        g = np.array([0.0, -1.0 / (2 * q2), q1 / (2 * q2 * q2)])
        out["a_se"] = float(math.sqrt(max(g @ cov @ g, 0.0)))
        t = special.stdtrit(q["dof"], 0.5 + ci_level / 2)  # Student-t quantile
        with np.errstate(over="ignore"):
            out["eta_ci"] = (float(np.exp(a - t * out["a_se"])), float(np.exp(a + t * out["a_se"])))
    with np.errstate(over="ignore"):
        out["eta_star"] = float(np.exp(a))
    return out


def _edge(grid, i_best: int, a: float, convex: bool) -> str | None:
    """Not bracketed ("below"/"above") when the fitted vertex is outside the grid or the lowest
    measured loss is at an end of it (the vertex is then extrapolated); None when bracketed."""
    lo, hi = math.log(grid[0]), math.log(grid[-1])
    if not convex:
        return "below" if i_best == 0 else "above" if i_best == grid.size - 1 else None
    if a <= lo or (a < hi and i_best == 0):
        return "below"
    if a >= hi or i_best == grid.size - 1:
        return "above"
    return None


def _lr_fit_message(grid, i_best: int, q: dict, vertex: dict, edge: str | None, suggest: list[float]) -> str | None:
    """What is suspect about the fit, and the LRs to add; None when nothing is."""
    message = None
    if not q["convex"]:
        message = (f"loss vs LR is not convex in ln η (C = {q['q2']:.3g} <= 0): Eq. 2 has no "
                   f"minimum here; lowest loss at lr={grid[i_best]:.3g}")
    if edge:
        side = "smallest" if edge == "below" else "largest"
        end_lr = grid[0] if edge == "below" else grid[-1]
        a, eta_star = vertex["a"], vertex["eta_star"]
        if q["convex"] and (a <= math.log(grid[0]) or a >= math.log(grid[-1])):
            where = f"fitted η* ≈ {eta_star:.3g} lies beyond the {side} sampled LR ({end_lr:.3g})"
        else:
            where = (f"the lowest loss is at the {side} sampled LR ({end_lr:.3g}), so "
                     + (f"η* ≈ {eta_star:.3g}" if q["convex"] else "the optimum") + " is not bracketed")
        message = ((message + "; ") if message else "") + (
            f"{where}: the fit is extrapolated and biased; add lr in "
            f"{[float(f'{v:.3g}') for v in suggest]}")
    return message


# ---------------------------------------------------------------------------
# Eq. 4: loss vs tokens at fixed (N, η) under WSD
# ---------------------------------------------------------------------------

@dataclass
class DataFit:
    """Eq. 4 fit, L(D) = L0 + A·D^(−γ). Internally A = B·d_ref^γ with d_ref the
    geometric mean of the fitted budgets, so `predict` never forms D^(−γ) alone."""
    L0: float
    A: float
    gamma: float
    r2: float
    n_points: int
    d_ref: float
    B: float
    tokens: np.ndarray = field(repr=False)
    losses: np.ndarray = field(repr=False)
    at_bound: tuple[str, ...] = ()
    message: str | None = None

    def predict(self, D) -> np.ndarray:
        D = np.asarray(D, dtype=float)
        return self.L0 + self.B * (D / self.d_ref) ** (-self.gamma)

    def to_json(self) -> dict:
        return {"L0": self.L0, "A": self.A, "gamma": self.gamma, "r2": self.r2,
                "n_points": self.n_points, "at_bound": list(self.at_bound),
                "message": self.message}


def _box_linear_fit(x: np.ndarray, y: np.ndarray, l0_hi: float):
    """Least squares y ≈ L0 + B·x subject to 0 ≤ L0 ≤ l0_hi, B ≥ 0, for each row of x.

    A convex QP in two unknowns: its optimum is the unconstrained one if feasible,
    else the best of the 1-D optima on the box edges (L0 = 0, L0 = l0_hi, B = 0).
    x: (G, n) for G candidate exponents; returns L0, B, sse each (G,).
    """
    n = y.size
    Sx, Sxx = x.sum(1), (x * x).sum(1)
    Sy, Syy, Sxy = y.sum(), (y * y).sum(), (x * y).sum(1)

    def sse(L0, B):
        return Syy - 2 * L0 * Sy - 2 * B * Sxy + n * L0 * L0 + 2 * L0 * B * Sx + B * B * Sxx

    det = n * Sxx - Sx * Sx
    with np.errstate(divide="ignore", invalid="ignore"):
        B_u = (n * Sxy - Sx * Sy) / det
        L0_u = (Sy - B_u * Sx) / n
    feasible = (det > 1e-12 * n * Sxx) & (B_u >= 0) & (L0_u >= 0) & (L0_u <= l0_hi)
    cands = [(np.where(feasible, L0_u, 0.0), np.where(feasible, B_u, 0.0),
              np.where(feasible, 1.0, np.inf))]
    for L0_edge in (0.0, l0_hi):
        B_e = np.maximum(0.0, (Sxy - L0_edge * Sx) / Sxx)
        cands.append((np.full_like(Sx, L0_edge), B_e, np.ones_like(Sx)))
    L0_flat = min(max(Sy / n, 0.0), l0_hi)
    cands.append((np.full_like(Sx, L0_flat), np.zeros_like(Sx), np.ones_like(Sx)))
    best = None
    for L0, B, mask in cands:
        s = np.maximum(sse(L0, B), 0.0) * mask  # mask = inf rules out infeasible
        s = np.where(np.isfinite(s), s, np.inf)
        if best is None:
            best = [L0, B, s]
        else:
            better = s < best[2]
            best = [np.where(better, L0, best[0]), np.where(better, B, best[1]),
                    np.where(better, s, best[2])]
    return best


def fit_loss_vs_tokens(tokens, losses, *, gamma_bounds: tuple[float, float] = (1e-3, 2 - 1e-3),
                       warn: bool = True) -> DataFit:
    """Fit Eq. 4 of arXiv 2601.05049, L(D) = L0 + A·D^(−γ), at one (N, η) of a WSD run.

    Bounds: 0 ≤ L0 ≤ min(losses), A ≥ 0, γ in `gamma_bounds` (inside (0, 2)). Fitted by
    variable projection: for fixed γ the model is linear in (L0, A), solved exactly under
    the box bounds; γ is found on a grid and refined with a bounded scalar minimizer.
    Deterministic, no starting guess. Needs >= 3 distinct budgets; with exactly 3
    points the three parameters interpolate them exactly when the data allow it.
    A parameter ending on a bound (e.g. A = 0 for non-decreasing losses) is flagged.
    """
    D, y, _ = _finite_pairs(tokens, losses, "tokens", "losses")
    if np.unique(D).size < 3:
        raise InsufficientDataError(
            f"Eq. 4 needs finite losses at >= 3 distinct token budgets, got "
            f"{np.unique(D).size}; add decay branches at more budgets")
    d_ref = float(np.exp(np.mean(np.log(D))))
    l0_hi = float(y.min())
    logd = np.log(D / d_ref)

    def solve(gammas):
        x = np.exp(-np.outer(np.atleast_1d(gammas), logd))  # (G, n): (D/d_ref)^(−γ)
        return _box_linear_fit(x, y, l0_hi)

    g_lo, g_hi = gamma_bounds
    grid = np.linspace(g_lo, g_hi, 400)
    sse_grid = solve(grid)[2]
    i = int(np.argmin(sse_grid))
    res = optimize.minimize_scalar(lambda g: float(solve(g)[2][0]),
                                   bounds=(grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]),
                                   method="bounded", options={"xatol": 1e-10})
    gamma = float(res.x) if res.fun <= sse_grid[i] else float(grid[i])
    L0, B, ss_res = (float(v[0]) for v in solve(gamma))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")

    scale = max(abs(l0_hi), 1e-12)
    at_bound = []
    if L0 <= 1e-9 * scale:
        at_bound.append("L0=0")
    if L0 >= l0_hi - 1e-9 * scale:
        at_bound.append("L0=min(loss)")
    if B <= 0:
        at_bound.append("A=0")
    if gamma - g_lo < 1e-3 or g_hi - gamma < 1e-3:
        at_bound.append("gamma")
    message = None
    if at_bound:
        message = (f"Eq. 4 fit ends on bound(s) {at_bound}: the losses do not decrease like "
                   f"a power law in D over {D.min():.3g}..{D.max():.3g} tokens; extrapolation "
                   f"from this (N, η) is unreliable")
        if warn:
            warnings.warn(message, FitWarning, stacklevel=2)
    return DataFit(L0=L0, A=B * d_ref ** gamma, gamma=gamma, r2=r2, n_points=int(y.size),
                   d_ref=d_ref, B=B, tokens=D, losses=y, at_bound=tuple(at_bound),
                   message=message)


# ---------------------------------------------------------------------------
# Eq. 6: the learning-rate law η*(N, D) = c·N^α·D^β
# ---------------------------------------------------------------------------

@dataclass
class LawFit:
    """Eq. 6 fit, ln η* = ln c + α ln N + β ln D (α: N exponent, β: D exponent).

    CIs are bootstrap percentile intervals from resampling the (N, D, η*) points with
    replacement (seeded); `se` holds the analytic OLS standard errors for comparison.
    r2 is the coefficient of determination in log space (the paper reports R² ≈ 0.962).

    Intervals for η* at a target (N, D): `predict_interval` (OLS prediction interval of
    one new optimum: fit uncertainty plus residual scatter, Student-t with n − 3 dof),
    `mean_interval` (the same without the residual scatter) and `bootstrap_interval`
    (percentiles of the bootstrap draws' mean prediction).
    """
    c: float
    alpha: float
    beta: float
    c_ci: tuple[float, float]
    alpha_ci: tuple[float, float]
    beta_ci: tuple[float, float]
    se: dict
    r2: float
    residual_std_ln: float
    n_points: int
    n_boot: int
    n_boot_used: int
    seed: int
    ci_level: float
    # What the interval methods need; `fit_lr_law` fills them, a LawFit built by hand
    # (e.g. from a fit.json law block) lacks them. Not part of `to_json`.
    #   cov         (3, 3) OLS covariance s²·(XᵀX)⁻¹ of (intercept at the centre, α, β)
    #   centre      (mean ln N, mean ln D) of the fitted points, the centre of the design
    #   boot_draws  (n_boot_used, 3) bootstrap draws of (ln c, α, β); None without bootstrap
    cov: np.ndarray | None = field(default=None, repr=False, compare=False)
    centre: tuple[float, float] = field(default=(0.0, 0.0), repr=False, compare=False)
    boot_draws: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ln_c(self) -> float:
        return math.log(self.c)

    @property
    def dof(self) -> int:
        """Residual degrees of freedom, n − 3."""
        return self.n_points - 3

    def predict(self, N, D) -> np.ndarray:
        N = np.asarray(N, dtype=float)
        D = np.asarray(D, dtype=float)
        return np.exp(self.ln_c + self.alpha * np.log(N) + self.beta * np.log(D))

    def _design_at(self, N, D) -> np.ndarray:
        if self.cov is None:
            raise ValueError("this LawFit carries no covariance (it was not made by fit_lr_law, "
                             "e.g. rebuilt from a fit.json law block); refit it with "
                             "fit_lr_law(N, D, eta_star) on the optima to get intervals")
        lnN, lnD = (np.log(np.asarray(v, dtype=float)) for v in (N, D))
        lnN, lnD = np.broadcast_arrays(lnN, lnD)
        return np.stack([np.ones_like(lnN), lnN - self.centre[0], lnD - self.centre[1]], -1)

    def _t_interval(self, N, D, level: float, new_point: bool):
        x0 = self._design_at(N, D)                                   # (..., 3)
        var = np.einsum("...i,ij,...j->...", x0, self.cov, x0)       # x0ᵀ·cov·x0: the fit
        if new_point:
            var = var + self.residual_std_ln ** 2                    # + scatter of one optimum
        t = special.stdtrit(self.dof, 0.5 + level / 2)
        y = np.log(self.predict(N, D))
        half = t * np.sqrt(var)
        return _interval_out(np.exp(y - half), np.exp(y + half))

    def predict_interval(self, N, D, level: float = 0.95):
        """OLS *prediction* interval for the optimal LR η* of a run at (N, D), as (lo, hi).

        In log space: ln η̂ ± t_{n−3, (1+level)/2} · sqrt(s² + x0ᵀ·cov·x0), with
        x0 = (1, ln N − mean ln N, ln D − mean ln D), cov = s²·(XᵀX)⁻¹ the coefficient
        covariance and s² the residual variance of the fitted optima: the uncertainty of
        the fitted law at that point plus the scatter of one optimum about the law. It
        assumes the log-linear form holds out to (N, D); it says nothing about curvature
        beyond the fitted range (compare `fit_curved_lr_law`). Scalars give floats,
        arrays give arrays (broadcast).
        """
        return self._t_interval(N, D, level, new_point=True)

    def mean_interval(self, N, D, level: float = 0.95):
        """OLS *confidence* interval of the law's mean prediction at (N, D): like
        `predict_interval` without the residual variance s² (uncertainty of the fit only)."""
        return self._t_interval(N, D, level, new_point=False)

    def bootstrap_interval(self, N, D, level: float | None = None):
        """Bootstrap percentile interval of the law's mean prediction at (N, D): the
        `level` quantiles (default `ci_level`) of exp(ln c_b + α_b ln N + β_b ln D) over
        the stored bootstrap draws. Raises ValueError when there are fewer than 2 draws."""
        if self.boot_draws is None or len(self.boot_draws) < 2:
            raise ValueError("this LawFit has no bootstrap draws; fit it with n_boot > 0")
        level = self.ci_level if level is None else level
        lnN, lnD = (np.log(np.asarray(v, dtype=float)) for v in (N, D))
        b = self.boot_draws
        y = b[:, 0] + b[:, 1] * lnN[..., None] + b[:, 2] * lnD[..., None]  # (..., B)
        lo, hi = np.quantile(y, (0.5 - level / 2, 0.5 + level / 2), axis=-1)
        return _interval_out(np.exp(lo), np.exp(hi))

    def to_json(self) -> dict:
        return {"equation": "eta* = c * N^alpha * D^beta", "c": self.c, "alpha": self.alpha,
                "beta": self.beta, "c_ci": list(self.c_ci), "alpha_ci": list(self.alpha_ci),
                "beta_ci": list(self.beta_ci), "se": dict(self.se), "r2": self.r2,
                "residual_std_ln_eta": self.residual_std_ln, "n_points": self.n_points,
                "n_boot": self.n_boot, "n_boot_used": self.n_boot_used, "seed": self.seed,
                "ci_level": self.ci_level}


def _interval_out(lo, hi):
    """(lo, hi) as floats for a scalar query, as arrays otherwise."""
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def _law_arrays(N, D, eta_star):
    N, D, eta = (np.asarray(v, dtype=float).ravel() for v in (N, D, eta_star))
    if not (N.shape == D.shape == eta.shape):
        raise ValueError(f"N, D, eta_star differ in length ({N.size}, {D.size}, {eta.size})")
    keep = np.isfinite(N) & np.isfinite(D) & np.isfinite(eta)
    N, D, eta = N[keep], D[keep], eta[keep]
    if np.any(N <= 0) or np.any(D <= 0) or np.any(eta <= 0):
        raise ValueError("N, D and eta_star must be positive (Eq. 6 is fitted in log space)")
    return N, D, eta


def fit_lr_law(N, D, eta_star, n_boot: int = 1000, seed: int = 0,
               ci_level: float = 0.95) -> LawFit:
    """Fit Eq. 6 of arXiv 2601.05049, ln η* = ln c + α ln N + β ln D, by ordinary
    least squares in log space (PAPER.md §2). The paper's fit: c = 38.4588,
    α = −0.2219, β = −0.3509, R² ≈ 0.962 (its units of N and D are unknown).

    Needs >= 4 points (one residual degree of freedom) spanning >= 2 distinct N and
    >= 2 distinct D, else InsufficientDataError. Bootstrap resamples whose design is
    rank-deficient (e.g. a single D drawn) are skipped; `n_boot_used` says how many
    remained.
    """
    N, D, eta = _law_arrays(N, D, eta_star)
    n_N, n_D = np.unique(N).size, np.unique(D).size
    if N.size < 4 or n_N < 2 or n_D < 2:
        raise InsufficientDataError(
            f"Eq. 6 needs >= 4 optima over >= 2 model sizes and >= 2 token budgets, got "
            f"{N.size} optima, {n_N} size(s), {n_D} budget(s); add sizes or budgets, extend "
            f"the LR grids of edge optima, or add Eq. 4 horizons (extrapolate_tokens)")
    lnN, lnD, y = np.log(N), np.log(D), np.log(eta)
    mN, mD = lnN.mean(), lnD.mean()  # centred design; slopes unchanged, intercept shifted back
    X = np.column_stack([np.ones_like(y), lnN - mN, lnD - mD])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    if np.linalg.matrix_rank(X) < 3:
        raise InsufficientDataError("Eq. 6 design is rank-deficient: ln N and ln D are "
                                    "collinear in these optima; vary N and D independently")
    resid = y - X @ coef
    dof = y.size - 3
    ss_res, ss_tot = float(resid @ resid), float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    s2 = ss_res / dof
    cov = s2 * np.linalg.inv(X.T @ X)
    ln_c = coef[0] - coef[1] * mN - coef[2] * mD
    g = np.array([1.0, -mN, -mD])  # ∂ ln c / ∂ coef
    se = {"ln_c": float(math.sqrt(g @ cov @ g)), "alpha": float(math.sqrt(cov[1, 1])),
          "beta": float(math.sqrt(cov[2, 2]))}

    q = (0.5 - ci_level / 2, 0.5 + ci_level / 2)
    nan2 = (float("nan"), float("nan"))
    c_ci = alpha_ci = beta_ci = nan2
    n_used = 0
    boot_draws = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, y.size, size=(n_boot, y.size))
        Xb, yb = X[idx], y[idx]                                   # (B, n, 3), (B, n)
        XtX = np.einsum("bni,bnj->bij", Xb, Xb)
        Xty = np.einsum("bni,bn->bi", Xb, yb)
        ok = np.linalg.cond(XtX) < 1e10                            # drop rank-deficient draws
        n_used = int(ok.sum())
        if n_used >= 2:
            cb = np.linalg.solve(XtX[ok], Xty[ok][..., None])[..., 0]
            ln_cb = cb[:, 0] - cb[:, 1] * mN - cb[:, 2] * mD
            boot_draws = np.column_stack([ln_cb, cb[:, 1], cb[:, 2]])
            c_ci = tuple(float(v) for v in np.exp(np.quantile(ln_cb, q)))
            alpha_ci = tuple(float(v) for v in np.quantile(cb[:, 1], q))
            beta_ci = tuple(float(v) for v in np.quantile(cb[:, 2], q))
        if n_used < 0.9 * n_boot:
            warnings.warn(f"Eq. 6 bootstrap: only {n_used}/{n_boot} resamples had a full-rank "
                          f"design; CIs rest on those", FitWarning, stacklevel=2)
    return LawFit(c=float(math.exp(ln_c)), alpha=float(coef[1]), beta=float(coef[2]),
                  c_ci=c_ci, alpha_ci=alpha_ci, beta_ci=beta_ci, se=se, r2=r2,
                  residual_std_ln=float(math.sqrt(s2)), n_points=int(y.size), n_boot=int(n_boot),
                  n_boot_used=n_used, seed=int(seed), ci_level=float(ci_level),
                  cov=cov, centre=(float(mN), float(mD)), boot_draws=boot_draws)


def leave_one_size_out(N, D, eta_star) -> pd.DataFrame:
    """Leave-one-size-out prediction error of Eq. 6 (PAPER.md §2).

    For each distinct N: fit Eq. 6 on the other sizes, predict η* at every D measured
    for the held-out size. Holding out the largest size is the honest extrapolation
    test. Columns: N_held_out, D, eta_measured, eta_predicted, rel_err_eta
    (= pred/meas − 1), err_ln_eta (= ln pred − ln meas). Folds whose remaining points
    cannot define Eq. 6 are skipped.
    """
    N, D, eta = _law_arrays(N, D, eta_star)
    sizes = np.unique(N)
    if sizes.size < 3:
        raise InsufficientDataError(f"leave-one-size-out needs >= 3 model sizes, got {sizes.size}")
    rows = []
    for held in sizes:
        train = N != held
        try:
            fit = fit_lr_law(N[train], D[train], eta[train], n_boot=0)
        except InsufficientDataError:
            continue
        test = ~train
        pred = fit.predict(N[test], D[test])
        for d, m, p in zip(D[test], eta[test], pred):
            rows.append({"N_held_out": float(held), "D": float(d), "eta_measured": float(m),
                         "eta_predicted": float(p), "rel_err_eta": float(p / m - 1.0),
                         "err_ln_eta": float(math.log(p / m))})
    return pd.DataFrame(rows, columns=["N_held_out", "D", "eta_measured", "eta_predicted",
                                       "rel_err_eta", "err_ln_eta"])


# A curved alternative to Eq. 6. Optimal-LR laws that are straight in log-log over small
# models have been reported to curve upward at larger scale (arXiv 2606.29158, 22M-707M
# parameters, 5-100B tokens; PAPER.md §4), so an extrapolation should be checked against
# a law with curvature before it is trusted.

CURVED_TERMS = ("1", "lnN", "lnD", "lnN^2", "lnD^2")


def _curved_design(terms, centre, N, D) -> np.ndarray:
    """(..., len(terms)) design of the curved law at (N, D), logs centred on `centre`."""
    u = np.log(np.asarray(N, dtype=float)) - centre[0]
    v = np.log(np.asarray(D, dtype=float)) - centre[1]
    u, v = np.broadcast_arrays(u, v)
    cols = {"1": np.ones_like(u), "lnN": u, "lnD": v, "lnN^2": u * u, "lnD^2": v * v}
    return np.stack([cols[t] for t in terms], -1)


@dataclass
class CurvedLawFit:
    """ln η* = k + α·u + β·v + γ_N·u² + γ_D·v² with u = ln N − mean ln N, v = ln D − mean ln D.

    The curved alternative to Eq. 6, fitted by OLS in log space on centred logs, so α
    and β are the local slopes at the centre of the data and γ_N, γ_D the curvatures
    (γ > 0: η* curves upward in log-log). A quadratic term whose variable has fewer
    than 3 distinct values is not identifiable and is dropped (its γ is 0 and
    `dropped` says why); with both dropped the form equals Eq. 6.
    """
    terms: tuple[str, ...]         # subset of CURVED_TERMS, in that order
    coef: np.ndarray = field(repr=False, compare=False)     # one per term
    cov: np.ndarray = field(repr=False, compare=False)      # OLS covariance of coef
    centre: tuple[float, float]    # (mean ln N, mean ln D)
    r2: float
    residual_std_ln: float
    n_points: int
    dropped: tuple[str, ...] = ()

    def _coef(self, term: str) -> float:
        return float(self.coef[self.terms.index(term)]) if term in self.terms else 0.0

    @property
    def alpha(self) -> float:
        return self._coef("lnN")

    @property
    def beta(self) -> float:
        return self._coef("lnD")

    @property
    def gamma_N(self) -> float:
        return self._coef("lnN^2")

    @property
    def gamma_D(self) -> float:
        return self._coef("lnD^2")

    @property
    def dof(self) -> int:
        return self.n_points - len(self.terms)

    def design(self, N, D) -> np.ndarray:
        return _curved_design(self.terms, self.centre, N, D)

    def predict(self, N, D) -> np.ndarray:
        return np.exp(self.design(N, D) @ self.coef)

    def predict_interval(self, N, D, level: float = 0.95):
        """OLS prediction interval for one new optimum at (N, D), as in
        `LawFit.predict_interval`, with n − (number of terms) dof."""
        x0 = self.design(N, D)
        var = np.einsum("...i,ij,...j->...", x0, self.cov, x0) + self.residual_std_ln ** 2
        half = special.stdtrit(self.dof, 0.5 + level / 2) * np.sqrt(var)
        y = x0 @ self.coef
        return _interval_out(np.exp(y - half), np.exp(y + half))

    def to_json(self) -> dict:
        return {"equation": "ln eta* = k + alpha*u + beta*v + gamma_N*u^2 + gamma_D*v^2, "
                            "u = ln N - centre_lnN, v = ln D - centre_lnD",
                "terms": list(self.terms), "coef": [float(c) for c in self.coef],
                "alpha": self.alpha, "beta": self.beta, "gamma_N": self.gamma_N,
                "gamma_D": self.gamma_D, "centre_lnN": self.centre[0],
                "centre_lnD": self.centre[1], "r2": self.r2,
                "residual_std_ln_eta": self.residual_std_ln, "n_points": self.n_points,
                "dropped": list(self.dropped)}


def fit_curved_lr_law(N, D, eta_star) -> CurvedLawFit:
    """Fit the curved alternative to Eq. 6 (see `CurvedLawFit`) by OLS in log space.

    The quadratic term in ln N (ln D) is kept only with >= 3 distinct N (D). Needs at
    least one residual degree of freedom and a full-rank design, else
    InsufficientDataError saying what to add.
    """
    N, D, eta = _law_arrays(N, D, eta_star)
    terms, dropped = ["1", "lnN", "lnD"], []
    for var, term, what in ((N, "lnN^2", "model sizes"), (D, "lnD^2", "token budgets")):
        n_distinct = np.unique(var).size
        if n_distinct >= 3:
            terms.append(term)
        else:
            dropped.append(f"{term} dropped: only {n_distinct} distinct {what} (a quadratic "
                           f"needs >= 3)")
    if np.unique(N).size < 2 or np.unique(D).size < 2 or N.size <= len(terms):
        raise InsufficientDataError(
            f"the curved law with terms {terms} needs more than {len(terms)} optima over >= 2 "
            f"sizes and >= 2 budgets, got {N.size} optima, {np.unique(N).size} size(s), "
            f"{np.unique(D).size} budget(s); add sizes or budgets")
    y = np.log(eta)
    centre = (float(np.log(N).mean()), float(np.log(D).mean()))
    X = _curved_design(terms, centre, N, D)
    if np.linalg.matrix_rank(X) < len(terms):
        raise InsufficientDataError(f"the curved law's design {terms} is rank-deficient on "
                                    f"these optima; vary N and D independently")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    ss_res, ss_tot = float(resid @ resid), float(np.sum((y - y.mean()) ** 2))
    s2 = ss_res / (y.size - len(terms))
    return CurvedLawFit(terms=tuple(terms), coef=coef, cov=s2 * np.linalg.inv(X.T @ X),
                        centre=centre, r2=1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
                        residual_std_ln=float(math.sqrt(s2)), n_points=int(y.size),
                        dropped=tuple(dropped))


def summarize_loso(loso: pd.DataFrame) -> list[dict]:
    """Per held-out size: mean and max |relative error| in η and mean |error| in ln η."""
    out = []
    for held, g in loso.groupby("N_held_out", sort=True):
        out.append({"N_held_out": float(held), "n_points": int(len(g)),
                    "mean_abs_rel_err_eta": float(g["rel_err_eta"].abs().mean()),
                    "max_abs_rel_err_eta": float(g["rel_err_eta"].abs().max()),
                    "mean_abs_err_ln_eta": float(g["err_ln_eta"].abs().mean())})
    return out


# ---------------------------------------------------------------------------
# Search cost (PAPER.md §1 and Fig. 7)
# ---------------------------------------------------------------------------

@dataclass
class SearchCost:
    """Compute of the decay-branch pipeline vs the full grid it replaces.

    pipeline: what the sweep actually spent, sum of `run_flops` over unique runs (one
    stable run per (N, η) plus its decay branches), O(n·C_η) runs.
    grid: a separate from-scratch run for every measured (N, η, D), sum of `flops`
    over rows, O(n·C_η·C_D) runs, the O(n³) grid of the paper's §1 for C_η, C_D ~ n.
    Diverged and failed runs count on both sides: a grid would have run them too.
    """
    pipeline_flops: float
    pipeline_runs: int
    grid_flops: float
    grid_runs: int
    n_sizes: int
    n_lrs: int        # C_η: most LRs swept at one size
    n_budgets: int    # C_D: most token budgets measured at one size

    @property
    def flops_ratio(self) -> float:
        return self.grid_flops / self.pipeline_flops if self.pipeline_flops > 0 else float("nan")

    @property
    def runs_ratio(self) -> float:
        return self.grid_runs / self.pipeline_runs if self.pipeline_runs > 0 else float("nan")

    def to_json(self) -> dict:
        return {"pipeline_flops": self.pipeline_flops, "pipeline_runs": self.pipeline_runs,
                "grid_flops": self.grid_flops, "grid_runs": self.grid_runs,
                "flops_ratio_grid_over_pipeline": self.flops_ratio,
                "runs_ratio_grid_over_pipeline": self.runs_ratio, "n_sizes": self.n_sizes,
                "n_lrs": self.n_lrs, "n_budgets": self.n_budgets}


def search_cost(df: pd.DataFrame) -> SearchCost:
    """Search cost of a results table (all statuses). See `SearchCost`."""
    runs = df.drop_duplicates("run_id", keep="last")
    per_size = df.groupby("model")
    return SearchCost(pipeline_flops=float(runs["run_flops"].sum()), pipeline_runs=int(len(runs)),
                      grid_flops=float(df["flops"].sum()), grid_runs=int(len(df)),
                      n_sizes=int(df["model"].nunique()), n_lrs=int(per_size["lr"].nunique().max()),
                      n_budgets=int(per_size["tokens"].nunique().max()))


# ---------------------------------------------------------------------------
# The pipeline: Eq. 2 per (N, D) → Eq. 4 per (N, η) → Eq. 6
# ---------------------------------------------------------------------------

@dataclass
class SweepFit:
    """Everything the figures and `fit.json` need from one sweep, for one N kind.

    optima: one row per (model, D) with an Eq. 2 fit: N, D, eta_star, eta_ci_lo/hi,
    loss_min, C, r2, edge, suggest_lrs, n_lrs, n_diverged, source ("measured" or "eq4"
    for horizons extrapolated with Eq. 4), used_in_law.
    """
    n_kind: str
    parametrization: str
    data_fingerprints: list[str]
    points: pd.DataFrame             # usable rows, with column "N"
    unusable: pd.DataFrame           # diverged / failed rows, with column "N"
    counts: dict
    lr_fits: dict                    # (model, D) -> LrFit, measured budgets
    extrapolated_lr_fits: dict       # (model, D) -> LrFit on Eq. 4-predicted losses
    data_fits: dict                  # (model, lr) -> DataFit
    optima: pd.DataFrame
    law: LawFit | None
    loso: pd.DataFrame | None
    search_cost: SearchCost
    warnings: list[str]
    settings: dict

    def scale(self) -> dict:
        """The scale this fit was made at (for captions and the honest-scale note)."""
        p = self.points
        return {"N_min": float(p["N"].min()), "N_max": float(p["N"].max()),
                "D_min": float(p["tokens"].min()), "D_max": float(p["tokens"].max()),
                "lr_min": float(p["lr"].min()), "lr_max": float(p["lr"].max()),
                "n_sizes": int(p["model"].nunique()),
                "n_budgets": int(p.groupby("model")["tokens"].nunique().max()),
                "n_lrs": int(p.groupby("model")["lr"].nunique().max()),
                "models": sorted(p["model"].unique().tolist())}

    def law_points(self) -> pd.DataFrame:
        return self.optima[self.optima["used_in_law"]]

    def to_json(self) -> dict:
        loso = None
        if self.loso is not None and len(self.loso):
            per_size = summarize_loso(self.loso)
            largest = max(per_size, key=lambda r: r["N_held_out"])
            loso = {"per_size": per_size,
                    "mean_abs_rel_err_eta": float(self.loso["rel_err_eta"].abs().mean()),
                    "mean_abs_err_ln_eta": float(self.loso["err_ln_eta"].abs().mean()),
                    "largest_size_held_out": largest,
                    "points": self.loso.to_dict(orient="records")}
        return jsonable({
            "n_kind": self.n_kind, "parametrization": self.parametrization,
            "data_fingerprints": self.data_fingerprints, "settings": self.settings,
            "counts": self.counts, "scale": self.scale(),
            "law": self.law.to_json() if self.law else None, "loso": loso,
            "optima": self.optima.to_dict(orient="records"),
            "loss_vs_tokens": [{"model": m, "N": _n_of(self.points, m), "lr": lr, **f.to_json()}
                               for (m, lr), f in sorted(self.data_fits.items())],
            "search_cost": self.search_cost.to_json(), "warnings": list(self.warnings)})


def _n_of(points: pd.DataFrame, model: str) -> float:
    return float(points.loc[points["model"] == model, "N"].iloc[0])


def _optimum_row(model: str, N: float, D: float, fit: LrFit, source: str, n_diverged: int) -> dict:
    return {"model": model, "N": float(N), "D": float(D), "eta_star": fit.eta_star,
            "eta_ci_lo": fit.eta_ci[0], "eta_ci_hi": fit.eta_ci[1], "loss_min": fit.loss_min,
            "C": fit.C, "r2": fit.r2, "edge": fit.edge, "convex": fit.convex,
            "suggest_lrs": list(fit.suggest_lrs), "n_lrs": int(np.unique(fit.lrs).size),
            "n_diverged": int(n_diverged), "source": source}


def _select_parametrization(df: pd.DataFrame,
                            parametrization: str | None) -> tuple[pd.DataFrame, str]:
    present = sorted(df["parametrization"].astype(str).unique())
    if parametrization is None:
        if len(present) > 1:
            raise ValueError(f"the table mixes parametrizations {present}; the Fitting paradigm "
                             f"is fitted per parametrization: pass parametrization=... "
                             f"(--parametrization)")
        parametrization = present[0]
    if parametrization not in present:
        raise InsufficientDataError(f"no rows with parametrization={parametrization!r}; "
                                    f"the table has {present}")
    return df[df["parametrization"] == parametrization], parametrization


def fit_sweep(df: pd.DataFrame, n_kind: str = "n_active_nonembed", *,
              extrapolate_tokens=None, window: int | None = None, include_edge: bool = False,
              parametrization: str | None = None, n_boot: int = 1000, seed: int = 0) -> SweepFit:
    """The Fitting paradigm on one sweep table (PAPER.md §2 "Fitting protocol").

    1. Eq. 2 per (model, D) over the usable rows → η*(N, D) with CI and edge flag.
    2. Eq. 4 per (model, η) with >= 3 budgets; for each D in `extrapolate_tokens` not
       measured for that model, Eq. 4 predicts L(N, η, D) at every η and Eq. 2 on those
       predictions adds an η*(N, D) point (source "eq4"), the paper's use of Eq. 4 to
       reach long horizons from short runs.
    3. Eq. 6 on the convex optima; edge optima are excluded unless `include_edge`
       (their η* is an extrapolation of the quadratic, biased toward the grid).
    4. Leave-one-size-out error of Eq. 6; search cost of pipeline vs full grid.

    Models are grouped by the `model` preset, N is its `n_kind` count. Problems that
    are data (edges, non-convex curves, skipped groups, too few points for Eq. 6) go to
    `.warnings`; only a table with no Eq. 2 fit at all raises InsufficientDataError.
    """
    if n_kind not in N_KINDS:
        raise ValueError(f"unknown n_kind {n_kind!r}; choose one of {N_KINDS}")
    df, parametrization = _select_parametrization(df, parametrization)
    df = df.assign(N=df[n_kind].astype(float))
    messages: list[str] = []
    usable = usable_mask(df)
    points, unusable = df[usable].copy(), df[~usable].copy()
    counts = status_counts(df)
    counts["rows_used"] = int(len(points))
    if points.empty:
        raise InsufficientDataError(f"no usable rows (status ok, finite val_loss) for "
                                    f"parametrization={parametrization!r}: {counts['rows']}")
    messages += _mixing_warnings(points)
    label = {m: f"{m} (N={n:.3g})" for m, n in points.groupby("model")["N"].first().items()}

    rows, lr_fits = _eq2_per_size_and_budget(points, unusable, window, label, messages)        # 1.
    data_fits = _eq4_per_size_and_lr(points, label, messages)                                  # 2.
    ext = sorted({int(round(float(d))) for d in (extrapolate_tokens or [])})
    extrapolated = _eq2_on_eq4_predictions(points, data_fits, ext, window, label, rows, messages)
    optima = pd.DataFrame(rows).sort_values(["N", "D", "source"]).reset_index(drop=True)
    good = optima["convex"] & np.isfinite(optima["eta_star"].astype(float))
    optima["used_in_law"] = good & (include_edge | optima["edge"].isna())
    n_edge = int((good & optima["edge"].notna()).sum())
    if n_edge and not include_edge:
        messages.append(f"{n_edge} edge optim{'um' if n_edge == 1 else 'a'} excluded from Eq. 6 "
                        f"(extend the LR grid as suggested, or pass include_edge=True)")
    law, loso = _law_and_loso(optima[optima["used_in_law"]], n_boot, seed, messages)           # 3., 4.

    settings = {"n_kind": n_kind, "extrapolate_tokens": ext, "window": window,
                "include_edge": include_edge, "n_boot": n_boot, "seed": seed}
    return SweepFit(n_kind=n_kind, parametrization=parametrization,
                    data_fingerprints=sorted(df["data_fingerprint"].dropna().astype(str).unique()),
                    points=points, unusable=unusable, counts=counts, lr_fits=lr_fits,
                    extrapolated_lr_fits=extrapolated, data_fits=data_fits, optima=optima,
                    law=law, loso=loso, search_cost=search_cost(df), warnings=messages,
                    settings=settings)


def _mixing_warnings(points: pd.DataFrame) -> list[str]:
    """Groups the law would silently average over."""
    out = []
    if len(set(np.where(points["num_experts"] > 0, "MoE", "dense"))) > 1:
        out.append("the law is fitted across dense and MoE models together; filter the "
                   "table to one family to match the paper's (MoE-only) setup")
    for model, g in points.groupby("model"):
        if g["batch_tokens"].nunique() > 1:
            out.append(f"{model}: several batch sizes {sorted(g['batch_tokens'].unique())} "
                       f"are fitted together; the optimal LR depends on batch size")
    return out


def _eq2_per_size_and_budget(points, unusable, window, label, messages) -> tuple[list[dict], dict]:
    """Step 1: Eq. 2 per (model, D) -> optimum rows (source "measured") and the fits."""
    rows, lr_fits = [], {}
    for (model, D), g in points.groupby(["model", "tokens"], sort=True):
        if g["lr"].nunique() < 3:
            messages.append(f"{label[model]}, D={D:.3g}: only {g['lr'].nunique()} LR(s) with a "
                            f"finite loss, Eq. 2 needs >= 3: skipped")
            continue
        fit = fit_lr_curve(g["lr"], g["val_loss"], window=window, warn=False)
        lr_fits[(model, int(D))] = fit
        if fit.message:
            messages.append(f"{label[model]}, D={D:.3g}: {fit.message}")
        n_div = int(((unusable["model"] == model) & (unusable["tokens"] == D)).sum())
        rows.append(_optimum_row(model, g["N"].iloc[0], D, fit, "measured", n_div))
    if not lr_fits:
        raise InsufficientDataError(
            "no (model, token budget) has finite losses at >= 3 distinct LRs, so Eq. 2 cannot "
            "be fitted anywhere; sweep >= 5 LRs per size (PAPER.md §2)")
    return rows, lr_fits


def _eq4_per_size_and_lr(points, label, messages) -> dict:
    """Step 2a: Eq. 4 per (model, η) with >= 3 budgets."""
    data_fits = {}
    for (model, lr), g in points.groupby(["model", "lr"], sort=True):
        if g["tokens"].nunique() < 3:
            continue
        fit = fit_loss_vs_tokens(g["tokens"], g["val_loss"], warn=False)
        data_fits[(model, float(lr))] = fit
        if fit.message:
            messages.append(f"{label[model]}, lr={lr:.3g}: {fit.message}")
    return data_fits


def _eq2_on_eq4_predictions(points, data_fits, horizons, window, label, rows, messages) -> dict:
    """Step 2b: at each horizon not measured for a model, Eq. 2 on Eq. 4's predicted losses adds
    an optimum row (source "eq4") to `rows`; returns those fits."""
    extrapolated = {}
    for D_ext in horizons:
        for model in sorted(points["model"].unique()):
            if D_ext in set(points.loc[points["model"] == model, "tokens"].astype(int)):
                continue  # measured already
            fits = {lr: f for (m, lr), f in data_fits.items() if m == model}
            if len(fits) < 3:
                messages.append(f"{label[model]}: cannot extrapolate to D={D_ext:.3g}, only "
                                f"{len(fits)} LR(s) have Eq. 4 fits (need >= 3 budgets each)")
                continue
            lrs = np.array(sorted(fits))
            losses = np.array([float(fits[lr].predict(D_ext)) for lr in lrs])
            fit = fit_lr_curve(lrs, losses, window=window, warn=False)
            extrapolated[(model, D_ext)] = fit
            if fit.message:
                messages.append(f"{label[model]}, D={D_ext:.3g} (Eq. 4 extrapolation): {fit.message}")
            N = float(points.loc[points["model"] == model, "N"].iloc[0])
            rows.append(_optimum_row(model, N, D_ext, fit, "eq4", 0))
    return extrapolated


def _law_and_loso(used: pd.DataFrame, n_boot: int, seed: int, messages) -> tuple:
    """Steps 3 and 4: Eq. 6 on the optima that enter the law, then its leave-one-size-out error."""
    try:
        law = fit_lr_law(used["N"], used["D"], used["eta_star"], n_boot=n_boot, seed=seed)
    except InsufficientDataError as err:
        messages.append(f"Eq. 6 not fitted: {err}")
        return None, None
    if used["N"].nunique() < 3:
        messages.append("leave-one-size-out error needs >= 3 model sizes: not computed")
        return law, None
    return law, leave_one_size_out(used["N"], used["D"], used["eta_star"])


def fit_all_n_kinds(df: pd.DataFrame, n_kinds=N_KINDS, **kwargs) -> dict[str, SweepFit]:
    """`fit_sweep` once per way of counting N (PAPER.md §2: total, active, active
    non-embedding); the paper does not say which it used, so all are reported."""
    return {kind: fit_sweep(df, kind, **kwargs) for kind in n_kinds}
