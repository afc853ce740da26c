"""Document sources: where raw text comes from, and a fingerprint saying which text it is.

A source is a function `DataConfig -> DocSource`. Building a DocSource is cheap: it
lists files or records arguments, so the fingerprint (and with it the token cache
directory) is known without reading any text. Reading happens only when
`DocSource.docs()` is iterated, which the corpus builder does on a cache miss.

Every document has a stable key (a path relative to its root, `path#chunk`, or an
hf row index). The key alone decides train/val membership, through a hashlib
digest rather than Python's salted `hash()`, so the split is the same in every
process and on every machine, and a document never moves between splits when
others are added.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .config import DataConfig, as_data_config

# Bump when the way text becomes documents changes (chunking, ordering, key format),
# so older caches and fingerprints are not mistaken for the new corpus.
DOCS_FORMAT = 1

# A single long text (tinyshakespeare is one 1.1 MB file) would otherwise be one
# document, leaving nothing to hold out; 16 KiB chunks give a document-level split.
CHUNK_BYTES = 16 * 1024

# Third-party code is not part of the standard library and differs between machines.
_THIRD_PARTY_DIRS = {"site-packages", "dist-packages"}


@dataclass(frozen=True)
class Doc:
    key: str    # stable identity; its hash decides train/val membership
    text: str
    pos: int    # position in the source's deterministic order
    continues: bool = False   # True when this doc is the next chunk of the same file as doc pos-1


@dataclass
class DocSource:
    fingerprint: Dict[str, Any]   # what the corpus is, computed without reading any text
    docs: Callable[[], Iterator[Doc]]   # fresh iterator over all docs, same order every time
    total_bytes: Optional[int] = None   # size on disk when known cheaply (progress display only)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def in_val(key: str, val_fraction: float) -> bool:
    """Stable document-level split: the first 8 bytes of sha256(key) as a uniform number in [0, 1)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h < val_fraction * 2.0**64


def _read_text(path: Path) -> str:
    # errors="replace": the stdlib test suite holds deliberately mis-encoded files.
    return path.read_bytes().decode("utf-8", errors="replace")


# More undecodable characters than this share (or any NUL byte) and a file is no text corpus.
MAX_UNDECODABLE = 0.05


def _read_text_file(path: Path) -> str:
    """A user's corpus file as text. A binary file (or one in another encoding) would
    otherwise train silently on U+FFFD replacement characters: refused by name."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    # U+FFFD that the file really contains is text; only the ones decoding added count.
    bad = text.count("\ufffd") - raw.count("\ufffd".encode())
    share = bad / max(1, len(text))
    if b"\x00" in raw or share > MAX_UNDECODABLE:
        why = "it contains NUL bytes" if b"\x00" in raw else f"{share:.0%} of it is not UTF-8"
        raise ValueError(f"data.paths: {path} is not a UTF-8 text file ({why}); remove it from data.paths or "
                         "narrow the glob (e.g. '*.txt'), or convert it to UTF-8")
    if bad:
        print(f"[data] warning: {path}: {bad} byte sequence(s) are not UTF-8 and become U+FFFD", file=sys.stderr)
    return text


def _line_chunks(text: str, chunk_bytes: int = CHUNK_BYTES) -> List[str]:
    """Cut text at line boundaries into pieces of at most chunk_bytes (a longer single
    line stays whole). "".join(result) == text."""
    chunks, cur, cur_bytes = [], [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if cur and cur_bytes + n > chunk_bytes:
            chunks.append("".join(cur))
            cur, cur_bytes = [], 0
        cur.append(line)
        cur_bytes += n
    if cur:
        chunks.append("".join(cur))
    return chunks


# ---------------------------------------------------------------------------------
# embedded: the interpreter's own standard library, present on every machine
# ---------------------------------------------------------------------------------

def _stdlib_files() -> Tuple[Path, List[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _THIRD_PARTY_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                rels.append(Path(dirpath, name).relative_to(root).as_posix())
    # os.walk order depends on the file system; sorting makes the corpus deterministic.
    return root, sorted(rels)


def embedded_source(cfg: DataConfig) -> DocSource:
    """The running interpreter's stdlib .py files (~30 MB on CPython 3.11): real,
    license-clean text that needs no download, so every machine can train and test."""
    root, rels = _stdlib_files()
    if not rels:
        raise ValueError(f"data.source=embedded found no .py files under the stdlib at {root}")
    sizes = [(rel, (root / rel).stat().st_size) for rel in rels]
    fingerprint = {
        "source": "embedded",
        "python": sys.version,  # the stdlib text changes with the interpreter version
        "files_sha256": _digest(sizes),
        "n_files": len(sizes),
        "total_bytes": sum(s for _, s in sizes),
    }

    def docs() -> Iterator[Doc]:
        for pos, rel in enumerate(rels):
            yield Doc(key=rel, text=_read_text(root / rel), pos=pos)

    return DocSource(fingerprint, docs, fingerprint["total_bytes"])


# ---------------------------------------------------------------------------------
# text_files: local files matched by globs
# ---------------------------------------------------------------------------------

def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard; keys are relative to it,
    so moving a data folder keeps every document's key (and split)."""
    if not any(c in pattern for c in "*?["):
        return os.path.dirname(pattern) or "."
    fixed = []
    for part in PurePath(pattern).parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return os.path.join(*fixed) if fixed else "."


def _expand_paths(patterns: List[str]) -> List[Tuple[str, Path]]:
    """(key, path) for every file matched by data.paths: expanded, deduped, sorted by key."""
    if not patterns:
        raise ValueError(
            "data.source=text_files needs data.paths: a list of files or globs, "
            "e.g. data.paths='[~/corpus/*.txt]'"
        )
    found: Dict[str, Tuple[str, Path]] = {}
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(
                f"data.paths entry {pattern!r} matches no file (looked for {os.path.abspath(expanded)!r}); "
                "fix the path or glob in data.paths"
            )
        root = _glob_root(expanded)
        for m in matches:
            real = os.path.realpath(m)
            # A file matched by two globs counts once, under the key of the first glob.
            found.setdefault(real, (Path(os.path.relpath(m, root)).as_posix(), Path(m)))
    return sorted(found.values(), key=lambda kp: (kp[0], str(kp[1])))


def text_files_source(cfg: DataConfig) -> DocSource:
    """Local text files. Each file is cut into ~16 KiB line-aligned chunks keyed
    f"{key}#{i}"; chunks that stay adjacent in a split are re-joined without EOT."""
    files = _expand_paths(list(cfg.paths))
    sizes = [(key, path.stat().st_size) for key, path in files]
    total = sum(s for _, s in sizes)
    if total == 0:
        raise ValueError(f"the corpus is empty: every file matched by data.paths={list(cfg.paths)} has 0 bytes")
    fingerprint = {
        "source": "text_files",
        # Relative keys + sizes, not absolute paths: the same data in another folder or
        # on another machine has the same fingerprint. An in-place edit that keeps every
        # size equal is not detected; delete the cache directory after such an edit.
        "files_sha256": _digest(sizes),
        "n_files": len(sizes),
        "total_bytes": total,
        "chunk_bytes": CHUNK_BYTES,
    }

    def docs() -> Iterator[Doc]:
        pos = 0
        for key, path in files:
            for i, chunk in enumerate(_line_chunks(_read_text_file(path))):
                yield Doc(key=f"{key}#{i}", text=chunk, pos=pos, continues=i > 0)
                pos += 1

    return DocSource(fingerprint, docs, total)


# ---------------------------------------------------------------------------------
# hf: Hugging Face `datasets` (Hub names, or local json/parquet/csv via data_files)
# ---------------------------------------------------------------------------------

def _local_files(data_files: Optional[List[str]]) -> List[Tuple[str, int]]:
    out = []
    for pattern in data_files or []:
        for m in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
            if os.path.isfile(m):
                out.append((os.path.basename(m), os.path.getsize(m)))
    return out


def hf_source(cfg: DataConfig) -> DocSource:
    """A `datasets` split; each row's `data.hf_text_field` is one document keyed by row index."""
    if not cfg.hf_path:
        raise ValueError(
            "data.source=hf needs data.hf_path: a dataset name (e.g. 'roneneldan/TinyStories') "
            "or a local file type ('json', 'parquet', 'csv', 'text') together with data.hf_data_files"
        )
    data_files = [os.path.expanduser(p) for p in cfg.hf_data_files] if cfg.hf_data_files else None
    local = _local_files(data_files)
    fingerprint = {
        "source": "hf",
        "hf_path": cfg.hf_path,
        "hf_name": cfg.hf_name,
        "hf_data_files": list(cfg.hf_data_files) if cfg.hf_data_files else None,
        "hf_split": cfg.hf_split,
        "hf_text_field": cfg.hf_text_field,
        "hf_max_docs": cfg.hf_max_docs,
        # hf_streaming is left out on purpose: it changes how rows arrive, not which rows.
        # Local data files add their sizes so editing them gives a new fingerprint;
        # a Hub dataset is identified by its name only.
        "local_files_sha256": _digest(local) if local else None,
    }
    loaded = []  # the dataset object, loaded once and reused by both passes

    def load():
        if not loaded:
            loaded.append(_load_hf(cfg, data_files))
        return loaded[0]

    def docs() -> Iterator[Doc]:
        ds = load()
        field_name = cfg.hf_text_field
        pos = 0
        for batch in ds.iter(batch_size=1000):
            if field_name not in batch:
                raise ValueError(
                    f"data.hf_text_field={field_name!r} is not a column of data.hf_path={cfg.hf_path!r}; "
                    f"available columns: {sorted(batch)}. Set data.hf_text_field to one of them."
                )
            for text in batch[field_name]:
                if cfg.hf_max_docs is not None and pos >= cfg.hf_max_docs:
                    return
                if text is not None and not isinstance(text, str):
                    raise TypeError(
                        f"data.hf_text_field={field_name!r} holds {type(text).__name__} values, not strings; "
                        "pick a text column"
                    )
                yield Doc(key=str(pos), text=text or "", pos=pos)
                pos += 1

    return DocSource(fingerprint, docs, sum(s for _, s in local) or None)


def _load_hf(cfg: DataConfig, data_files: Optional[List[str]]):
    try:
        import datasets  # imported here: it is slow to import and only this source needs it
    except ImportError as e:
        raise ImportError("data.source=hf needs the `datasets` package: pip install datasets") from e
    try:
        ds = datasets.load_dataset(
            cfg.hf_path, cfg.hf_name, data_files=data_files, split=cfg.hf_split, streaming=cfg.hf_streaming
        )
    except Exception as e:
        raise RuntimeError(
            f"could not load data.hf_path={cfg.hf_path!r} (hf_name={cfg.hf_name!r}, "
            f"hf_data_files={cfg.hf_data_files!r}, hf_split={cfg.hf_split!r}): {type(e).__name__}: {e}. "
            "Check the dataset name or local file paths; without network a Hub dataset must already "
            "be in the Hugging Face cache."
        ) from e
    columns = getattr(ds, "column_names", None)  # None for some streaming datasets
    if columns is not None and cfg.hf_text_field not in columns:
        raise ValueError(
            f"data.hf_text_field={cfg.hf_text_field!r} is not a column of data.hf_path={cfg.hf_path!r}; "
            f"available columns: {sorted(columns)}. Set data.hf_text_field to one of them."
        )
    if columns is not None:
        ds = ds.select_columns([cfg.hf_text_field])  # do not decode columns we drop anyway
    return ds


# ---------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------

SOURCES: Dict[str, Callable[[DataConfig], DocSource]] = {
    "embedded": embedded_source,
    "text_files": text_files_source,
    "hf": hf_source,
}


def get_source(cfg: DataConfig) -> DocSource:
    if cfg.source not in SOURCES:
        raise ValueError(f"unknown data.source={cfg.source!r}; valid sources: {sorted(SOURCES)}")
    return SOURCES[cfg.source](cfg)


def corpus_fingerprint(cfg: DataConfig, source: Optional[DocSource] = None) -> Dict[str, Any]:
    """The source's fingerprint plus the settings that shape the split, and a short `id`.

    Runs record this dict; two runs are comparable only if their `id`s are equal.
    """
    cfg = as_data_config(cfg)
    source = source or get_source(cfg)
    fp = dict(source.fingerprint)
    fp.update(docs_format=DOCS_FORMAT, val_fraction=float(cfg.val_fraction), max_bytes=cfg.max_bytes)
    fp["id"] = _digest(fp)[:12]
    return fp
