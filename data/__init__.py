"""Data: text sources -> byte-level BPE -> cached token memmaps -> deterministic batches.

    corpus = build_corpus(cfg.data)          # TokenCorpus: .train .val .vocab_size .fingerprint ...
    loader = TokenLoader(corpus.train, seq_len, batch_size, seed, rank, world_size)
    x, y = loader.next()                     # or loader.batch(step); resume with load_state_dict
    evals = val_batches(corpus.val, seq_len, batch_size, n_batches)

Record `corpus.fingerprint` with every run: its `id` says which corpus, split and
preprocessing produced the tokens, so runs on different data are never mixed.
"""

from .config import EOT_TOKEN, DataConfig, TokenizerConfig, as_data_config
from .corpus import CorruptCacheError, TokenCorpus, build_corpus, cache_path, open_cache, split_documents
from .loader import TokenLoader, val_batches
from .sources import SOURCES, Doc, corpus_fingerprint
from .tokenizer import TOKENIZERS

__all__ = [
    "EOT_TOKEN",
    "DataConfig",
    "TokenizerConfig",
    "as_data_config",
    "CorruptCacheError",
    "TokenCorpus",
    "build_corpus",
    "cache_path",
    "open_cache",
    "split_documents",
    "TokenLoader",
    "val_batches",
    "SOURCES",
    "Doc",
    "corpus_fingerprint",
    "TOKENIZERS",
]
