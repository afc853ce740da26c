"""Fit the learning-rate law of a finished (or running) sweep and write its report.

    python -m analysis.fit sweeps/fitting_sp --hardware "1×H100 80GB"
    python -m analysis.fit sweeps/fitting_sp --all-n-kinds --extrapolate-tokens 2B 4B

Reads <sweep_dir>/results.jsonl; writes fit.json, report.md and the figures
fig1a_loss_vs_tokens.png, fig1b_loss_vs_lr.png, fig2_optimal_lr.png,
fig7_search_cost.png into the same directory.

Exit status: 0 on success; 2 when nothing could be fitted (missing directory, empty or
invalid table, no Eq. 2 fit); 3 when Eq. 6 could not be fitted (too few optima), in
which case the partial report (optima, figures 1 and 7) is still written.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

from lrscale.analysis.fitting import InsufficientDataError
from lrscale.analysis.report import fit_and_report
from lrscale.analysis.results import N_KINDS, load_results

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_tokens(text: str) -> int:
    """'2e9', '2000000000', '2B', '500M' -> int tokens."""
    t = text.strip().lower()
    mult = _SUFFIX.get(t[-1:], None)
    try:
        value = float(t[:-1]) * mult if mult else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a token count: {text!r} (e.g. 2e9 or 2B)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"token count must be positive: {text!r}")
    return int(round(value))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.fit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path, help="directory holding results.jsonl")
    p.add_argument("--n-kind", choices=N_KINDS, default="n_active_nonembed",
                   help="how N is counted for the main fit (default: %(default)s)")
    p.add_argument("--all-n-kinds", action="store_true",
                   help="also fit with the other two N kinds and tabulate them")
    p.add_argument("--extrapolate-tokens", nargs="+", type=parse_tokens, default=None,
                   metavar="D", help="horizons (e.g. 2B 4e9) at which Eq. 4 predictions add "
                                     "η* points to Eq. 6")
    p.add_argument("--window", type=int, default=None,
                   help="fit Eq. 2 only on the K LRs nearest the lowest loss")
    p.add_argument("--include-edge", action="store_true",
                   help="let edge optima (not bracketed by the LR grid) enter Eq. 6")
    p.add_argument("--parametrization", choices=("sp", "mup"), default=None,
                   help="which rows to fit when the table holds both")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for Eq. 6 CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--hardware", default="not recorded (pass --hardware)",
                   help="hardware string printed on every figure")
    p.add_argument("--allow-mixed", action="store_true",
                   help="fit rows from several data fingerprints together")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.sweep_dir.is_dir():
        return _fail(f"sweep directory {args.sweep_dir} does not exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = load_results(args.sweep_dir, allow_mixed=args.allow_mixed)
        except (FileNotFoundError, ValueError) as err:
            return _fail(str(err))
    load_warnings = [str(w.message) for w in caught]
    for msg in load_warnings:
        print(f"warning: {msg}", file=sys.stderr)

    kwargs = dict(extrapolate_tokens=args.extrapolate_tokens, window=args.window,
                  include_edge=args.include_edge, parametrization=args.parametrization,
                  n_boot=args.n_boot, seed=args.seed)
    argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        sf, paths = fit_and_report(args.sweep_dir, hardware=args.hardware, n_kind=args.n_kind,
                                   all_n_kinds=args.all_n_kinds, command=f"python -m analysis.fit {argv_text}",
                                   load_warnings=load_warnings, allow_mixed=args.allow_mixed, **kwargs)
    except (InsufficientDataError, ValueError) as err:
        return _fail(f"cannot fit {args.sweep_dir}: {err}")

    c = sf.counts["rows"]
    print(f"{len(df)} rows: {c['ok']} ok, {c['diverged']} diverged, {c['failed']} failed; "
          f"{len(sf.optima)} optima, {len(sf.warnings)} warning(s)")
    if sf.law is None:
        return _fail(f"Eq. 6 could not be fitted (too few optima); partial report written to "
                     f"{paths['report.md']}", code=3)
    law = sf.law
    print(f"Eq. 6 ({sf.n_kind}): eta* = {law.c:.4g} * N^{law.alpha:.4f} * D^{law.beta:.4f}  "
          f"alpha CI [{law.alpha_ci[0]:.4f}, {law.alpha_ci[1]:.4f}], "
          f"beta CI [{law.beta_ci[0]:.4f}, {law.beta_ci[1]:.4f}], R2 {law.r2:.4f}")
    print(f"wrote {paths['fit.json']}, {paths['report.md']} and {len(paths) - 2} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
