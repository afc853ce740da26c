"""The top-level typed config. Hydra composes YAML onto this schema, so a misspelled
key or a wrong type is an error, and `to_object` runs every dataclass's validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lrscale.data.config import DataConfig
from lrscale.models.config import ModelConfig
from lrscale.optim.config import OptimConfig, ScheduleConfig
from lrscale.parametrization.config import ParametrizationConfig


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
    """A sweep is a Hydra multirun (the grid lives in `hydra.sweeper.params`, see
    configs/experiment/fit_grid.yaml); these fields say where its jobs report and what
    training/sweep.py does when the multirun ends."""
    enabled: bool = False             # jobs append their rows to <dir>/results.jsonl; crashes become rows
    dir: str = "sweeps/default"
    fit: bool = True                  # fit the laws (analysis/) when the multirun ends
    extrapolate_tokens: List[float] = field(default_factory=list)  # Eq. 4 horizons to add optima at


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

    def __post_init__(self) -> None:
        """Checks that span several groups (each group validates itself)."""
        if self.schedule.decay_branches and self.optim.horizon_beta:
            raise ValueError("schedule.decay_branches with optim.horizon_beta != 0: the horizon rule sets one LR "
                             "for the whole run, so a branch would not equal a separate run to its budget; "
                             "use one of the two")


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
