"""End-to-end behaviour of train.py on tiny models: run directory, resume, divergence,
and clear errors for bad input."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import train
from lrscale.training.rundir import identify
from lrscale.training.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r}


def test_run_writes_reproducible_run_directory(tiny):
    summary = train.run(tiny())
    run_dir = Path(summary["run_dir"])
    for f in ("config.yaml", "git.json", "git.diff", "environment.json", "data_fingerprint.json",
              "param_table.json", "metrics.jsonl", "summary.json"):
        assert (run_dir / f).exists(), f
    assert summary["status"] == "completed"
    assert summary["final_val_loss"] < math.log(384)  # learned something from ln V
    assert summary["tokens"] == 8 * 4 * 32
    assert summary["n_total"] > summary["n_active"] > summary["n_active_nonembed"] > 0
    roles = {r["role"] for r in json.loads((run_dir / "param_table.json").read_text())}
    assert {"embedding", "router", "expert_in", "unembedding", "norm"} <= roles
    fp = json.loads((run_dir / "data_fingerprint.json").read_text())
    assert fp["id"] == summary["data_fingerprint"]


def test_dense_preset_runs(tiny):
    summary = train.run(tiny("model=dense_tiny"))
    assert summary["status"] == "completed" and summary["num_experts"] == 0
    assert summary["n_total"] == summary["n_active"]


def test_killed_run_resumes_to_identical_losses(tiny, tmp_path, monkeypatch):
    overrides = ("train.steps=10", "train.ckpt_every=4", "logging.log_every=1")
    full = train.run(tiny(*overrides, f"run.root={tmp_path / 'a'}"))
    ref = train_losses(Path(full["run_dir"]))

    real_step = train.train_step

    def killed_at_7(ctx, x, y, step):
        if step == 7:
            raise KeyboardInterrupt("simulated kill")
        return real_step(ctx, x, y, step)

    cfg = tiny(*overrides, f"run.root={tmp_path / 'b'}")
    monkeypatch.setattr(train, "train_step", killed_at_7)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg)
    run_dir = identify(cfg).dir
    assert (run_dir / "checkpoint").exists() and not (run_dir / "summary.json").exists()
    monkeypatch.setattr(train, "train_step", real_step)
    resumed = train.run(cfg)
    got = train_losses(run_dir)
    assert sorted(got) == sorted(ref)  # no step lost, none logged twice
    for step, loss in ref.items():
        assert got[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    assert resumed["final_val_loss"] == pytest.approx(full["final_val_loss"], rel=1e-6)


def test_finished_run_is_not_repeated(tiny):
    cfg = tiny()
    first = train.run(cfg)
    again = train.run(cfg)
    assert again == first


def test_divergence_ends_run_cleanly(tiny):
    summary = train.run(tiny("optim.lr=1000.0", "optim.grad_clip=0", "schedule.warmup_steps=0"))
    assert summary["status"] == "diverged"
    assert summary["final_val_loss"] is None
    assert not (Path(summary["run_dir"]) / "checkpoint").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["model.d_modle=64"], "d_modle"),                  # misspelled field
    (["model=no_such_model"], "no_such_model"),         # unknown preset: Hydra lists the valid ones
    (["model.n_heads=3"], "model.n_heads"),             # impossible shape, caught at config time
    (["hardware.attention_backend=warp"], "valid:"),    # unknown backend lists the valid ones
    (["train.steps=abc"], "train.steps"),               # wrong type
    (["+train.stepz=5"], "did you mean train.steps?"),  # a '+' (Hydra's own hint) does not bypass the schema
])
def test_bad_overrides_exit_nonzero_naming_the_field(args, needle, tmp_path):
    p = run_cli(*args, f"run.root={tmp_path}")
    assert p.returncode != 0
    assert needle in p.stderr + p.stdout


def test_missing_data_path_exits_nonzero_naming_the_field(tmp_path):
    p = run_cli("data=text_files", f"data.paths=[{tmp_path}/nothing_here/*.txt]", f"run.root={tmp_path}")
    assert p.returncode != 0
    assert "data.paths" in p.stderr + p.stdout


def test_named_run_refuses_a_summary_of_another_config(tiny):
    train.run(tiny("run.name=mine"))
    with pytest.raises(FileExistsError, match="another config"):
        train.run(tiny("run.name=mine", "optim.lr=0.01"))


def test_fresh_start_owns_an_empty_metrics_log(tiny):
    cfg = tiny("logging.log_every=1")
    run_dir = identify(cfg).dir
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 99, "train_loss": 123.0}\n')  # a crashed attempt's rows
    train.run(cfg)
    assert sorted(train_losses(run_dir)) == list(range(1, 9))


BAD_VALUES = [  # one misspelled or impossible value per config group, and the field the error must name
    ("model.n_heads=3", "model.n_heads"),
    ("parametrization.name=ntk", "parametrization.name"),
    ("optim.weight_decay_mode=coupeld", "optim.weight_decay_mode"),
    ("schedule.decay_shape=cosin", "schedule.decay_shape"),
    ("data.source=webtxt", "data.source"),
    ("data.tokenizer.kind=bpf", "data.tokenizer.kind"),
    ("logging.wandb.mode=onlin", "logging.wandb.mode"),
    ("hardware.dtype=bf16", "hardware.dtype"),
    ("hardware.attention_backend=flash2", "hardware.attention_backend"),
    ("train.steps=0", "train.steps"),
    ("run.resume=maybe", "run.resume"),
    ("schedule.warmup_steps=8", "schedule.warmup_steps"),   # not below train.steps=8: spans two groups
]


@pytest.mark.parametrize("override, field", BAD_VALUES)
def test_a_bad_value_in_any_group_fails_before_the_corpus_is_built(tiny, monkeypatch, override, field):
    def no_corpus(*_a, **_k):
        raise AssertionError("the corpus was built before the config was validated")

    monkeypatch.setattr(train, "build_corpus", no_corpus)
    cfg = tiny(override)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        train.run(cfg)
