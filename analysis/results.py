"""Read a sweep's `results.jsonl` into a validated pandas DataFrame.

One line of `results.jsonl` is one measurement: a (run, token budget) pair, i.e. the
validation loss of one WSD decay branch forked from a run's stable phase
(PAPER.md §2, "decay branches"). The sweep runner appends lines as branches finish, so
the file is read defensively:

- a final line cut short by a kill is skipped with a warning; a corrupt line anywhere
  else is an error (it means the file was damaged, not interrupted);
- a (run_id, branch) pair written twice (a job that was re-run) keeps the last row;
- diverged / failed rows are kept: they are data (where the LR is too high) and are
  counted in the report, but only `usable_mask` rows enter the fits.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from lrscale.training.io import read_jsonl
from lrscale.training.results_table import COLUMNS, N_KINDS, RESULTS_FILE, ROW_STATUSES

# The table's schema is the writer's (training/results_table.py); the CSV export sits next to it
# and committed experiment folders often keep only that one (same columns, blank cells for nulls).
RESULTS_CSV = "results.csv"
REQUIRED_COLUMNS = COLUMNS
STATUSES = ROW_STATUSES

_FLOAT_COLUMNS = ("lr", "val_loss", "flops", "run_flops", "wall_time_s")
_INT_COLUMNS = (*N_KINDS, "d_model", "n_layers", "num_experts", "top_k",
                "tokens", "steps", "branch", "batch_tokens", "seed")


def _results_path(sweep_dir_or_file: str | Path) -> Path:
    path = Path(sweep_dir_or_file)
    if path.is_dir():
        path = path / RESULTS_FILE if (path / RESULTS_FILE).is_file() or not (path / RESULTS_CSV).is_file() \
            else path / RESULTS_CSV
    if not path.is_file():
        raise FileNotFoundError(
            f"no results file at {path}: pass a sweep directory containing {RESULTS_FILE} "
            f"(or {RESULTS_CSV}) or the path of a results .jsonl / .csv file")
    return path


def _read_csv(path: Path) -> list[dict]:
    """Rows of a results.csv export; identifiers stay strings, blank cells become None."""
    text_cols = {c: str for c in ("run_id", "config_hash", "model", "parametrization", "status", "error",
                                  "data_fingerprint")}
    df = pd.read_csv(path, dtype=text_cols, keep_default_na=False, na_values={
        c: [""] for c in pd.read_csv(path, nrows=0).columns})
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.to_dict(orient="records")]


def usable_mask(df: pd.DataFrame) -> pd.Series:
    """Rows that enter the fits: status ok and a finite validation loss."""
    return (df["status"] == "ok") & np.isfinite(df["val_loss"].to_numpy(dtype=float))


def load_results(sweep_dir_or_file: str | Path, *, allow_mixed: bool = False) -> pd.DataFrame:
    """Load and validate a sweep's results table (results.jsonl, or its results.csv export).

    Returns one row per (run_id, branch), in file order, with `val_loss` as float
    (NaN for null). A row marked "ok" whose loss is not finite is re-labelled
    "diverged" (with a warning), so that `status` alone tells what enters the fits.

    Raises FileNotFoundError for a missing file, ValueError for a corrupt middle line,
    an empty table, missing columns, unknown status values, or several
    `data_fingerprint` values (unless `allow_mixed=True`: fits across different data
    are not comparable, so mixing must be a deliberate choice).
    """
    path = _results_path(sweep_dir_or_file)
    records = _read_csv(path) if path.suffix == ".csv" else read_jsonl(path, warn_truncated=True)
    if not records:
        raise ValueError(f"{path} holds no results yet: wait for the sweep to write rows")
    df = pd.DataFrame.from_records(records)

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks required column(s) {missing}; the sweep runner must "
                         f"write every column of analysis.results.REQUIRED_COLUMNS")

    unknown = sorted(set(df["status"].astype(str)) - set(STATUSES))
    if unknown:
        raise ValueError(f"{path}: unknown status value(s) {unknown}; expected one of {STATUSES}")

    for col in _FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in _INT_COLUMNS:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            bad = df.loc[values.isna(), "run_id"].tolist()[:5]
            raise ValueError(f"{path}: column {col!r} has missing/non-numeric values "
                             f"(runs {bad}); it must be an integer on every row")
        df[col] = values.astype(np.int64)

    # A re-run job writes its rows again: the last write wins.
    n_before = len(df)
    df = df.drop_duplicates(subset=["run_id", "branch"], keep="last").reset_index(drop=True)
    df.attrs["n_duplicates_dropped"] = n_before - len(df)

    fingerprints = sorted(df["data_fingerprint"].dropna().astype(str).unique())
    if len(fingerprints) > 1 and not allow_mixed:
        counts = df["data_fingerprint"].value_counts().to_dict()
        raise ValueError(f"{path} mixes {len(fingerprints)} data fingerprints {counts}; "
                         f"fits across different data are not comparable. Split the sweep, "
                         f"or pass allow_mixed=True (--allow-mixed) to fit them together")
    df.attrs["data_fingerprints"] = fingerprints

    silent_nan = (df["status"] == "ok") & ~np.isfinite(df["val_loss"].to_numpy())
    if silent_nan.any():
        warnings.warn(f"{int(silent_nan.sum())} row(s) have status 'ok' but a non-finite "
                      f"val_loss; counting them as diverged", stacklevel=2)
        df.loc[silent_nan, "status"] = "diverged"
    df.attrs["source"] = str(path)
    return df


def status_counts(df: pd.DataFrame) -> dict:
    """ok / diverged / failed counts over rows (measurements) and over runs.

    A run counts as ok if all its rows are ok, else by its worst row (failed > diverged).
    """
    rows = {s: int((df["status"] == s).sum()) for s in STATUSES}
    rank = {"ok": 0, "diverged": 1, "failed": 2}
    worst = df.groupby("run_id")["status"].agg(lambda s: max(s, key=rank.__getitem__))
    runs = {s: int((worst == s).sum()) for s in STATUSES}
    return {"rows": rows, "runs": runs}
