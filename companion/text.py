"""Text to tensors: tokenizing, a vocabulary, padding, and the VADER baseline.

Shared by the chapters that read the movie-review snippets (5, 6, 9, 11).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")


def tokenize(text: str) -> list[str]:
    """Lower-case words (with their apostrophes) plus ``!`` and ``?``.

    >>> tokenize("It's not GOOD!")
    ["it's", 'not', 'good', '!']
    """
    return _TOKEN.findall(text.lower())


class Vocab:
    """Token <-> index. Index 0 is padding, 1 is unknown, then tokens by frequency."""

    def __init__(self, texts: Iterable[str], min_freq: int = 2, max_size: int | None = None):
        counts = Counter(tok for text in texts for tok in tokenize(text))
        common = [t for t, c in counts.most_common(max_size) if c >= min_freq]
        self.itos = [PAD, UNK, *common]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Indices of ``text``'s tokens; unknown tokens map to 1."""
        return [self.stoi.get(tok, 1) for tok in tokenize(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i != 0)


def pad(sequences: Sequence[Sequence[int]], max_len: int | None = None, value: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad integer sequences into a batch.

    Returns ``ids`` (N, T) int64 and ``lengths`` (N,) int64, with T the longest length
    (capped at ``max_len``; longer sequences are cut). Empty sequences get length 1 and
    a single padding token, so packing never sees a zero length.
    """
    lengths = [max(1, min(len(s), max_len or len(s))) for s in sequences]
    T = max(lengths) if lengths else 1
    ids = torch.full((len(sequences), T), value, dtype=torch.int64)
    for i, s in enumerate(sequences):
        s = list(s)[:T]
        if s:
            ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.int64)
    return ids, torch.as_tensor(lengths, dtype=torch.int64)


def encode_texts(vocab: Vocab, texts: Sequence[str], max_len: int = 64) -> tuple[Tensor, Tensor]:
    """``pad([vocab.encode(t) for t in texts], max_len)``: ids (N, T), lengths (N,)."""
    return pad([vocab.encode(t) for t in texts], max_len)


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound score in [-1, 1] for each text: (N,) float32."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return np.asarray([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float32)


def vader_accuracy(texts: Sequence[str], y: np.ndarray) -> float:
    """Binary accuracy of the sign of VADER's compound score against labels ``y`` (N,)."""
    return float(((vader_compound(texts) > 0).astype(np.int64) == np.asarray(y)).mean())


def snippet_split(y: np.ndarray, test_fraction: float = 0.2, val_fraction: float = 0.1,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """The course's one train/val/test split of the movie snippets (stratified by label).

    Returns index arrays ``{"train", "val", "test"}`` into ``y`` (N,); chapters 5, 6, 9
    and 11 all use it, so their accuracies compare on the same test sentences.
    """
    from .data import stratified_split

    rest, test = stratified_split(y, test_fraction, seed=seed)
    train, val = stratified_split(y[rest], val_fraction / (1 - test_fraction), seed=seed + 1)
    return {"train": rest[train], "val": rest[val], "test": test}
