"""Which runs belong together in a transfer study: each run's config values (any dotted key,
e.g. `model.moe.d_expert` or `optim.weight_decay_mode`), its variant label and its size on the
study's axis, joined to the sweep's results table.

Two kinds of source, read the same way:
- a sweep directory: results.jsonl plus `runs/<run_id>/config.yaml` (the resolved config);
- a committed experiment folder: results.csv (or .jsonl) plus `run_config.csv`, the small table
  `write_run_configs` extracts (run_id, then one column per dotted key). The run directories are
  not committed, so every config value an analysis needs must be in that table.
Older committed folders (2026-11-22) have neither; their `transfer.json` lists each run's variant,
which is used as a last resort.

    df = load_runs("sweeps/transfer_granularity", axis="model.moe.d_expert")
    df = load_runs(study, axis="d_model", variant_keys=["optim.weight_decay_mode"], tokens="all")
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from lrscale.analysis.results import load_results

RUN_CONFIG_FILE = "run_config.csv"

# Axes read straight from results columns (no config needed); any other axis is a dotted config key.
RESULT_AXES = {"d_model": "width (d_model)", "n_layers": "depth (n_layers)",
               "num_experts": "experts (num_experts)", "top_k": "top-k", "tokens": "horizon (tokens D)"}

# The depth rule is part of a variant's name: residual branches x (L0/L)^alpha (PAPER.md Sec. 3).
DEPTH_KEY = "parametrization.depth_alpha"
_DEPTH_RULES = {1.0: "CompleteP depth", 0.5: "Depth-muP"}  # arXiv 2505.01618, arXiv 2310.02244


def axis_label(axis: str) -> str:
    return RESULT_AXES.get(axis, axis)


def check_axis(axis: str) -> None:
    if axis not in RESULT_AXES and "." not in axis:
        raise ValueError(f"axis {axis!r} is unknown; valid: {', '.join(RESULT_AXES)}, or any dotted config "
                         f"key of the runs' config.yaml (e.g. model.moe.d_expert, optim.weight_decay)")


def _select(cfg, key: str):
    from omegaconf import OmegaConf
    value = OmegaConf.select(cfg, key, default=None)
    if value is not None and not isinstance(value, (int, float, str, bool)):
        value = str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    return value


def read_run_configs(source: str | Path, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
    """One row per run id, one column per dotted key (None where a run's config lacks it).

    Values come from `runs/<run_id>/config.yaml` when the run directory exists, else from the
    source's `run_config.csv`. `.attrs["missing"]` lists the runs found in neither."""
    from omegaconf import OmegaConf

    source, keys, run_ids = Path(source), list(dict.fromkeys(keys)), list(dict.fromkeys(run_ids))
    table = pd.DataFrame()
    csv = source / RUN_CONFIG_FILE if source.is_dir() else source.with_name(RUN_CONFIG_FILE)
    if csv.is_file():
        table = pd.read_csv(csv, dtype={"run_id": str}, keep_default_na=False, na_values=[""]).set_index("run_id")
    rows, missing = [], []
    for run_id in run_ids:
        cfg_path = (source if source.is_dir() else source.parent) / "runs" / run_id / "config.yaml"
        if cfg_path.is_file():
            cfg = OmegaConf.load(cfg_path)
            rows.append({"run_id": run_id, **{k: _select(cfg, k) for k in keys}})
        elif run_id in table.index:
            rec = table.loc[run_id]
            rows.append({"run_id": run_id, **{k: _plain(rec[k]) if k in table.columns else None for k in keys}})
        else:
            missing.append(run_id)
            rows.append({"run_id": run_id, **{k: None for k in keys}})
    out = pd.DataFrame(rows, columns=["run_id", *keys])
    out.attrs["missing"] = missing
    return out


def _plain(v):
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def write_run_configs(source: str | Path, run_ids: Iterable[str], keys: Iterable[str], out: str | Path) -> Path:
    """Write `run_config.csv` (run_id + one column per dotted key) into folder `out`, so that an
    experiment folder without run directories still answers `read_run_configs`."""
    table = read_run_configs(source, run_ids, keys)
    path = Path(out) / RUN_CONFIG_FILE
    table.to_csv(path, index=False)
    return path


def export_study_tables(sweep_dir: str | Path, out: str | Path, run_ids: Iterable[str],
                        keys: Iterable[str]) -> list[str]:
    """What an experiment folder needs to be re-analysed without run directories: run_config.csv,
    and a copy of the sweep's results table (results.csv, else results.jsonl) when `out` is
    another folder. Returns the file names written. Does nothing for a source without runs/."""
    import shutil

    from lrscale.analysis.results import RESULTS_CSV, RESULTS_FILE
    sweep_dir, out = Path(sweep_dir), Path(out)
    if not (sweep_dir / "runs").is_dir():
        return []
    written = [write_run_configs(sweep_dir, run_ids, keys, out).name]
    if out.resolve() != sweep_dir.resolve():
        for name in (RESULTS_CSV, RESULTS_FILE):
            if (sweep_dir / name).is_file():
                shutil.copyfile(sweep_dir / name, out / name)
                written.append(name)
                break
    return written


def merge_study_tables(sources: Iterable[str | Path], out: str | Path, run_ids: Iterable[str],
                       keys: Iterable[str]) -> list[str]:
    """Several sweeps (or committed folders) analysed as one study: the rows of `run_ids` from every
    source's results table into `out`/results.csv, and their config values into `out`/run_config.csv,
    so that `out` alone answers `load_runs` afterwards. A run found in two sources is kept once."""
    from lrscale.analysis.results import RESULTS_CSV
    from lrscale.training.io import write_text

    out, wanted = Path(out), set(run_ids)
    results, configs, seen = [], [], set()
    for source in sources:
        rows = load_results(source)
        rows = rows[rows["run_id"].isin(wanted - seen)]
        ids = list(dict.fromkeys(rows["run_id"]))
        results.append(rows)
        configs.append(read_run_configs(source, ids, keys))
        seen.update(ids)
    table = pd.concat(results, ignore_index=True)
    data = sorted(set(table["data_fingerprint"].dropna()))
    if len(data) > 1:
        raise ValueError(f"the sweeps were trained on different data (fingerprints {data}): fits across them are "
                         "not comparable; merge only sweeps of one corpus")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / RESULTS_CSV, table.to_csv(index=False))
    write_text(out / RUN_CONFIG_FILE, pd.concat(configs, ignore_index=True).to_csv(index=False))
    return [RESULTS_CSV, RUN_CONFIG_FILE]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt_value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def variant_label(parametrization: str, depth_alpha=None, extra: dict | None = None) -> str:
    """`mup`, `mup + CompleteP depth`, `sp, depth_alpha=0.25`, `mup, weight_decay_mode=coupled, ...`:
    the parametrization name, its depth rule when one is on, then each extra key's short name=value."""
    label = str(parametrization)
    alpha = 0.0 if depth_alpha is None or (isinstance(depth_alpha, float) and math.isnan(depth_alpha)) \
        else float(depth_alpha)
    if alpha:
        label = f"{label} + {_DEPTH_RULES[alpha]}" if alpha in _DEPTH_RULES else f"{label}, depth_alpha={alpha:g}"
    for key, value in (extra or {}).items():
        label += f", {_short(key)}={_fmt_value(value)}"
    return label


def _legacy_variants(source: Path) -> dict[str, str]:
    """run_id -> variant from a 2026-11-22 folder's transfer.json (no configs were committed then)."""
    path = (source if source.is_dir() else source.parent) / "transfer.json"
    if not path.is_file():
        return {}
    return {r["run_id"]: r["variant"] for r in json.loads(path.read_text()).get("runs", []) if "variant" in r}


def _numeric(values: pd.Series, what: str) -> pd.Series:
    num = pd.to_numeric(values, errors="coerce")
    if num.isna().any():
        raise ValueError(f"{what} is not numeric for every run (e.g. {values[num.isna()].iloc[0]!r}); "
                         f"an axis must be a number")
    return num.astype(np.int64) if np.all(num == np.round(num)) else num.astype(float)


def load_runs(source: str | Path, axis: str = "d_model", *, variant_keys: Iterable[str] = (),
              config_keys: Iterable[str] = (), tokens: str | int = "last") -> pd.DataFrame:
    """The study table: results rows (failed runs dropped) with `variant`, `size` (the axis value)
    and one column per requested dotted config key.

    tokens: "last" keeps each run's last measured budget (one row per run: figure 3), "all" keeps
    every (run, budget) row (decay branches: horizon and weight-decay analyses), an integer keeps
    the rows at that budget. With axis="tokens" every budget is kept.
    """
    check_axis(axis)
    source = Path(source)
    df = load_results(source)
    df = df[df["status"] != "failed"]
    if axis == "tokens" or tokens == "all":
        pass
    elif tokens == "last":
        df = df.sort_values("steps", kind="stable").groupby("run_id", as_index=False).tail(1)
    else:
        df = df[df["tokens"] == int(tokens)]
        if df.empty:
            budgets = sorted(load_results(source)["tokens"].unique())
            raise ValueError(f"no rows at tokens={tokens}; the budgets are {budgets}")
    variant_keys = list(variant_keys)
    keys = [DEPTH_KEY, *variant_keys, *config_keys]
    if axis not in RESULT_AXES:
        keys.append(axis)
    cfg = read_run_configs(source, df["run_id"], keys).set_index("run_id")
    legacy = _legacy_variants(source) if cfg.attrs["missing"] else {}
    df = df.join(cfg[[k for k in dict.fromkeys(keys) if k not in df.columns]], on="run_id")
    df["variant"] = [legacy[r] if r in legacy and r in cfg.attrs["missing"] else
                     variant_label(p, a, {k: rec[k] for k in variant_keys})
                     for r, p, a, rec in zip(df["run_id"], df["parametrization"], df[DEPTH_KEY],
                                             df[variant_keys].to_dict("records") if variant_keys
                                             else [{}] * len(df))]
    if cfg.attrs["missing"] and (axis not in RESULT_AXES or (variant_keys and not legacy)):
        raise ValueError(f"{len(cfg.attrs['missing'])} run(s) have no config.yaml and no row in "
                         f"{RUN_CONFIG_FILE} (e.g. {cfg.attrs['missing'][0]}); the variant keys / axis need "
                         f"them: commit {RUN_CONFIG_FILE} with the experiment (analysis.run_configs.write_run_configs)")
    df["size"] = _numeric(df[axis], f"axis {axis!r}")
    return df.reset_index(drop=True)
