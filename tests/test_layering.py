"""The package layout's promises (docs/architecture.md): imports point one way, the libraries
that a bare GPU machine needs import without Hydra, and the installed namespace does not leak
`data` or `models` into other projects."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("training", "models", "parametrization", "optim", "data")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", LIBRARIES)
def test_no_library_imports_analysis_or_the_entry_points(package):
    """Arrows point one way: entry points (train.py, CLIs, Hydra hooks) -> libraries. The training
    stack never imports the analysis library, nor the Hydra plugins that drive it."""
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0] if not name.startswith("lrscale.") else name.split(".")[1]
            if top in ("analysis", "hydra_plugins", "train"):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, offenders


def test_the_training_stack_and_kernels_import_and_step_without_hydra():
    """A GPU box may have torch alone: the model, the kernels, the hardware step and a training step
    must not need Hydra or OmegaConf (only the entry points do)."""
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("hydra", "omegaconf"):
                    raise ImportError(f"{name} is blocked in this test")
        sys.meta_path.insert(0, Block())
        import torch
        from lrscale.models import ModelConfig, MoEConfig, Transformer
        from lrscale.optim import GroupLR, OptimConfig, build_optimizer
        from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights, param_table
        from lrscale.training.config import HardwareConfig
        from lrscale.training.hardware import apply_hardware, setup_torch
        from lrscale.training.loop import StepContext, train_step
        from lrscale.training.distributed import World
        cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16, moe=MoEConfig(num_experts=4))
        hw = HardwareConfig()
        device = setup_torch(hw, cfg)
        param = build_parametrization(ParametrizationConfig(name="mup", base_d_model=16), cfg)
        core = Transformer(cfg, param, hw.attention_backend, hw.expert_backend)
        init_weights(core, param, seed=0)
        acc = apply_hardware(core, hw, World(), device)
        opt = build_optimizer(core, param_table(core, param), OptimConfig(), 64, 1e4)
        ctx = StepContext(acc.model, core, opt, GroupLR(opt, lambda s: 1.0), acc.autocast, device, 0, 1.0)
        x = torch.randint(0, 64, (4, 16))
        m = train_step(ctx, x, x.roll(-1, 1), 0)
        import lrscale.benchmarks.throughput  # the benchmark too
        assert "hydra" not in sys.modules and "omegaconf" not in sys.modules, sorted(sys.modules)
        print("ok", float(m["loss"]))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("ok")


def test_installed_packages_live_under_one_namespace(tmp_path):
    """From an unrelated directory, `import data` or `import models` must not find this project;
    `lrscale.data` and `lrscale.models` must."""
    code = textwrap.dedent(f"""
        import importlib.util
        for name in ("data", "models", "training", "optim", "parametrization", "analysis", "benchmarks"):
            spec = importlib.util.find_spec(name)
            where = str(spec.origin or spec.submodule_search_locations) if spec else ""
            assert spec is None or {str(REPO)!r} not in where, (name, where)
        import lrscale.data, lrscale.models, lrscale.analysis
        assert lrscale.models.__file__.startswith({str(REPO)!r})
        print("ok")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
