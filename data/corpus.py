"""Token corpus: documents -> tokenizer -> train/val token arrays, cached as .npy memmaps.

Cache layout, one directory per (corpus, tokenizer):

    <cache root>/<fingerprint id>-<tokenizer key>/
        tokenizer.json  train.npy  val.npy  meta.json

The cache root is $LRSCALE_CACHE when set, else data.cache_dir. A directory is
built under a temporary name with meta.json written last, then renamed into
place in one step, so a directory with the final name is always complete. A file
lock per directory makes a second process wait for the first builder and then
reuse its result instead of building the same thing twice.

A corrupt cache (meta.json missing or unreadable; an array whose size, dtype or
checksum disagrees with meta.json) raises CorruptCacheError naming the directory
to delete. It is deliberately NOT rebuilt automatically: a complete directory
that changed afterwards points at a disk or concurrency problem that a silent
rebuild would hide. Sizes are always checked; sha256 checksums only while the
arrays total at most VERIFY_MAX_BYTES, so opening a big cache stays instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tokenizers
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from .config import EOT_TOKEN, DataConfig, as_data_config, cache_root, validate_config
from .sources import Doc, DocSource, corpus_fingerprint, get_source, in_val
from .tokenizer import build_tokenizer, check_kind, file_sha256, id_space, load_tokenizer, tokenizer_key

log = logging.getLogger(__name__)

# Bump when the cache layout or meta.json schema changes.
CACHE_FORMAT = 1
SPLITS = ("train", "val")
# Checksums above this size are skipped on open (sha256 runs at ~1 GB/s).
VERIFY_MAX_BYTES = 256 << 20
# Text per encode_batch call: enough to keep every core busy, little enough for memory.
FLUSH_BYTES = 4 << 20


class CorruptCacheError(RuntimeError):
    """A token cache directory exists but does not match its meta.json."""


@dataclass(eq=False)  # arrays make == ambiguous; compare .fingerprint instead
class TokenCorpus:
    train: np.ndarray          # 1-D token ids, read-only memmap
    val: np.ndarray            # 1-D token ids, read-only memmap (empty when data.val_fraction=0)
    vocab_size: int            # largest token id + 1 (the token count unless ids are sparse; the model may pad above it)
    eot_id: int                # id of <|endoftext|>, placed between documents
    fingerprint: Dict[str, Any]
    tokenizer_path: str
    cache_path: str
    meta: Dict[str, Any] = field(repr=False)
    _tokenizer: Optional[Tokenizer] = field(default=None, init=False, repr=False, compare=False)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:  # loaded on first use: training only needs the arrays
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def __repr__(self) -> str:
        return (
            f"TokenCorpus(id={self.fingerprint['id']}, source={self.fingerprint['source']}, "
            f"train={len(self.train):,} tokens, val={len(self.val):,} tokens, vocab_size={self.vocab_size})"
        )


# ---------------------------------------------------------------------------------
# documents -> splits
# ---------------------------------------------------------------------------------

def _split_docs(cfg: DataConfig, source: DocSource) -> Iterator[Tuple[str, Doc, int]]:
    """(split, doc, utf-8 bytes) in source order, stopping once data.max_bytes is reached."""
    total = 0
    for doc in source.docs():
        if cfg.max_bytes is not None and total >= cfg.max_bytes:
            return
        if not doc.text:
            continue
        n = len(doc.text.encode("utf-8"))
        total += n
        yield ("val" if in_val(doc.key, cfg.val_fraction) else "train"), doc, n


def split_documents(cfg: Any) -> Iterator[Tuple[str, Doc]]:
    """The documents of a corpus with their split, exactly as the builder sees them (for inspection and tests)."""
    cfg = as_data_config(cfg)
    validate_config(cfg)
    for split, doc, _ in _split_docs(cfg, get_source(cfg)):
        yield split, doc


def _bpe_texts(cfg: DataConfig, source: DocSource) -> Iterator[str]:
    """Deterministic prefix of the train docs, up to data.tokenizer.train_max_bytes.
    Validation text never reaches the tokenizer, so val loss is not flattered by it."""
    total = 0
    for split, doc, n in _split_docs(cfg, source):
        if total >= cfg.tokenizer.train_max_bytes:
            return
        if split == "train":
            total += n
            yield doc.text


class _SplitWriter:
    """Streams one split's token ids to a raw file, then wraps it as an .npy file.

    EOT goes between documents, except between a chunk and the next chunk of the same
    file: those are one text that was cut only so that the split works per chunk.
    """

    def __init__(self, path: Path, tok: Tokenizer, dtype: np.dtype, eot_id: int):
        self.path, self.tok, self.dtype = path, tok, dtype
        self.eot = np.array([eot_id], dtype=dtype)
        self.raw_path = path.with_suffix(".raw")
        self.raw = open(self.raw_path, "wb")
        self.pending: List[Doc] = []
        self.pending_bytes = 0
        self.last_pos: Optional[int] = None
        self.n_tokens = self.n_docs = self.n_bytes = 0

    def add(self, doc: Doc, n_bytes: int) -> int:
        """Queue a doc; returns the number of text bytes tokenized by this call (for progress)."""
        self.pending.append(doc)
        self.pending_bytes += n_bytes
        self.n_docs += 1
        self.n_bytes += n_bytes
        return self.flush() if self.pending_bytes >= FLUSH_BYTES else 0

    def flush(self) -> int:
        if not self.pending:
            return 0
        encodings = self.tok.encode_batch_fast([d.text for d in self.pending], add_special_tokens=False)
        pieces = []
        for doc, enc in zip(self.pending, encodings):
            joined = doc.continues and self.last_pos == doc.pos - 1
            if self.last_pos is not None and not joined:
                pieces.append(self.eot)
            pieces.append(np.asarray(enc.ids, dtype=self.dtype))
            self.last_pos = doc.pos
        ids = np.concatenate(pieces)
        ids.tofile(self.raw)
        self.n_tokens += len(ids)
        done, self.pending, self.pending_bytes = self.pending_bytes, [], 0
        return done

    def close(self) -> Dict[str, Any]:
        self.flush()
        self.raw.close()
        # The length is known only now, so the .npy header is written last and the
        # raw ids are copied behind it; the checksum is taken on the way.
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.n_tokens,)}
        )
        digest = hashlib.sha256(header.getvalue())
        with open(self.path, "wb") as out, open(self.raw_path, "rb") as raw:
            out.write(header.getvalue())
            for block in iter(lambda: raw.read(1 << 22), b""):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        self.raw_path.unlink()
        return {
            "file": self.path.name,
            "n_tokens": self.n_tokens,
            "n_docs": self.n_docs,
            "text_bytes": self.n_bytes,
            "file_bytes": self.path.stat().st_size,
            "sha256": digest.hexdigest(),
        }


def _write_splits(cfg: DataConfig, source: DocSource, tok: Tokenizer, dtype: np.dtype, eot_id: int, out_dir: Path):
    writers = {name: _SplitWriter(out_dir / f"{name}.npy", tok, dtype, eot_id) for name in SPLITS}
    known = source.total_bytes
    total = min(known, cfg.max_bytes) if known and cfg.max_bytes else (known or cfg.max_bytes)
    t0 = time.time()
    log.info("tokenizing %s", f"{total / 1e6:.1f} MB" if total else "the corpus")
    # disable=None: a bar on a terminal, nothing in log files.
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=None, leave=False, mininterval=1.0) as bar:
        for split, doc, n in _split_docs(cfg, source):
            bar.update(writers[split].add(doc, n))
        for w in writers.values():
            bar.update(w.flush())
    stats = {name: w.close() for name, w in writers.items()}
    n_docs = sum(s["n_docs"] for s in stats.values())
    log.info(
        "tokenized %d docs into %d train / %d val tokens in %.1fs",
        n_docs, stats["train"]["n_tokens"], stats["val"]["n_tokens"], time.time() - t0,
    )
    if n_docs == 0:
        raise ValueError(f"the corpus is empty: data.source={cfg.source!r} yielded no text")
    if stats["train"]["n_docs"] == 0:
        raise ValueError(
            f"the train split is empty: all {n_docs} documents hashed into validation; "
            f"lower data.val_fraction={cfg.val_fraction} or use more documents"
        )
    if cfg.val_fraction > 0 and stats["val"]["n_docs"] == 0:
        raise ValueError(
            f"the validation split is empty: none of the {n_docs} documents hashed into "
            f"data.val_fraction={cfg.val_fraction}. Use more documents (raise or unset data.max_bytes), "
            "raise data.val_fraction, or set data.val_fraction=0 to train without validation"
        )
    return stats


# ---------------------------------------------------------------------------------
# cache build / open
# ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[bool]:
    """Exclusive lock for building one cache directory; yields whether a real lock is held."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone still keeps the cache consistent
        yield False
        return
    with open(path.parent / f".{path.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is building %s", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_cache(cfg: DataConfig, source: DocSource, fp: Dict[str, Any], tok_key: str, path: Path, locked: bool) -> None:
    if locked:  # holding the lock, any temporary directory for this name is a crashed build
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    t0 = time.time()
    log.info("building token cache %s", path)
    try:
        tok = build_tokenizer(cfg.tokenizer, lambda: _bpe_texts(cfg, source))
        tok.save(str(tmp / "tokenizer.json"))
        vocab_size = id_space(tok)  # not the token count: ids may be sparse
        eot_id = tok.token_to_id(EOT_TOKEN)
        dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
        splits = _write_splits(cfg, source, tok, dtype, eot_id, tmp)
        meta = {
            "cache_format": CACHE_FORMAT,
            "fingerprint": fp,
            "tokenizer": asdict(cfg.tokenizer),
            "tokenizer_key": tok_key,
            "tokenizer_sha256": file_sha256(tmp / "tokenizer.json"),
            "tokenizers_version": tokenizers.__version__,
            "vocab_size": vocab_size,
            "eot_id": eot_id,
            "dtype": dtype.name,
            "splits": splits,
            "build_seconds": round(time.time() - t0, 2),
        }
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "meta.json").exists():
                raise
            # Lost a race to a builder without a working lock (e.g. NFS): keep theirs.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("token cache ready in %.1fs: %s", time.time() - t0, path)


def open_cache(path: str | os.PathLike) -> TokenCorpus:
    """Open a complete cache directory, checking it against its meta.json."""
    path = Path(path)

    def corrupt(reason: str) -> CorruptCacheError:
        return CorruptCacheError(
            f"token cache {path} is corrupt: {reason}. Delete the directory and rerun to rebuild it: rm -rf '{path}'"
        )

    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise corrupt("meta.json is missing (a cache directory is only ever created complete)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise corrupt(f"meta.json is unreadable ({e})") from None
    try:
        if meta["cache_format"] != CACHE_FORMAT:
            raise corrupt(f"cache_format {meta['cache_format']} is not {CACHE_FORMAT}")
        dtype = np.dtype(meta["dtype"])
        splits = meta["splits"]
        verify = sum(splits[name]["file_bytes"] for name in SPLITS) <= VERIFY_MAX_BYTES
        arrays = {}
        for name in SPLITS:
            info = splits[name]
            f = path / info["file"]
            if not f.is_file():
                raise corrupt(f"{info['file']} is missing")
            size = f.stat().st_size
            if size != info["file_bytes"]:
                raise corrupt(f"{f.name} has {size} bytes, meta.json says {info['file_bytes']}")
            if verify and file_sha256(f) != info["sha256"]:
                raise corrupt(f"{f.name} does not match the sha256 recorded in meta.json")
            try:
                arr = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise corrupt(f"{f.name} is not a readable .npy file ({e})") from None
            if arr.shape != (info["n_tokens"],) or arr.dtype != dtype:
                raise corrupt(f"{f.name} holds {arr.dtype}{arr.shape}, meta.json says {dtype}({info['n_tokens']},)")
            arrays[name] = arr
        tok_path = path / "tokenizer.json"
        if not tok_path.is_file() or file_sha256(tok_path) != meta["tokenizer_sha256"]:
            raise corrupt("tokenizer.json is missing or does not match the sha256 recorded in meta.json")
        return TokenCorpus(
            train=arrays["train"],
            val=arrays["val"],
            vocab_size=int(meta["vocab_size"]),
            eot_id=int(meta["eot_id"]),
            fingerprint=meta["fingerprint"],
            tokenizer_path=str(tok_path),
            cache_path=str(path),
            meta=meta,
        )
    except (KeyError, TypeError) as e:
        raise corrupt(f"meta.json lacks an expected field ({e!r})") from None


def cache_path(cfg: Any) -> Path:
    """The cache directory a config maps to (cheap: lists files, reads no text)."""
    cfg = as_data_config(cfg)
    validate_config(cfg)
    check_kind(cfg.tokenizer)
    fp = corpus_fingerprint(cfg)
    return cache_root(cfg) / f"{fp['id']}-{tokenizer_key(cfg.tokenizer)}"


def build_corpus(cfg: Any) -> TokenCorpus:
    """Tokenized train/val arrays for `cfg` (a DataConfig, Hydra node or dict), built once and then reopened from cache."""
    cfg = as_data_config(cfg)
    validate_config(cfg)
    check_kind(cfg.tokenizer)
    source = get_source(cfg)
    fp = corpus_fingerprint(cfg, source)
    tok_key = tokenizer_key(cfg.tokenizer)
    path = cache_root(cfg) / f"{fp['id']}-{tok_key}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(path) as locked:
            if not path.exists():  # another process may have finished it while we waited
                _build_cache(cfg, source, fp, tok_key, path, locked)
    corpus = open_cache(path)
    # Checked here too, not only at build: for kind=files vocab_size is not part of the
    # cache key, so a cache hit would otherwise skip the check.
    if corpus.vocab_size > cfg.tokenizer.vocab_size:
        raise ValueError(
            f"data.tokenizer.vocab_size={cfg.tokenizer.vocab_size} is smaller than the tokenizer's "
            f"{corpus.vocab_size} tokens; set data.tokenizer.vocab_size >= {corpus.vocab_size}"
        )
    return corpus
