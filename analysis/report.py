"""Write a sweep's fit results next to its data: fit.json, report.md and the figures.

fit.json is the machine-readable record (other tools and the paper-comparison tables
read it); report.md is what a person reads first. Both are written atomically (temp
file + os.replace) so a reader never sees a half-written file while a sweep refits.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from lrscale.analysis.fitting import SweepFit, summarize_loso
from lrscale.training.io import jsonable
from lrscale.analysis.laws import choose_reference_point, compare_exponents

FIT_JSON = "fit.json"
REPORT_MD = "report.md"

# The paper's largest run (PAPER.md §1): ~12B total / 1.3B activated parameters, 500B tokens.
PAPER_SCALE = {"n_total": 12e9, "n_active": 1.3e9, "tokens": 500e9}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _g(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}g}"


def _ci(ci) -> str:
    if ci is None:
        return ""
    return f"[{_g(ci[0])}, {_g(ci[1])}]"


def _in_ci(inside: bool | None) -> str:
    return "" if inside is None else (" (in our CI)" if inside else " (outside our CI)")


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _published_section(sf: SweepFit) -> dict | None:
    """Exponent comparison and the reference point used to pin rescaled laws."""
    if sf.law is None:
        return None
    table = compare_exponents(sf.law)
    used = sf.law_points()
    N_ref, D_ref, eta_ref = choose_reference_point(used["N"], used["D"], used["eta_star"])
    return {"reference_point": {"N": N_ref, "D": D_ref, "eta_star": eta_ref},
            "exponents": table.to_dict(orient="records"),
            "note": "constants are not comparable (units of N and D, batch size, data differ); "
                    "compare exponents. Step Law's D exponent assumes its own batch schedule."}


def _kind_summary(sf: SweepFit) -> dict:
    law = sf.law
    loso = None
    if sf.loso is not None and len(sf.loso):
        loso = float(sf.loso["rel_err_eta"].abs().mean())
    return {"alpha": law.alpha if law else None, "alpha_ci": list(law.alpha_ci) if law else None,
            "beta": law.beta if law else None, "beta_ci": list(law.beta_ci) if law else None,
            "c": law.c if law else None, "r2": law.r2 if law else None,
            "loso_mean_abs_rel_err_eta": loso}


def _scale_note(sf: SweepFit, hardware: str) -> str:
    s = sf.scale()
    paper_n = PAPER_SCALE["n_total"] if sf.n_kind == "n_total" else PAPER_SCALE["n_active"]
    return (f"These fits use {s['n_sizes']} model sizes with N ({sf.n_kind}) from "
            f"{_g(s['N_min'], 3)} "
            f"to {_g(s['N_max'], 3)} and budgets D from {_g(s['D_min'], 3)} to {_g(s['D_max'], 3)} "
            f"tokens, on {hardware}. The paper's largest run has about 12B total / 1.3B active "
            f"parameters and 500B tokens: our largest N is {paper_n / s['N_max']:.3g}× smaller "
            f"and our longest D {PAPER_SCALE['tokens'] / s['D_max']:.3g}× shorter. Exponents "
            f"fitted over this range are a small-scale measurement; whether they hold at the "
            f"paper's scale is not tested here.")


def build_fit_json(sf: SweepFit, meta: dict, other_kinds: dict | None = None) -> dict:
    out = sf.to_json()
    out["meta"] = meta
    out["published_laws"] = _published_section(sf)
    if other_kinds:
        out["by_n_kind"] = {k: _kind_summary(v) for k, v in other_kinds.items()}
    return jsonable(out)


def _report_md(sweep_dir: Path, sf: SweepFit, meta: dict, other_kinds: dict | None,
               figures: dict) -> str:
    hardware = meta.get("hardware", "unknown")
    c = sf.counts
    fp = ", ".join(sf.data_fingerprints) or "none recorded"
    out = [f"# Learning-rate law fit: `{sweep_dir.name}`", "",
           f"Fitting paradigm of arXiv 2601.05049 (Eq. 2 → Eq. 4 → Eq. 6), "
           f"{sf.parametrization.upper()}, N counted as `{sf.n_kind}`. "
           f"Data fingerprint: `{fp}`. Hardware: {hardware}. "
           f"Written {meta.get('created', '')}.", ""]
    if meta.get("command"):
        out += [f"Command: `{meta['command']}`", ""]
    out += ["## Scale (read this first)", "", _scale_note(sf, hardware), ""]

    out += ["## Runs", "", _table(["status", "measurements (rows)", "runs"],
            [[s, c["rows"][s], c["runs"][s]] for s in ("ok", "diverged", "failed")]), "",
            f"{c['rows_used']} rows entered the fits; diverged/failed rows are excluded and "
            f"shown as × in Fig. 1b.", ""]

    out += ["## Eq. 6: η* = c · N^α · D^β", ""]
    law = sf.law
    if law is None:
        out += ["Not fitted: too few usable optima (see Warnings).", ""]
    else:
        out += [_table(["constant", "value", f"{law.ci_level:.0%} bootstrap CI", "OLS s.e."],
                       [["c", _g(law.c), _ci(law.c_ci), f"{_g(law.se['ln_c'])} (in ln c)"],
                        ["α (N exponent)", _g(law.alpha), _ci(law.alpha_ci), _g(law.se["alpha"])],
                        ["β (D exponent)", _g(law.beta), _ci(law.beta_ci), _g(law.se["beta"])]]),
                "", f"R² (log space) = {_g(law.r2)} over {law.n_points} optima; residual std "
                f"of ln η* = {_g(law.residual_std_ln)}; bootstrap: {law.n_boot_used}/{law.n_boot} "
                f"resamples of the points, seed {law.seed}. The paper: c = 38.4588, "
                f"α = −0.2219, β = −0.3509, R² ≈ 0.962.", ""]
        ref = _published_section(sf)["reference_point"]
        out += ["### Exponents vs published laws", "",
                "Constants are not comparable across setups (units of N and D, batch size, "
                "data); compare exponents. Fig. 2 draws each law rescaled to pass through our "
                f"measured optimum nearest the data centre: N = {_g(ref['N'], 3)}, "
                f"D = {_g(ref['D'], 3)}, η* = {_g(ref['eta_star'], 3)}.", ""]
        rows = []
        for r in compare_exponents(law).to_dict(orient="records"):
            rows.append([r["law"], r["formula"], _g(r["alpha_N"]) + _in_ci(r["alpha_in_our_ci"]),
                         _g(r["beta_D"]) + _in_ci(r["beta_in_our_ci"]), r["assumptions"]])
        out += [_table(["law", "form", "α (N)", "β (D)", "assumptions"], rows), ""]

        out += ["### Leave-one-size-out prediction error", ""]
        if sf.loso is not None and len(sf.loso):
            rows = [[_g(r["N_held_out"], 3), r["n_points"], f"{r['mean_abs_rel_err_eta']:.1%}",
                     f"{r['max_abs_rel_err_eta']:.1%}", _g(r["mean_abs_err_ln_eta"], 3)]
                    for r in summarize_loso(sf.loso)]
            out += [_table(["held-out N", "points", "mean abs. rel. error of η",
                            "max abs. rel. error of η", "mean abs. error of ln η"], rows), "",
                    "The largest held-out size is the extrapolation the Fitting paradigm is "
                    "for.", ""]
        else:
            out += ["Not computed (needs >= 3 model sizes).", ""]

    if other_kinds:
        out += ["### Other ways of counting N", ""]
        rows = []
        for kind, other in other_kinds.items():
            s = _kind_summary(other)
            loso = s["loso_mean_abs_rel_err_eta"]
            rows.append([kind, _g(s["alpha"]), _ci(s["alpha_ci"]), _g(s["beta"]),
                         _ci(s["beta_ci"]), _g(s["r2"]), "n/a" if loso is None else f"{loso:.1%}"])
        out += [_table(["N kind", "α", "α CI", "β", "β CI", "R²", "LOSO mean abs. rel. error of η"],
                       rows), ""]

    out += ["## Optima (Eq. 2 per (N, D))", ""]
    rows = []
    for r in sf.optima.to_dict(orient="records"):
        rows.append([r["model"], _g(r["N"], 3), _g(r["D"], 3), r["source"], _g(r["eta_star"]),
                     f"[{_g(r['eta_ci_lo'], 3)}, {_g(r['eta_ci_hi'], 3)}]", _g(r["loss_min"]),
                     _g(r["C"], 3), _g(r["r2"], 3), r["n_lrs"], r["n_diverged"],
                     r["edge"] or "", ", ".join(_g(v, 3) for v in r["suggest_lrs"]),
                     "yes" if r["used_in_law"] else "no"])
    out += [_table(["model", "N", "D", "source", "η*", "CI", "L_min", "C", "R²", "LRs",
                    "diverged", "edge", "add LRs", "in law"], rows), "",
            "CI: delta method on the quadratic's coefficients (n/a with exactly 3 LRs). "
            "source eq4: losses predicted by Eq. 4 at a horizon not trained.", ""]

    cost = sf.search_cost
    out += ["## Search cost (Fig. 7)", "",
            _table(["", "runs", "training FLOPs"],
                   [["full grid (a run per (N, η, D))", cost.grid_runs, _g(cost.grid_flops)],
                    ["pipeline (decay branches)", cost.pipeline_runs, _g(cost.pipeline_flops)],
                    ["grid / pipeline", f"{cost.runs_ratio:.2f}×", f"{cost.flops_ratio:.2f}×"]]),
            "", "Both measure the same (N, η, D) points, so prediction error is equal by "
            "construction, up to a decay branch standing in for a separately trained run.", ""]

    warn = list(meta.get("load_warnings", [])) + list(sf.warnings)
    out += ["## Warnings", ""]
    out += [f"- {w}" for w in warn] if warn else ["None."]
    out += ["", "## Figures", ""]
    out += [f"![{name}]({name})" for name in figures]
    return "\n".join(out) + "\n"


def write_report(sweep_dir, sweep_fit: SweepFit, meta: dict | None = None, *,
                 other_kinds: dict | None = None) -> dict[str, Path]:
    """Write fit.json, report.md and the four figures into sweep_dir.

    meta: free-form facts to record, e.g. {"hardware": "1×H100", "command": "..."};
    "hardware" is printed on every figure. other_kinds: {n_kind: SweepFit} fitted with
    other ways of counting N, summarized in a table. Returns name -> path.
    """
    from lrscale.analysis.plots import plot_all  # matplotlib only when figures are drawn

    sweep_dir = Path(sweep_dir)
    meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hardware": "unknown", **(meta or {})}
    figures = plot_all(sweep_fit, sweep_dir, hardware=meta["hardware"])
    fit_json = sweep_dir / FIT_JSON
    _atomic_write_text(fit_json, json.dumps(build_fit_json(sweep_fit, meta, other_kinds),
                                            indent=2, allow_nan=False) + "\n")
    report = sweep_dir / REPORT_MD
    _atomic_write_text(report, _report_md(sweep_dir, sweep_fit, meta, other_kinds, figures))
    return {FIT_JSON: fit_json, REPORT_MD: report, **figures}


def fit_and_report(sweep_dir, *, hardware: str = "unknown", n_kind: str = "n_active_nonembed",
                   all_n_kinds: bool = True, command: str = "", load_warnings: list[str] | None = None,
                   **fit_kwargs) -> tuple[SweepFit, dict[str, Path]]:
    """Load a sweep's table, fit it (Eq. 2 -> Eq. 4 -> Eq. 6, `fit_sweep`'s keyword arguments)
    with `n_kind` and, with `all_n_kinds`, the other two ways of counting N too, and write
    fit.json, report.md and the figures. Raises what `load_results` / `fit_sweep` raise."""
    from lrscale.analysis.fitting import fit_sweep
    from lrscale.analysis.results import N_KINDS, load_results

    df = load_results(sweep_dir, allow_mixed=fit_kwargs.pop("allow_mixed", False))
    sf = fit_sweep(df, n_kind, **fit_kwargs)
    others = {k: fit_sweep(df, k, **fit_kwargs) for k in N_KINDS if k != n_kind} if all_n_kinds else {}
    meta = {"hardware": hardware, "command": command or f"python -m analysis.fit {sweep_dir}",
            "n_duplicates_dropped": int(df.attrs.get("n_duplicates_dropped", 0)),
            "load_warnings": list(load_warnings or [])}
    return sf, write_report(sweep_dir, sf, meta, other_kinds=others or None)
