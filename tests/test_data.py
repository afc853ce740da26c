"""Properties of the data package on tiny corpora: offline, deterministic, a few seconds in all."""

import json
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import lrscale.data.corpus as corpus_module
from lrscale.data import (
    EOT_TOKEN,
    CorruptCacheError,
    DataConfig,
    TokenizerConfig,
    TokenLoader,
    build_corpus,
    cache_path,
    corpus_fingerprint,
    open_cache,
    split_documents,
    val_batches,
)

# Reference files that exist on the build machines only; tests using them are skipped elsewhere.
SHARED_DATA = Path(__file__).resolve().parents[1].joinpath("../shared/data")
needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent on this machine")


@pytest.fixture(autouse=True)
def _no_env_cache(monkeypatch):
    # LRSCALE_CACHE overrides data.cache_dir; keep every test inside its tmp_path.
    monkeypatch.delenv("LRSCALE_CACHE", raising=False)


def small_cfg(tmp_path, vocab_size=320, **kw) -> DataConfig:
    kw.setdefault("val_fraction", 0.3)  # tiny corpora need a large share to get any val docs
    return DataConfig(cache_dir=str(tmp_path / "cache"), tokenizer=TokenizerConfig(vocab_size=vocab_size), **kw)


def embedded_cfg(tmp_path, **kw) -> DataConfig:
    return small_cfg(tmp_path, max_bytes=300_000, **kw)


def write_lines(path: Path, n_lines: int, tag: str = "a") -> str:
    # Every line is unique, so any piece of decoded text can be located in the original.
    text = "".join(f"{tag} line {i}: the quick brown fox {i * 7919 % 1000} jumps over {i % 17} dogs\n" for i in range(n_lines))
    path.write_text(text)
    return text


def files_cfg(tmp_path, n_files=3, n_lines=400, **kw) -> DataConfig:
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir(exist_ok=True)
    for i in range(n_files):
        write_lines(corpus_dir / f"doc{i}.txt", n_lines, tag=f"f{i}")
    return small_cfg(tmp_path, source="text_files", paths=[str(corpus_dir / "*.txt")], **kw)


# ---------------------------------------------------------------------------------
# sources and splits
# ---------------------------------------------------------------------------------

def test_embedded_is_deterministic_and_splits_by_document(tmp_path):
    cfg = embedded_cfg(tmp_path)
    a = build_corpus(cfg)
    b = build_corpus(replace(cfg, cache_dir=str(tmp_path / "other")))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert a.fingerprint == b.fingerprint and a.fingerprint["python"] == sys.version
    assert Path(a.tokenizer_path).read_text() == Path(b.tokenizer_path).read_text()

    docs = list(split_documents(cfg))
    keys = [d.key for _, d in docs]
    assert keys == sorted(keys) and all(k.endswith(".py") and "site-packages" not in k for k in keys)
    train = [d for s, d in docs if s == "train"]
    val = [d for s, d in docs if s == "val"]
    assert train and val and not {d.key for d in train} & {d.key for d in val}
    # The arrays are exactly the split's documents joined by EOT, in order.
    assert a.decode(a.train) == EOT_TOKEN.join(d.text for d in train)
    assert a.decode(a.val) == EOT_TOKEN.join(d.text for d in val)


def test_fingerprint_changes_when_the_corpus_changes(tmp_path):
    cfg = files_cfg(tmp_path)
    fp = corpus_fingerprint(cfg)
    assert fp == corpus_fingerprint(cfg) and len(fp["id"]) == 12
    with open(tmp_path / "corpus" / "doc0.txt", "a") as f:
        f.write("one more line\n")
    fp_edited = corpus_fingerprint(cfg)
    write_lines(tmp_path / "corpus" / "doc9.txt", 10)
    fp_added = corpus_fingerprint(cfg)
    ids = {fp["id"], fp_edited["id"], fp_added["id"],
           corpus_fingerprint(replace(cfg, max_bytes=1000))["id"],
           corpus_fingerprint(replace(cfg, val_fraction=0.1))["id"],
           corpus_fingerprint(replace(cfg, source="embedded"))["id"]}
    assert len(ids) == 6


def test_single_text_file_is_chunked_and_reassembles(tmp_path):
    text = write_lines(tmp_path / "book.txt", 3000)  # ~200 KB -> ~13 chunks of <= 16 KiB
    cfg = small_cfg(tmp_path, source="text_files", paths=[str(tmp_path / "book.txt")])
    docs = list(split_documents(cfg))
    assert [d.key for _, d in docs] == [f"book.txt#{i}" for i in range(len(docs))] and len(docs) > 10
    assert {s for s, _ in docs} == {"train", "val"}
    c = build_corpus(cfg)
    # EOT only where a val chunk was cut out: the pieces of both splits tile the file.
    pieces = c.decode(c.train).split(EOT_TOKEN) + c.decode(c.val).split(EOT_TOKEN)
    assert "".join(sorted(pieces, key=text.index)) == text
    n_runs = 1 + sum(1 for (s0, _), (s1, _) in zip(docs, docs[1:]) if s0 != s1)
    assert len(pieces) == n_runs


def test_text_files_errors_name_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.paths"):
        build_corpus(small_cfg(tmp_path, source="text_files", paths=[str(tmp_path / "nope" / "*.txt")]))
    with pytest.raises(ValueError, match="data.paths"):
        build_corpus(small_cfg(tmp_path, source="text_files", paths=[]))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        build_corpus(small_cfg(tmp_path, source="text_files", paths=[str(tmp_path / "empty.txt")]))


def test_empty_validation_split_is_an_error_unless_disabled(tmp_path):
    write_lines(tmp_path / "one.txt", 20)  # a single chunk: it lands in one split only
    cfg = small_cfg(tmp_path, source="text_files", paths=[str(tmp_path / "one.txt")], val_fraction=0.05)
    with pytest.raises(ValueError, match="split is empty"):
        build_corpus(cfg)
    c = build_corpus(replace(cfg, val_fraction=0.0))
    assert len(c.val) == 0 and len(c.train) > 0


# ---------------------------------------------------------------------------------
# hf source, offline from local files
# ---------------------------------------------------------------------------------

@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    rows = [{"text": f"document {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 5), "id": i} for i in range(60)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def hf_cfg(tmp_path, path, **kw) -> DataConfig:
    return small_cfg(tmp_path, source="hf", hf_path="json", hf_data_files=[str(path)], **kw)


def test_hf_jsonl_offline(tmp_path, hf_offline):
    path, rows = hf_offline
    cfg = hf_cfg(tmp_path, path)
    docs = list(split_documents(cfg))
    assert [d.text for _, d in docs] == [r["text"] for r in rows] and [d.key for _, d in docs] == [str(i) for i in range(60)]
    assert list(split_documents(replace(cfg, hf_streaming=True))) == docs
    assert len(list(split_documents(replace(cfg, hf_max_docs=10)))) == 10
    c = build_corpus(cfg)
    assert c.decode(c.train) == EOT_TOKEN.join(d.text for s, d in docs if s == "train")
    assert c.fingerprint["source"] == "hf" and c.fingerprint["hf_path"] == "json"


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_missing_text_field_lists_columns(tmp_path, hf_offline, streaming):
    path, _ = hf_offline
    with pytest.raises(ValueError, match=r"available columns: \['id', 'text'\]"):
        list(split_documents(hf_cfg(tmp_path, path, hf_text_field="body", hf_streaming=streaming)))


def test_hf_parquet_offline(tmp_path, hf_offline):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    _, rows = hf_offline
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "docs.parquet")
    cfg = small_cfg(tmp_path, source="hf", hf_path="parquet", hf_data_files=[str(tmp_path / "docs.parquet")])
    assert [d.text for _, d in split_documents(cfg)] == [r["text"] for r in rows]


def test_hf_errors_name_the_field(tmp_path, hf_offline):
    with pytest.raises(RuntimeError, match="data.hf_path='json'"):
        list(split_documents(hf_cfg(tmp_path, tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="data.hf_path"):
        build_corpus(small_cfg(tmp_path, source="hf"))


# ---------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------

def test_bpe_round_trips_and_fits_uint16(tmp_path):
    c = build_corpus(embedded_cfg(tmp_path))
    for s in ["def f(x):\n    return x + 1\n", "  naïve café — ünïcödé 🙂\t\r\n", "", "<|endoftext|> is text here"]:
        assert c.decode(c.encode(s)) == s
    assert c.eot_id not in c.encode("<|endoftext|>")  # only the builder inserts EOT
    assert c.vocab_size == c.tokenizer.get_vocab_size() <= 320
    assert c.train.dtype == np.uint16 and int(c.train.max()) < c.vocab_size
    assert c.meta["splits"]["train"]["n_tokens"] == len(c.train)


def write_tiny_gpt2_files(tmp_path):
    """A valid GPT-2-style vocab.json/merges.txt: the 256 byte symbols plus two merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    for tok in ("Ġt", "he"):
        vocab[tok] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\n")
    return vocab


def test_files_tokenizer_loads_vocab_and_merges(tmp_path):
    vocab = write_tiny_gpt2_files(tmp_path)
    tok = TokenizerConfig(kind="files", vocab_size=300, vocab_file=str(tmp_path / "vocab.json"),
                          merges_file=str(tmp_path / "merges.txt"))
    cfg = replace(files_cfg(tmp_path, n_files=2, n_lines=50), tokenizer=tok)
    c = build_corpus(cfg)
    assert c.encode("the") == [vocab["t"], vocab["he"]]
    assert c.eot_id == len(vocab) and c.vocab_size == len(vocab) + 1  # EOT appended
    assert c.decode(c.encode("a the b")) == "a the b"
    with pytest.raises(ValueError, match="data.tokenizer.vocab_size"):
        build_corpus(replace(cfg, tokenizer=replace(tok, vocab_size=258)))
    with pytest.raises(FileNotFoundError, match="data.tokenizer.vocab_file"):
        build_corpus(replace(cfg, tokenizer=replace(tok, vocab_file=str(tmp_path / "missing.json"))))


@needs_shared
def test_gpt2_files_match_reference_ids(tmp_path):
    tok = TokenizerConfig(kind="files", vocab_size=50257, vocab_file=str(SHARED_DATA / "gpt2_vocab.json"),
                          merges_file=str(SHARED_DATA / "gpt2_merges.txt"))
    c = build_corpus(replace(files_cfg(tmp_path, n_files=2, n_lines=50), tokenizer=tok))
    assert c.encode("Hello world") == [15496, 995]
    assert c.eot_id == 50256 and c.vocab_size == 50257 and c.train.dtype == np.uint16


# ---------------------------------------------------------------------------------
# token cache
# ---------------------------------------------------------------------------------

def test_cache_is_reused_without_rebuilding(tmp_path, monkeypatch):
    cfg = files_cfg(tmp_path)
    a = build_corpus(cfg)
    meta_mtime = (Path(a.cache_path) / "meta.json").stat().st_mtime_ns

    def must_not_build(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(corpus_module, "_build_cache", must_not_build)
    b = build_corpus(cfg)
    assert b.cache_path == a.cache_path == str(cache_path(cfg))
    assert np.array_equal(a.train, b.train) and (Path(b.cache_path) / "meta.json").stat().st_mtime_ns == meta_mtime
    assert Path(a.cache_path).name.startswith(a.fingerprint["id"] + "-bpe320-")
    assert open_cache(a.cache_path).fingerprint == a.fingerprint


def test_env_var_overrides_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LRSCALE_CACHE", str(tmp_path / "env_cache"))
    c = build_corpus(files_cfg(tmp_path, n_files=2))
    assert Path(c.cache_path).parent == tmp_path / "env_cache"


def _flip_last_byte(p: Path):
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF
    p.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [
    lambda d: (d / "meta.json").unlink(),
    lambda d: (d / "meta.json").write_text("{not json"),
    lambda d: (d / "meta.json").write_text("{}"),
    lambda d: (d / "train.npy").write_bytes((d / "train.npy").read_bytes()[:-10]),
    lambda d: _flip_last_byte(d / "val.npy"),  # same size: caught by the checksum
    lambda d: (d / "tokenizer.json").unlink(),
], ids=["no_meta", "bad_json", "empty_meta", "truncated", "bitflip", "no_tokenizer"])
def test_corrupt_cache_is_detected(tmp_path, damage):
    cfg = files_cfg(tmp_path)
    path = Path(build_corpus(cfg).cache_path)
    damage(path)
    with pytest.raises(CorruptCacheError, match=f"rm -rf '{path}'"):
        build_corpus(cfg)


def test_concurrent_builders_share_one_cache(tmp_path):
    cfg = files_cfg(tmp_path)
    results, errors = [], []

    def build():
        try:
            results.append(build_corpus(cfg))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert all(np.array_equal(r.train, results[0].train) for r in results)
    entries = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert entries == [Path(results[0].cache_path).name]  # no leftover temporary directories


# ---------------------------------------------------------------------------------
# config errors
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change, exc, match", [
    (dict(source="webtext"), ValueError, r"valid sources: \['embedded', 'hf', 'text_files'\]"),
    (dict(tokenizer=TokenizerConfig(kind="wordpiece")), ValueError, r"valid kinds: \['bpe', 'files'\]"),
    (dict(tokenizer=TokenizerConfig(vocab_size=100)), ValueError, "at least 257"),
    (dict(val_fraction=1.0), ValueError, "data.val_fraction"),
    (dict(max_bytes=0), ValueError, "data.max_bytes"),
    (dict(tokenizer=TokenizerConfig(kind="files")), ValueError, "data.tokenizer.vocab_file"),
])
def test_bad_configs_fail_early_with_the_fix(tmp_path, change, exc, match):
    with pytest.raises(exc, match=match):
        build_corpus(replace(DataConfig(cache_dir=str(tmp_path)), **change))
    assert not any(tmp_path.iterdir())  # failed before building anything


def test_accepts_hydra_nodes_and_dicts(tmp_path):
    from omegaconf import OmegaConf

    cfg = embedded_cfg(tmp_path)
    node = OmegaConf.structured(cfg)
    assert cache_path(node) == cache_path(cfg) == cache_path(OmegaConf.to_container(node))
    with pytest.raises(ValueError, match="valid keys"):
        cache_path({"sorce": "embedded"})


# ---------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------

def test_loader_rows_are_shifted_windows_and_deterministic():
    tokens = np.arange(1000, dtype=np.uint16)  # token value == its position
    loader = TokenLoader(tokens, seq_len=7, batch_size=10, seed=3)
    x, y = loader.batch(4)
    assert x.shape == y.shape == (10, 7) and x.dtype == y.dtype == torch.long
    assert torch.equal(y, x + 1) and bool((x[:, 0] % 8 == 0).all())  # whole windows of seq_len+1
    again = TokenLoader(tokens, seq_len=7, batch_size=10, seed=3)
    assert torch.equal(again.batch(4)[0], x) and torch.equal(loader.batch(4)[0], x)
    assert not torch.equal(TokenLoader(tokens, seq_len=7, batch_size=10, seed=4).batch(4)[0], x)


def test_loader_epoch_visits_every_window_once_then_reshuffles():
    loader = TokenLoader(np.arange(960), seq_len=7, batch_size=10, seed=0)  # 120 windows, 12 steps/epoch
    epoch0 = np.concatenate([loader.window_ids(s) for s in range(12)])
    epoch1 = np.concatenate([loader.window_ids(s) for s in range(12, 24)])
    assert sorted(epoch0) == sorted(epoch1) == list(range(120)) and not np.array_equal(epoch0, epoch1)
    odd = TokenLoader(np.arange(1000), seq_len=7, batch_size=10)  # 125 windows: step 12 spans two epochs
    assert odd.batch(12)[0].shape == (10, 7)


def test_loader_ranks_are_disjoint_and_union_is_the_global_batch():
    tokens = np.arange(5000)
    full = TokenLoader(tokens, seq_len=15, batch_size=8, seed=1)
    ranks = [TokenLoader(tokens, seq_len=15, batch_size=8, seed=1, rank=r, world_size=4) for r in range(4)]
    for step in (0, 1, 7, 38, 39, 100):
        parts = [r.batch(step)[0] for r in ranks]
        assert all(p.shape == (2, 15) for p in parts)
        assert torch.equal(torch.cat(parts), full.batch(step)[0])
        ids = np.concatenate([r.window_ids(step) for r in ranks])
        assert len(set(ids.tolist())) == 8


def test_loader_resumes_exactly_from_state_dict():
    tokens = np.arange(3000)
    a = TokenLoader(tokens, seq_len=9, batch_size=4, seed=5)
    for _ in range(7):
        a.next()
    state = a.state_dict()
    assert state == {"seed": 5, "step": 7}
    b = TokenLoader(tokens, seq_len=9, batch_size=4, seed=0)
    b.load_state_dict(state)
    for _ in range(100):  # across several epochs
        xa, ya = a.next()
        xb, yb = b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_errors():
    with pytest.raises(ValueError, match="divisible by world_size=3"):
        TokenLoader(np.arange(1000), seq_len=7, batch_size=8, world_size=3)
    with pytest.raises(ValueError, match="need 80 tokens"):
        TokenLoader(np.arange(79), seq_len=7, batch_size=10)
    with pytest.raises(ValueError, match="rank=2"):
        TokenLoader(np.arange(1000), seq_len=7, batch_size=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="1-D"):
        TokenLoader(np.zeros((10, 10)), seq_len=3, batch_size=1)
    with pytest.raises(KeyError, match="step"):
        TokenLoader(np.arange(100), seq_len=3, batch_size=1).load_state_dict({"seed": 0})


def test_val_batches_are_fixed_and_evenly_spaced():
    tokens = np.arange(1000)
    batches = val_batches(tokens, seq_len=7, batch_size=5, n_batches=4)  # 20 of 125 windows
    assert len(batches) == 4 and all(x.shape == y.shape == (5, 7) for x, y in batches)
    starts = torch.cat([x[:, 0] for x, _ in batches]) // 8
    assert starts.tolist() == [i * 125 // 20 for i in range(20)]
    assert all(torch.equal(y, x + 1) for x, y in batches)
    again = val_batches(tokens, seq_len=7, batch_size=5, n_batches=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="validation split has 1,000 tokens"):
        val_batches(tokens, seq_len=7, batch_size=50, n_batches=3)


def test_loader_on_a_real_corpus(tmp_path):
    c = build_corpus(files_cfg(tmp_path))
    x, y = TokenLoader(c.train, seq_len=32, batch_size=4, seed=0).next()
    assert x.shape == (4, 32) and int(x.max()) < c.vocab_size
    (vx, vy), = val_batches(c.val, seq_len=32, batch_size=2, n_batches=1)
    assert torch.equal(vx[:, 1:], vy[:, :-1])


# ---------------------------------------------------------------------------------
# the real default corpus (slow: ~10 s on 2 cores)
# ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_embedded_corpus_builds_and_reopens(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path))
    c = build_corpus(cfg)
    assert c.vocab_size == 4096 and len(c.train) > 1_000_000 and len(c.val) > 50_000
    assert np.array_equal(build_corpus(cfg).val, c.val)
