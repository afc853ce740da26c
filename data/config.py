"""Typed configs for the data pipeline.

These are Hydra structured configs (registered in the ConfigStore by the entry
point, not here), so a misspelled override such as `data.val_frac=0.1` is an error
at compose time. `DataConfig` checks its values (ranges, source and tokenizer names)
when it is built, before any corpus is read; a config handed over as a dict or an
OmegaConf node is built into one first (`as_data_config`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, List, Optional

# The one special token; GPT-2 uses the same string, so kind=files with the GPT-2
# vocabulary maps it to its existing id (50256) instead of adding a new one.
EOT_TOKEN = "<|endoftext|>"

# Byte-level BPE starts from all 256 byte symbols plus the EOT token.
MIN_BPE_VOCAB = 256 + 1


@dataclass
class TokenizerConfig:
    kind: str = "bpe"            # "bpe": byte-level BPE trained offline with `tokenizers` on the TRAIN split; "files": load GPT-2-style vocab.json + merges.txt
    vocab_size: int = 4096       # for kind=bpe: target size (special token <|endoftext|> included); for kind=files: must be >= the loaded vocab's size
    vocab_file: Optional[str] = None
    merges_file: Optional[str] = None
    train_max_bytes: int = 8_000_000   # cap on training text used to fit the BPE (speed); deterministic prefix of the sorted train docs


@dataclass
class DataConfig:
    source: str = "embedded"     # registry: embedded | text_files | hf
    paths: List[str] = field(default_factory=list)   # text_files: globs (expanded, sorted, deduped; ~ expanded)
    hf_path: Optional[str] = None   # hf: dataset name OR a local file type ("parquet", "json") used with data_files
    hf_name: Optional[str] = None   # hf config name
    hf_data_files: Optional[List[str]] = None
    hf_split: str = "train"
    hf_text_field: str = "text"
    hf_streaming: bool = False
    hf_max_docs: Optional[int] = None
    val_fraction: float = 0.05   # share of DOCUMENTS in validation, by stable hash (hashlib, not Python hash()) of the doc key (file path relative to its root, or hf doc index)
    max_bytes: Optional[int] = None   # cap corpus size (tests, quick runs): take docs in sorted order until the cap
    cache_dir: str = "~/.cache/lrscale"   # env LRSCALE_CACHE overrides when set
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        validate_config(self)


def as_data_config(cfg: Any) -> DataConfig:
    """Accept a DataConfig, an OmegaConf node (what Hydra hands over) or a plain dict."""
    if isinstance(cfg, DataConfig):
        return cfg
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # omegaconf is a dependency, but plain dicts need nothing else
        DictConfig = ()
    if DictConfig and isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(cfg)  # structured node -> DataConfig, plain node -> dict
        if isinstance(cfg, DataConfig):
            return cfg
    if isinstance(cfg, dict):
        values = dict(cfg)
        tok = values.pop("tokenizer", {})
        try:
            tok = tok if isinstance(tok, TokenizerConfig) else TokenizerConfig(**tok)
            return DataConfig(**values, tokenizer=tok)
        except TypeError as e:
            valid = [f.name for f in fields(DataConfig)]
            valid_tok = [f.name for f in fields(TokenizerConfig)]
            raise ValueError(
                f"bad data config ({e}); valid keys: {valid}, and under tokenizer: {valid_tok}"
            ) from None
    raise TypeError(f"expected a DataConfig, an OmegaConf DictConfig or a dict, got {type(cfg).__name__}")


def validate_config(cfg: DataConfig) -> None:
    """What Hydra cannot check: ranges, and the source and tokenizer names against their registries."""
    from .sources import SOURCES
    from .tokenizer import TOKENIZERS

    if cfg.source not in SOURCES:
        raise ValueError(f"unknown data.source={cfg.source!r}; valid sources: {sorted(SOURCES)}")
    if cfg.tokenizer.kind not in TOKENIZERS:
        raise ValueError(f"unknown data.tokenizer.kind={cfg.tokenizer.kind!r}; valid kinds: {sorted(TOKENIZERS)}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(
            f"data.val_fraction={cfg.val_fraction} must be in [0, 1): it is the share of documents "
            "held out for validation (0 disables validation; 0.05 is the default)"
        )
    if cfg.max_bytes is not None and cfg.max_bytes <= 0:
        raise ValueError(f"data.max_bytes={cfg.max_bytes} must be positive, or null for the whole corpus")
    if cfg.hf_max_docs is not None and cfg.hf_max_docs <= 0:
        raise ValueError(f"data.hf_max_docs={cfg.hf_max_docs} must be positive, or null for all documents")
    tok = cfg.tokenizer
    if tok.kind == "bpe" and tok.vocab_size < MIN_BPE_VOCAB:
        raise ValueError(
            f"data.tokenizer.vocab_size={tok.vocab_size} is too small for byte-level BPE: it needs at "
            f"least {MIN_BPE_VOCAB} (256 byte symbols + {EOT_TOKEN}); 4096 is the default"
        )
    if tok.vocab_size >= 2**32:
        raise ValueError(f"data.tokenizer.vocab_size={tok.vocab_size} does not fit the uint32 token cache")
    if tok.train_max_bytes <= 0:
        raise ValueError(f"data.tokenizer.train_max_bytes={tok.train_max_bytes} must be positive")


def cache_root(cfg: DataConfig) -> Path:
    """Where token caches live: $LRSCALE_CACHE when set (shared machines, CI), else data.cache_dir."""
    root = os.environ.get("LRSCALE_CACHE") or cfg.cache_dir
    return Path(os.path.expanduser(root)).absolute()
