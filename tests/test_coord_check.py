"""The coordinate check (analysis/coord_check.py) on tiny models: muP stays flat in width and
SP does not, on an MoE; depth rules (alpha = 1) keep the residual stream bounded in depth and
no depth rules do not; the CLI writes its table and figure. A few seconds each on one core."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lrscale.analysis.coord_check import CoordCheckConfig, main, run_coord_check, slope, spectral_norm

TINY = dict(model="moe", widths=[32, 64, 128], steps=4, batch_size=2, seq_len=16, vocab_size=64, seeds=[0, 1, 2])


def test_slope_of_power_laws():
    sizes = [32, 64, 128, 256]
    assert slope(sizes, [3 * s ** 0.5 for s in sizes]) == pytest.approx(0.5)
    assert slope(sizes, [7.0] * 4) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(slope(sizes, [1.0, 0.0, 1.0, 1.0]))


def test_spectral_norm_matches_svd():
    w = torch.randn(3, 24, 40, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(spectral_norm(w), torch.linalg.matrix_norm(w.double(), ord=2), rtol=1e-3, atol=0)


def test_mup_is_flat_and_sp_grows_with_width_on_a_tiny_moe():
    cc = CoordCheckConfig(parametrizations=["sp", "mup"], **TINY)
    result, act_rows, weight_rows = run_coord_check(cc)
    mup, sp = result["mup"], result["sp"]
    assert mup["pass"] and mup["expected_pass"]
    assert not sp["pass"] and not sp["expected_pass"]
    # SP: every hidden module's features move more at every doubling (TP-V: ~ m per layer).
    hidden = [k for k in sp["modules"] if k.startswith("block") or k.startswith("attn_logits") or k == "logits"]
    assert hidden and all(sp["modules"][k]["slope_update_rms"] > 0.5 for k in hidden)
    assert all(-cc.tol_below <= m["slope_update_rms"] <= cc.tol for k, m in mup["modules"].items()
               if not k.startswith("attn_logits"))
    assert all(m["slope_update_rms"] <= cc.tol for m in mup["modules"].values())
    # Both parametrizations are the same model at base width: identical first rows.
    base = [(r["module"], r["act_rms"]) for r in act_rows if r["size"] == 32 and r["seed"] == 0 and r["step"] == 4]
    assert base[: len(base) // 2] == base[len(base) // 2:]
    # The spectral relative update of hidden matrices: flat-ish under muP, growing under SP.
    assert mup["roles"]["expert_in"]["slope_rel_spec"] < 0.25 < sp["roles"]["expert_in"]["slope_rel_spec"]
    assert {r["role"] for r in weight_rows} >= {"expert_in", "expert_out", "router", "attn_qkv"}


def test_depth_rules_keep_the_residual_stream_bounded():
    cc = CoordCheckConfig(parametrizations=["mup"], depths=[2, 4, 8], width=32, depth_alphas=[0.0, 1.0],
                          **{k: v for k, v in TINY.items() if k != "widths"})
    result, _, _ = run_coord_check(cc)
    completep, plain = result["mup, depth_alpha=1"], result["mup, depth_alpha=0"]
    assert completep["pass"] and not plain["pass"]
    assert completep["modules"]["residual"]["slope_update_rms"] <= cc.tol
    assert plain["modules"]["residual"]["slope_update_rms"] > 0.5  # ~ L: every block adds a full update
    rms = completep["modules"]["residual"]["act_rms"]
    assert max(rms) <= 1.25 * rms[0]


def test_cli_writes_table_and_figure_and_exits_zero(tmp_path, capsys):
    rc = main(["--model", "dense", "--widths", "32", "64", "--steps", "2", "--seeds", "0", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "coord_check.json").read_text())
    assert (tmp_path / "coord_check.png").stat().st_size > 10_000
    assert set(out["verdicts"]) == {"sp", "mup"} and out["axis"] == "width" and out["sizes"] == [32, 64]
    assert rc == (0 if all(v["pass"] == v["expected_pass"] for v in out["verdicts"].values()) else 1)
    printed = capsys.readouterr().out
    assert "=> flat:" in printed and "slope(update)" in printed
    assert np.isfinite([m["slope_update_rms"] for m in out["verdicts"]["sp"]["modules"].values()]).all()


def test_cli_refuses_a_single_width(tmp_path):
    assert main(["--widths", "32", "--out", str(tmp_path)]) == 2
