"""Chapter 7's references against PyTorch / networkx / brute force, and its checks against right and wrong answers.

- reconstruction losses, KL and GAN losses vs torch.nn.functional and torch.distributions (float64);
- gan_step vs the Keras recipe written by hand (D trained alone, then G through a frozen D);
- normalize_adjacency vs networkx's normalised Laplacian, spectral facts, and hypothesis over graphs;
- the guide's models' shapes and parameter counts; the GCN and label propagation on the karate club;
- the NAS search space, builder and Pareto front (vs a brute-force definition);
- each check passes the reference (visible and hidden) and fails plausible wrong answers with a hint.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from companion import cnn
from companion import generative as G
from companion import graphs as GR
from companion import nas as N
from companion.checks import CheckFailed
from companion.checks import ch07 as check
from companion.models import count_parameters

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread is as fast, and does not spin against other processes on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ====================================================================== generative: losses

@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 6), dims=st.lists(st.integers(1, 5), min_size=1, max_size=3), scale=st.sampled_from([0.1, 3.0, 50.0]),
       seed=st.integers(0, 2**16))
def test_reconstruction_loss_matches_torch_value_and_gradient(b, dims, scale, seed):
    g = gen(seed)
    logits = (torch.randn(b, *dims, generator=g, dtype=F64) * scale).requires_grad_(True)
    x = torch.rand(b, *dims, generator=g, dtype=F64)
    ours = G.reconstruction_loss(logits, x, "bce")
    theirs = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / b
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(theirs, logits)[0],
                               rtol=1e-12, atol=1e-14)
    ours = G.reconstruction_loss(logits, x, "mse")
    theirs = F.mse_loss(torch.sigmoid(logits), x, reduction="sum") / b
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_reconstruction_loss_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="kind"):
        G.reconstruction_loss(torch.zeros(2, 3), torch.zeros(2, 3), "l1")


def test_reparameterize_is_an_affine_map_of_the_noise_with_the_right_distribution():
    g = gen(1)
    mu, logvar = torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64)
    eps = torch.randn(2, 3, generator=g, dtype=F64)
    torch.testing.assert_close(G.reparameterize(mu, logvar, eps), mu + logvar.exp().sqrt() * eps, rtol=1e-14, atol=0)
    torch.testing.assert_close(G.reparameterize(mu, logvar, torch.zeros_like(mu)), mu, rtol=0, atol=0)
    # sample moments: mean mu, standard deviation exp(logvar / 2)
    many = torch.randn(400_000, 3, generator=g, dtype=F64)
    z = G.reparameterize(mu[0], logvar[0], many)
    torch.testing.assert_close(z.mean(0), mu[0], rtol=0, atol=0.02)
    torch.testing.assert_close(z.std(0), (0.5 * logvar[0]).exp(), rtol=0.01, atol=0)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 8), l=st.integers(1, 6), shift=st.sampled_from([-8.0, 0.0, 3.0]), seed=st.integers(0, 2**16))
def test_kl_divergence_matches_torch_distributions(b, l, shift, seed):
    g = gen(seed)
    mu = torch.randn(b, l, generator=g, dtype=F64) * 2
    logvar = torch.randn(b, l, generator=g, dtype=F64) + shift
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=1).mean()
    torch.testing.assert_close(G.kl_divergence(mu, logvar), expected, rtol=1e-10, atol=1e-12)
    assert G.kl_divergence(mu, logvar) >= 0
    assert G.kl_divergence(torch.zeros(b, l), torch.zeros(b, l)) == 0


def test_vae_loss_is_reconstruction_plus_beta_kl():
    g = gen(2)
    logits, x = torch.randn(4, 10, generator=g), torch.rand(4, 10, generator=g)
    mu, logvar = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    total, rec, kl = G.vae_loss(logits, x, mu, logvar, beta=0.5)
    torch.testing.assert_close(rec, G.reconstruction_loss(logits, x))
    torch.testing.assert_close(kl, G.kl_divergence(mu, logvar))
    torch.testing.assert_close(total, rec + 0.5 * kl)


@pytest.mark.parametrize("scale", [0.5, 5.0, 200.0])
def test_gan_losses_match_their_formulas(scale):
    g = gen(3)
    real, fake = torch.randn(7, 1, generator=g, dtype=F64) * scale, torch.randn(5, 1, generator=g, dtype=F64) * scale
    torch.testing.assert_close(G.discriminator_loss(real, fake),
                               -F.logsigmoid(real).mean() - F.logsigmoid(-fake).mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(G.generator_loss(fake), -F.logsigmoid(fake).mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(G.saturating_generator_loss(fake), F.logsigmoid(-fake).mean(), rtol=1e-12, atol=1e-12)


def test_the_saturating_loss_has_no_gradient_when_d_rejects_the_fakes():
    s = torch.tensor([-12.0], dtype=F64, requires_grad=True)  # D(G(z)) = 6e-6
    (sat,) = torch.autograd.grad(G.saturating_generator_loss(s), s)
    (non,) = torch.autograd.grad(G.generator_loss(s), s)
    assert abs(sat.item()) < 1e-5 and abs(non.item() + 1) < 1e-5


# ====================================================================== generative: models and one GAN iteration

def test_the_guides_models_have_the_right_shapes_and_sizes():
    ae = G.Autoencoder()
    assert count_parameters(ae) == 222_384
    assert ae(torch.rand(5, 784)).shape == (5, 784) and ae.encoder(torch.rand(5, 784)).shape == (5, 32)
    assert isinstance(ae.encoder[-1], nn.ReLU) and isinstance(ae.decoder[-1], nn.Linear)
    assert isinstance(G.Autoencoder(relu_code=False).encoder[-1], nn.Linear)
    out = ae.reconstruct(torch.rand(3, 784))
    assert out.min() >= 0 and out.max() <= 1

    vae = G.VAE(latent=2).eval()
    x = torch.rand(4, 784)
    logits, mu, logvar = vae(x)
    assert logits.shape == (4, 784) and mu.shape == logvar.shape == (4, 2)
    torch.testing.assert_close(logits, vae.decode(mu))  # evaluation mode decodes the mean
    vae.train()
    assert not torch.equal(vae(x)[0], vae(x)[0])  # training mode samples

    gen_, disc = G.build_generator(100), G.build_discriminator()
    # 100*256+256 + 2*256 + 256*512+512 + 2*512 + 512*1024+1024 + 2*1024 + 1024*784+784
    assert count_parameters(gen_) == 1_489_936
    assert count_parameters(disc) == 784 * 512 + 512 + 512 * 256 + 256 + 256 + 1 == 533_505
    images = gen_.eval()(torch.randn(6, 100))
    assert images.shape == (6, 1, 28, 28) and images.abs().max() <= 1
    assert disc(images).shape == (6, 1)
    bn = [m for m in gen_ if isinstance(m, nn.BatchNorm1d)]
    assert len(bn) == 3 and all(m.momentum == pytest.approx(0.2) and m.eps == pytest.approx(1e-3) for m in bn)


def test_interpolate_includes_both_ends():
    a, b = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    path = G.interpolate(a, b, 5)
    assert path.shape == (5, 2)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path[2], (a + b) / 2)


def test_gan_step_equals_the_keras_recipe_written_by_hand():
    """D trained alone on real and detached fakes, then G trained through a frozen D (Keras's combined model)."""
    torch.manual_seed(0)
    gen_ = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.BatchNorm1d(8), nn.Linear(8, 5), nn.Tanh()).double()
    disc = nn.Sequential(nn.Linear(5, 6), nn.LeakyReLU(0.2), nn.Linear(6, 1)).double()
    g2, d2 = copy.deepcopy(gen_), copy.deepcopy(disc)
    make = lambda m: torch.optim.Adam(m.parameters(), lr=0.01, betas=(0.5, 0.999))  # noqa: E731
    opt_g, opt_d, opt_g2, opt_d2 = make(gen_), make(disc), make(g2), make(d2)
    g = gen(4)
    for _ in range(4):
        real, z = torch.rand(8, 5, generator=g, dtype=F64) * 2 - 1, torch.randn(8, 3, generator=g, dtype=F64)
        d_loss, g_loss = G.gan_step(gen_, disc, opt_g, opt_d, real, z)
        # by hand
        with torch.no_grad():
            fake = g2(z)
        opt_d2.zero_grad()
        d_ref = (F.binary_cross_entropy_with_logits(d2(real), torch.ones(8, 1, dtype=F64))
                 + F.binary_cross_entropy_with_logits(d2(fake), torch.zeros(8, 1, dtype=F64)))
        d_ref.backward()
        opt_d2.step()
        for p in d2.parameters():
            p.requires_grad_(False)
        opt_g2.zero_grad()
        g_ref = F.binary_cross_entropy_with_logits(d2(g2(z)), torch.ones(8, 1, dtype=F64))
        g_ref.backward()
        opt_g2.step()
        for p in d2.parameters():
            p.requires_grad_(True)
        assert d_loss == pytest.approx(d_ref.item(), rel=1e-12) and g_loss == pytest.approx(g_ref.item(), rel=1e-12)
    for a, b in zip([*gen_.parameters(), *disc.parameters()], [*g2.parameters(), *d2.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ====================================================================== graphs

def test_karate_club_is_zacharys_graph():
    A, y, graph = GR.karate_club()
    assert A.shape == (34, 34) and torch.equal(A, A.T) and A.diagonal().sum() == 0
    assert int(A.sum()) == 2 * 78 and graph.number_of_edges() == 78
    assert torch.bincount(y).tolist() == [17, 17] and y[0] == 0 and y[33] == 1


def test_normalize_adjacency_matches_networkx_normalized_laplacian():
    import networkx as nx

    A, _, graph = GR.karate_club(dtype=F64)
    looped = nx.Graph(graph)
    looped.add_edges_from((i, i) for i in looped.nodes)
    L = torch.as_tensor(nx.normalized_laplacian_matrix(looped, nodelist=range(34), weight=None).toarray())
    torch.testing.assert_close(GR.normalize_adjacency(A), torch.eye(34, dtype=F64) - L, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), p=st.floats(0.0, 1.0), weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_normalize_adjacency_is_the_dense_formula_and_has_its_spectrum(n, p, weighted, seed):
    g = gen(seed)
    upper = (torch.rand(n, n, generator=g, dtype=F64) < p).to(F64).triu(1)
    if weighted:
        upper = upper * (torch.rand(n, n, generator=g, dtype=F64) * 3 + 0.1)
    A = upper + upper.T
    before = A.clone()
    A_hat = GR.normalize_adjacency(A)
    assert torch.equal(A, before), "must not modify its input"
    A_tilde = A + torch.eye(n, dtype=F64)
    D = torch.diag(A_tilde.sum(1) ** -0.5)
    torch.testing.assert_close(A_hat, D @ A_tilde @ D, rtol=1e-12, atol=1e-12)
    eig = torch.linalg.eigvalsh(A_hat)
    assert eig.max() == pytest.approx(1.0, abs=1e-9) and eig.min() > -1 - 1e-9
    # sqrt(degree) is the eigenvector for eigenvalue 1
    v = A_tilde.sum(1).sqrt()
    torch.testing.assert_close(A_hat @ v, v, rtol=1e-10, atol=1e-10)


def test_gcn_layer_is_a_neighbourhood_sum():
    g = gen(5)
    A, _, _ = GR.karate_club(dtype=F64)
    A_hat = GR.normalize_adjacency(A)
    H, W = torch.randn(34, 4, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    out = GR.gcn_layer(A_hat, H, W)
    for i in (0, 8, 33):
        expected = sum(A_hat[i, j] * (H[j] @ W) for j in range(34))
        torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=1e-12)


def test_gcn_and_label_propagation_recover_the_karate_split_from_four_labels():
    from companion import training

    A, y, _ = GR.karate_club()
    labelled = torch.tensor([0, 1, 32, 33])
    others = torch.tensor([i for i in range(34) if i not in labelled.tolist()])
    torch.manual_seed(0)
    model = GR.GCN(GR.normalize_adjacency(A), torch.eye(34))
    training.fit(model, (labelled, y[labelled]), epochs=200, batch_size=4, progress=False, device=torch.device("cpu"),
                 optimizer=torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4))
    pred = model().argmax(1)
    assert (pred[others] == y[others]).float().mean() >= 0.9
    assert torch.equal(pred[labelled], y[labelled])
    lp = GR.label_propagation(A, labelled, y[labelled])
    assert (lp[others] == y[others]).float().mean() >= 0.9 and torch.equal(lp[labelled], y[labelled])
    assert model(torch.tensor([3, 5])).shape == (2, 2) and model.embed().shape == (34, 16)


# ====================================================================== NAS

def test_sampled_architectures_stay_in_the_space_and_repeat_with_the_seed():
    a = [N.sample_architecture(np.random.default_rng(0)) for _ in range(1)]
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(50):
        arch = N.sample_architecture(rng1)
        assert arch == N.sample_architecture(rng2)
        assert arch["kind"] in N.SPACE["kind"] and arch["depth"] in N.SPACE["depth"]
        assert arch["width"] in N.SPACE["width"] and arch["activation"] in N.SPACE["activation"]
        assert N.SPACE["lr"][0] <= arch["lr"] <= N.SPACE["lr"][1]
    assert a[0] == N.sample_architecture(np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_build_gives_logits_of_the_right_shape(kind, depth, activation):
    arch = {"kind": kind, "depth": depth, "width": 16, "activation": activation, "lr": 1e-3}
    model = N.build(arch)
    assert model(torch.randn(7, 40)).shape == (7, 10)
    if kind == "mlp":
        assert count_parameters(model) == 40 * 16 + 16 + (depth - 1) * (16 * 16 + 16) + 16 * 10 + 10
    assert N.describe(arch).startswith(f"{kind} {depth}x16 {activation}")


def test_the_papers_cnn_is_in_the_search_space():
    arch = {"kind": "cnn", "depth": 3, "width": 25, "activation": "relu", "lr": 1e-3}
    assert count_parameters(N.build(arch)) == count_parameters(cnn.cnn1d(channels=25))


def test_build_rejects_unknown_kinds():
    with pytest.raises(ValueError):
        N.build({"kind": "rnn", "depth": 1, "width": 8, "activation": "relu", "lr": 1e-3})


def _brute_front(p, a):
    out = []
    for i in range(len(p)):
        out.append(not any(p[j] <= p[i] and a[j] >= a[i] and (p[j] < p[i] or a[j] > a[i]) for j in range(len(p))))
    return np.array(out, dtype=bool)


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5)), min_size=1, max_size=15))
def test_pareto_front_matches_the_definition(points):
    p = [x for x, _ in points]
    a = [y / 5 for _, y in points]
    front = N.pareto_front(p, a)
    assert front.dtype == bool and front.shape == (len(points),)
    np.testing.assert_array_equal(front, _brute_front(p, a))
    assert front.any()  # the smallest of the most accurate is always on it


def test_random_search_runs_and_repeats():
    g = gen(6)
    X, y = torch.randn(120, 40, generator=g), torch.randint(0, 10, (120,), generator=g)
    runs = [N.random_search((X[:100], y[:100]), (X[100:], y[100:]), n_trials=2, epochs=1, seed=1, progress=False,
                            device=torch.device("cpu")) for _ in range(2)]
    assert len(runs[0]) == 2
    for a, b in zip(*runs):
        assert a.arch == b.arch and a.n_params == b.n_params and a.val_acc == b.val_acc
        assert a.n_params == count_parameters(a.model) and 0 <= a.val_acc <= 1


# ====================================================================== checks: references pass

@pytest.mark.parametrize("hidden", [False, True])
def test_references_and_equivalent_answers_pass_every_check(hidden, capsys):
    cpu = torch.device("cpu")
    assert check.reconstruction_loss(G.reconstruction_loss, hidden=hidden, device=cpu) is None
    check.reconstruction_loss(
        lambda z, x, kind="bce": (F.binary_cross_entropy_with_logits(z, x, reduction="sum") if kind == "bce"
                                  else F.mse_loss(torch.sigmoid(z), x, reduction="sum")) / len(x),
        hidden=hidden, device=cpu)
    check.reparameterize(G.reparameterize, hidden=hidden, device=cpu)
    check.reparameterize(lambda mu, lv, eps: mu + torch.sqrt(torch.exp(lv)) * eps, hidden=hidden, device=cpu)
    check.kl_divergence(G.kl_divergence, hidden=hidden, device=cpu)
    check.kl_divergence(lambda mu, lv: 0.5 * (lv.exp() + mu**2 - 1 - lv).sum(-1).mean(), hidden=hidden, device=cpu)
    check.discriminator_loss(G.discriminator_loss, hidden=hidden, device=cpu)
    check.discriminator_loss(lambda r, f: -F.logsigmoid(r).mean() - F.logsigmoid(-f).mean(), hidden=hidden, device=cpu)
    check.generator_loss(G.generator_loss, hidden=hidden, device=cpu)
    check.generator_loss(lambda f: -F.logsigmoid(f).mean(), hidden=hidden, device=cpu)
    check.gan_step(G.gan_step, hidden=hidden, device=cpu)
    check.gan_step(_gan_step_no_grad_and_concat, hidden=hidden, device=cpu)
    check.normalize_adjacency(GR.normalize_adjacency, hidden=hidden, device=cpu)
    check.normalize_adjacency(_adjacency_with_diag, hidden=hidden, device=cpu)
    check.pareto_front(N.pareto_front, hidden=hidden)
    check.pareto_front(lambda p, a: _brute_front(list(p), list(a)), hidden=hidden)
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.count("\u2714") == 16


def _gan_step_no_grad_and_concat(generator, discriminator, opt_g, opt_d, real, z, d_loss_fn, g_loss_fn):
    # a different but correct way: fakes under no_grad for D, one D call on both batches, fresh fakes for G
    with torch.no_grad():
        fake = generator(z)
    logits = discriminator(torch.cat([real, fake]))
    d_loss = d_loss_fn(logits[:len(real)], logits[len(real):])
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = g_loss_fn(discriminator(generator(z)))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    return torch.tensor(d_loss.item()), g_loss.item()


def _adjacency_with_diag(A):
    A_tilde = A + torch.eye(len(A), dtype=A.dtype, device=A.device)
    D = torch.diag(A_tilde.sum(1) ** -0.5)
    return D @ A_tilde @ D


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check.gan_step(G.gan_step, device="cpu")
    check.reparameterize(G.reparameterize, device="cpu")
    assert torch.equal(torch.rand(3), expected)


# ====================================================================== checks: wrong answers fail helpfully

def _not_written(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("run", [
    lambda: check.reconstruction_loss(_not_written), lambda: check.reparameterize(_not_written),
    lambda: check.kl_divergence(_not_written), lambda: check.discriminator_loss(_not_written),
    lambda: check.generator_loss(_not_written), lambda: check.gan_step(_not_written),
    lambda: check.normalize_adjacency(_not_written), lambda: check.pareto_front(_not_written),
])
def test_unwritten_exercises_fail_with_the_friendly_message(run):
    with pytest.raises(CheckFailed, match="not written yet"):
        run()


def _rec(per_entry_fn, reduce):
    def loss(logits, x, kind="bce"):
        per_entry = (F.binary_cross_entropy_with_logits(logits, x, reduction="none") if kind == "bce"
                     else per_entry_fn(logits, x))
        return reduce(per_entry)
    return loss


def _rec_naive(logits, x, kind="bce"):
    if kind == "mse":
        return G.reconstruction_loss(logits, x, "mse")
    return F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum") / len(x)


def _gan_flaw(flaw):
    def step(gen_, disc, opt_g, opt_d, real, z, d_loss_fn, g_loss_fn):
        fake = gen_(z)
        if flaw != "no_zero_d":
            opt_d.zero_grad()
        d_loss = d_loss_fn(disc(real), disc(fake if flaw == "no_detach" else fake.detach()))
        d_loss.backward()
        opt_d.step()
        if flaw != "no_zero_g":
            opt_g.zero_grad()
        g_loss = g_loss_fn(disc(fake.detach() if flaw == "detach_g" else fake))
        if g_loss.requires_grad:
            g_loss.backward()
        opt_g.step()
        return d_loss.item(), g_loss.item()
    return step


def _gan_stale(gen_, disc, opt_g, opt_d, real, z, d_loss_fn, g_loss_fn):
    fake = gen_(z)
    g_logits = disc(fake)  # computed before D's update
    opt_d.zero_grad()
    d_loss = d_loss_fn(disc(real), disc(fake.detach()))
    d_loss.backward()
    opt_d.step()
    opt_g.zero_grad()
    g_loss = g_loss_fn(g_logits)
    g_loss.backward()
    opt_g.step()
    return d_loss.item(), g_loss.item()


def _eye(A):
    return torch.eye(len(A), dtype=A.dtype, device=A.device)


def _pareto_weak(p, a):
    p, a = np.asarray(p, float), np.asarray(a, float)
    dom = (p[None, :] <= p[:, None]) & (a[None, :] >= a[:, None])
    np.fill_diagonal(dom, False)
    return ~dom.any(axis=1)


WRONG = [
    ("rec mean over pixels", lambda h: check.reconstruction_loss(
        _rec(lambda z, x: (torch.sigmoid(z) - x) ** 2, lambda e: e.mean()), hidden=h), "averages over the pixels"),
    ("rec sum over batch", lambda h: check.reconstruction_loss(
        _rec(lambda z, x: (torch.sigmoid(z) - x) ** 2, lambda e: e.sum()), hidden=h), "sums over the batch"),
    ("rec mse on logits", lambda h: check.reconstruction_loss(
        _rec(lambda z, x: (z - x) ** 2, lambda e: e.flatten(1).sum(1).mean()), hidden=h), "apply torch.sigmoid"),
    ("rec bce on probabilities", lambda h: check.reconstruction_loss(_rec_naive, hidden=h), "from the logits"),
    ("rec last dim only", lambda h: check.reconstruction_loss(
        _rec(lambda z, x: (torch.sigmoid(z) - x) ** 2, lambda e: e.sum(-1).mean()), hidden=h), "every dimension"),
    ("rep variance", lambda h: check.reparameterize(lambda mu, lv, eps: mu + lv.exp() * eps, hidden=h),
     "log of the \\*variance\\*"),
    ("rep logvar as std", lambda h: check.reparameterize(lambda mu, lv, eps: mu + lv * eps, hidden=h), "logarithm"),
    ("rep fresh noise", lambda h: check.reparameterize(
        lambda mu, lv, eps: mu + (0.5 * lv).exp() * torch.randn_like(mu), hidden=h), "`eps` argument"),
    ("kl sign", lambda h: check.kl_divergence(lambda mu, lv: -G.kl_divergence(mu, lv), hidden=h), "sign"),
    ("kl mean over dims", lambda h: check.kl_divergence(
        lambda mu, lv: (-0.5 * (1 + lv - mu**2 - lv.exp())).mean(), hidden=h), "sum over the latent"),
    ("kl log std", lambda h: check.kl_divergence(
        lambda mu, lv: (-0.5 * (1 + 2 * lv - mu**2 - (2 * lv).exp())).sum(1).mean(), hidden=h), "log sigma"),
    ("kl no half", lambda h: check.kl_divergence(lambda mu, lv: 2 * G.kl_divergence(mu, lv), hidden=h), "1/2"),
    ("d swapped", lambda h: check.discriminator_loss(lambda r, f: G.discriminator_loss(f, r), hidden=h), "swapped"),
    ("d averaged", lambda h: check.discriminator_loss(lambda r, f: G.discriminator_loss(r, f) / 2, hidden=h),
     "averages them"),
    ("g saturating", lambda h: check.generator_loss(G.saturating_generator_loss, hidden=h), "non-saturating"),
    ("g label 0", lambda h: check.generator_loss(
        lambda f: F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)), hidden=h), "label 1"),
    ("gan no detach", lambda h: check.gan_step(_gan_flaw("no_detach"), hidden=h), "detach the fakes"),
    ("gan detach in g", lambda h: check.gan_step(_gan_flaw("detach_g"), hidden=h), "generator did not learn"),
    ("gan no zero d", lambda h: check.gan_step(_gan_flaw("no_zero_d"), hidden=h), "opt_d.zero_grad"),
    ("gan no zero g", lambda h: check.gan_step(_gan_flaw("no_zero_g"), hidden=h), "opt_g.zero_grad"),
    ("gan stale d", lambda h: check.gan_step(_gan_stale, hidden=h), "\\*after\\* its update"),
    ("adj no self loops", lambda h: check.normalize_adjacency(
        lambda A: A.sum(1).rsqrt()[:, None] * A * A.sum(1).rsqrt()[None, :], hidden=h), "self loops"),
    ("adj row normalised", lambda h: check.normalize_adjacency(
        lambda A: (A + _eye(A)) / (A + _eye(A)).sum(1, keepdim=True), hidden=h), "averages rows"),
    ("adj degrees of A", lambda h: check.normalize_adjacency(
        lambda A: A.sum(1).rsqrt()[:, None] * (A + _eye(A)) * A.sum(1).rsqrt()[None, :], hidden=h), "A \\+ I"),
    ("pareto strict both", lambda h: check.pareto_front(
        lambda p, a: np.array([not any(q < pi and b > ai for q, b in zip(p, a)) for pi, ai in zip(p, a)]), hidden=h),
     "as small and more accurate"),
    ("pareto bigger better", lambda h: check.pareto_front(lambda p, a: N.pareto_front(-np.asarray(p), a), hidden=h),
     "fewer parameters"),
    ("pareto indices", lambda h: check.pareto_front(lambda p, a: np.flatnonzero(N.pareto_front(p, a)), hidden=h),
     "boolean mask"),
    ("pareto identical", lambda h: check.pareto_front(_pareto_weak, hidden=h), "identical trials"),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, run, hint", WRONG, ids=[w[0] for w in WRONG])
def test_wrong_answers_fail_with_a_helpful_message(name, run, hint, hidden):
    with pytest.raises(CheckFailed, match=hint):
        run(hidden)


def test_hidden_cases_catch_what_visible_ones_miss():
    # float64 only appears in the hidden adjacency cases
    always_float32 = lambda A: GR.normalize_adjacency(A.float())  # noqa: E731
    check.normalize_adjacency(always_float32, device="cpu")
    with pytest.raises(CheckFailed, match="dtype"):
        check.normalize_adjacency(always_float32, hidden=True, device="cpu")
    # a single trial only appears in the hidden Pareto cases
    needs_two = lambda p, a: N.pareto_front(p, a) if len(p) > 1 else np.array([False])  # noqa: E731
    check.pareto_front(needs_two)
    with pytest.raises(CheckFailed, match="one trial"):
        check.pareto_front(needs_two, hidden=True)
    # a KL that ignores mu only fails where mu is large... it fails everywhere mu != 0: visible already
    with pytest.raises(CheckFailed):
        check.kl_divergence(lambda mu, lv: (-0.5 * (1 + lv - lv.exp())).sum(1).mean())


@pytest.mark.cuda
@pytest.mark.parametrize("hidden", [False, True])
def test_references_pass_the_checks_on_cuda(hidden):
    cuda = torch.device("cuda")
    check.reconstruction_loss(G.reconstruction_loss, hidden=hidden, device=cuda)
    check.reparameterize(G.reparameterize, hidden=hidden, device=cuda)
    check.kl_divergence(G.kl_divergence, hidden=hidden, device=cuda)
    check.discriminator_loss(G.discriminator_loss, hidden=hidden, device=cuda)
    check.generator_loss(G.generator_loss, hidden=hidden, device=cuda)
    check.gan_step(G.gan_step, hidden=hidden, device=cuda)
    check.normalize_adjacency(GR.normalize_adjacency, hidden=hidden, device=cuda)
