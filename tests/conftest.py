"""What the tests share: the one tiny-model builder (the way train.py builds: parametrization,
model, deterministic init) and the real Hydra config composed and shrunk
(lightning-hydra-template style). Test files import the builders: `from conftest import ...`."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

torch.set_num_threads(1)


def tiny_model_config(moe=False, **kw):
    """d_model 32, 2 layers, 2 heads, vocabulary 64, sequence 16; `moe`: False (dense), True (4
    experts, top-2, width 16) or a MoEConfig. Keywords override any field."""
    from lrscale.models import ModelConfig, MoEConfig

    if moe is True:
        moe = MoEConfig(num_experts=4, top_k=2, d_expert=16)
    base = dict(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16)
    return ModelConfig(moe=moe or MoEConfig(), **{**base, **kw})


def build_model_and_param(cfg, parametrization: str = "sp", *, seed: int = 0, attn: str = "eager",
                          experts: str = "loop", **param_kw):
    """(model, parametrization) for a model config, initialised from `seed` as train.py does."""
    from lrscale.models import Transformer
    from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights

    param = build_parametrization(ParametrizationConfig(name=parametrization, **param_kw), cfg)
    model = Transformer(cfg, param, attn, experts)
    init_weights(model, param, seed)
    return model, param


def build_model(cfg, parametrization: str = "sp", **kw):
    """The model of `build_model_and_param`."""
    return build_model_and_param(cfg, parametrization, **kw)[0]


def tiny_overrides(tmp: Path, cache: Path) -> list[str]:
    """A model and corpus small enough for a CPU test to train in seconds."""
    return [
        "model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.seq_len=32",
        "train.batch_size=4", "train.steps=8", "train.eval_every=4", "train.eval_batches=2", "train.ckpt_every=4",
        "schedule.warmup_steps=2", "data.max_bytes=400000", "data.val_fraction=0.25", "data.tokenizer.vocab_size=384",
        f"data.cache_dir={cache}", f"run.root={tmp / 'runs'}", "logging.progress=false",
        "logging.print_param_table=false", "hardware.num_threads=1",
    ]


def compose_cfg(overrides: list[str]):
    # Hydra is imported here, not at module load: the GPU and kernel tests run where only torch is.
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import train  # noqa: F401  (registers the structured configs)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One small token cache per test session (built on first use)."""
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture
def tiny(tmp_path, data_cache):
    """Function composing the default config with tiny overrides plus extra ones."""
    def make(*extra: str):
        return compose_cfg(tiny_overrides(tmp_path, data_cache) + list(extra))
    return make
