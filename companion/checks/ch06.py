"""Checks for chapter 6, Transformers and attention.

Each function takes the learner's implementation, compares it with the references in
``companion.attention`` (which the unit tests hold equal to ``F.scaled_dot_product_attention``,
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``), and prints a verdict or
raises :class:`CheckFailed`. ``hidden=True`` runs the extra cases that nbgrader's hidden
tests use. No check calls another exercise's learner function: where an exercise builds
on an earlier one, the learner is asked to use the companion's reference for it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.nn import functional as F

from .. import attention as A
from ..runtime import get_device
from .core import Case, check_function, learner_facing, passed

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g, *shape, dtype=torch.float32, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


# ---------------------------------------------------------------- scaled dot-product attention

def _softmax_then(scores, v):
    return torch.softmax(scores, dim=-1) @ v


def _masked(scores, mask, causal, invert=False, tri=lambda m: m.tril()):
    if causal:
        c = tri(torch.ones(scores.shape[-2], scores.shape[-1], dtype=torch.bool, device=scores.device))
        mask = c if mask is None else mask & c
    if mask is not None:
        scores = scores.masked_fill(mask if invert else ~mask, float("-inf"))
    return scores


def _attention_mistakes() -> dict:
    def scores(q, k):
        return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])

    def no_scale(q, k, v, mask=None, causal=False):
        return _softmax_then(_masked(q @ k.transpose(-2, -1), mask, causal), v)

    def scale_by_d(q, k, v, mask=None, causal=False):
        return _softmax_then(_masked(q @ k.transpose(-2, -1) / q.shape[-1], mask, causal), v)

    def inverted(q, k, v, mask=None, causal=False):
        return _softmax_then(_masked(scores(q, k), mask, False, invert=True) if mask is not None
                             else _masked(scores(q, k), None, causal), v)

    def wrong_axis(q, k, v, mask=None, causal=False):
        return torch.softmax(_masked(scores(q, k), mask, causal), dim=-2) @ v

    def future(q, k, v, mask=None, causal=False):
        return _softmax_then(_masked(scores(q, k), mask, causal, tri=lambda m: m.triu()), v)

    def no_diagonal(q, k, v, mask=None, causal=False):
        return _softmax_then(_masked(scores(q, k), mask, causal, tri=lambda m: m.tril(-1)), v)

    def ignores_mask(q, k, v, mask=None, causal=False):
        return A.scaled_dot_product_attention(q, k, v, None, causal)

    def ignores_causal(q, k, v, mask=None, causal=False):
        return A.scaled_dot_product_attention(q, k, v, mask, False)

    def weights_only(q, k, v, mask=None, causal=False):
        return A.attention_weights(q, k, mask, causal)

    def naive_softmax(q, k, v, mask=None, causal=False):
        s = _masked(scores(q, k), mask, causal)
        e = torch.exp(s)
        return e / e.sum(-1, keepdim=True) @ v

    return {
        "the scores are not scaled: divide q @ k^T by sqrt(d), d = q.shape[-1] (the size of one query)": no_scale,
        "the scores are divided by d; the scale is 1 / sqrt(d)": scale_by_d,
        "the mask's meaning is inverted: True means 'may attend', so fill the scores where the mask is"
        " *False* (use ~mask) with -inf": inverted,
        "the softmax runs over the wrong axis: each query's weights over the keys should sum to 1, so"
        " normalise over the last axis (dim=-1)": wrong_axis,
        "the causal mask lets queries see the future: query i may attend to keys 0..i, the lower"
        " triangle (torch.tril), not the upper one": future,
        "a token may attend to itself under the causal mask: keep the diagonal (torch.tril(..., diagonal=0))":
            no_diagonal,
        "the `mask` argument is ignored": ignores_mask,
        "`causal=True` is ignored: combine the mask with a lower-triangular (Lq, Lk) mask": ignores_causal,
        "this is the attention weights; return the weighted sum of the values, weights @ v": weights_only,
        "exp of large scores overflows: subtract each row's maximum before exponentiating, or use torch.softmax":
            naive_softmax,
    }


@learner_facing
def scaled_dot_product_attention(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``scaled_dot_product_attention(q, k, v, mask=None, causal=False)`` -> (..., Lq, dv)."""
    device = get_device() if device is None else device
    g = _gen(62 if hidden else 61)
    q, k, v = _randn(g, 2, 5, 4), _randn(g, 2, 5, 4), _randn(g, 2, 5, 3)
    real = A.padding_mask(torch.tensor([4, 2]), 5)[:, None, :]  # (2, 1, 5): the last 1 and 3 keys are padding
    cases = [
        Case("one sequence, no mask", (_randn(g, 1, 4, 8), _randn(g, 1, 6, 8), _randn(g, 1, 6, 5))),
        Case("a batch of 2 with a padding mask (2, 1, 5)", (q, k, v), {"mask": real}),
        Case("2 examples x 2 heads, causal", (_randn(g, 2, 2, 6, 8), _randn(g, 2, 2, 6, 8), _randn(g, 2, 2, 6, 8)),
             {"causal": True}),
    ]
    if hidden:
        lengths = torch.tensor([7, 2, 5])
        cases += [
            Case("float64, 3 x 4 heads, padding mask (3, 1, 1, 7) and causal",
                 (_randn(g, 3, 4, 7, 8, dtype=F64), _randn(g, 3, 4, 7, 8, dtype=F64), _randn(g, 3, 4, 7, 6, dtype=F64)),
                 {"mask": A.padding_mask(lengths, 7)[:, None, None, :], "causal": True}),
            Case("more queries than keys, causal", (_randn(g, 2, 6, 4), _randn(g, 2, 3, 4), _randn(g, 2, 3, 4)),
                 {"causal": True}),
            Case("a full (Lq, Lk) mask", (_randn(g, 5, 4), _randn(g, 6, 4), _randn(g, 6, 2)),
                 {"mask": (torch.rand(5, 6, generator=g) < 0.6) | torch.eye(5, 6, dtype=torch.bool)}),
            Case("large scores", (_randn(g, 2, 4, 16, scale=30.0), _randn(g, 2, 4, 16, scale=30.0),
                                  _randn(g, 2, 4, 3))),
            Case("a single query of width 1", (_randn(g, 1, 1, 1), _randn(g, 1, 4, 1), _randn(g, 1, 4, 3))),
            Case("a mask that allows everything", (q, k, v), {"mask": torch.ones(2, 5, 5, dtype=torch.bool)}),
        ]
    mistakes = _attention_mistakes()
    f32 = [c for c in cases if c.args[0].dtype != F64]
    f64 = [c for c in cases if c.args[0].dtype == F64]
    check_function(fn, A.scaled_dot_product_attention, f32, name="scaled_dot_product_attention", device=device,
                   rtol=1e-5, atol=1e-6, hidden=hidden, quiet=True, mistakes=mistakes)
    check_function(fn, A.scaled_dot_product_attention, f64, name="scaled_dot_product_attention", device=device,
                   rtol=1e-10, atol=1e-12, hidden=hidden, quiet=True, mistakes=mistakes)
    passed("scaled_dot_product_attention", len(cases), device, hidden)


# ---------------------------------------------------------------- heads

@learner_facing
def split_merge_heads(split_fn: Callable, merge_fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``split_heads(x, n_heads)`` (N, L, E) -> (N, H, L, E/H) and ``merge_heads(x)`` back."""
    device = get_device() if device is None else device
    g = _gen(64 if hidden else 63)
    shapes = [((2, 5, 12), 3), ((1, 4, 8), 2)]
    if hidden:
        shapes += [((3, 7, 16), 4), ((2, 3, 6), 1), ((2, 3, 6), 6), ((1, 1, 4), 2), ((4, 9, 10), 5)]
    split_cases = [Case(f"x of shape {s}, {h} heads", (_randn(g, *s, dtype=F64 if i % 2 else torch.float32), h))
                   for i, (s, h) in enumerate(shapes)]
    merge_cases = [Case(f"x of shape {(s[0], h, s[1], s[2] // h)}",
                        (_randn(g, s[0], h, s[1], s[2] // h, dtype=F64 if i % 2 else torch.float32),))
                   for i, (s, h) in enumerate(shapes)]

    def plain_split(x, n_heads):
        N, L, E = x.shape
        return x.reshape(N, n_heads, L, E // n_heads)

    def strided_split(x, n_heads):
        N, L, E = x.shape
        return x.reshape(N, L, E // n_heads, n_heads).permute(0, 3, 1, 2)

    def plain_merge(x):
        N, H, L, D = x.shape
        return x.reshape(N, L, H * D)

    check_function(split_fn, A.split_heads, split_cases, name="split_heads", device=device, rtol=0, atol=0,
                   hidden=hidden, quiet=True,
                   mistakes={"a plain reshape to (N, H, L, D) cuts the sequence into pieces instead of splitting"
                             " each token's features: reshape to (N, L, H, D), then .transpose(1, 2)": plain_split,
                             "head h should get one contiguous block of features, h*D .. (h+1)*D - 1: reshape"
                             " to (N, L, H, D), not (N, L, D, H)": strided_split})
    check_function(merge_fn, A.merge_heads, merge_cases, name="merge_heads", device=device, rtol=0, atol=0,
                   hidden=hidden, quiet=True,
                   mistakes={"a plain reshape mixes the heads with the positions: bring the heads next to the"
                             " features first, .transpose(1, 2), then reshape to (N, L, H * D)": plain_merge})
    passed("split_heads and merge_heads", len(split_cases) + len(merge_cases), device, hidden)


# ---------------------------------------------------------------- multi-head attention

def _mha_params(g, E: int, dtype=torch.float32) -> dict:
    s = 1 / math.sqrt(E)
    return {"in_proj_weight": _randn(g, 3 * E, E, dtype=dtype, scale=s), "in_proj_bias": _randn(g, 3 * E, dtype=dtype, scale=0.1),
            "out_proj.weight": _randn(g, E, E, dtype=dtype, scale=s), "out_proj.bias": _randn(g, E, dtype=dtype, scale=0.1)}


def _pad(lengths, L):
    return ~A.padding_mask(torch.tensor(lengths), L)  # True at padding, PyTorch's convention


@learner_facing
def multi_head_attention(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``multi_head_attention(query, key, value, params, n_heads, key_padding_mask=None)`` -> (N, Lq, E)."""
    device = get_device() if device is None else device
    g = _gen(66 if hidden else 65)
    x = _randn(g, 2, 5, 8)
    cases = [
        Case("self-attention, 2 heads", (x, x, x, _mha_params(g, 8), 2)),
        Case("self-attention, 4 heads, padding (lengths 5 and 3)", (x, x, x, _mha_params(g, 8), 4),
             {"key_padding_mask": _pad([5, 3], 5)}),
    ]
    kv = _randn(g, 2, 6, 8)
    cases.append(Case("cross-attention: 3 queries, 6 keys, padding", (_randn(g, 2, 3, 8), kv, kv, _mha_params(g, 8), 2),
                      {"key_padding_mask": _pad([4, 6], 6)}))
    if hidden:
        y = _randn(g, 3, 7, 12, dtype=F64)
        kv64 = _randn(g, 3, 4, 12, dtype=F64)
        cases += [
            Case("float64 self-attention, 3 heads, padding", (y, y, y, _mha_params(g, 12, F64), 3),
                 {"key_padding_mask": _pad([7, 1, 4], 7)}),
            Case("float64 cross-attention, 6 heads", (y, kv64, kv64, _mha_params(g, 12, F64), 6)),
            Case("one head", (x, x, x, _mha_params(g, 8), 1)),
            Case("as many heads as features", (x, x, x, _mha_params(g, 8), 8), {"key_padding_mask": _pad([2, 5], 5)}),
            Case("one token", (x[:1, :1], x[:1, :1], x[:1, :1], _mha_params(g, 8), 2)),
            Case("different keys and values", (_randn(g, 2, 3, 8), kv, _randn(g, 2, 6, 8), _mha_params(g, 8), 2)),
        ]

    def with_params(p, change):
        return {**p, **change(p)}

    def no_out_proj(query, key, value, params, n_heads, key_padding_mask=None):
        q, k, v = A._projections(query, key, value, params, n_heads)
        return A.merge_heads(A.scaled_dot_product_attention(q, k, v, A._key_mask(key_padding_mask)))

    def mask_as_is(query, key, value, params, n_heads, key_padding_mask=None):
        q, k, v = A._projections(query, key, value, params, n_heads)
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        out = A.merge_heads(A.scaled_dot_product_attention(q, k, v, mask))
        return F.linear(out, params["out_proj.weight"], params["out_proj.bias"])

    def untransposed(query, key, value, params, n_heads, key_padding_mask=None):
        p = with_params(params, lambda p: {"in_proj_weight": torch.cat([w.T for w in p["in_proj_weight"].chunk(3)]),
                                           "out_proj.weight": p["out_proj.weight"].T})
        return A.multi_head_attention(query, key, value, p, n_heads, key_padding_mask)

    def swapped_qk(query, key, value, params, n_heads, key_padding_mask=None):
        w, b = params["in_proj_weight"].chunk(3), params["in_proj_bias"].chunk(3)
        p = {**params, "in_proj_weight": torch.cat([w[1], w[0], w[2]]), "in_proj_bias": torch.cat([b[1], b[0], b[2]])}
        return A.multi_head_attention(query, key, value, p, n_heads, key_padding_mask)

    def plain_reshape(query, key, value, params, n_heads, key_padding_mask=None):
        def split(t):
            N, L, E = t.shape
            return t.reshape(N, n_heads, L, E // n_heads)

        def merge(t):
            N, H, L, D = t.shape
            return t.reshape(N, L, H * D)
        w, b = params["in_proj_weight"].chunk(3), params["in_proj_bias"].chunk(3)
        q, k, v = (split(F.linear(t, wi, bi)) for t, wi, bi in zip((query, key, value), w, b))
        out = merge(A.scaled_dot_product_attention(q, k, v, A._key_mask(key_padding_mask)))
        return F.linear(out, params["out_proj.weight"], params["out_proj.bias"])

    def no_bias(query, key, value, params, n_heads, key_padding_mask=None):
        p = {**params, "in_proj_bias": torch.zeros_like(params["in_proj_bias"])}
        return A.multi_head_attention(query, key, value, p, n_heads, key_padding_mask)

    mistakes = {
        "the padding mask is used as it is: key_padding_mask is True at *padding* (PyTorch's convention),"
        " while A.scaled_dot_product_attention wants True where attention is allowed, so pass"
        " ~key_padding_mask reshaped to (N, 1, 1, Lk)": mask_as_is,
        "the output projection is missing: finish with out @ W_out.T + b_out (params['out_proj.weight'],"
        " params['out_proj.bias'])": no_out_proj,
        "a linear layer computes x @ W.T + b (F.linear(x, W, b)); the weights are used untransposed": untransposed,
        "in_proj_weight stacks W_q, W_k, W_v in that order: rows 0..E-1 project the queries,"
        " E..2E-1 the keys, 2E..3E-1 the values": swapped_qk,
        "the heads are split or merged with a plain reshape: reshape to (N, L, H, D) and transpose(1, 2)"
        " (A.split_heads and A.merge_heads do it right)": plain_reshape,
        "the projection biases (params['in_proj_bias'], split in three like the weights) are missing": no_bias,
    }
    f32 = [c for c in cases if c.args[0].dtype != F64]
    f64 = [c for c in cases if c.args[0].dtype == F64]
    check_function(fn, A.multi_head_attention, f32, name="multi_head_attention", device=device, rtol=1e-5,
                   atol=1e-6, hidden=hidden, quiet=True, mistakes=mistakes)
    check_function(fn, A.multi_head_attention, f64, name="multi_head_attention", device=device, rtol=1e-10,
                   atol=1e-12, hidden=hidden, quiet=True, mistakes=mistakes)
    passed("multi_head_attention (the reference equals nn.MultiheadAttention)", len(cases), device, hidden)


# ---------------------------------------------------------------- positional encoding

def _pe_from(angle_of, order):
    def pe(length, d_model):
        pos = torch.arange(length, dtype=F64)[:, None]
        j = torch.arange(d_model, dtype=F64)
        return order(pos, j, d_model, angle_of).float()
    return pe


def _interleave(pos, j, d, angle_of):
    a = angle_of(pos, j, d)
    even = (torch.arange(d) % 2 == 0)
    return torch.where(even, torch.sin(a), torch.cos(a))


def _pe_mistakes() -> dict:
    right = lambda pos, j, d: pos / 10000 ** (2 * torch.div(j, 2, rounding_mode="floor") / d)  # noqa: E731

    def concatenated(length, d_model):
        pos = torch.arange(length, dtype=F64)[:, None]
        two_i = torch.arange(0, d_model, 2, dtype=F64)
        a = pos / 10000 ** (two_i / d_model)
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)[:, :d_model].float()

    def swapped(length, d_model):
        pos = torch.arange(length, dtype=F64)[:, None]
        a = right(pos, torch.arange(d_model, dtype=F64), d_model)
        even = (torch.arange(d_model) % 2 == 0)
        return torch.where(even, torch.cos(a), torch.sin(a)).float()

    return {
        "sine and cosine are concatenated ([sin | cos]); the paper interleaves them: even columns 0, 2, 4, ..."
        " hold the sines, odd columns 1, 3, 5, ... the cosines (pe[:, 0::2] = sin, pe[:, 1::2] = cos)": concatenated,
        "sine and cosine are swapped: even columns get the sine, odd columns the cosine": swapped,
        "each column got its own frequency: columns 2i and 2i+1 share one, 1 / 10000^(2i / d_model)":
            _pe_from(lambda pos, j, d: pos / 10000 ** (j / d), _interleave),
        "the exponent is 2i / d_model, with 2i the even column index (0, 2, 4, ...), not i / d_model":
            _pe_from(lambda pos, j, d: pos / 10000 ** (torch.div(j, 2, rounding_mode="floor") / d), _interleave),
        "the position should be *divided* by 10000^(2i / d_model)":
            _pe_from(lambda pos, j, d: pos * 10000 ** (2 * torch.div(j, 2, rounding_mode="floor") / d), _interleave),
    }


@learner_facing
def positional_encoding(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``positional_encoding(length, d_model)`` -> (length, d_model) float32."""
    sizes = [(4, 6), (10, 16)]
    if hidden:
        sizes += [(1, 2), (50, 64), (7, 5), (128, 32), (3, 1), (64, 128)]
    cases = [Case(f"length {n}, d_model {d}", (n, d)) for n, d in sizes]
    # float32 arithmetic on positions near 128 is good to about 1e-4; the mistakes are off by far more
    check_function(fn, A.positional_encoding, cases, name="positional_encoding", rtol=0, atol=5e-4, hidden=hidden,
                   mistakes=_pe_mistakes())


# ---------------------------------------------------------------- the encoder block

def _encoder_params(g, E: int, d_ff: int, dtype=torch.float32) -> dict:
    p = {f"self_attn.{k}": v for k, v in _mha_params(g, E, dtype).items()}
    p.update({"linear1.weight": _randn(g, d_ff, E, dtype=dtype, scale=1 / math.sqrt(E)),
              "linear1.bias": _randn(g, d_ff, dtype=dtype, scale=0.1),
              "linear2.weight": _randn(g, E, d_ff, dtype=dtype, scale=1 / math.sqrt(d_ff)),
              "linear2.bias": _randn(g, E, dtype=dtype, scale=0.1),
              "norm1.weight": 1 + _randn(g, E, dtype=dtype, scale=0.1), "norm1.bias": _randn(g, E, dtype=dtype, scale=0.1),
              "norm2.weight": 1 + _randn(g, E, dtype=dtype, scale=0.1), "norm2.bias": _randn(g, E, dtype=dtype, scale=0.1)})
    return p


def _block_reference(x, params, n_heads, norm_first=False, key_padding_mask=None):
    return A.encoder_block(x, params, n_heads, norm_first, key_padding_mask)


def _block_mistakes() -> dict:
    def variant(post=None, pre=None, act=F.relu, eps=1e-5, same_norm=False, use_mask=True):
        def block(x, params, n_heads, norm_first=False, key_padding_mask=None):
            E = x.shape[-1]
            attn = {k[len("self_attn."):]: v for k, v in params.items() if k.startswith("self_attn.")}
            kpm = key_padding_mask if use_mask else None

            def sa(h):
                return A.multi_head_attention(h, h, h, attn, n_heads, kpm)

            def ff(h):
                return F.linear(act(F.linear(h, params["linear1.weight"], params["linear1.bias"])),
                                params["linear2.weight"], params["linear2.bias"])

            def norm(h, i):
                i = 1 if same_norm else i
                return F.layer_norm(h, (E,), params[f"norm{i}.weight"], params[f"norm{i}.bias"], eps)

            first = pre if norm_first else post
            return first(x, sa, ff, norm)
        return block

    def post_norm(x, sa, ff, norm):
        x = norm(x + sa(x), 1)
        return norm(x + ff(x), 2)

    def pre_norm(x, sa, ff, norm):
        x = x + sa(norm(x, 1))
        return x + ff(norm(x, 2))

    def post_no_residual(x, sa, ff, norm):
        x = norm(sa(x), 1)
        return norm(ff(x), 2)

    def pre_no_residual(x, sa, ff, norm):
        x = sa(norm(x, 1))
        return ff(norm(x, 2))

    def pre_norm_outside(x, sa, ff, norm):  # normalises the residual stream itself
        x = norm(x, 1)
        x = x + sa(x)
        x = norm(x, 2)
        return x + ff(x)

    return {
        "pre-norm and post-norm are swapped: norm_first=False (post-norm) is norm1(x + attn(x)), then"
        " norm2(x + ffn(x)); norm_first=True (pre-norm) is x + attn(norm1(x)), then x + ffn(norm2(x))":
            variant(post=pre_norm, pre=post_norm),
        "norm_first=True should give the pre-norm block, x + attn(norm1(x)) then x + ffn(norm2(x))":
            variant(post=post_norm, pre=post_norm),
        "norm_first=False should give the post-norm block, norm1(x + attn(x)) then norm2(x + ffn(x))":
            variant(post=pre_norm, pre=pre_norm),
        "pre-norm adds the sublayer to the *unnormalised* x: x = x + attn(norm1(x)); normalising x itself"
        " first drops the residual path": variant(post=post_norm, pre=pre_norm_outside),
        "the residual connections are missing: add each sublayer's input back to its output":
            variant(post=post_no_residual, pre=pre_no_residual),
        "layer norm's epsilon is PyTorch's 1e-5 here (the guide's Keras code uses 1e-6)":
            variant(post=post_norm, pre=pre_norm, eps=1e-6),
        "the feed-forward network of nn.TransformerEncoderLayer uses ReLU": variant(post=post_norm, pre=pre_norm,
                                                                                   act=F.gelu),
        "each layer norm has its own parameters: norm1 around the attention, norm2 around the feed-forward"
        " network": variant(post=post_norm, pre=pre_norm, same_norm=True),
        "the key_padding_mask is not passed on to the attention": variant(post=post_norm, pre=pre_norm,
                                                                          use_mask=False),
    }


@learner_facing
def encoder_block(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``encoder_block(x, params, n_heads, norm_first=False, key_padding_mask=None)`` -> (N, L, E)."""
    device = get_device() if device is None else device
    g = _gen(68 if hidden else 67)
    x = _randn(g, 2, 5, 8)
    p = _encoder_params(g, 8, 16)
    cases = [
        Case("post-norm, 2 heads", (x, p, 2)),
        Case("pre-norm, 2 heads", (x, p, 2), {"norm_first": True}),
        Case("float64 post-norm with padding (lengths 5 and 2)", (x.double(), {k: v.double() for k, v in p.items()}, 4),
             {"key_padding_mask": _pad([5, 2], 5)}),
    ]
    if hidden:
        y = _randn(g, 3, 6, 12, dtype=F64, scale=2.0)
        p64 = _encoder_params(g, 12, 20, F64)
        cases += [
            Case("float64 post-norm, 3 heads", (y, p64, 3)),
            Case("float64 pre-norm, 4 heads, padding", (y, p64, 4), {"norm_first": True,
                                                                     "key_padding_mask": _pad([6, 3, 1], 6)}),
            Case("float64 post-norm, padding", (y, p64, 2), {"key_padding_mask": _pad([2, 6, 5], 6)}),
            Case("pre-norm with padding", (x, p, 2), {"norm_first": True, "key_padding_mask": _pad([1, 4], 5)}),
            Case("one token, pre-norm", (x[:1, :1], p, 2), {"norm_first": True}),
        ]
    mistakes = _block_mistakes()
    f32 = [c for c in cases if c.args[0].dtype != F64]
    f64 = [c for c in cases if c.args[0].dtype == F64]
    check_function(fn, _block_reference, f32, name="encoder_block", device=device, rtol=1e-4, atol=1e-5,
                   hidden=hidden, quiet=True, mistakes=mistakes)
    check_function(fn, _block_reference, f64, name="encoder_block", device=device, rtol=1e-9, atol=1e-11,
                   hidden=hidden, quiet=True, mistakes=mistakes)
    passed("encoder_block (the reference equals nn.TransformerEncoderLayer)", len(cases), device, hidden)
