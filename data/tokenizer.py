"""Byte-level BPE tokenizers: trained on the corpus (kind=bpe) or loaded from GPT-2-style files (kind=files).

Both kinds produce a `tokenizers.Tokenizer` with a ByteLevel pre-tokenizer and
decoder, so any text round-trips exactly, and the special token <|endoftext|>
(EOT) that separates documents. The literal string "<|endoftext|>" inside a
document is encoded as ordinary text: only the corpus builder inserts EOT ids,
so document boundaries cannot be forged by the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import EOT_TOKEN, MIN_BPE_VOCAB, TokenizerConfig

log = logging.getLogger(__name__)

# Bump when tokenizer construction changes, so caches built the old way are not reused.
TOKENIZER_FORMAT = 1


def _byte_level(model: models.Model) -> Tokenizer:
    tok = Tokenizer(model)
    # add_prefix_space=False: "x" at the start of a document stays "x", as in GPT-2.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _finish(tok: Tokenizer) -> Tokenizer:
    tok.encode_special_tokens = True  # "<|endoftext|>" in raw text is text, not a boundary
    return tok


def train_bpe(cfg: TokenizerConfig, train_texts: Callable[[], Iterator[str]]) -> Tokenizer:
    """Fit byte-level BPE on the train split's text prefix. Deterministic: same texts, same merges."""
    if cfg.vocab_size < MIN_BPE_VOCAB:
        raise ValueError(
            f"data.tokenizer.vocab_size={cfg.vocab_size} is too small for byte-level BPE: "
            f"it needs at least {MIN_BPE_VOCAB} (256 byte symbols + {EOT_TOKEN})"
        )
    tok = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[EOT_TOKEN],  # id 0
        # All 256 bytes up front, so text never seen in training still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t0 = time.time()
    log.info("training byte-level BPE (vocab %d) on up to %.1f MB of train text", cfg.vocab_size, cfg.train_max_bytes / 1e6)
    tok.train_from_iterator(train_texts(), trainer=trainer)
    log.info("trained BPE: %d tokens in %.1fs", tok.get_vocab_size(), time.time() - t0)
    return _finish(tok)


def _tokenizer_files(cfg: TokenizerConfig) -> tuple[Path, Path]:
    out = []
    for name in ("vocab_file", "merges_file"):
        value = getattr(cfg, name)
        if not value:
            raise ValueError(
                f"data.tokenizer.kind=files needs data.tokenizer.{name} "
                "(GPT-2-style vocab.json and merges.txt)"
            )
        path = Path(os.path.expanduser(value))
        if not path.is_file():
            raise FileNotFoundError(f"data.tokenizer.{name}={value!r} does not exist ({path.absolute()})")
        out.append(path)
    return out[0], out[1]


def load_files(cfg: TokenizerConfig, train_texts: Optional[Callable[[], Iterator[str]]] = None) -> Tokenizer:
    """GPT-2-style vocab.json + merges.txt; EOT reuses the vocab's id when it has one."""
    vocab, merges = _tokenizer_files(cfg)
    tok = _byte_level(models.BPE.from_file(str(vocab), str(merges)))
    tok.add_special_tokens([EOT_TOKEN])  # existing vocab entry -> same id; else appended
    ids = list(tok.get_vocab(with_added_tokens=True).values())
    if len(set(ids)) != len(ids):  # EOT is appended at id len(vocab), which a sparse vocab may already use
        raise ValueError(f"data.tokenizer.vocab_file={cfg.vocab_file!r}: two tokens share an id once {EOT_TOKEN} is "
                         f"added at id {tok.token_to_id(EOT_TOKEN)}; give {EOT_TOKEN} its own id in the file")
    n = id_space(tok)
    if n > cfg.vocab_size:
        raise ValueError(
            f"data.tokenizer.vocab_size={cfg.vocab_size} is smaller than the loaded vocabulary "
            f"(ids up to {n - 1} incl. {EOT_TOKEN}); set data.tokenizer.vocab_size >= {n} "
            "(the model's embedding may be padded above it)"
        )
    return _finish(tok)


def id_space(tok: Tokenizer) -> int:
    """Largest token id + 1: the embedding rows and the token cache's dtype must cover every
    id, and a vocab.json may number its tokens sparsely (then this exceeds the token count)."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


# kind -> builder(cfg, train_texts). Builders that do not train ignore train_texts.
TOKENIZERS: Dict[str, Callable[[TokenizerConfig, Callable[[], Iterator[str]]], Tokenizer]] = {
    "bpe": train_bpe,
    "files": load_files,
}


def check_kind(cfg: TokenizerConfig) -> None:
    if cfg.kind not in TOKENIZERS:
        raise ValueError(f"unknown data.tokenizer.kind={cfg.kind!r}; valid kinds: {sorted(TOKENIZERS)}")


def build_tokenizer(cfg: TokenizerConfig, train_texts: Callable[[], Iterator[str]]) -> Tokenizer:
    check_kind(cfg)
    return TOKENIZERS[cfg.kind](cfg, train_texts)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_key(cfg: TokenizerConfig) -> str:
    """Short readable name for the tokenizer part of a cache directory, e.g. 'bpe4096-1a2b3c4d'.

    It covers exactly what changes the token ids: for bpe the settings (the training
    text is covered by the corpus fingerprint), for files the files' contents
    (vocab_size only bounds the vocabulary there, so it is left out).
    """
    check_kind(cfg)
    if cfg.kind == "files":
        vocab, merges = _tokenizer_files(cfg)
        desc = {"kind": "files", "vocab": file_sha256(vocab), "merges": file_sha256(merges)}
        label = "files"
    else:
        desc = {"kind": cfg.kind, "vocab_size": cfg.vocab_size, "train_max_bytes": cfg.train_max_bytes}
        label = f"{cfg.kind}{cfg.vocab_size}"
    desc["format"] = TOKENIZER_FORMAT
    return f"{label}-{hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:8]}"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Reload a tokenizer saved by the corpus builder."""
    return _finish(Tokenizer.from_file(str(path)))
