"""The transfer analysis (analysis/transfer.py) on a synthetic sweep whose optima are known:
SP's optimum halves per width doubling, muP's stays put; diverged runs are kept as data."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lrscale.analysis.transfer import load_transfer, main, optima, write_transfer

LRS = [1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2]


def fake_sweep(sweep_dir):
    rows = []
    for name in ("sp", "mup"):
        for size in (32, 64, 128):
            eta = 1e-2 * (32 / size if name == "sp" else 1.0)   # the optimum this table hides
            for lr in LRS:
                loss = 4.0 + 0.1 * (math.log(lr) - math.log(eta)) ** 2
                status = "diverged" if (name == "sp" and size == 128 and lr == LRS[-1]) else "ok"
                run_id = f"{name}-{size}-{lr:g}"
                rows.append({"run_id": run_id, "config_hash": run_id, "status": status, "model": f"w{size}",
                             "parametrization": name, "n_total": size * 1000, "n_active": size * 900,
                             "n_active_nonembed": size * 500, "d_model": size, "n_layers": 2, "num_experts": 4,
                             "top_k": 2, "lr": lr, "tokens": 1000, "steps": 10, "branch": 0,
                             "val_loss": loss if status == "ok" else None, "flops": 1.0, "run_flops": 1.0,
                             "wall_time_s": 1.0, "batch_tokens": 100, "seed": 0, "error": None,
                             "data_fingerprint": "fp"})
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sweep_dir


def test_optima_and_drift_recover_the_hidden_optimum(tmp_path):
    df = load_transfer(fake_sweep(tmp_path / "sweep"), axis="d_model")
    assert len(df) == 36 and (df["status"] == "diverged").sum() == 1
    opt = optima(df).set_index(["variant", "size"])
    for size, drift in ((32, 0.0), (64, -1.0), (128, -2.0)):
        assert opt.loc[("sp", size), "drift_eta_star_log2"] == pytest.approx(drift, abs=1e-6)
        assert opt.loc[("sp", size), "drift_best_lr_log2"] == pytest.approx(drift)
        assert opt.loc[("mup", size), "drift_eta_star_log2"] == pytest.approx(0.0, abs=1e-6)
        assert opt.loc[("mup", size), "eta_star"] == pytest.approx(1e-2, rel=1e-6)
    assert opt.loc[("sp", 128), "n_diverged"] == 1


def test_write_transfer_outputs_and_cli(tmp_path, capsys):
    sweep = fake_sweep(tmp_path / "sweep")
    s = write_transfer(sweep, tmp_path / "out", hardware="test")
    for f in ("transfer.png", "transfer.csv", "transfer.md", "transfer.json", "stability.csv"):
        assert (tmp_path / "out" / f).exists(), f
    assert s["n_runs"] == 36 and "hardware: test" in s["caption"]
    assert "| sp | 128 |" in (tmp_path / "out" / "transfer.md").read_text()
    assert main([str(sweep), "--out", str(tmp_path / "cli")]) == 0
    assert "drift log2" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert np.isfinite(json.loads((tmp_path / "out" / "transfer.json").read_text())["optima"][0]["best_lr"])
