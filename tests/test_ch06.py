"""Chapter 6's references against PyTorch in float64, and its checks against right and wrong answers.

- scaled dot-product attention vs F.scaled_dot_product_attention (values and gradients) over
  random shapes, padding masks, causal masks and both (hypothesis);
- split/merge heads; multi-head attention vs nn.MultiheadAttention with copied weights,
  key_padding_mask included; the encoder block vs nn.TransformerEncoderLayer, post-norm and
  pre-norm, with copied weights;
- sinusoidal positions against the paper's formula written out entry by entry;
- the classifier and the character model (padding, causality), the batching helper;
- MiniLM: the weight file's checksum, 22,713,216 parameters, a normalised 384-d embedding,
  the checksummed embedding cache, the fine-tuning wrapper;
- each check passes the reference (visible and hidden) and fails a plausible wrong
  implementation with a message that names the mistake; the attention explorer redraws.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from companion import attention as A  # noqa: E402
from companion.checks import CheckFailed  # noqa: E402
from companion.checks import ch06 as check  # noqa: E402

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=F64)


# ====================================================================== NumPy self-attention

def test_numpy_self_attention_matches_torch_and_rows_sum_to_one():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 8))
    out, w = A.numpy_self_attention(X)
    assert out.shape == (5, 8) and w.shape == (5, 5)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    Xt = torch.as_tensor(X)
    np.testing.assert_allclose(out, F.scaled_dot_product_attention(Xt, Xt, Xt).numpy(), rtol=1e-12, atol=1e-12)
    big, _ = A.numpy_self_attention(X * 100)  # scores of 1e4: the max-subtraction keeps it finite
    assert np.isfinite(big).all()


# ====================================================================== scaled dot-product attention

@st.composite
def attention_inputs(draw):
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    lq, lk = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    d, dv = draw(st.integers(1, 9)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    q, k, v = randn(g, *lead, lq, d) * 2, randn(g, *lead, lk, d) * 2, randn(g, *lead, lk, dv)
    kind = draw(st.sampled_from(["none", "padding", "full", "causal", "padding+causal"]))
    mask, causal = None, "causal" in kind
    if kind.startswith("padding"):
        lengths = torch.randint(1, lk + 1, (*lead,) if lead else (), generator=g)
        mask = (torch.arange(lk) < lengths[..., None])[..., None, :]  # (*lead, 1, lk)
    elif kind == "full":
        mask = torch.rand(*lead, lq, lk, generator=g) < 0.6
        mask[..., 0] = True  # every query may attend to something
    return q, k, v, mask, causal


def torch_sdpa(q, k, v, mask=None, causal=False):
    if causal:
        tri = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        mask = tri if mask is None else mask & tri
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@settings(max_examples=150, deadline=None)
@given(attention_inputs())
def test_attention_matches_torch_values_and_gradients(inputs):
    q, k, v, mask, causal = inputs
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    ours, theirs = A.scaled_dot_product_attention(q, k, v, mask, causal), torch_sdpa(q, k, v, mask, causal)
    assert ours.shape == theirs.shape and ours.dtype == F64
    torch.testing.assert_close(ours, theirs, **TOL)
    g_out = torch.randn(ours.shape, generator=gen(1), dtype=F64)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), g_out), torch.autograd.grad(theirs, (q, k, v), g_out)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("lq, lk", [(1, 1), (4, 4), (6, 3), (3, 6)])
def test_causal_flag_equals_torch_is_causal(lq, lk):
    g = gen(lq * 10 + lk)
    q, k, v = randn(g, 2, 3, lq, 4), randn(g, 2, 3, lk, 4), randn(g, 2, 3, lk, 5)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL)


def test_attention_weights_respect_the_mask_and_sum_to_one():
    g = gen(3)
    q, k = randn(g, 2, 5, 4), randn(g, 2, 6, 4)
    mask = A.padding_mask(torch.tensor([6, 2]), 6)[:, None, :]
    w = A.attention_weights(q, k, mask, causal=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5, dtype=F64), **TOL)
    assert (w[1, :, 2:] == 0).all(), "padded keys get exactly zero weight"
    assert (w.triu(1) == 0).all(), "no query looks at a later key"


def test_a_query_with_nothing_to_attend_to_gets_zeros_like_torch():
    g = gen(4)
    q, k, v = randn(g, 1, 3, 4), randn(g, 1, 3, 4), randn(g, 1, 3, 2)
    mask = torch.tensor([[[True, False, True], [False, False, False], [True, True, True]]])
    ours = A.scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL)
    assert (ours[0, 1] == 0).all()


def test_attention_rejects_a_float_mask():
    g = gen(5)
    q = randn(g, 2, 3)
    with pytest.raises(TypeError, match="bool"):
        A.scaled_dot_product_attention(q, q, q, mask=torch.ones(2, 2))


def test_padding_and_causal_masks():
    assert A.padding_mask(torch.tensor([2, 0, 3]), 4).tolist() == [[True, True, False, False], [False] * 4,
                                                                   [True, True, True, False]]
    assert A.causal_mask(2, 3).tolist() == [[True, False, False], [True, True, False]]


def test_benchmark_reports_both_times():
    times = A.benchmark_attention((2, 2, 16, 8), number=2, repeat=1)
    assert set(times) == {"ours_ms", "torch_ms", "ratio"} and times["ratio"] > 0


# ====================================================================== heads

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 5))
def test_split_and_merge_heads(n, length, heads, width):
    x = randn(gen(n * 1000 + length * 100 + heads * 10 + width), n, length, heads * width)
    s = A.split_heads(x, heads)
    assert s.shape == (n, heads, length, width)
    for h in range(heads):  # head h holds features h*D .. (h+1)*D - 1 of every token
        assert torch.equal(s[:, h], x[..., h * width:(h + 1) * width])
    assert torch.equal(A.merge_heads(s), x)


def test_split_heads_rejects_an_uneven_split():
    with pytest.raises(ValueError, match="heads"):
        A.split_heads(torch.zeros(1, 2, 10), 3)


# ====================================================================== multi-head attention

def _mha(E, H, seed):
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(E, H, batch_first=True).double()
    with torch.no_grad():  # PyTorch initialises the biases to 0: make them matter
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    return m


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.sampled_from([(4, 1), (4, 2), (6, 3), (8, 8)]),
       st.booleans(), st.booleans(), st.integers(0, 10_000))
def test_multi_head_attention_matches_torch(n, lq, lk, eh, padded, self_attention, seed):
    E, H = eh
    mha, g = _mha(E, H, seed), gen(seed)
    query = randn(g, n, lq, E)
    key = query if self_attention else randn(g, n, lk, E)
    value = query if self_attention else randn(g, n, lk, E)
    lk = key.shape[1]
    kpm = None
    if padded:
        kpm = torch.arange(lk) >= torch.randint(1, lk + 1, (n,), generator=g)[:, None]  # True = padding
    ref_out, ref_w = mha(query, key, value, key_padding_mask=kpm, average_attn_weights=False)
    out, w = A.multi_head_attention(query, key, value, mha.state_dict(), H, kpm, need_weights=True)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(w, ref_w, **TOL)
    assert torch.equal(A.multi_head_attention(query, key, value, mha.state_dict(), H, kpm), out)


def test_causal_multi_head_attention_matches_torch_attn_mask():
    mha, g = _mha(8, 2, 1), gen(1)
    x = randn(g, 2, 5, 8)
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)  # nn.MultiheadAttention: True = NOT allowed
    ref, _ = mha(x, x, x, attn_mask=future)
    torch.testing.assert_close(A.multi_head_attention(x, x, x, mha.state_dict(), 2, causal=True), ref, **TOL)


def test_multi_head_attention_module_shares_state_dicts_with_torch():
    torch.manual_seed(0)
    ours = A.MultiHeadAttention(12, 3).double()
    theirs = nn.MultiheadAttention(12, 3, batch_first=True).double()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    x = randn(gen(2), 2, 4, 12)
    kpm = torch.tensor([[False] * 4, [False, False, True, True]])
    torch.testing.assert_close(ours(x, key_padding_mask=kpm), theirs(x, x, x, key_padding_mask=kpm)[0], **TOL)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


# ====================================================================== positional encoding

@pytest.mark.parametrize("length, d_model", [(1, 1), (1, 2), (5, 3), (10, 16), (50, 7), (100, 64)])
def test_positional_encoding_is_the_papers_formula(length, d_model):
    pe = A.positional_encoding(length, d_model)
    assert pe.shape == (length, d_model) and pe.dtype == torch.float32
    expected = np.zeros((length, d_model))
    for p in range(length):
        for j in range(d_model):
            i2 = j - j % 2
            angle = p / 10000 ** (i2 / d_model)
            expected[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    np.testing.assert_allclose(pe.numpy(), expected, rtol=0, atol=1e-6)


def test_positional_encoding_relative_shift_is_a_rotation():
    """PE[p + k] = PE[p] @ R_k: each (sin, cos) pair turns by a fixed angle, whatever the position p."""
    d, k = 16, 7
    pe = A.positional_encoding(60, d).double()
    R = torch.zeros(d, d, dtype=F64)
    for i2 in range(0, d, 2):
        a = k / 10000 ** (i2 / d)
        R[i2:i2 + 2, i2:i2 + 2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    torch.testing.assert_close(pe[:50] @ R, pe[k:50 + k], rtol=0, atol=1e-6)


# ====================================================================== encoder block

def _layer(E, H, d_ff, norm_first, seed):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(E, H, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first).double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return layer


@settings(max_examples=40, deadline=None)
@given(st.booleans(), st.integers(1, 3), st.integers(1, 7), st.sampled_from([(8, 2), (12, 3), (6, 6)]),
       st.sampled_from(["none", "padding", "causal"]), st.integers(0, 10_000))
def test_encoder_block_matches_torch(norm_first, n, length, eh, masking, seed):
    E, H = eh
    layer, g = _layer(E, H, 2 * E + 3, norm_first, seed), gen(seed)
    layer.train()  # dropout is 0; train mode keeps PyTorch off its fused inference path
    x = randn(g, n, length, E) * 2
    if masking == "padding":
        kpm = torch.arange(length) >= torch.randint(1, length + 1, (n,), generator=g)[:, None]
        ref = layer(x, src_key_padding_mask=kpm)
        ours = A.encoder_block(x, layer.state_dict(), H, norm_first, key_padding_mask=kpm)
    elif masking == "causal":
        ref = layer(x, src_mask=nn.Transformer.generate_square_subsequent_mask(length, dtype=F64), is_causal=True)
        ours = A.encoder_block(x, layer.state_dict(), H, norm_first, causal=True)
    else:
        ref, ours = layer(x), A.encoder_block(x, layer.state_dict(), H, norm_first)
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_module_loads_torch_weights_and_matches_its_inference_path(norm_first):
    layer = _layer(16, 4, 32, norm_first, 3).float().eval()
    block = A.EncoderBlock(16, 4, 32, norm_first=norm_first).eval()
    block.load_state_dict(layer.state_dict())
    assert sorted(block.state_dict()) == sorted(A.ENCODER_KEYS)
    x = torch.randn(3, 6, 16, generator=gen(0))
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] + [True] * 5])
    with torch.no_grad():
        ref, ours = layer(x, src_key_padding_mask=kpm), block(x, kpm)
    real = ~kpm  # PyTorch's fused path may leave padded rows at anything
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-4, atol=1e-5)


def test_encoder_block_dropout_acts_only_in_training():
    torch.manual_seed(0)
    block = A.EncoderBlock(8, 2, 16, dropout=0.5)
    x = torch.randn(2, 5, 8)
    block.train()
    assert not torch.allclose(block(x), block(x))
    block.eval()
    torch.testing.assert_close(block(x), A.encoder_block(x, dict(block.named_parameters()), 2))


# ====================================================================== models

def test_classifier_ignores_padding_and_reports_attention():
    torch.manual_seed(0)
    model = A.TransformerClassifier(50, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=12).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    longer = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(longer), rtol=1e-5, atol=1e-6)
    maps = model.attention_maps(ids)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 5, 5)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 2, 5))
    assert (maps[0][0, :, :, 3:] == 0).all(), "no attention on padding"


def test_char_model_is_causal_and_generates():
    torch.manual_seed(0)
    model = A.CharLM(20, d_model=16, n_heads=2, d_ff=32, n_layers=2, context=8).eval()
    ids = torch.randint(0, 20, (2, 8), generator=gen(0))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 20
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 8, 20)
    torch.testing.assert_close(a[:, :5], b[:, :5])  # the future does not leak into the past
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    out = model.generate(ids[0, :3], 20, temperature=0.8, seed=1)
    assert out.shape == (23,) and torch.equal(out[:3], ids[0, :3])
    assert torch.equal(out, model.generate(ids[0, :3], 20, temperature=0.8, seed=1))
    greedy = model.generate(ids[0, :3], 5, temperature=0)
    with torch.no_grad():
        assert greedy[3] == model(ids[:1, :3])[0, -1].argmax()


def test_sample_next_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    assert int(A.sample_next(logits, 0)) == 0
    g = gen(0)
    shares = []
    for temperature in (0.3, 1.0, 5.0):
        draws = torch.stack([A.sample_next(logits, temperature, g) for _ in range(2000)])
        expected = torch.softmax(logits / temperature, -1)[0].item()
        shares.append((draws == 0).float().mean().item())
        assert abs(shares[-1] - expected) < 0.04
    assert shares[0] > 0.9 > shares[1] > shares[2] > 0.25, "low temperature sharpens, high flattens"


def test_char_corpus_vocab_and_windows():
    text = A.char_corpus()
    assert len(text) > 100_000
    vocab = A.CharVocab(text)
    ids = vocab.encode(text[:500])
    assert vocab.decode(ids) == text[:500]
    X, Y = A.lm_windows(ids, context=16, n=10, seed=0)
    assert X.shape == Y.shape == (10, 16)
    assert torch.equal(X[:, 1:], Y[:, :-1])


def test_length_batches_cover_every_row_once_and_trim_padding():
    g = gen(0)
    lengths = torch.randint(1, 20, (103,), generator=g)
    ids = (torch.arange(20) < lengths[:, None]).long() * torch.randint(1, 9, (103, 20), generator=g)
    y = torch.arange(103)
    batches = A.LengthBatches(ids, y, batch_size=8, seed=0)
    seen = []
    for xb, yb in batches:
        assert xb.shape[1] == int(lengths[yb].max())
        assert torch.equal(xb, ids[yb, :xb.shape[1]])
        seen += yb.tolist()
    assert sorted(seen) == list(range(103)) and len(batches) == 13
    first_pass = [yb.tolist() for _, yb in batches]
    assert first_pass != [yb.tolist() for _, yb in batches], "reshuffled on every pass"


# ====================================================================== MiniLM

@pytest.fixture(scope="module")
def minilm():
    from companion import pretrained

    return pretrained.load_minilm()


def test_minilm_weights_checksum_parameters_and_embedding(minilm):
    import hashlib

    from companion import pretrained

    path = pretrained.verify_minilm()
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    tokenizer, model = minilm
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    emb = pretrained.embed(["A gripping, beautifully acted film.", "Dull."], tokenizer=tokenizer, model=model,
                           progress=False)
    assert emb.shape == (2, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2), rtol=0, atol=1e-5)


def test_minilm_layer_features_are_cached_with_a_checksum(minilm, tmp_cache, monkeypatch):
    from companion import pretrained

    tokenizer, model = minilm
    texts = ["a fine film", "the worst two hours of my life, and I have seen many bad films", "ok"]
    first = A.minilm_layer_features(texts, tokenizer, model, batch_size=2, progress=False)
    assert first.shape == (3, 6, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=-1), 1.0, atol=2e-3)
    sentence = pretrained.embed(texts, tokenizer=tokenizer, model=model, progress=False).numpy()
    np.testing.assert_allclose(first[:, -1], sentence, rtol=0, atol=2e-3)  # the last block is the usual embedding
    assert len(list(tmp_cache.glob("minilm-layers-3-*.sha256"))) == 1
    monkeypatch.setattr(A, "_block_means", lambda *a, **k: pytest.fail("should come from the cache"))
    np.testing.assert_array_equal(A.minilm_layer_features(texts, tokenizer, model, progress=False), first)


def test_linear_probe_separates_separable_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int)
    assert A.linear_probe(X[:150], y[:150], X[150:], y[150:], C=100.0) > 0.95


def test_minilm_classifier_unfreezes_only_the_top_blocks(minilm):
    import copy

    tokenizer, model = minilm
    model = copy.deepcopy(model)
    head = nn.Linear(6 * 384, 2)
    clf = A.MiniLMClassifier(model, n_trainable=2, head=head).train()
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("encoder.encoder.layer.4.", "encoder.encoder.layer.5.", "head."))
                             for n in trainable)
    assert any(n.startswith("encoder.encoder.layer.4.") for n in trainable)
    assert not clf.encoder.embeddings.training and not clf.encoder.encoder.layer[3].training and clf.top[0].training
    texts = ["a fine film", "not good at all, sadly"]
    clf.eval()
    with torch.no_grad():
        logits = clf(A.token_ids(tokenizer, texts))
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        hidden = model(**batch, output_hidden_states=True).hidden_states
        expected = head(A._block_means(hidden, batch["attention_mask"]).flatten(1))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


# ====================================================================== checks

REFERENCE_CHECKS = [
    (check.scaled_dot_product_attention, (A.scaled_dot_product_attention,)),
    (check.split_merge_heads, (A.split_heads, A.merge_heads)),
    (check.multi_head_attention, (A.multi_head_attention,)),
    (check.positional_encoding, (A.positional_encoding,)),
    (check.encoder_block, (A.encoder_block,)),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("chk, fns", REFERENCE_CHECKS, ids=[c[0].__name__ for c in REFERENCE_CHECKS])
def test_references_pass_their_checks(chk, fns, hidden, capsys):
    assert chk(*fns, hidden=hidden) is None
    out = capsys.readouterr()
    assert "\u2714" in out.out and out.err == ""


def test_torchs_own_functions_pass_the_checks():
    def sdpa(q, k, v, mask=None, causal=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal) if mask is None or not causal \
            else torch_sdpa(q, k, v, mask, causal)

    check.scaled_dot_product_attention(sdpa, hidden=True)

    def mha(query, key, value, params, n_heads, key_padding_mask=None):
        E = query.shape[-1]
        m = nn.MultiheadAttention(E, n_heads, batch_first=True).to(query.dtype)
        m.load_state_dict(params)
        return m(query, key, value, key_padding_mask=key_padding_mask, need_weights=False)[0]

    check.multi_head_attention(mha, hidden=True)

    def block(x, params, n_heads, norm_first=False, key_padding_mask=None):
        E, d_ff = x.shape[-1], params["linear1.weight"].shape[0]
        layer = nn.TransformerEncoderLayer(E, n_heads, d_ff, dropout=0.0, batch_first=True,
                                           norm_first=norm_first).to(x.dtype)
        layer.load_state_dict(params)
        return layer(x, src_key_padding_mask=key_padding_mask)

    check.encoder_block(block, hidden=True)


def _no_scale(q, k, v, mask=None, causal=False):
    return A.scaled_dot_product_attention(q * math.sqrt(q.shape[-1]), k, v, mask, causal)


def _inverted(q, k, v, mask=None, causal=False):
    return A.scaled_dot_product_attention(q, k, v, None if mask is None else ~mask, causal)


def _wrong_axis(q, k, v, mask=None, causal=False):
    s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, dim=-2) @ v


def _plain_split(x, n_heads):
    N, L, E = x.shape
    return x.reshape(N, n_heads, L, E // n_heads)


def _concatenated_pe(length, d_model):
    pe = A.positional_encoding(length, d_model)
    return torch.cat([pe[:, 0::2], pe[:, 1::2]], dim=1)


def _mask_as_is(query, key, value, params, n_heads, key_padding_mask=None):
    return A.multi_head_attention(query, key, value, params, n_heads,
                                  None if key_padding_mask is None else ~key_padding_mask)


def _swapped_norm(x, params, n_heads, norm_first=False, key_padding_mask=None):
    return A.encoder_block(x, params, n_heads, not norm_first, key_padding_mask)


WRONG = [
    ("no scale", check.scaled_dot_product_attention, (_no_scale,), "sqrt"),
    ("inverted mask", check.scaled_dot_product_attention, (_inverted,), "inverted"),
    ("softmax over queries", check.scaled_dot_product_attention, (_wrong_axis,), "wrong axis"),
    ("plain reshape", check.split_merge_heads, (_plain_split, A.merge_heads), "plain reshape"),
    ("concatenated sin/cos", check.positional_encoding, (_concatenated_pe,), "interleaves"),
    ("padding mask polarity", check.multi_head_attention, (_mask_as_is,), "True at \\*padding\\*"),
    ("pre/post-norm swapped", check.encoder_block, (_swapped_norm,), "post-norm"),
]


@pytest.mark.parametrize("label, chk, fns, hint", WRONG, ids=[w[0] for w in WRONG])
def test_checks_name_the_classic_mistakes(label, chk, fns, hint):
    with pytest.raises(CheckFailed, match=hint):
        chk(*fns)


def test_a_learner_exception_becomes_a_failed_check():
    def broken(q, k, v, mask=None, causal=False):
        return q @ k  # shapes do not line up

    with pytest.raises(CheckFailed, match="raised RuntimeError"):
        check.scaled_dot_product_attention(broken)

    def unwritten(x, n_heads):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not written yet"):
        check.split_merge_heads(unwritten, A.merge_heads)


@pytest.mark.cuda
@pytest.mark.parametrize("hidden", [False, True])
def test_references_pass_their_checks_on_cuda(hidden):
    for chk, fns in REFERENCE_CHECKS:
        chk(*fns, hidden=hidden, device=torch.device("cuda"))


# ====================================================================== the explorer

def test_attention_explorer_redraws_for_every_control():
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from companion.text import Vocab

    plt.close("all")
    texts = ["a good film", "a bad film", "not good, not bad"]
    vocab = Vocab(texts, min_freq=1)
    torch.manual_seed(0)
    model = A.TransformerClassifier(len(vocab), d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=16)
    box = A.attention_explorer(model, vocab, texts)
    controls, stack = [], [box]
    while stack:
        widget = stack.pop()
        controls.append(widget)
        stack.extend(getattr(widget, "children", ()))
    assert len(plt.get_fignums()) == 1
    sentence = next(c for c in controls if isinstance(c, w.Dropdown) and c.description == "sentence")
    head = next(c for c in controls if isinstance(c, w.Dropdown) and c.description == "head")
    layer = next(c for c in controls if isinstance(c, w.IntSlider))
    typed = next(c for c in controls if isinstance(c, w.Text))
    sentence.value = texts[2]
    head.value = "head 2"
    layer.value = 1
    typed.value = "an unseen word"
    assert len(plt.get_fignums()) == 5
    assert plt.gcf().axes[0].get_title().startswith("block 1, head 2")
    assert [t.get_text() for t in plt.gcf().axes[0].get_xticklabels()] == ["<unk>", "<unk>", "<unk>"]
    plt.close("all")
