"""End-to-end tests of `python -m analysis.fit` on a synthetic sweep directory, and of
the defensive results.jsonl reader (truncated last line, re-run duplicates, bad rows)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrscale.analysis.fit import main
from lrscale.analysis.results import load_results
from lrscale.analysis.synthetic import SyntheticTruth, synthetic_rows

FIGURES = ("fig1a_loss_vs_tokens.png", "fig1b_loss_vs_lr.png", "fig2_optimal_lr.png",
           "fig7_search_cost.png")
SIZES = (2e6, 6e6, 2e7, 6e7)
BUDGETS = (1e8, 3e8, 9e8)
LR_STEPS = (-2, -1, 0, 1, 2)


def write_sweep(sweep_dir: Path, rows: list[dict], *, truncated_tail: bool = True) -> Path:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows]
    if truncated_tail:  # a writer killed mid-line
        lines.append(json.dumps(rows[0])[:37])
    (sweep_dir / "results.jsonl").write_text("\n".join(lines))
    return sweep_dir


def synthetic_sweep_rows() -> list[dict]:
    rows = synthetic_rows(SIZES, BUDGETS, lr_steps=LR_STEPS, diverge_steps=(5,), seed=0)
    # A job re-run: a stale row for (s0-lr+0, branch 0) written first, the real one later.
    stale = dict(next(r for r in rows if r["run_id"] == "s0-lr+0" and r["branch"] == 0))
    stale["val_loss"] = 99.0
    return [stale, *rows]


@pytest.fixture()
def sweep_dir(tmp_path):
    return write_sweep(tmp_path / "sweep", synthetic_sweep_rows())


def test_cli_writes_fit_json_report_and_figures(sweep_dir, capsys):
    rc = main([str(sweep_dir), "--n-boot", "200", "--hardware", "test CPU",
               "--all-n-kinds", "--extrapolate-tokens", "2.7B"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "Eq. 6" in out.out and "unparseable last line" in out.err

    fit = json.loads((sweep_dir / "fit.json").read_text())
    truth = SyntheticTruth()
    assert fit["n_kind"] == "n_active_nonembed"
    assert abs(fit["law"]["alpha"] - truth.alpha) < 0.03
    assert abs(fit["law"]["beta"] - truth.beta) < 0.03
    assert fit["law"]["alpha_ci"][0] < fit["law"]["alpha"] < fit["law"]["alpha_ci"][1]
    n_ok = len(SIZES) * len(LR_STEPS) * len(BUDGETS)
    assert fit["counts"]["rows"] == {"ok": n_ok, "diverged": len(SIZES) * len(BUDGETS), "failed": 0}
    assert fit["counts"]["runs"]["diverged"] == len(SIZES)
    assert fit["meta"]["n_duplicates_dropped"] == 1
    assert any("unparseable last line" in w for w in fit["meta"]["load_warnings"])
    measured = [o for o in fit["optima"] if o["source"] == "measured"]
    assert len(measured) == len(SIZES) * len(BUDGETS)
    assert all(o["edge"] is None for o in measured)
    assert len([o for o in fit["optima"] if o["source"] == "eq4"]) == len(SIZES)
    assert len(fit["loso"]["per_size"]) == len(SIZES)
    assert fit["loso"]["largest_size_held_out"]["N_held_out"] == max(SIZES)
    cost = fit["search_cost"]
    assert cost["pipeline_runs"] == len(SIZES) * (len(LR_STEPS) + 1)
    assert cost["grid_runs"] == len(SIZES) * (len(LR_STEPS) + 1) * len(BUDGETS)
    assert cost["flops_ratio_grid_over_pipeline"] > 1
    assert fit["published_laws"]["exponents"][0]["law"] == "ours (this sweep)"
    assert set(fit["by_n_kind"]) == {"n_total", "n_active"}
    assert fit["meta"]["hardware"] == "test CPU"

    report = (sweep_dir / "report.md").read_text()
    for needle in ("Scale (read this first)", "Leave-one-size-out", "Search cost", "diverged",
                   "Zhou et al. 2026", "Step Law"):
        assert needle in report
    for name in FIGURES:
        png = (sweep_dir / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    assert not list(sweep_dir.glob(".*tmp*"))  # atomic writes left nothing behind


def test_cli_missing_dir_exits_nonzero(tmp_path, capsys):
    rc = main([str(tmp_path / "nope")])
    assert rc != 0
    assert "does not exist" in capsys.readouterr().err


def test_cli_empty_table_exits_nonzero(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text("")
    assert main([str(tmp_path)]) == 2
    assert "no results" in capsys.readouterr().err


def test_cli_too_few_lrs_exits_nonzero(tmp_path, capsys):
    write_sweep(tmp_path, synthetic_rows(SIZES, BUDGETS, lr_steps=(0, 1)), truncated_tail=False)
    assert main([str(tmp_path)]) == 2
    assert ">= 3 distinct LRs" in capsys.readouterr().err


def test_cli_one_size_writes_partial_report_and_exits_3(tmp_path, capsys):
    write_sweep(tmp_path, synthetic_rows(SIZES[:1], BUDGETS, lr_steps=LR_STEPS),
                truncated_tail=False)
    assert main([str(tmp_path), "--n-boot", "50"]) == 3
    assert "Eq. 6 could not be fitted" in capsys.readouterr().err
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["law"] is None and len(fit["optima"]) == len(BUDGETS)
    assert all((tmp_path / name).stat().st_size > 0 for name in FIGURES)


def test_module_entry_point_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis.fit", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 2 and "does not exist" in proc.stderr


# --- the reader -----------------------------------------------------------------

def test_reader_keeps_last_duplicate_and_skips_truncated_tail(sweep_dir):
    with pytest.warns(UserWarning, match="unparseable last line"):
        df = load_results(sweep_dir)
    row = df[(df["run_id"] == "s0-lr+0") & (df["branch"] == 0)]
    assert len(row) == 1 and row["val_loss"].iloc[0] < 10  # the stale 99.0 was replaced
    assert df.attrs["n_duplicates_dropped"] == 1


def test_reader_raises_on_corrupt_middle_line(tmp_path):
    lines = [json.dumps(r) for r in synthetic_rows(SIZES[:1], BUDGETS, lr_steps=LR_STEPS)]
    lines.insert(3, "{not json")
    (tmp_path / "results.jsonl").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"results.jsonl:4: corrupt line"):
        load_results(tmp_path)


def test_reader_names_missing_columns(tmp_path):
    rows = synthetic_rows(SIZES[:1], BUDGETS, lr_steps=LR_STEPS)
    for r in rows:
        del r["run_flops"], r["data_fingerprint"]
    write_sweep(tmp_path, rows, truncated_tail=False)
    with pytest.raises(ValueError, match=r"\['run_flops', 'data_fingerprint'\]"):
        load_results(tmp_path)


def test_reader_refuses_mixed_data_unless_allowed(tmp_path):
    rows = synthetic_rows(SIZES[:1], BUDGETS, lr_steps=LR_STEPS)
    rows += synthetic_rows(SIZES[1:2], BUDGETS, lr_steps=LR_STEPS, fingerprint="other-data")
    for r in rows[len(rows) // 2:]:
        r["run_id"] += "-b"
    write_sweep(tmp_path, rows, truncated_tail=False)
    with pytest.raises(ValueError, match="mixes 2 data fingerprints"):
        load_results(tmp_path)
    assert load_results(tmp_path, allow_mixed=True).attrs["data_fingerprints"] == [
        "other-data", "synthetic-v1"]
