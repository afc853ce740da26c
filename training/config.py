"""The top-level typed config. Hydra composes YAML onto this schema, so a misspelled
key or a wrong type is an error, and `to_object` runs every dataclass's validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from data.config import DataConfig
from models.config import ModelConfig
from optim.config import OptimConfig, ScheduleConfig
from parametrization.config import ParametrizationConfig


@dataclass
class TrainConfig:
    steps: int = 600                  # optimizer steps of the main run
    batch_size: int = 16              # global batch, in sequences
    micro_batch_size: int = 0         # per-rank micro-batch for gradient accumulation; 0 = whole per-rank batch
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 200             # 0 = only at the end
    seed: int = 0
    divergence_factor: float = 2.0    # diverged when the train loss exceeds this x its first value (or is not finite)
    probe_every: int = 0              # training probes (activation RMS, update sizes, ...); 0 = off


@dataclass
class HardwareConfig:
    device: str = "cpu"               # cpu | cuda | auto
    dtype: str = "float32"            # float32 | bfloat16 (autocast; master weights stay fp32)
    attention_backend: str = "sdpa"
    expert_backend: str = "grouped_mm"
    compile: bool = False
    tf32: bool = True
    fused_optimizer: Optional[bool] = None  # None = fused AdamW on CUDA, foreach on CPU
    activation_checkpointing: bool = False
    num_threads: int = 0              # CPU intra-op threads; 0 = torch's default
    data_parallel: str = "none"       # none | ddp | fsdp (under torchrun)


@dataclass
class WandbConfig:
    mode: str = "disabled"            # online | offline | disabled
    project: str = "lrscale"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    log_every: int = 10
    progress: bool = True             # console progress bar
    print_param_table: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RunConfig:
    root: str = "runs"                # where run directories live
    name: str = ""                    # run directory name; "" = <model>-<parametrization>-<config hash>
    resume: str = "auto"              # auto: continue if a checkpoint exists | never: refuse an existing dir
    keep_checkpoint: bool = True      # keep the last checkpoint after a run completes


@dataclass
class SweepConfig:
    """A grid over model sizes x learning rates (x seeds), run by `experiments.sweep`."""
    enabled: bool = False
    dir: str = "sweeps/default"
    models: List[str] = field(default_factory=list)      # model preset names (configs/model/*.yaml)
    lrs: List[float] = field(default_factory=list)
    lr_grid: Optional[Any] = None                        # per-model LR lists: {preset: [lr, ...]}
    seeds: List[int] = field(default_factory=lambda: [0])
    jobs: int = 1                                        # local parallel processes
    fit: bool = True                                     # fit the laws at the end
    extrapolate_tokens: List[float] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = MISSING
    parametrization: ParametrizationConfig = field(default_factory=ParametrizationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    experiment: str = ""              # set by configs/experiment/*.yaml (their name)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, node in (("model", ModelConfig), ("parametrization", ParametrizationConfig),
                        ("optim", OptimConfig), ("schedule", ScheduleConfig), ("data", DataConfig),
                        ("logging", LoggingConfig), ("hardware", HardwareConfig)):
        cs.store(group=group, name=f"{group}_schema", node=node)


def to_object(cfg: DictConfig) -> Config:
    """Resolve interpolations and build the dataclasses (running their validation)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]
