"""Attention and transformers from scratch (chapter 6), each piece checked against PyTorch.

Shapes: N batch, H heads, L (Lq, Lk) sequence lengths, E model width (``d_model``),
D = E / H the width of one head.

**Masks.** A boolean ``mask`` here means what ``F.scaled_dot_product_attention``'s boolean
``attn_mask`` means: True where a query *may attend* to a key. PyTorch's modules use the
opposite for padding: ``nn.MultiheadAttention(key_padding_mask=...)`` and
``nn.TransformerEncoderLayer(src_key_padding_mask=...)`` take True where a key is
*padding, to be ignored*. The functions below that take a ``key_padding_mask`` follow
those modules, so their parameters can be copied over unchanged.

Sections: the guide's NumPy self-attention; scaled dot-product attention with padding and
causal masks; heads; multi-head attention (parameters named as in
``nn.MultiheadAttention``); sinusoidal positional encoding; the encoder block, post-norm
and pre-norm (parameters named as in ``nn.TransformerEncoderLayer``); a sentiment
classifier and a small causal character language model built from those blocks; MiniLM
helpers (cached frozen embeddings, fine-tuning the top layers); attention heatmaps and an
ipywidgets explorer; a CPU benchmark against ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

# ---------------------------------------------------------------- the guide's NumPy version


def numpy_self_attention(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Self-attention with Q = K = V = X, as in the guide: X (L, d) -> (output (L, d), weights (L, L)).

    The softmax subtracts each row's maximum first, so large scores cannot overflow.
    """
    scores = X @ X.T / np.sqrt(X.shape[-1])
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ X, weights


# ---------------------------------------------------------------- scaled dot-product attention


def causal_mask(length_q: int, length_k: int | None = None, device=None) -> Tensor:
    """(Lq, Lk) bool, True on and below the diagonal: query i may attend to keys 0..i.

    Aligned at the top-left corner, like ``is_causal=True`` of ``F.scaled_dot_product_attention``.
    """
    length_k = length_q if length_k is None else length_k
    return torch.ones(length_q, length_k, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """(N, L) bool, True at real tokens and False at padding, from lengths (N,)."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device) < lengths[:, None]


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(d)) over the keys: q (..., Lq, d), k (..., Lk, d) -> (..., Lq, Lk).

    mask: bool, broadcastable to (..., Lq, Lk), True where a query may attend. causal: also
    forbid keys after the query's own position. A query that may attend to no key at all
    gets weights 0 (as in ``F.scaled_dot_product_attention``) instead of NaN.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask should be a bool tensor (True = may attend), got {mask.dtype}")
    scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)  # scaling q: fewer numbers than the scores
    if causal:
        tri = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        mask = tri if mask is None else mask & tri
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        nothing = ~mask.any(dim=-1, keepdim=True)  # small: the mask's own shape
        if nothing.any():
            weights = weights.masked_fill(nothing, 0.0)
    return weights


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 causal: bool = False) -> Tensor:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V, like ``F.scaled_dot_product_attention``.

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) -> (..., Lq, dv). ``mask`` and ``causal`` as
    in :func:`attention_weights` (bool mask, True = may attend).
    """
    return attention_weights(q, k, mask, causal) @ v


# ---------------------------------------------------------------- heads


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(N, L, E) -> (N, H, L, E / H): head h gets the features h*D .. (h+1)*D - 1 of every token."""
    N, L, E = x.shape
    if E % n_heads:
        raise ValueError(f"the width {E} does not split into {n_heads} heads")
    return x.reshape(N, L, n_heads, E // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(N, H, L, D) -> (N, L, H * D), the inverse of :func:`split_heads`."""
    N, H, L, D = x.shape
    return x.transpose(1, 2).reshape(N, L, H * D)


# ---------------------------------------------------------------- multi-head attention


def _projections(query: Tensor, key: Tensor, value: Tensor, params: dict, n_heads: int):
    w_q, w_k, w_v = params["in_proj_weight"].chunk(3)
    b_q, b_k, b_v = params["in_proj_bias"].chunk(3)
    return (split_heads(F.linear(query, w_q, b_q), n_heads), split_heads(F.linear(key, w_k, b_k), n_heads),
            split_heads(F.linear(value, w_v, b_v), n_heads))


def _key_mask(key_padding_mask: Tensor | None) -> Tensor | None:
    """nn.MultiheadAttention's (N, Lk) padding mask (True = ignore) -> an attention mask (N, 1, 1, Lk)."""
    return None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]


def multi_head_attention(query: Tensor, key: Tensor, value: Tensor, params: dict, n_heads: int,
                         key_padding_mask: Tensor | None = None, causal: bool = False,
                         need_weights: bool = False):
    """Multi-head attention with ``nn.MultiheadAttention(E, H, batch_first=True)``'s parameters.

    query (N, Lq, E), key and value (N, Lk, E) -> (N, Lq, E). ``params`` holds the module's
    ``state_dict()`` entries: ``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E,) (the query,
    key and value projections stacked in that order), ``out_proj.weight`` (E, E) and
    ``out_proj.bias`` (E,). key_padding_mask: (N, Lk) bool, True at padding (PyTorch's
    convention). With ``need_weights`` also returns each head's weights (N, H, Lq, Lk).
    """
    q, k, v = _projections(query, key, value, params, n_heads)
    weights = attention_weights(q, k, _key_mask(key_padding_mask), causal)
    out = F.linear(merge_heads(weights @ v), params["out_proj.weight"], params["out_proj.bias"])
    return (out, weights) if need_weights else out


class MultiHeadAttention(nn.Module):
    """Multi-head attention with the parameters (names, shapes, initialisation) of
    ``nn.MultiheadAttention(d_model, n_heads, batch_first=True)``, so either one's
    ``state_dict`` loads into the other. No dropout on the weights.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def params(self) -> dict:
        return {"in_proj_weight": self.in_proj_weight, "in_proj_bias": self.in_proj_bias,
                "out_proj.weight": self.out_proj.weight, "out_proj.bias": self.out_proj.bias}

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask: Tensor | None = None, causal: bool = False, need_weights: bool = False):
        key = query if key is None else key
        value = key if value is None else value
        return multi_head_attention(query, key, value, self.params(), self.n_heads, key_padding_mask, causal,
                                    need_weights)


# ---------------------------------------------------------------- positions


def positional_encoding(length: int, d_model: int) -> Tensor:
    """Sinusoidal positions of "Attention is all you need": (length, d_model) float32.

    PE[p, 2i] = sin(p / 10000^(2i / d_model)) and PE[p, 2i + 1] = cos(p / 10000^(2i / d_model)):
    even columns sine, odd columns cosine, one frequency per pair. Computed in float64.
    """
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # 0, 2, 4, ...
    angle = position / 10000 ** (two_i / d_model)  # (L, ceil(d/2))
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, :d_model // 2])
    return pe.float()


# ---------------------------------------------------------------- the encoder block

ENCODER_KEYS = ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")


def encoder_block(x: Tensor, params: dict, n_heads: int, norm_first: bool = False,
                  key_padding_mask: Tensor | None = None, causal: bool = False, eps: float = 1e-5,
                  dropout: float = 0.0, training: bool = False) -> Tensor:
    """One transformer encoder block: x (N, L, E) -> (N, L, E).

    ``params``: the ``state_dict()`` of ``nn.TransformerEncoderLayer(E, H, d_ff,
    batch_first=True)`` (keys in :data:`ENCODER_KEYS`): self-attention, a feed-forward
    network ``linear2(relu(linear1(h)))`` and two layer norms.

    Post-norm (``norm_first=False``, the original paper and the guide)::

        x = norm1(x + attn(x));  x = norm2(x + ffn(x))

    Pre-norm (``norm_first=True``, GPT-2 and most later models)::

        x = x + attn(norm1(x));  x = x + ffn(norm2(x))

    ``dropout`` (in training) acts where PyTorch's layer puts it: on the attention output,
    inside the feed-forward network and on its output; not on the attention weights.
    """
    E = x.shape[-1]
    attn = {name: params[f"self_attn.{name}"] for name in ("in_proj_weight", "in_proj_bias",
                                                           "out_proj.weight", "out_proj.bias")}

    def drop(h):
        return F.dropout(h, dropout, training) if dropout else h

    def self_attention(h):
        return drop(multi_head_attention(h, h, h, attn, n_heads, key_padding_mask, causal))

    def feed_forward(h):
        h = drop(F.relu(F.linear(h, params["linear1.weight"], params["linear1.bias"])))
        return drop(F.linear(h, params["linear2.weight"], params["linear2.bias"]))

    def norm(h, i):
        return F.layer_norm(h, (E,), params[f"norm{i}.weight"], params[f"norm{i}.bias"], eps)

    if norm_first:
        x = x + self_attention(norm(x, 1))
        return x + feed_forward(norm(x, 2))
    x = norm(x + self_attention(x), 1)
    return norm(x + feed_forward(x), 2)


class EncoderBlock(nn.Module):
    """:func:`encoder_block` as a module whose ``state_dict`` matches ``nn.TransformerEncoderLayer``'s."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False,
                 eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.dropout, self.norm_first, self.eps = n_heads, dropout, norm_first, eps
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        return encoder_block(x, dict(self.named_parameters()), self.n_heads, self.norm_first, key_padding_mask,
                             causal, self.eps, self.dropout, self.training)

    @torch.no_grad()
    def attention_weights(self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """Each head's attention weights inside this block for input x: (N, H, L, L)."""
        h = self.norm1(x) if self.norm_first else x
        return self.self_attn(h, key_padding_mask=key_padding_mask, causal=causal, need_weights=True)[1]


# ---------------------------------------------------------------- a sentiment classifier


class TransformerClassifier(nn.Module):
    """Token ids (N, L) int64 (0 = padding) -> class logits (N, n_classes).

    The guide's model in PyTorch: embedding scaled by sqrt(E) plus sinusoidal positions,
    ``n_layers`` encoder blocks that ignore padding, the average over the real tokens
    (the guide's global average pooling, without the padding), dropout and a linear layer.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_heads: int = 4, d_ff: int = 128, n_layers: int = 2,
                 max_len: int = 64, n_classes: int = 2, dropout: float = 0.1, norm_first: bool = False):
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        # N(0, 1/E) entries times sqrt(E) gives token vectors of the same scale as the positions
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.register_buffer("pe", positional_encoding(max_len, d_model), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, n_heads, d_ff, dropout, norm_first)
                                    for _ in range(n_layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, n_classes)

    def _inputs(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids[:, :self.pe.shape[0]]
        return self.embed(ids) * math.sqrt(self.d_model) + self.pe[:ids.shape[1]], ids == 0

    def forward(self, ids: Tensor) -> Tensor:
        x, pad = self._inputs(ids)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(self.drop(pooled))

    @torch.no_grad()
    def attention_maps(self, ids: Tensor) -> list[Tensor]:
        """Attention weights of every block (in eval mode): a list of (N, H, L, L)."""
        was = self.training
        self.eval()
        x, pad = self._inputs(ids)
        maps = []
        for block in self.blocks:
            maps.append(block.attention_weights(x, pad))
            x = block(x, key_padding_mask=pad)
        self.train(was)
        return maps


class LengthBatches:
    """Mini-batches of similar length, reshuffled on every pass; each trimmed to its longest row.

    ids (N, T) int64 right-padded with 0, y (N,). Iterating yields ``(ids_batch, y_batch)``,
    which :func:`companion.training.fit` and ``evaluate`` accept in place of a tensor pair.
    Sorting by length inside chunks of 50 batches saves most of the work spent on padding.
    """

    def __init__(self, ids: Tensor, y: Tensor, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
                 pad_id: int = 0):
        self.ids, self.y, self.batch_size, self.shuffle = ids, y, batch_size, shuffle
        self.lengths = (ids != pad_id).sum(1)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        n, bs = len(self.y), self.batch_size
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        chunk = bs * 50
        parts = []
        for s in range(0, n, chunk):
            idx = order[s:s + chunk]
            idx = idx[torch.argsort(self.lengths[idx], stable=True)]
            parts += [idx[i:i + bs] for i in range(0, len(idx), bs)]
        if self.shuffle:
            parts = [parts[i] for i in torch.randperm(len(parts), generator=self.generator).tolist()]
        for idx in parts:
            width = max(1, int(self.lengths[idx].max()))
            yield self.ids[idx, :width], self.y[idx]


# ---------------------------------------------------------------- a causal character language model


def char_corpus() -> str:
    """The text of Python's own help topics (``pydoc_data.topics``, shipped with Python): one str."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


class CharVocab:
    """Characters <-> indices, in sorted order."""

    def __init__(self, text: str):
        self.itos = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> Tensor:
        return torch.tensor([self.stoi[c] for c in text if c in self.stoi], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)


def lm_windows(ids: Tensor, context: int, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` random windows of a token stream ids (T,): inputs X (n, context), targets Y = X shifted by one."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, len(ids) - context - 1, (n,), generator=g)
    offsets = torch.arange(context + 1)
    chunks = ids[start[:, None] + offsets]
    return chunks[:, :-1], chunks[:, 1:]


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of next-token logits (N, T, V) against targets (N, T), averaged over all positions."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class CharLM(nn.Module):
    """A small GPT-style model: ids (N, T) -> next-character logits (N, T, V).

    Embedding plus sinusoidal positions, pre-norm encoder blocks with a causal mask (a
    "decoder-only" transformer is exactly that), a final layer norm and a linear read-out.
    """

    def __init__(self, vocab_size: int, d_model: int = 128, n_heads: int = 4, d_ff: int = 512, n_layers: int = 2,
                 context: int = 64, dropout: float = 0.0):
        super().__init__()
        self.context, self.d_model = context, d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        self.register_buffer("pe", positional_encoding(context, d_model), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, n_heads, d_ff, dropout, norm_first=True)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        ids = ids[:, -self.context:]
        x = self.embed(ids) * math.sqrt(self.d_model) + self.pe[:ids.shape[1]]
        for block in self.blocks:
            x = block(x, causal=True)
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(self, ids: Tensor, n_new: int, temperature: float = 1.0, seed: int = 0) -> Tensor:
        """Extend the 1-D prompt ``ids`` by ``n_new`` sampled tokens; returns the whole 1-D sequence."""
        was = self.training
        self.eval()
        g = torch.Generator(device=self.pe.device).manual_seed(seed)
        out = ids.to(self.pe.device)
        for _ in range(n_new):
            logits = self(out[None, -self.context:])[0, -1]
            out = torch.cat([out, sample_next(logits, temperature, g)[None]])
        self.train(was)
        return out.cpu()


def sample_next(logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Draw one index from softmax(logits / temperature), logits (V,); temperature 0 takes the arg-max.

    Below 1 the distribution sharpens towards the likeliest tokens, above 1 it flattens.
    """
    if temperature <= 0:
        return logits.argmax()
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[0]


# ---------------------------------------------------------------- MiniLM: frozen features and fine-tuning


def _texts_key(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]


def _block_means(hidden_states, mask: Tensor) -> Tensor:
    """Unit-length average token vector after every block: hidden_states (1 + B) x (N, T, W) -> (N, B, W)."""
    from .pretrained import mean_pool

    return torch.stack([F.normalize(mean_pool(h, mask), dim=-1) for h in hidden_states[1:]], dim=1)


def minilm_layer_features(texts: Sequence[str], tokenizer=None, model=None, batch_size: int = 64,
                          progress: bool = True) -> np.ndarray:
    """The average token vector after each of MiniLM's blocks, scaled to unit length: (N, 6, 384) float32.

    ``[:, -1]`` is the usual sentence embedding (:func:`companion.pretrained.embed`). Cached
    with a checksum per list of texts (as float16, which a linear probe does not notice);
    the texts are fed shortest first, so that little of each batch is padding.
    """
    from tqdm.auto import tqdm

    from . import data, pretrained

    def build():
        tok, enc = (tokenizer, model) if model is not None else pretrained.load_minilm()
        device = next(enc.parameters()).device
        order = np.argsort([len(t) for t in texts], kind="stable")
        parts = []
        with torch.no_grad():
            for s in tqdm(range(0, len(texts), batch_size), desc="embedding", disable=not progress):
                batch = tok([texts[i] for i in order[s:s + batch_size]], padding=True, truncation=True,
                            max_length=128, return_tensors="pt").to(device)
                hidden = enc(**batch, output_hidden_states=True).hidden_states
                parts.append(_block_means(hidden, batch["attention_mask"]).cpu())
        feats = torch.cat(parts).numpy().astype(np.float16)
        out = np.empty_like(feats)
        out[order] = feats
        return {"X": out}

    return data.cached_arrays(f"minilm-layers-{len(texts)}-{_texts_key(texts)}", build)["X"].astype(np.float32)


def linear_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                 C: float = 1.0) -> float:
    """Accuracy on (X_test, y_test) of a logistic regression fitted to (X_train, y_train): X (N, F), y (N,)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=2000).fit(X_train, y_train)
    return float(model.score(X_test, y_test))


def token_ids(tokenizer, texts: Sequence[str], max_length: int = 128) -> Tensor:
    """The tokenizer's ids for ``texts``, right-padded with its pad id (0 for MiniLM): (N, T) int64."""
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt")["input_ids"]


class MiniLMClassifier(nn.Module):
    """MiniLM with its top ``n_trainable`` blocks unfrozen and a linear head on every block's average.

    ids (N, T) int64 (the tokenizer's, padding 0) -> logits (N, n_classes). The head reads
    the same features as :func:`minilm_layer_features` (6 unit vectors, concatenated), so a
    head trained on the cached frozen features can be passed in as a starting point.
    Everything below the top blocks is frozen and kept in eval mode (no dropout, no graph).
    """

    def __init__(self, model, n_trainable: int = 1, head: nn.Linear | None = None, n_classes: int = 2):
        super().__init__()
        self.encoder = model
        for p in model.parameters():
            p.requires_grad_(False)
        self.top = list(model.encoder.layer)[len(model.encoder.layer) - n_trainable:] if n_trainable else []
        for block in self.top:
            for p in block.parameters():
                p.requires_grad_(True)
        width = model.config.hidden_size * model.config.num_hidden_layers
        self.head = nn.Linear(width, n_classes)
        if head is not None:
            self.head.load_state_dict(head.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen blocks: no dropout
        for block in self.top:
            block.train(mode)
        return self

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != 0).long()
        hidden = self.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return self.head(_block_means(hidden, mask).flatten(1))


# ---------------------------------------------------------------- pictures


def plot_attention(weights, tokens_q: Sequence[str], tokens_k: Sequence[str] | None = None, ax=None,
                   title: str = "", cmap: str = "viridis"):
    """Heatmap of attention weights (Lq, Lk): rows are queries, columns the keys they attend to."""
    import matplotlib.pyplot as plt

    tokens_k = tokens_q if tokens_k is None else tokens_k
    w = weights.detach().cpu().numpy() if isinstance(weights, Tensor) else np.asarray(weights)
    ax = ax or plt.gca()
    ax.imshow(w, cmap=cmap, vmin=0, vmax=max(float(w.max()), 1e-9))
    ax.set_xticks(range(len(tokens_k)), tokens_k, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tokens_q)), tokens_q, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def attention_explorer(model: TransformerClassifier, vocab, sentences: Sequence[str],
                       labels: Sequence[str] = ("negative", "positive")):
    """Pick or type a sentence, a block and a head; see where each word looks, and the prediction.

    ``model`` a trained :class:`TransformerClassifier`, ``vocab`` a ``companion.text.Vocab``.
    Returns the ``ipywidgets`` container: leave it as a cell's last expression to show it.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    device = next(model.parameters()).device
    n_heads = model.blocks[0].n_heads
    choice = w.Dropdown(options=list(sentences), value=sentences[0], description="sentence",
                        layout=w.Layout(width="95%"))
    typed = w.Text(value="", placeholder="or type your own sentence and press Enter", description="your own",
                   continuous_update=False, layout=w.Layout(width="95%"))
    layer = w.IntSlider(value=len(model.blocks), min=1, max=len(model.blocks), description="block")
    head = w.Dropdown(options=["mean of heads"] + [f"head {h + 1}" for h in range(n_heads)],
                      value="mean of heads", description="head")
    out = w.Output()

    def draw(*_):
        sentence = typed.value.strip() or choice.value
        ids = vocab.encode(sentence)[:model.pe.shape[0]] or [1]
        tokens = [vocab.itos[i] for i in ids]
        x = torch.tensor([ids], device=device)
        maps = model.attention_maps(x)[layer.value - 1][0]  # (H, L, L)
        weights = maps.mean(0) if head.value == "mean of heads" else maps[int(head.value.split()[1]) - 1]
        was = model.training
        model.eval()
        with torch.no_grad():
            p = torch.softmax(model(x), -1)[0].cpu()
        model.train(was)
        with out:
            out.clear_output(wait=True)
            size = 2.5 + 0.3 * len(tokens)
            fig, ax = plt.subplots(figsize=(size, size))
            plot_attention(weights, tokens, ax=ax,
                           title=f"block {layer.value}, {head.value}: {labels[int(p.argmax())]}"
                                 f" ({float(p.max()):.0%})")
            plt.show()

    for control in (choice, typed, layer, head):
        control.observe(draw, names="value")
    box = w.VBox([choice, typed, w.HBox([layer, head]), out])
    draw()
    return box


# ---------------------------------------------------------------- speed


def benchmark_attention(shape: tuple[int, int, int, int] = (8, 4, 128, 64), causal: bool = False,
                        number: int = 20, repeat: int = 5, seed: int = 0) -> dict[str, float]:
    """Time :func:`scaled_dot_product_attention` against ``F.scaled_dot_product_attention``.

    q, k, v of ``shape`` (N, H, L, D), float32 on the CPU. Returns the best of ``repeat``
    means over ``number`` calls: ``{"ours_ms", "torch_ms", "ratio"}`` (ratio = ours / torch).
    """
    import timeit

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    ours = lambda: scaled_dot_product_attention(q, k, v, causal=causal)  # noqa: E731
    theirs = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    with torch.no_grad():
        for f in (ours, theirs):
            f()
        times = {}
        for _ in range(repeat):  # interleaved, so a burst of load on a shared machine hits both
            for name, f in (("ours_ms", ours), ("torch_ms", theirs)):
                t = timeit.timeit(f, number=number) / number * 1e3
                times[name] = min(times.get(name, math.inf), t)
    times["ratio"] = times["ours_ms"] / times["torch_ms"]
    return times
