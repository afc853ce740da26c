"""What LR for my run? The recommended peak learning rate at a target (N, D), with its
interval, from either paradigm of arXiv 2601.05049 (PAPER.md §1) or both.

Fitting: Eq. 6, η* = c·N^α·D^β, fitted on measured optima, evaluated at the target.
    python -m analysis.predict --fit experiments/2026-11-22_fit_grid_cpu/fit.json --n 1e6 --tokens 1M
    python -m analysis.predict --sweep sweeps/fit_grid --target-model fit_l --target-set d_model=160 --tokens 2M
    python -m analysis.predict --csv their_sweep.csv --n 7e9 --tokens 1T   # columns N, D, lr, loss

Transfer: a μP proxy's optimal base LR carried to the target by the parametrization's
rules, plus the token-horizon rule η(D) = η(D0)·(D/D0)^(−β) (PAPER.md §3).
    python -m analysis.predict --proxy-lr 5e-3 --proxy-model transfer_w32 --proxy-tokens 164K \\
        --target-model transfer_w256 --target-set n_layers=4 --tokens 10M --parametrization completep

Both at once: give a fit input and the Transfer inputs; the report shows both and their ratio.

The report also has: the OLS prediction interval (and bootstrap interval of the law) at
the target; how far the target lies outside the fitted range (a loud warning beyond
--far-factor); a curved alternative, ln η* quadratic in ln N and ln D, compared with
Eq. 6 on leave-one-size-out error (log-linear LR laws were reported to curve at larger
scale, arXiv 2606.29158); and the published laws of PAPER.md §4 at the target, raw and
pinned through one of our measured optima. `--json OUT` writes all of it.

Exit status: 0 on success; 2 on a missing or malformed input (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lrscale.analysis.fit import parse_tokens
from lrscale.analysis.fitting import (
    CurvedLawFit,
    InsufficientDataError,
    LawFit,
    fit_curved_lr_law,
    fit_lr_law,
    fit_sweep,
)
from lrscale.training.io import jsonable
from lrscale.analysis.laws import PUBLISHED_LAWS, bjorck_law, choose_reference_point, rescale_law
from lrscale.analysis.results import N_KINDS, load_results

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# The D exponent of arXiv 2601.05049 Eq. 6, the default token-horizon β (PAPER.md §3).
DEFAULT_HORIZON_BETA = 0.3509
# Beyond this factor outside the fitted range of N or D the range warning is loud.
FAR_FACTOR = 10.0
# Leave-one-size-out errors within this relative margin are a tie; a tie goes to Eq. 6,
# the simpler form (fewer parameters, the paper's law). On synthetic optima without
# curvature (4 sizes × 3 budgets, 3% scatter in η*) the curved form wins by chance in
# about 5 of 100 draws at 20%, 15 at 10%; with planted curvature γ_N = 0.03 it still
# wins in 86 of 100 at 20% (89 at 10%).
TIE_TOLERANCE = 0.20
TRANSFER_PARAMETRIZATIONS = ("mup", "completep", "depth_mup")
CSV_COLUMNS = ("N", "D", "lr", "loss")
CSV_N_KIND = "N (as given in the CSV)"
_MISSING_LOSS = {"", "nan", "inf", "+inf", "-inf", "null", "none", "na"}


class PredictInputError(ValueError):
    """A missing or malformed input; the message says what is wrong and how to fix it."""


# ---------------------------------------------------------------------------
# Fitting inputs: a sweep directory, a fit.json or a CSV, all reduced to optima + Eq. 6
# ---------------------------------------------------------------------------

@dataclass
class FitSource:
    """Measured optima η*(N, D) and the Eq. 6 law fitted on those marked `used_in_law`.

    `law` is always a fresh `fit_lr_law` fit (it carries the covariance and bootstrap
    draws the intervals need); from a fit.json it is refitted on the file's optima and
    checked against the file's law block.
    """
    kind: str                   # "sweep" | "fit.json" | "csv"
    path: str
    n_kind: str
    parametrization: str | None
    law: LawFit
    optima: pd.DataFrame        # columns N, D, eta_star, used_in_law (and more from a sweep)
    warnings: list[str] = field(default_factory=list)

    def law_points(self) -> pd.DataFrame:
        return self.optima[self.optima["used_in_law"].astype(bool)]

    def scale(self) -> dict:
        p = self.law_points()
        return {"N_min": float(p["N"].min()), "N_max": float(p["N"].max()),
                "D_min": float(p["D"].min()), "D_max": float(p["D"].max()),
                "n_sizes": int(p["N"].nunique()), "n_budgets": int(p["D"].nunique()),
                "n_optima": int(len(p)), "n_optima_total": int(len(self.optima))}


def _fit_source_from_table(table: pd.DataFrame, *, kind: str, path: str, n_kind: str,
                           window, include_edge, parametrization, n_boot, seed,
                           label_n_kind: str | None = None) -> FitSource:
    try:
        sf = fit_sweep(table, n_kind, window=window, include_edge=include_edge,
                       parametrization=parametrization, n_boot=n_boot, seed=seed)
    except InsufficientDataError as err:
        raise PredictInputError(f"{path}: {err}") from None
    if sf.law is None:
        why = "; ".join(m for m in sf.warnings if "Eq. 6" in m) or "too few optima"
        raise PredictInputError(
            f"{path}: Eq. 6 could not be fitted ({why}). {len(sf.optima)} optim"
            f"{'um' if len(sf.optima) == 1 else 'a'} found, "
            f"{int(sf.optima['used_in_law'].sum())} usable; Eq. 6 needs >= 4 over >= 2 "
            f"sizes and >= 2 budgets (add sizes, budgets or LRs around edge optima, or "
            f"pass --include-edge)")
    return FitSource(kind=kind, path=path, n_kind=label_n_kind or n_kind,
                     parametrization=sf.parametrization, law=sf.law, optima=sf.optima,
                     warnings=list(sf.warnings))


def fit_source_from_sweep(sweep_dir, n_kind: str = "n_active_nonembed", *, window=None,
                          include_edge: bool = False, parametrization: str | None = None,
                          n_boot: int = 1000, seed: int = 0,
                          allow_mixed: bool = False) -> FitSource:
    """Eq. 2 per (model, D) → Eq. 6 on a sweep directory's results.jsonl (`fit_sweep`)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise PredictInputError(f"--sweep {sweep_dir}: no such directory (pass the folder "
                                f"that holds results.jsonl)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = load_results(sweep_dir, allow_mixed=allow_mixed)
    except (FileNotFoundError, ValueError) as err:
        raise PredictInputError(f"--sweep: {err}") from None
    _check_parametrization(df["parametrization"].astype(str), parametrization, str(sweep_dir))
    src = _fit_source_from_table(df, kind="sweep", path=str(sweep_dir), n_kind=n_kind,
                                 window=window, include_edge=include_edge,
                                 parametrization=parametrization, n_boot=n_boot, seed=seed)
    src.warnings[:0] = [str(w.message) for w in caught]
    return src


def _check_parametrization(values: pd.Series, wanted: str | None, where: str) -> None:
    present = sorted(values.unique())
    if wanted is None and len(present) > 1:
        raise PredictInputError(f"{where} mixes parametrizations {present}; a law is fitted per "
                                f"parametrization: pass --fit-parametrization {present[0]} "
                                f"(or one of the others)")
    if wanted is not None and wanted not in present:
        raise PredictInputError(f"{where} has no rows with parametrization {wanted!r}; it has "
                                f"{present}")


def fit_source_from_fit_json(path, n_kind: str | None = None) -> FitSource:
    """Optima and Eq. 6 from a fit.json written by `python -m analysis.fit`.

    The file's `optima` records (N, D, eta_star, used_in_law) are refitted with the
    bootstrap settings of its `law` block; the refit must reproduce the stored
    constants (else the file was edited or comes from other code: an error).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "fit.json"
    if not path.is_file():
        raise PredictInputError(f"--fit {path}: no such file (pass a fit.json written by "
                                f"python -m analysis.fit, or its sweep directory)")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise PredictInputError(f"--fit {path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise PredictInputError(f"--fit {path}: expected a JSON object with 'law' and "
                                f"'optima', got {type(doc).__name__}")
    missing = [k for k in ("n_kind", "law", "optima") if k not in doc]
    if missing:
        raise PredictInputError(f"--fit {path}: missing key(s) {missing}; is this a fit.json "
                                f"from python -m analysis.fit?")
    file_kind = doc["n_kind"]
    if n_kind is not None and n_kind != file_kind:
        raise PredictInputError(
            f"--fit {path} was fitted with N counted as {file_kind!r}, not {n_kind!r}; its "
            f"other N kinds are summarized without optima, so refit: --sweep <its directory> "
            f"--n-kind {n_kind}")
    law_block = doc["law"]
    if not isinstance(law_block, dict):
        raise PredictInputError(f"--fit {path}: 'law' is {law_block!r}: that sweep had too few "
                                f"optima for Eq. 6 (see its report.md); add sizes or budgets")
    bad_law = [k for k in ("c", "alpha", "beta") if not _is_number(law_block.get(k))]
    if bad_law:
        raise PredictInputError(f"--fit {path}: the 'law' block lacks numeric {bad_law}")
    records = doc["optima"]
    if not isinstance(records, list) or not records:
        raise PredictInputError(f"--fit {path}: 'optima' must be a non-empty list of records")
    need = ("N", "D", "eta_star", "used_in_law")
    for i, r in enumerate(records):
        lacks = [k for k in need if not isinstance(r, dict) or k not in r]
        if lacks:
            raise PredictInputError(f"--fit {path}: optima[{i}] lacks {lacks}; every record "
                                    f"needs {list(need)}")
    optima = pd.DataFrame.from_records(records)
    optima["used_in_law"] = optima["used_in_law"].fillna(False).astype(bool)
    for col in ("N", "D", "eta_star"):
        optima[col] = pd.to_numeric(optima[col], errors="coerce").astype(float)
    used = optima[optima["used_in_law"]]
    bad = used[~(np.isfinite(used[["N", "D", "eta_star"]]).all(axis=1)
                 & (used[["N", "D", "eta_star"]] > 0).all(axis=1))]
    if len(bad):
        raise PredictInputError(f"--fit {path}: optima {bad.index.tolist()} are marked "
                                f"used_in_law but have a missing or non-positive N, D or "
                                f"eta_star")
    try:
        law = fit_lr_law(used["N"], used["D"], used["eta_star"],
                         n_boot=int(_get(law_block, "n_boot", 1000)),
                         seed=int(_get(law_block, "seed", 0)),
                         ci_level=float(_get(law_block, "ci_level", 0.95)))
    except InsufficientDataError as err:
        raise PredictInputError(f"--fit {path}: {err}") from None
    for k in ("c", "alpha", "beta"):
        stored, refit = float(law_block[k]), float(getattr(law, k))
        if not math.isclose(stored, refit, rel_tol=1e-6, abs_tol=1e-9):
            raise PredictInputError(
                f"--fit {path}: its law block ({k} = {stored:.6g}) does not match a refit of "
                f"its own used_in_law optima ({k} = {refit:.6g}); the file was edited or "
                f"written by other code. Refit the sweep with python -m analysis.fit")
    return FitSource(kind="fit.json", path=str(path), n_kind=file_kind,
                     parametrization=doc.get("parametrization"), law=law, optima=optima,
                     warnings=[str(w) for w in doc.get("warnings") or []])


def _get(block: dict, key: str, default):
    value = block.get(key)
    return default if value is None else value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_sweep_csv(path) -> pd.DataFrame:
    """Read and validate a plain CSV of someone else's sweep.

    Columns (case-insensitive; others are ignored): N, D, lr, loss and optionally
    parametrization. One row per (N, D, lr) measurement; repeated rows (seeds) are
    allowed. N, D and lr must be positive numbers on every row; a blank, nan or inf loss
    is a diverged run (kept, not fitted). Returns columns N, D, lr, loss, parametrization.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictInputError(f"--csv {path}: no such file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise PredictInputError(f"--csv {path}: the file is empty; it needs a header line "
                                f"{','.join(CSV_COLUMNS)} and one row per run") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PredictInputError(f"--csv {path}: not a readable CSV ({err})") from None
    by_lower: dict[str, list[str]] = {}
    for col in raw.columns:
        by_lower.setdefault(str(col).strip().lower(), []).append(col)
    dupes = {k: v for k, v in by_lower.items() if len(v) > 1}
    if dupes:
        raise PredictInputError(f"--csv {path}: columns {list(dupes.values())} differ only in "
                                f"case; keep one of each")
    missing = [c for c in CSV_COLUMNS if c.lower() not in by_lower]
    if missing:
        raise PredictInputError(
            f"--csv {path}: missing column(s) {missing}; found {list(raw.columns)}. Needed: "
            f"N (model size), D (training tokens), lr (peak LR), loss (final loss; blank for "
            f"diverged), optionally parametrization")
    if raw.empty:
        raise PredictInputError(f"--csv {path}: a header but no data rows")
    out = pd.DataFrame(index=raw.index)
    for name in ("N", "D", "lr"):
        text = raw[by_lower[name.lower()][0]].str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = ~np.isfinite(values.astype(float))
        if bad.any():
            raise PredictInputError(f"--csv {path}: column {name} must be a finite number on "
                                    f"every row; bad value(s) {_rows(text, bad)}")
        nonpos = values <= 0
        if nonpos.any():
            raise PredictInputError(f"--csv {path}: column {name} must be positive (it is "
                                    f"fitted in log space); bad value(s) {_rows(text, nonpos)}")
        out[name] = values.astype(float)
    if (out["D"] < 1).any():
        raise PredictInputError(f"--csv {path}: column D counts training tokens, so it must be "
                                f">= 1; bad value(s) {_rows(raw[by_lower['d'][0]], out['D'] < 1)}")
    text = raw[by_lower["loss"][0]].str.strip()
    missing_loss = text.str.lower().isin(_MISSING_LOSS)
    values = pd.to_numeric(text.where(~missing_loss), errors="coerce")
    bad = values.isna() & ~missing_loss
    if bad.any():
        raise PredictInputError(f"--csv {path}: column loss must be a number, or blank/nan "
                                f"for a diverged run; bad value(s) {_rows(text, bad)}")
    out["loss"] = values.astype(float)
    if "parametrization" in by_lower:
        p = raw[by_lower["parametrization"][0]].str.strip()
        out["parametrization"] = p.where(p != "", "unspecified")
    else:
        out["parametrization"] = "unspecified"
    return out


def _rows(text: pd.Series, mask: pd.Series, limit: int = 5) -> str:
    """'line 3: "abc", line 7: "-1"' (file line numbers: the header is line 1)."""
    items = [f"line {i + 2}: {v!r}" for i, v in text[mask].head(limit).items()]
    more = int(mask.sum()) - len(items)
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def csv_to_results_table(rows: pd.DataFrame, source: str = "csv") -> pd.DataFrame:
    """The validated CSV rows as a results table that `fit_sweep` accepts: each distinct N
    is one 'model', every row one run at its own budget (status ok, or diverged without a
    finite loss). N goes into all three N-kind columns; cost columns are 6·N·D."""
    sizes = {n: f"csv{i}" for i, n in enumerate(sorted(rows["N"].unique()))}
    finite = np.isfinite(rows["loss"].to_numpy())
    flops = 6.0 * rows["N"] * rows["D"]
    return pd.DataFrame({
        "run_id": [f"row{i}" for i in range(len(rows))], "config_hash": "",
        "status": np.where(finite, "ok", "diverged"), "model": rows["N"].map(sizes),
        "parametrization": rows["parametrization"].astype(str),
        **{kind: rows["N"] for kind in N_KINDS}, "d_model": 0, "n_layers": 0,
        "num_experts": 0, "top_k": 0, "lr": rows["lr"],
        "tokens": rows["D"].round().astype(np.int64),
        "steps": 0, "branch": 0, "val_loss": rows["loss"], "flops": flops, "run_flops": flops,
        "wall_time_s": 0.0, "batch_tokens": 0, "seed": 0, "error": None,
        "data_fingerprint": source})


def fit_source_from_csv(path, *, parametrization: str | None = None, window=None,
                        include_edge: bool = False, n_boot: int = 1000,
                        seed: int = 0) -> FitSource:
    """Group a CSV's rows by (N, D), fit Eq. 2 per group → optima → Eq. 6."""
    rows = read_sweep_csv(path)
    _check_parametrization(rows["parametrization"], parametrization, f"--csv {path}")
    table = csv_to_results_table(rows, source=f"csv:{path}")
    sel = table if parametrization is None else table[table["parametrization"] == parametrization]
    n_groups = sel[sel["status"] == "ok"].groupby(["model", "tokens"])["lr"].nunique()
    if not (n_groups >= 3).any():
        raise PredictInputError(
            f"--csv {path}: no (N, D) group has finite losses at >= 3 distinct LRs, so Eq. 2 "
            f"cannot be fitted; the file has {len(n_groups)} group(s) with at most "
            f"{int(n_groups.max()) if len(n_groups) else 0} LR(s) each. Sweep >= 5 LRs, "
            f"spaced by factors of 2, per (N, D)")
    return _fit_source_from_table(table, kind="csv", path=str(path), n_kind="n_active_nonembed",
                                  window=window, include_edge=include_edge,
                                  parametrization=parametrization, n_boot=n_boot, seed=seed,
                                  label_n_kind=CSV_N_KIND)


# ---------------------------------------------------------------------------
# The curved alternative against Eq. 6, on leave-one-size-out error
# ---------------------------------------------------------------------------

@dataclass
class LawFormComparison:
    """Eq. 6 (log-linear) vs the curved law on the same leave-one-size-out folds.

    loso_* are mean |ln η_pred − ln η_meas| over the held-out points of every fold that
    both forms could fit; *_largest the same for the fold holding out the largest size
    (the extrapolation the Fitting paradigm is for). preferred: "curved" when its error
    is below (1 − tie_tolerance)× Eq. 6's, "log-linear" when above (1 + tie_tolerance)×,
    "tie" in between, "undetermined" when no fold could be fitted (< 3 sizes).
    """
    curved: CurvedLawFit
    loso_loglinear: float
    loso_curved: float
    loso_loglinear_largest: float
    loso_curved_largest: float
    n_folds: int
    preferred: str
    tie_tolerance: float
    notes: list[str]
    points: list[dict]

    def to_json(self) -> dict:
        return jsonable({"curved": self.curved.to_json(),
                          **{k: v for k, v in asdict(self).items() if k != "curved"}})


def compare_law_forms(N, D, eta_star, *,
                      tie_tolerance: float = TIE_TOLERANCE) -> LawFormComparison:
    """Fit the curved law on all points and compare both forms' leave-one-size-out error.

    Every fold holds out one model size and fits Eq. 6 and the curved law on the rest
    (the curved law drops a quadratic term the fold cannot identify, e.g. γ_N with only
    2 sizes left); a fold that either form cannot fit is skipped for both.
    """
    N, D, eta = (np.asarray(v, dtype=float) for v in (N, D, eta_star))
    curved = fit_curved_lr_law(N, D, eta)
    notes = list(curved.dropped)
    points, fold_terms = [], set()
    for held in np.unique(N):
        train, test = N != held, N == held
        try:
            lin = fit_lr_law(N[train], D[train], eta[train], n_boot=0)
            cur = fit_curved_lr_law(N[train], D[train], eta[train])
        except InsufficientDataError:
            continue
        fold_terms.add(cur.terms)
        p_lin, p_cur = lin.predict(N[test], D[test]), cur.predict(N[test], D[test])
        for d, m, a, b in zip(D[test], eta[test], p_lin, p_cur):
            points.append({"N_held_out": float(held), "D": float(d), "eta_measured": float(m),
                           "eta_loglinear": float(a), "eta_curved": float(b),
                           "err_ln_loglinear": float(math.log(a / m)),
                           "err_ln_curved": float(math.log(b / m))})
    if any(t != curved.terms for t in fold_terms):
        notes.append("in leave-one-size-out folds with fewer sizes or budgets the curved law "
                     "drops the quadratic term it cannot identify")
    nan = float("nan")
    if not points:
        notes.append(f"leave-one-size-out needs >= 3 model sizes with enough points in every "
                     f"fold (have {np.unique(N).size}): which form the data prefer is "
                     f"undetermined")
        return LawFormComparison(curved, nan, nan, nan, nan, 0, "undetermined", tie_tolerance,
                                 notes, [])
    pts = pd.DataFrame(points)
    e_lin = float(pts["err_ln_loglinear"].abs().mean())
    e_cur = float(pts["err_ln_curved"].abs().mean())
    big = pts[pts["N_held_out"] == pts["N_held_out"].max()]
    if e_cur < (1 - tie_tolerance) * e_lin:
        preferred = "curved"
    elif e_cur > (1 + tie_tolerance) * e_lin:
        preferred = "log-linear"
    else:
        preferred = "tie"
    return LawFormComparison(curved=curved, loso_loglinear=e_lin, loso_curved=e_cur,
                             loso_loglinear_largest=float(big["err_ln_loglinear"].abs().mean()),
                             loso_curved_largest=float(big["err_ln_curved"].abs().mean()),
                             n_folds=int(pts["N_held_out"].nunique()), preferred=preferred,
                             tie_tolerance=tie_tolerance, notes=notes, points=points)


# ---------------------------------------------------------------------------
# The Fitting recommendation
# ---------------------------------------------------------------------------

@dataclass
class RangeCheck:
    """Where the target lies relative to the fitted N and D ranges.

    factor_N (factor_D) is how many times beyond the range the target is: N/N_max above
    it, N_min/N below it, 1 inside. `far` when either exceeds `far_factor`.
    """
    N_min: float
    N_max: float
    D_min: float
    D_max: float
    factor_N: float
    factor_D: float
    far_factor: float
    far: bool
    messages: list[str]


def check_range(N: float, D: float, scale: dict, far_factor: float = FAR_FACTOR) -> RangeCheck:
    msgs = []

    def factor(x, lo, hi, what, unit):
        if x > hi:
            f = x / hi
            msgs.append(f"{what} is {f:.3g}× the largest fitted {unit} ({hi:.3g})")
        elif x < lo:
            f = lo / x
            msgs.append(f"{what} is {f:.3g}× below the smallest fitted {unit} ({lo:.3g})")
        else:
            f = 1.0
        return f

    fN = factor(N, scale["N_min"], scale["N_max"], "N", "size")
    fD = factor(D, scale["D_min"], scale["D_max"], "D", "budget")
    far = max(fN, fD) > far_factor
    if not msgs:
        msgs.append("the target lies inside the fitted range of N and D")
    return RangeCheck(N_min=scale["N_min"], N_max=scale["N_max"], D_min=scale["D_min"],
                      D_max=scale["D_max"], factor_N=fN, factor_D=fD, far_factor=far_factor,
                      far=far, messages=msgs)


@dataclass
class FittingRecommendation:
    """Eq. 6 at the target: the recommended peak LR and its intervals, the range check,
    and the curved alternative. `eta` is the recommendation (Eq. 6, the paper's law);
    `comparison.preferred` says whether the data prefer it over the curved form."""
    source: dict
    law: dict
    eta: float
    level: float
    prediction_interval: tuple[float, float]
    mean_interval: tuple[float, float]
    bootstrap_interval: tuple[float, float] | None
    range: RangeCheck
    comparison: LawFormComparison | None
    eta_curved: float | None
    curved_prediction_interval: tuple[float, float] | None
    curved_over_loglinear: float | None
    notes: list[str]

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("comparison", "range")}
        d["range"] = asdict(self.range)
        d["comparison"] = self.comparison.to_json() if self.comparison else None
        return jsonable(d)


def recommend_fitting(source: FitSource, N: float, D: float, *, level: float = 0.95,
                      far_factor: float = FAR_FACTOR,
                      tie_tolerance: float = TIE_TOLERANCE) -> FittingRecommendation:
    """Eq. 6 of the source evaluated at (N, D), with its OLS prediction interval, the
    analytic and bootstrap intervals of the law, the range check and the curved law."""
    law = source.law
    used = source.law_points()
    notes = []
    boot = None
    if law.boot_draws is not None and len(law.boot_draws) >= 2:
        boot = law.bootstrap_interval(N, D, level)
    comparison = eta_c = pi_c = ratio = None
    try:
        comparison = compare_law_forms(used["N"], used["D"], used["eta_star"],
                                       tie_tolerance=tie_tolerance)
    except InsufficientDataError as err:
        notes.append(f"curved alternative not fitted: {err}")
    eta = float(law.predict(N, D))
    if comparison is not None:
        eta_c = float(comparison.curved.predict(N, D))
        pi_c = comparison.curved.predict_interval(N, D, level)
        ratio = eta_c / eta
    return FittingRecommendation(
        source={"kind": source.kind, "path": source.path, "n_kind": source.n_kind,
                "parametrization": source.parametrization, **source.scale(),
                "n_warnings": len(source.warnings)},
        law=law.to_json(), eta=eta, level=level,
        prediction_interval=law.predict_interval(N, D, level),
        mean_interval=law.mean_interval(N, D, level), bootstrap_interval=boot,
        range=check_range(N, D, source.scale(), far_factor), comparison=comparison,
        eta_curved=eta_c, curved_prediction_interval=pi_c, curved_over_loglinear=ratio,
        notes=notes)


def published_law_values(N: float, D: float, source: FitSource | None = None,
                         anchor: tuple[float, float] | None = None) -> dict:
    """The published laws of PAPER.md §4 at (N, D).

    raw: each law with its own constant (not comparable: units of N and D, batch size,
    data and optimizer differ). pinned: the law's exponents through our measured optimum
    nearest the centre of the data (`rescale_law`, `choose_reference_point`); Bjorck et
    al. fix only a D slope, so it is anchored at our Eq. 6 at (N, D_ref) and carried to D.
    Without a fit, `anchor` = (D0, η0) (e.g. a proxy's LR at its tokens) anchors Bjorck.
    """
    rows, ref = [], None
    if source is not None:
        used = source.law_points()
        ref = choose_reference_point(used["N"], used["D"], used["eta_star"])
    for key, law in PUBLISHED_LAWS.items():
        row = {"key": key, "name": law.name, "formula": law.formula,
               "assumptions": law.assumptions, "raw": None, "pinned": None, "pinned_how": None}
        if math.isfinite(law.coefficient):
            row["raw"] = float(law.predict(N, D))
        if law.alpha is None:  # a D slope only (Bjorck et al.)
            if ref is not None:
                eta_ref = float(source.law.predict(N, ref[1]))
                row["pinned"] = float(bjorck_law(eta_ref, ref[1], law.beta).predict(N, D))
                row["pinned_how"] = f"our Eq. 6 at (N, D_ref={ref[1]:.3g}) carried by D^{law.beta}"
            elif anchor is not None:
                row["pinned"] = float(bjorck_law(anchor[1], anchor[0], law.beta).predict(N, D))
                row["pinned_how"] = (f"the proxy's LR {anchor[1]:.3g} at D0={anchor[0]:.3g} "
                                     f"carried by D^{law.beta}")
        elif ref is not None:
            row["pinned"] = float(rescale_law(law, *ref).predict(N, D))
            row["pinned_how"] = "through our reference optimum"
        rows.append(row)
    return {"laws": rows,
            "reference_point": None if ref is None else {"N": ref[0], "D": ref[1],
                                                         "eta_star": ref[2]},
            "note": "raw constants are not comparable across setups (units of N and D, "
                    "total vs active N, batch size, data, optimizer differ); compare the "
                    "pinned values, which keep only each law's exponents"}


# ---------------------------------------------------------------------------
# The Transfer recommendation: μP proxy LR → target, per parameter group
# ---------------------------------------------------------------------------

def _compose(overrides: list[str]):
    """Compose configs/train.yaml with overrides, as train.py would (typed, validated)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lrscale.training.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        # Hydra's first line names the override; its cause says what was wrong with it.
        lines = [str(e).strip().splitlines()[0] for e in (err, err.__cause__)
                 if e is not None and str(e).strip()]
        raise PredictInputError(": ".join(lines)) from None
    finally:
        GlobalHydra.instance().clear()


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))


def _model_overrides(preset: str, sets) -> list[str]:
    if preset not in model_presets():
        raise PredictInputError(f"no such model preset; valid: "
                                f"{', '.join(model_presets())} (configs/model/*.yaml)")
    out = [f"model={preset}"]
    for item in sets or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PredictInputError(f"{item!r} is not key=value (e.g. d_model=256 or "
                                    f"moe.num_experts=16)")
        key = key.strip().removeprefix("model.")
        _check_model_key(key)
        out.append(f"model.{key}={value.strip()}")
    return out


def _check_model_key(key: str) -> None:
    """Name the valid fields when an override's key is not a ModelConfig field."""
    from dataclasses import fields

    from lrscale.models.config import ModelConfig, MoEConfig

    head, _, rest = key.partition(".")
    valid = [f.name for f in fields(ModelConfig)]
    if head == "moe" and rest:
        head, valid = rest, [f.name for f in fields(MoEConfig)]
        prefix = "moe."
    else:
        prefix = ""
    if head not in valid or (rest and prefix == ""):
        raise PredictInputError(f"the model config has no field {key!r}; valid: "
                                f"{', '.join(prefix + v for v in valid)}")


def load_model_config(preset: str, sets=(), *, flag: str = "--target-model"):
    """A `ModelConfig` from a preset of configs/model/ plus key=value overrides, composed
    exactly as train.py composes it (Hydra defaults, interpolations, typed schema)."""
    from omegaconf import OmegaConf

    what = " ".join([flag, preset, *([flag.replace("model", "set"), *sets] if sets else [])])
    try:
        return OmegaConf.to_object(_compose(_model_overrides(preset, sets)).model)
    except PredictInputError as err:
        raise PredictInputError(f"{what}: {err}") from None
    except ValueError as err:  # ModelConfig.validate: an impossible shape
        raise PredictInputError(f"{what}: {err}") from None


def load_parametrization_config(name: str, proxy):
    """The parametrization preset `name` (configs/parametrization/) with its base shape
    set to the proxy's: base_d_model, base_n_layers and base_d_head."""
    from omegaconf import OmegaConf

    if name not in TRANSFER_PARAMETRIZATIONS:
        raise PredictInputError(f"--parametrization {name!r}: Transfer needs one of "
                                f"{', '.join(TRANSFER_PARAMETRIZATIONS)}")
    cfg = _compose([f"parametrization={name}",
                    f"parametrization.base_d_model={proxy.d_model}",
                    f"parametrization.base_n_layers={proxy.n_layers}",
                    f"parametrization.base_d_head={proxy.d_head}"])
    return OmegaConf.to_object(cfg.parametrization)


def _shape(cfg) -> dict:
    return {"name": cfg.name, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads, "d_ff": cfg.ffn_width, "num_experts": cfg.moe.num_experts,
            "top_k": cfg.moe.top_k, "d_expert": cfg.expert_width if cfg.is_moe else None,
            "vocab_size": cfg.vocab_size, **cfg.param_counts()}


def group_lrs(target_cfg, param_cfg, base_lr: float) -> list[dict]:
    """Per-role LRs at the target: the parametrization's `param_table` on the target model
    (built on the meta device, nothing allocated), rows with the same role and
    multipliers merged; lr = base_lr × lr_mult."""
    import torch

    from lrscale.models import Transformer
    from lrscale.parametrization import build_parametrization, param_table

    param = build_parametrization(param_cfg, target_cfg)
    with torch.device("meta"):
        model = Transformer(target_cfg, param)
    numel = {name: p.numel() for name, p in model.named_parameters()}
    groups: dict[tuple, dict] = {}
    for r in param_table(model, param):
        key = (r["role"], r["lr_mult"], r["eps_mult"], r["wd_mult"])
        g = groups.setdefault(key, {"role": r["role"], "tensors": 0, "params": 0,
                                    "lr_mult": r["lr_mult"], "lr": base_lr * r["lr_mult"],
                                    "eps_mult": r["eps_mult"], "wd_mult": r["wd_mult"]})
        g["tensors"] += 1
        g["params"] += int(numel[r["name"]])
    return list(groups.values())


@dataclass
class TransferRecommendation:
    """A μP proxy's optimal base LR carried to the target.

    Width and depth are handled by the parametrization's per-group multipliers (the base
    LR itself carries over unchanged); the token horizon by η(D) = η(D0)·(D/D0)^(−β)
    (PAPER.md §3; β = 0.3509 is the paper's D exponent, ≈ 0.32 Bjorck et al.).
    `base_lr` is the recommendation: with the horizon rule when β ≠ 0.
    """
    parametrization: str
    proxy: dict
    target: dict
    proxy_lr: float
    proxy_tokens: float | None
    tokens: float
    horizon_beta: float
    base_lr_no_horizon: float
    base_lr_horizon: float | None
    base_lr: float
    groups: list[dict]

    def to_json(self) -> dict:
        return jsonable(asdict(self))


def recommend_transfer(proxy_lr: float, proxy_cfg, target_cfg, tokens: float, *,
                       parametrization: str = "mup", proxy_tokens: float | None = None,
                       horizon_beta: float = DEFAULT_HORIZON_BETA) -> TransferRecommendation:
    """The Transfer paradigm at the target; see `TransferRecommendation`."""
    from lrscale.optim.config import OptimConfig
    from lrscale.optim.groups import horizon_lr

    if not (proxy_lr > 0 and math.isfinite(proxy_lr)):
        raise PredictInputError(f"--proxy-lr {proxy_lr}: must be a positive number")
    if horizon_beta != 0 and proxy_tokens is None:
        raise PredictInputError(
            f"the horizon rule (β = {horizon_beta}) needs the proxy's token count D0: pass "
            f"--proxy-tokens D0 (the tokens the proxy LR was tuned at), or --horizon-beta 0 "
            f"to carry the LR over without it")
    param_cfg = load_parametrization_config(parametrization, proxy_cfg)
    with_rule = None
    if horizon_beta != 0:
        with_rule = horizon_lr(OptimConfig(lr=proxy_lr, horizon_beta=horizon_beta,
                                           horizon_base_tokens=float(proxy_tokens)), tokens)
    base = proxy_lr if with_rule is None else with_rule
    return TransferRecommendation(
        parametrization=parametrization, proxy=_shape(proxy_cfg), target=_shape(target_cfg),
        proxy_lr=proxy_lr, proxy_tokens=proxy_tokens, tokens=float(tokens),
        horizon_beta=horizon_beta, base_lr_no_horizon=proxy_lr, base_lr_horizon=with_rule,
        base_lr=base, groups=group_lrs(target_cfg, param_cfg, base))


# ---------------------------------------------------------------------------
# Everything at one target
# ---------------------------------------------------------------------------

@dataclass
class Recommendation:
    """The answer to "what LR for my run?" at one target (N, D)."""
    N: float
    D: float
    n_kind: str
    target_source: str            # "--n" or the model preset (with overrides)
    fitting: FittingRecommendation | None
    transfer: TransferRecommendation | None
    published: dict
    transfer_over_fitting: float | None
    warnings: list[str]

    def to_json(self) -> dict:
        return jsonable({
            "target": {"N": self.N, "D": self.D, "n_kind": self.n_kind,
                       "from": self.target_source},
            "fitting": self.fitting.to_json() if self.fitting else None,
            "transfer": self.transfer.to_json() if self.transfer else None,
            "published_laws": self.published, "transfer_over_fitting": self.transfer_over_fitting,
            "warnings": self.warnings})


def recommend(N: float, D: float, *, source: FitSource | None = None,
              transfer: TransferRecommendation | None = None,
              n_kind: str = "n_active_nonembed", target_source: str = "--n",
              level: float = 0.95, far_factor: float = FAR_FACTOR,
              tie_tolerance: float = TIE_TOLERANCE) -> Recommendation:
    """Combine the paradigms at (N, D): the Fitting recommendation from `source`, the
    Transfer one already computed (`recommend_transfer`), the published laws, and the
    ratio of the two recommendations when both are given."""
    if source is None and transfer is None:
        raise PredictInputError("nothing to recommend from: give a fit input (--sweep, --fit "
                                "or --csv) and/or the Transfer inputs (--proxy-lr ...)")
    for name, v in (("N", N), ("D", D)):
        if not (v > 0 and math.isfinite(v)):
            raise PredictInputError(f"target {name} = {v}: must be a positive number")
    fitting = None
    warns = []
    if source is not None:
        fitting = recommend_fitting(source, N, D, level=level, far_factor=far_factor,
                                    tie_tolerance=tie_tolerance)
        rc = fitting.range
        if rc.far:
            warns.append(f"the target is {max(rc.factor_N, rc.factor_D):.3g}× beyond the fitted "
                         f"range (more than {far_factor:g}×): " + "; ".join(rc.messages)
                         + ". Eq. 6 is extrapolated far and its interval assumes the power law "
                           "holds all the way; check the LR with a short run near the target")
        cmp_ = fitting.comparison
        if cmp_ is not None and cmp_.preferred == "curved":
            warns.append(f"the data prefer the curved law (leave-one-size-out error "
                         f"{cmp_.loso_curved:.3g} vs {cmp_.loso_loglinear:.3g} in ln η): its "
                         f"prediction is {fitting.curved_over_loglinear:.3g}× Eq. 6's at the "
                         f"target")
    anchor = None
    if transfer is not None and transfer.proxy_tokens:
        anchor = (transfer.proxy_tokens, transfer.proxy_lr)
    ratio = None
    if fitting is not None and transfer is not None:
        ratio = transfer.base_lr / fitting.eta
    return Recommendation(N=float(N), D=float(D), n_kind=n_kind, target_source=target_source,
                          fitting=fitting, transfer=transfer,
                          published=published_law_values(N, D, source, anchor),
                          transfer_over_fitting=ratio, warnings=warns)


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

def _lr(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2e}"


def _iv(iv) -> str:
    return "n/a" if iv is None else f"[{_lr(iv[0])}, {_lr(iv[1])}]"


def format_report(rec: Recommendation, *, verbose: bool = False,
                  source: FitSource | None = None) -> str:
    out = [f"What LR for my run?  Target: N = {rec.N:.4g} ({rec.n_kind}), D = {rec.D:.4g} "
           f"tokens  [N from {rec.target_source}]", ""]
    f = rec.fitting
    if f is not None:
        s, law = f.source, f.law
        pct = f"{f.level:.0%}"
        out += [f"Fitting paradigm (Eq. 6) from {s['kind']} {s['path']}",
                f"  parametrization {s['parametrization'] or 'not recorded'}; "
                f"{s['n_optima']} of {s['n_optima_total']} optima in the law, {s['n_sizes']} "
                f"sizes × {s['n_budgets']} budgets; N counted as {s['n_kind']}",
                f"  law: eta* = {law['c']:.4g} * N^{law['alpha']:.4f} * D^{law['beta']:.4f}   "
                f"(R² {law['r2']:.3f}, residual sd of ln eta* {law['residual_std_ln_eta']:.3g})",
                "",
                f"  Recommended peak LR: {_lr(f.eta)}",
                f"    {pct} prediction interval   {_iv(f.prediction_interval)}   (one new optimum: "
                f"law uncertainty + scatter, t with {law['n_points'] - 3} dof)",
                f"    {pct} interval of the law   {_iv(f.mean_interval)}   (OLS, fit uncertainty "
                f"only)"]
        if f.bootstrap_interval is not None:
            out.append(f"    {pct} bootstrap interval    {_iv(f.bootstrap_interval)}   (the law's "
                       f"mean over {law['n_boot_used']} resamples of the optima)")
        rc = f.range
        out += ["", f"  Fitted range: N {rc.N_min:.3g} … {rc.N_max:.3g}, D {rc.D_min:.3g} … "
                    f"{rc.D_max:.3g}"]
        out += [f"    {m}" for m in rc.messages]
        if rc.far:
            out.append(f"    WARNING: far extrapolation, more than {rc.far_factor:g}× outside the "
                       f"fitted range (see the end)")
        c = f.comparison
        out += ["", "  Curved alternative: ln eta* = k + α·u + β·v + γ_N·u² + γ_D·v²  "
                    "(u, v = centred ln N, ln D; arXiv 2606.29158)"]
        if c is None:
            out += [f"    {n}" for n in f.notes]
        else:
            cv = c.curved
            out += [f"    γ_N = {cv.gamma_N:+.4g}, γ_D = {cv.gamma_D:+.4g}  (R² {cv.r2:.3f})"]
            out += [f"    note: {n}" for n in c.notes]
            out += [f"    at the target: {_lr(f.eta_curved)}  {pct} prediction interval "
                    f"{_iv(f.curved_prediction_interval)};  curved / Eq. 6 = "
                    f"{f.curved_over_loglinear:.3g}×"]
            if c.preferred == "undetermined":
                out.append("    which form the data prefer: undetermined (too few sizes for "
                           "leave-one-size-out)")
            else:
                verdict = {"curved": "the data prefer the CURVED law",
                           "log-linear": "the data prefer Eq. 6 (log-linear)",
                           "tie": f"a tie (within {c.tie_tolerance:.0%}): keep Eq. 6, the "
                                  f"simpler law"}[c.preferred]
                out += [f"    leave-one-size-out mean |Δ ln eta|: Eq. 6 {c.loso_loglinear:.3g}, "
                        f"curved {c.loso_curved:.3g} ({c.n_folds} folds); largest size held "
                        f"out: {c.loso_loglinear_largest:.3g} vs {c.loso_curved_largest:.3g}",
                        f"    → {verdict}"]
        if s["n_warnings"]:
            out.append("")
            if verbose and source is not None:
                out.append(f"  {s['n_warnings']} fit warning(s):")
                out += [f"    - {w}" for w in source.warnings]
            else:
                out.append(f"  {s['n_warnings']} fit warning(s) (Eq. 2 edges, Eq. 4 bounds, ...); "
                           f"--verbose lists them")
        out.append("")

    t = rec.transfer
    if t is not None:
        p, g = t.proxy, t.target
        out += [f"Transfer paradigm ({t.parametrization}) from the μP proxy",
                f"  proxy  {p['name']}: d_model {p['d_model']}, {p['n_layers']} layers, "
                f"{p['num_experts']} experts; N active non-embed {p['n_active_nonembed']:.4g}; "
                f"optimal base LR {_lr(t.proxy_lr)}"
                + (f" at D0 = {t.proxy_tokens:.4g} tokens" if t.proxy_tokens else ""),
                f"  target {g['name']}: d_model {g['d_model']}, {g['n_layers']} layers, "
                f"{g['num_experts']} experts; N active non-embed {g['n_active_nonembed']:.4g}; "
                f"width ×{g['d_model'] / p['d_model']:.3g}, "
                f"depth ×{g['n_layers'] / p['n_layers']:.3g}",
                "",
                f"  base LR without the horizon rule: {_lr(t.base_lr_no_horizon)}"]
        if t.base_lr_horizon is not None:
            out.append(f"  base LR with the horizon rule:    {_lr(t.base_lr_horizon)}   "
                       f"(= {_lr(t.proxy_lr)} × ({t.tokens:.4g} / {t.proxy_tokens:.4g})"
                       f"^-{t.horizon_beta:g})")
        else:
            out.append("  horizon rule off (--horizon-beta 0)")
        out += ["", f"  Recommended per-group peak LRs (base {_lr(t.base_lr)} × the "
                    f"parametrization's multiplier; param_table of the target):",
                f"    {'role':<12} {'tensors':>7} {'params':>11} {'lr mult':>9} {'lr':>10} "
                f"{'Adam eps ×':>11} {'wd mult':>8}"]
        for r in t.groups:
            out.append(f"    {r['role']:<12} {r['tensors']:>7} {r['params']:>11,} "
                       f"{r['lr_mult']:>9.4g} {_lr(r['lr']):>10} {r['eps_mult']:>11.4g} "
                       f"{r['wd_mult']:>8.3g}")
        out.append("")

    if rec.transfer_over_fitting is not None:
        out += [f"Both paradigms: Transfer base LR {_lr(rec.transfer.base_lr)} vs Fitting "
                f"{_lr(rec.fitting.eta)}: Transfer / Fitting = {rec.transfer_over_fitting:.3g}×",
                "  (the Fitting LR is one global SP LR; the Transfer LR is μP's base LR, which "
                "the hidden matrices see times their multiplier)", ""]

    pub = rec.published
    ref = pub["reference_point"]
    out += ["Published laws at the target (PAPER.md §4)",
            f"  raw: each law's own constant, not comparable across setups (units of N and D, "
            f"total vs active N,", "  batch size, data and optimizer differ)"]
    if ref:
        out.append(f"  pinned: the law's exponents through our optimum N = {ref['N']:.3g}, "
                   f"D = {ref['D']:.3g}, eta* = {_lr(ref['eta_star'])}")
    out.append(f"    {'law':<32} {'formula':<30} {'raw':>10} {'pinned':>10}")
    for r in pub["laws"]:
        out.append(f"    {r['name']:<32} {r['formula']:<30} {_lr(r['raw']):>10} "
                   f"{_lr(r['pinned']):>10}")
    for r in pub["laws"]:
        if r["pinned_how"] and r["key"] == "bjorck":
            out.append(f"    (Bjorck et al. anchored at {r['pinned_how']})")
    if rec.warnings:
        out += ["", *[f"WARNING: {w}" for w in rec.warnings]]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a usage error is a bad input: exit 2 with a clear message
        raise PredictInputError(f"{message} (see python -m analysis.predict --help)")


def _count(what: str):
    def parse(text: str) -> float:
        try:
            return float(parse_tokens(text))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{what} must be a positive count like 2e9, 2B or 500M, got {text!r}") from None
    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def _level(text: str) -> float:
    v = _positive_float(text)
    if not v < 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), e.g. 0.95, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m analysis.predict", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    fit = p.add_argument_group("Fitting inputs (one of)")
    src = fit.add_mutually_exclusive_group()
    src.add_argument("--sweep", type=Path, metavar="DIR", help="sweep directory with results.jsonl")
    src.add_argument("--fit", type=Path, metavar="FIT_JSON",
                     help="fit.json written by python -m analysis.fit (or its directory)")
    src.add_argument("--csv", type=Path, metavar="CSV",
                     help="plain CSV of a sweep: columns N, D, lr, loss [, parametrization]")
    fit.add_argument("--n-kind", choices=N_KINDS, default=None,
                     help="how N is counted (default n_active_nonembed; a fit.json fixes its own)")
    fit.add_argument("--window", type=int, default=None,
                     help="fit Eq. 2 only on the K LRs nearest the lowest loss (--sweep, --csv)")
    fit.add_argument("--include-edge", action="store_true",
                     help="let edge optima (not bracketed by the LR grid) enter Eq. 6")
    fit.add_argument("--fit-parametrization", default=None, metavar="NAME",
                     help="which rows to fit when a sweep or CSV mixes parametrizations")
    fit.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    fit.add_argument("--allow-mixed", action="store_true",
                     help="fit a sweep's rows from several data fingerprints together")

    tr = p.add_argument_group("Transfer inputs")
    tr.add_argument("--proxy-lr", type=_positive_float, default=None, metavar="LR",
                    help="the μP proxy's optimal base LR")
    tr.add_argument("--proxy-model", default=None, metavar="PRESET",
                    help="the proxy's model preset (configs/model/)")
    tr.add_argument("--proxy-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="overrides of the proxy preset, e.g. d_model=64")
    tr.add_argument("--parametrization", choices=TRANSFER_PARAMETRIZATIONS, default="mup",
                    help="Transfer rule set (configs/parametrization/; default %(default)s)")
    tr.add_argument("--proxy-tokens", type=_count("--proxy-tokens"), default=None, metavar="D0",
                    help="tokens the proxy LR was tuned at (for the horizon rule)")
    tr.add_argument("--horizon-beta", type=float, default=DEFAULT_HORIZON_BETA, metavar="BETA",
                    help="token-horizon exponent, lr × (D/D0)^-β (default %(default)s, the "
                         "paper's D exponent; 0 disables the rule)")

    tg = p.add_argument_group("Target")
    size = tg.add_mutually_exclusive_group()
    size.add_argument("--n", type=_count("--n"), default=None, metavar="N",
                      help="target model size, in the fit's N kind (e.g. 1.2e8, 7B)")
    size.add_argument("--target-model", default=None, metavar="PRESET",
                      help="target model preset (configs/model/); N = its param_counts()[n_kind]")
    tg.add_argument("--target-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="overrides of the target preset, e.g. d_model=256 n_layers=8")
    tg.add_argument("--tokens", type=_count("--tokens"), default=None, metavar="D",
                    help="target training tokens (e.g. 2e9, 2B, 500M)")

    out = p.add_argument_group("Output")
    out.add_argument("--level", type=_level, default=0.95, help="interval level (default 0.95)")
    out.add_argument("--far-factor", type=_positive_float, default=FAR_FACTOR,
                     help="warn loudly beyond this factor outside the fitted range (default 10)")
    out.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write JSON here")
    out.add_argument("--verbose", action="store_true", help="list the fit's warnings")
    return p


def _run(args) -> tuple[Recommendation, FitSource | None]:
    has_fit = any(v is not None for v in (args.sweep, args.fit, args.csv))
    has_transfer = args.proxy_lr is not None
    if not has_fit and not has_transfer:
        raise PredictInputError("give a fit input (--sweep DIR, --fit fit.json or --csv FILE) "
                                "and/or the Transfer inputs (--proxy-lr, --proxy-model, "
                                "--target-model)")
    if args.tokens is None:
        raise PredictInputError("the target needs its training tokens: --tokens D (e.g. 2B)")
    if args.n is None and args.target_model is None:
        raise PredictInputError("the target needs a size: --n N or --target-model PRESET")
    if args.target_set and args.target_model is None:
        raise PredictInputError("--target-set needs --target-model (the preset it overrides)")
    if args.proxy_set and args.proxy_model is None:
        raise PredictInputError("--proxy-set needs --proxy-model (the preset it overrides)")
    if not has_transfer and (args.proxy_model or args.proxy_tokens):
        raise PredictInputError("--proxy-model/--proxy-tokens are Transfer inputs: also pass "
                                "--proxy-lr (the proxy's optimal base LR)")
    if has_transfer and (args.proxy_model is None or args.target_model is None):
        raise PredictInputError("Transfer needs --proxy-model PRESET and --target-model PRESET "
                                "(the μP rules depend on both shapes), besides --proxy-lr")
    if args.window is not None and args.window < 3:
        raise PredictInputError(f"--window {args.window}: Eq. 2 has 3 parameters, use >= 3")
    if args.n_boot < 0:
        raise PredictInputError(f"--n-boot {args.n_boot}: must be >= 0")
    refit_only = [flag for flag, on in (("--window", args.window is not None),
                                        ("--include-edge", args.include_edge),
                                        ("--fit-parametrization", args.fit_parametrization),
                                        ("--allow-mixed", args.allow_mixed)) if on]
    if args.fit is not None and refit_only:
        raise PredictInputError(f"{', '.join(refit_only)} change(s) how optima are fitted, but a "
                                f"fit.json holds its optima already: use --sweep <its directory> "
                                f"to refit")

    fit_kw = dict(window=args.window, include_edge=args.include_edge, n_boot=args.n_boot,
                  seed=args.seed)
    source = None
    if args.sweep is not None:
        source = fit_source_from_sweep(args.sweep, args.n_kind or "n_active_nonembed",
                                       parametrization=args.fit_parametrization,
                                       allow_mixed=args.allow_mixed, **fit_kw)
    elif args.fit is not None:
        source = fit_source_from_fit_json(args.fit, args.n_kind)
    elif args.csv is not None:
        source = fit_source_from_csv(args.csv, parametrization=args.fit_parametrization, **fit_kw)

    target_cfg = None
    if args.target_model is not None:
        target_cfg = load_model_config(args.target_model, args.target_set, flag="--target-model")
    if source is not None and source.n_kind in N_KINDS:
        n_kind = source.n_kind
    else:
        n_kind = args.n_kind or "n_active_nonembed"
    if target_cfg is not None:
        N = float(target_cfg.param_counts()[n_kind])
        target_from = " ".join([args.target_model, *args.target_set])
    else:
        N, target_from = args.n, "--n"
    label = n_kind
    if source is not None and source.kind == "csv":
        label = (CSV_N_KIND if target_cfg is None
                 else f"{n_kind} of the model; the CSV's N must count the same")

    transfer = None
    if has_transfer:
        proxy_cfg = load_model_config(args.proxy_model, args.proxy_set, flag="--proxy-model")
        transfer = recommend_transfer(args.proxy_lr, proxy_cfg, target_cfg, args.tokens,
                                      parametrization=args.parametrization,
                                      proxy_tokens=args.proxy_tokens,
                                      horizon_beta=args.horizon_beta)
    rec = recommend(N, args.tokens, source=source, transfer=transfer, n_kind=label,
                    target_source=target_from, level=args.level, far_factor=args.far_factor)
    return rec, source


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fit problems are collected on the results
            rec, source = _run(args)
    except (PredictInputError, InsufficientDataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(rec, verbose=args.verbose, source=source), end="")
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(rec.to_json(), indent=2, allow_nan=False) + "\n")
        except OSError as err:
            print(f"error: cannot write --json {args.json}: {err}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
