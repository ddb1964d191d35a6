"""Checks for chapter 7, Advanced architectures.

Each function takes the learner's implementation, compares it with the references in
``companion.generative``, ``companion.graphs`` and ``companion.nas`` on fixed, seeded
inputs, and prints a verdict or raises :class:`CheckFailed` naming the classic mistake
when the answer matches one. ``hidden=True`` runs the extra cases that nbgrader's hidden
tests use.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import generative as G
from .. import graphs as GR
from .. import nas as N
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, learner_facing, passed, run_learner


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- reconstruction loss

@learner_facing
def reconstruction_loss(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``reconstruction_loss(logits, x, kind="bce")``: summed over each example, averaged over the batch."""
    device = get_device() if device is None else device
    g = _gen(72 if hidden else 71)
    logits, x = torch.randn(4, 10, generator=g) * 3, torch.rand(4, 10, generator=g)
    huge = torch.tensor([[200.0, -200.0, 150.0, -90.0], [-120.0, 300.0, 0.5, -1.0]])
    binary = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    cases = [
        Case("4 images of 10 pixels, BCE", (logits, x), {"kind": "bce"}),
        Case("the same, MSE", (logits, x), {"kind": "mse"}),
        Case("a (2, 1, 4, 4) image batch, BCE", (torch.randn(2, 1, 4, 4, generator=g) * 2,
                                                 torch.rand(2, 1, 4, 4, generator=g)), {"kind": "bce"}),
        Case("confidently wrong logits, BCE", (huge, binary), {"kind": "bce"}),
    ]
    if hidden:
        cases += [
            Case("the default kind", (logits * 0.5, x)),
            Case("float64, MSE, 28x28 images", (torch.randn(3, 784, generator=g, dtype=torch.float64) * 4,
                                               torch.rand(3, 784, generator=g, dtype=torch.float64)), {"kind": "mse"}),
            Case("one image, BCE", (torch.randn(1, 784, generator=g), (torch.rand(1, 784, generator=g) > 0.7).float()),
                 {"kind": "bce"}),
            Case("a batch of 64, BCE", (torch.randn(64, 20, generator=g) * 5, torch.rand(64, 20, generator=g)),
                 {"kind": "bce"}),
            Case("a (2, 1, 4, 4) batch, MSE", (torch.randn(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g)),
                 {"kind": "mse"}),
            Case("huge logits, MSE", (huge, binary), {"kind": "mse"}),
        ]

    def per_entry(logits, x, kind):
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return (torch.sigmoid(logits) - x) ** 2

    def mean_everything(logits, x, kind="bce"):
        return per_entry(logits, x, kind).mean()

    def sum_everything(logits, x, kind="bce"):
        return per_entry(logits, x, kind).sum()

    def naive_bce(logits, x, kind="bce"):
        if kind != "bce":
            return G.reconstruction_loss(logits, x, kind)
        p = torch.sigmoid(logits)
        return -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).flatten(1).sum(1).mean()

    def bce_on_probabilities(logits, x, kind="bce"):
        if kind != "bce":
            return G.reconstruction_loss(logits, x, kind)
        return F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").flatten(1).sum(1).mean()

    def mse_on_logits(logits, x, kind="bce"):
        if kind != "mse":
            return G.reconstruction_loss(logits, x, kind)
        return ((logits - x) ** 2).flatten(1).sum(1).mean()

    def swapped(logits, x, kind="bce"):
        if kind != "bce":
            return G.reconstruction_loss(logits, x, kind)
        return F.binary_cross_entropy_with_logits(x, logits, reduction="none").flatten(1).sum(1).mean()

    def last_dim_only(logits, x, kind="bce"):
        return per_entry(logits, x, kind).sum(dim=-1).mean()

    check_function(fn, G.reconstruction_loss, cases, name="reconstruction_loss", device=device, rtol=1e-5,
                   atol=1e-5, hidden=hidden,
                   mistakes={"sum the loss over each image's pixels, then average over the batch; yours averages"
                             " over the pixels too (a factor of the number of pixels too small)": mean_everything,
                             "average over the batch after summing over the pixels; yours sums over the batch"
                             " as well": sum_everything,
                             "the decoder outputs logits: apply torch.sigmoid before the squared error":
                             mse_on_logits,
                             "compute the BCE from the logits (F.binary_cross_entropy_with_logits or chapter"
                             " 3's stable formula); log(sigmoid(z)) underflows for large |z|": naive_bce,
                             "compute the BCE from the logits: F.binary_cross_entropy on sigmoid(logits) loses"
                             " everything beyond sigmoid's float precision (it clips the log at -100); use"
                             " F.binary_cross_entropy_with_logits": bce_on_probabilities,
                             "the arguments are swapped: the logits are the prediction and x is the target":
                             swapped,
                             "sum over every dimension but the batch one (x.flatten(1).sum(1)), not only the"
                             " last one": last_dim_only,
                             "kind='mse' should give the squared error of sigmoid(logits)":
                             lambda logits, x, kind="bce": G.reconstruction_loss(logits, x, "bce"),
                             "kind='bce' should give the binary cross-entropy":
                             lambda logits, x, kind="bce": G.reconstruction_loss(logits, x, "mse")})


# ---------------------------------------------------------------- reparameterization and KL

def _gauss_case(label: str, b: int, l: int, seed: int, dtype=torch.float32, logvar_scale=1.0, logvar_shift=0.0,
                with_eps: bool = True) -> Case:
    g = _gen(seed)
    mu = torch.randn(b, l, generator=g, dtype=torch.float64).to(dtype)
    logvar = (torch.randn(b, l, generator=g, dtype=torch.float64) * logvar_scale + logvar_shift).to(dtype)
    if not with_eps:
        return Case(label, (mu, logvar))
    eps = torch.randn(b, l, generator=g, dtype=torch.float64).to(dtype)
    return Case(label, (mu, logvar, eps))


@learner_facing
def reparameterize(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``reparameterize(mu, logvar, eps)`` -> ``mu + exp(logvar / 2) * eps``."""
    device = get_device() if device is None else device
    cases = [_gauss_case("a batch of 4, 2 latent dims", 4, 2, 1),
             _gauss_case("a batch of 3, 5 latent dims, wide variances", 3, 5, 2, logvar_scale=2.0)]
    if hidden:
        zero_eps = _gauss_case("eps = 0 gives back mu", 5, 3, 3)
        zero_eps = Case(zero_eps.label, (*zero_eps.args[:2], torch.zeros(5, 3)))
        cases += [_gauss_case("float64", 6, 4, 4, torch.float64),
                  _gauss_case("tiny variances (logvar about -20)", 2, 3, 5, logvar_shift=-20.0),
                  _gauss_case("large variances (logvar about 4)", 2, 3, 6, logvar_shift=4.0),
                  _gauss_case("one example, one latent dim", 1, 1, 7), zero_eps]

    for case in cases:  # a learner who draws fresh noise gets a result that changes from call to call
        moved = Case(case.label, tuple(a.to(device) for a in case.args))
        first = run_learner(fn, "reparameterize", moved)
        second = run_learner(fn, "reparameterize", moved)
        if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape \
                and not torch.equal(first, second):
            raise CheckFailed("`reparameterize` gives a different answer each time it is called with the same"
                              f" inputs (case '{case.label}'). Use the `eps` argument as the noise instead of"
                              " drawing new noise with torch.randn: the caller draws eps, which keeps the result"
                              " reproducible and the check exact.")

    check_function(fn, G.reparameterize, cases, name="reparameterize", device=device, rtol=1e-5, atol=1e-6,
                   hidden=hidden,
                   mistakes={"logvar is the log of the *variance*, so sigma = exp(logvar / 2); exp(logvar) is"
                             " the variance itself (that formula reads logvar as a log standard deviation)":
                             lambda mu, logvar, eps: mu + torch.exp(logvar) * eps,
                             "logvar is a logarithm: the standard deviation is exp(logvar / 2), not logvar":
                             lambda mu, logvar, eps: mu + logvar * eps,
                             "z = mu + sigma * eps: the noise is scaled by sigma and shifted by mu, not the other way":
                             lambda mu, logvar, eps: mu * torch.exp(0.5 * logvar) + eps,
                             "multiply sigma by the noise eps": lambda mu, logvar, eps: mu + torch.exp(0.5 * logvar)})


@learner_facing
def kl_divergence(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``kl_divergence(mu, logvar)``: KL to N(0, I), summed over latent dims, averaged over the batch."""
    device = get_device() if device is None else device
    cases = [_gauss_case("a batch of 4, 2 latent dims", 4, 2, 11, with_eps=False),
             _gauss_case("a batch of 3, 5 latent dims", 3, 5, 12, logvar_scale=1.5, with_eps=False),
             Case("mu = 0 and logvar = 0: the prior itself", (torch.zeros(2, 3), torch.zeros(2, 3)))]
    if hidden:
        cases += [_gauss_case("float64, batch of 16, 8 latent dims", 16, 8, 13, torch.float64, with_eps=False),
                  _gauss_case("one example, one latent dim", 1, 1, 14, with_eps=False),
                  _gauss_case("very small variances", 5, 2, 15, logvar_shift=-10.0, with_eps=False),
                  _gauss_case("large variances", 5, 2, 16, logvar_shift=3.0, with_eps=False),
                  Case("mu far from 0, unit variance", (torch.full((3, 2), 5.0), torch.zeros(3, 2)))]

    def per_entry(mu, logvar):
        return -0.5 * (1 + logvar - mu**2 - logvar.exp())

    check_function(fn, G.kl_divergence, cases, name="kl_divergence", device=device, rtol=1e-5, atol=1e-6,
                   hidden=hidden,
                   mistakes={"the sign is flipped: the KL divergence is never negative, KL = -1/2 * sum(1 +"
                             " logvar - mu**2 - exp(logvar))": lambda mu, lv: -G.kl_divergence(mu, lv),
                             "sum over the latent dimensions (the KL of independent coordinates adds up), then"
                             " average over the batch; yours averages over the latent dimensions":
                             lambda mu, lv: per_entry(mu, lv).mean(),
                             "average over the batch; yours sums over it": lambda mu, lv: per_entry(mu, lv).sum(),
                             "logvar is log sigma**2, so the variance is exp(logvar); yours reads it as"
                             " log sigma (variance exp(2 * logvar))":
                             lambda mu, lv: (-0.5 * (1 + 2 * lv - mu**2 - torch.exp(2 * lv))).sum(1).mean(),
                             "the factor 1/2 in front of the sum is missing":
                             lambda mu, lv: 2 * G.kl_divergence(mu, lv),
                             "the constant 1 inside the sum is missing: -1/2 * sum(1 + logvar - mu**2 - exp(logvar))":
                             lambda mu, lv: (-0.5 * (lv - mu**2 - lv.exp())).sum(1).mean()})


# ---------------------------------------------------------------- GAN losses

def _logit_pair(label: str, b_real: int, b_fake: int, seed: int, scale: float = 2.0, dtype=torch.float32,
                shape_tail=(1,)) -> Case:
    g = _gen(seed)
    real = (torch.randn(b_real, *shape_tail, generator=g, dtype=torch.float64) * scale + 1).to(dtype)
    fake = (torch.randn(b_fake, *shape_tail, generator=g, dtype=torch.float64) * scale - 1).to(dtype)
    return Case(label, (real, fake))


@learner_facing
def discriminator_loss(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``discriminator_loss(real_logits, fake_logits)``: BCE(real, 1) + BCE(fake, 0), each a batch mean."""
    device = get_device() if device is None else device
    cases = [_logit_pair("8 real and 8 fake logits, shape (8, 1)", 8, 8, 21),
             _logit_pair("5 real and 3 fake logits", 5, 3, 22),
             Case("confident logits (+-100)", (torch.tensor([[100.0], [-100.0], [50.0]]),
                                               torch.tensor([[-100.0], [100.0], [-30.0]])))]
    if hidden:
        cases += [_logit_pair("float64, 32 each", 32, 32, 23, 4.0, torch.float64),
                  _logit_pair("logits of shape (6,)", 6, 6, 24, shape_tail=()),
                  _logit_pair("one real, one fake", 1, 1, 25),
                  Case("all logits 0 (D undecided): 2 log 2", (torch.zeros(4, 1), torch.zeros(4, 1))),
                  Case("very confident and wrong", (torch.tensor([-500.0, -200.0]), torch.tensor([300.0, 800.0])))]

    bce = F.binary_cross_entropy_with_logits

    def naive(real, fake):
        pr, pf = torch.sigmoid(real), torch.sigmoid(fake)
        return -(torch.log(pr).mean() + torch.log(1 - pf).mean())

    check_function(fn, G.discriminator_loss, cases, name="discriminator_loss", device=device, rtol=1e-5, atol=1e-5,
                   hidden=hidden,
                   mistakes={"the labels are swapped: real images get label 1 and fakes label 0":
                             lambda r, f: bce(r, torch.zeros_like(r)) + bce(f, torch.ones_like(f)),
                             "add the two terms (real + fake); yours averages them, half the convention here":
                             lambda r, f: 0.5 * G.discriminator_loss(r, f),
                             "the fakes' term is missing: BCE(real, 1) + BCE(fake, 0)":
                             lambda r, f: bce(r, torch.ones_like(r)),
                             "the real images' term is missing: BCE(real, 1) + BCE(fake, 0)":
                             lambda r, f: bce(f, torch.zeros_like(f)),
                             "compute BCE from the logits (F.binary_cross_entropy_with_logits); log(sigmoid(z))"
                             " underflows for confident logits": naive,
                             "average each term over its batch; yours sums":
                             lambda r, f: bce(r, torch.ones_like(r), reduction="sum") +
                             bce(f, torch.zeros_like(f), reduction="sum")})


@learner_facing
def generator_loss(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``generator_loss(fake_logits)``: the non-saturating loss, BCE(fake, 1) averaged over the batch."""
    device = get_device() if device is None else device
    g = _gen(31 if not hidden else 32)
    cases = [Case("8 fake logits, shape (8, 1)", (torch.randn(8, 1, generator=g) * 2 - 1,)),
             Case("D rejects every fake (logits about -6)", (torch.randn(5, 1, generator=g) - 6,)),
             Case("confident logits (+-100)", (torch.tensor([[100.0], [-100.0], [-40.0]]),))]
    if hidden:
        cases += [Case("float64, 32 fakes", (torch.randn(32, 1, generator=g, dtype=torch.float64) * 3,)),
                  Case("shape (6,)", (torch.randn(6, generator=g),)),
                  Case("one fake", (torch.tensor([[0.3]]),)),
                  Case("D fooled (logits about +5)", (torch.randn(4, 1, generator=g) + 5,)),
                  Case("very confident rejection (-500)", (torch.tensor([-500.0, -300.0]),))]

    bce = F.binary_cross_entropy_with_logits
    check_function(fn, G.generator_loss, cases, name="generator_loss", device=device, rtol=1e-5, atol=1e-5,
                   hidden=hidden,
                   mistakes={"that is the saturating (minimax) loss, mean log(1 - D(G(z))), whose gradient"
                             " vanishes when D rejects the fakes; use the non-saturating -log D(G(z)), i.e. BCE"
                             " against label 1": G.saturating_generator_loss,
                             "the generator wants D to call its fakes *real*: use label 1, not 0":
                             lambda f: bce(f, torch.zeros_like(f)),
                             "average over the batch; yours sums": lambda f: bce(f, torch.ones_like(f), reduction="sum"),
                             "compute it from the logits (F.binary_cross_entropy_with_logits or F.logsigmoid);"
                             " log(sigmoid(z)) underflows for very negative logits":
                             lambda f: -torch.log(torch.sigmoid(f)).mean()})


# ---------------------------------------------------------------- a GAN iteration

def _tiny_gan(seed: int, latent: int, n_out: int, dtype: torch.dtype, device) -> tuple[nn.Module, nn.Module]:
    """A small generator (with batch norm, like the guide's) and discriminator, seeded without the global RNG."""
    gen = nn.Sequential(nn.Linear(latent, 16), nn.LeakyReLU(0.2), nn.BatchNorm1d(16, momentum=0.2),
                        nn.Linear(16, n_out), nn.Tanh())
    disc = nn.Sequential(nn.Linear(n_out, 12), nn.LeakyReLU(0.2), nn.Linear(12, 1))
    g = _gen(seed)
    with torch.no_grad():
        for p in [*gen.parameters(), *disc.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        gen[2].weight.add_(1.0)  # batch-norm scales around 1
    return gen.to(device=device, dtype=dtype), disc.to(device=device, dtype=dtype)


def _variant(flaw: str | None):
    """A whole GAN iteration, as the reference writes it or with one classic flaw."""
    def step(gen, disc, opt_g, opt_d, real, z, d_loss_fn, g_loss_fn):
        fake = gen(z)
        if flaw == "g_first":
            opt_g.zero_grad()
            g_loss_fn(disc(fake)).backward()
            opt_g.step()
            opt_d.zero_grad()
            d = d_loss_fn(disc(real), disc(fake.detach()))
            d.backward()
            opt_d.step()
            return d.item(), g_loss_fn(disc(fake)).item()
        if flaw != "no_zero_d":
            opt_d.zero_grad()
        d = d_loss_fn(disc(real), disc(fake.detach()))
        d.backward()
        opt_d.step()
        if flaw != "no_zero_g":
            opt_g.zero_grad()
        g_loss = g_loss_fn(disc(fake.detach() if flaw == "detach_g" else fake))
        if g_loss.requires_grad:
            g_loss.backward()
        opt_g.step()
        return d.item(), g_loss.item()
    return step


_GAN_HINTS = {
    "no_zero_d": "zero the discriminator's gradients (opt_d.zero_grad()) before its backward pass: the generator"
                 " step's backward pass leaves gradients in D, which otherwise leak into D's next update",
    "no_zero_g": "zero the generator's gradients (opt_g.zero_grad()) before its backward pass, or they add up"
                 " from one iteration to the next",
    "detach_g": "the generator did not learn: its step needs the gradient of g_loss to flow back through D into"
                " G, so don't detach the fakes there (nor make them under torch.no_grad()), and call"
                " opt_g.step()",
    "g_first": "do the discriminator step first, then the generator step",
}
_GAN_ERRORS = {
    "backward through the graph a second time":
        "detach the fakes in the discriminator step (discriminator(fake.detach())): otherwise its backward pass"
        " also runs through the generator and frees the graph that the generator step needs",
    "modified by an inplace operation":
        "the generator step must use the discriminator *after* its update: call discriminator(fake) again"
        " after opt_d.step() instead of reusing logits computed before it",
}


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]




@learner_facing
def gan_step(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``gan_step(generator, discriminator, opt_g, opt_d, real, z, d_loss_fn, g_loss_fn)``.

    Runs several iterations on a small generator/discriminator pair and its copy, the
    learner's function on one and the reference on the other, with Adam, and compares
    the losses returned and every parameter after every iteration.
    """
    device = get_device() if device is None else device
    runs = [("Adam(lr=0.01, betas=(0.5, 0.999)), 3 iterations", 1, 3, torch.float64,
             lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.5, 0.999)), 8)]
    if hidden:
        runs += [("SGD(lr=0.1, momentum=0.9), 5 iterations, float64", 2, 5, torch.float64,
                  lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 6),
                 ("Adam(lr=0.002), 4 iterations, float32, batch of 16", 3, 4, torch.float32,
                  lambda ps: torch.optim.Adam(ps, lr=0.002, betas=(0.5, 0.999)), 16)]
    latent, n_out = 4, 6
    n_checked = 0
    for label, seed, steps, dtype, make_opt, batch in runs:
        g = _gen(100 + seed)
        batches = [((torch.rand(batch, n_out, generator=g, dtype=torch.float64) * 2 - 1).to(device, dtype),
                    torch.randn(batch, latent, generator=g, dtype=torch.float64).to(device, dtype))
                   for _ in range(steps)]

        def fresh():
            gen, disc = _tiny_gan(seed, latent, n_out, dtype, device)
            return (gen, disc), (make_opt(gen.parameters()), make_opt(disc.parameters()))

        ref_models, ref_opts = fresh()
        mine_models, mine_opts = fresh()
        for i, (real, z) in enumerate(batches):
            expected = G.gan_step(*ref_models, *ref_opts, real, z, G.discriminator_loss, G.generator_loss)
            before_g = _params(mine_models[0])
            case = Case(f"iteration {i + 1}", (*mine_models, *mine_opts, real, z, G.discriminator_loss,
                                               G.generator_loss))
            try:
                got = run_learner(fn, "gan_step", case, context=f"iteration {i + 1} of the run with {label}")
            except CheckFailed as err:
                hints = [hint for text, hint in _GAN_ERRORS.items() if text in str(err)]
                if hints:
                    raise CheckFailed(f"{err}\n  Hint: {hints[0]}.") from None
                raise
            where = f"`gan_step` after iteration {i + 1} of the run with {label}"
            problem = compare(got, expected, rtol=1e-5, atol=1e-6, path="the (d_loss, g_loss) it returned")
            for part, module_mine, module_ref in (("discriminator", mine_models[1], ref_models[1]),
                                                  ("generator", mine_models[0], ref_models[0])):
                if problem:
                    break
                problem = compare(_params(module_mine), _params(module_ref), rtol=1e-5, atol=1e-6,
                                  path=f"the {part}'s parameters")
            if problem:
                message = f"{where}: {problem}"
                if all(torch.equal(a, b) for a, b in zip(before_g, _params(mine_models[0]))):
                    message += f"\n  Hint: {_GAN_HINTS['detach_g']}"
                else:
                    message += _gan_hint(mine_models, batches[: i + 1], fresh)
                raise CheckFailed(message)
            n_checked += 1
    passed("gan_step (losses and every parameter, iteration by iteration)", n_checked, device, hidden)


def _gan_hint(mine_models, batches, fresh) -> str:
    """Replay the run with each classic flaw; name the one whose parameters match the learner's."""
    mine = _params(mine_models[0]) + _params(mine_models[1])
    for flaw, hint in _GAN_HINTS.items():
        try:
            models, opts = fresh()
            for real, z in batches:
                _variant(flaw)(*models, *opts, real, z, G.discriminator_loss, G.generator_loss)
            theirs = _params(models[0]) + _params(models[1])
        except Exception:  # a flaw that cannot run on these inputs
            continue
        if compare(mine, theirs, rtol=1e-5, atol=1e-6) is None:
            return f"\n  Hint: {hint}"
    return ""


# ---------------------------------------------------------------- GCN propagation

def _adjacency(edges, n, weights=None, dtype=torch.float32) -> torch.Tensor:
    A = torch.zeros(n, n, dtype=dtype)
    for k, (i, j) in enumerate(edges):
        w = 1.0 if weights is None else weights[k]
        A[i, j] = A[j, i] = w
    return A


@learner_facing
def normalize_adjacency(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``normalize_adjacency(A)`` -> D^-1/2 (A + I) D^-1/2 with D the degrees of A + I."""
    device = get_device() if device is None else device
    karate, _, _ = GR.karate_club()
    cases = [Case("a path 0-1-2-3", (_adjacency([(0, 1), (1, 2), (2, 3)], 4),)),
             Case("a triangle with a tail", (_adjacency([(0, 1), (1, 2), (0, 2), (2, 3)], 4),)),
             Case("the karate club", (karate,))]
    if hidden:
        g = _gen(41)
        rand = (torch.rand(9, 9, generator=g, dtype=torch.float64) < 0.4).double().triu(1)
        cases += [Case("a star with 6 leaves, float64", (_adjacency([(0, k) for k in range(1, 7)], 7,
                                                                    dtype=torch.float64),)),
                  Case("an isolated node (degree 0)", (_adjacency([(0, 1), (1, 2)], 4),)),
                  Case("a graph with no edges", (torch.zeros(3, 3),)),
                  Case("one node", (torch.zeros(1, 1),)),
                  Case("weighted edges", (_adjacency([(0, 1), (1, 2), (2, 0), (2, 3)], 4, [0.5, 2.0, 1.0, 3.0]),)),
                  Case("a random graph, float64", (rand + rand.T,))]

    def eye(A):
        return torch.eye(A.shape[0], dtype=A.dtype, device=A.device)

    def sym(M, d):
        return d[:, None] * M * d[None, :]

    mistakes = {
        "add the self loops first: A_hat is built from A + I, not from A":
            lambda A: sym(A, A.sum(1).rsqrt()),
        "use D^-1/2 on both sides (symmetric normalisation); D^-1 (A + I) averages rows instead":
            lambda A: (A + eye(A)) / (A + eye(A)).sum(1, keepdim=True),
        "use D^-1/2 on both sides, not D^-1 on both sides":
            lambda A: sym(A + eye(A), 1 / (A + eye(A)).sum(1)),
        "the degrees are those of A + I (every node counts its own self loop)":
            lambda A: sym(A + eye(A), A.sum(1).rsqrt()),
        "the degree matrix enters with the power -1/2 (divide), not +1/2":
            lambda A: sym(A + eye(A), (A + eye(A)).sum(1).sqrt()),
    }
    check_function(fn, GR.normalize_adjacency, cases, name="normalize_adjacency", device=device, rtol=1e-5,
                   atol=1e-6, hidden=hidden, mistakes=mistakes)


# ---------------------------------------------------------------- Pareto front

@learner_facing
def pareto_front(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``pareto_front(n_params, acc)`` -> a (T,) bool array of the trials no other trial dominates."""
    rng = np.random.default_rng(52 if hidden else 51)
    cases = [
        Case("five trials", (np.array([1000, 5000, 2000, 8000, 3000]), np.array([0.60, 0.80, 0.55, 0.78, 0.70]))),
        Case("a smaller model as accurate as a bigger one",
             (np.array([100, 200, 300]), np.array([0.9, 0.9, 0.95]))),
        Case("as small but less accurate", (np.array([500, 500, 900]), np.array([0.7, 0.8, 0.85]))),
        Case("two identical trials", (np.array([300, 300, 100]), np.array([0.8, 0.8, 0.5]))),
    ]
    if hidden:
        p = rng.integers(100, 100_000, 40)
        cases += [
            Case("one trial", (np.array([1234]), np.array([0.5]))),
            Case("all identical", (np.array([10, 10, 10]), np.array([0.3, 0.3, 0.3]))),
            Case("python lists", ([800, 200, 400, 600], [0.9, 0.5, 0.7, 0.6])),
            Case("40 random trials", (p, rng.uniform(0.3, 0.95, 40).round(2))),
            Case("a chain, each bigger and better", (np.arange(1, 8) * 1000, np.linspace(0.4, 0.9, 7))),
            Case("one trial best at both", (np.array([50, 400, 300, 900]), np.array([0.99, 0.8, 0.7, 0.95]))),
        ]

    def strict_both(n_params, acc):
        p, a = np.asarray(n_params, float), np.asarray(acc, float)
        return ~((p[None, :] < p[:, None]) & (a[None, :] > a[:, None])).any(axis=1)

    def weak_no_self(n_params, acc):
        p, a = np.asarray(n_params, float), np.asarray(acc, float)
        dom = (p[None, :] <= p[:, None]) & (a[None, :] >= a[:, None])
        np.fill_diagonal(dom, False)
        return ~dom.any(axis=1)

    def bigger_is_better(n_params, acc):
        return N.pareto_front(-np.asarray(n_params, float), acc)

    def indices(n_params, acc):
        return np.flatnonzero(N.pareto_front(n_params, acc))

    check_function(fn, N.pareto_front, cases, name="pareto_front", rtol=0, atol=0, hidden=hidden,
                   mistakes={"a trial is also dominated by one that is as small and more accurate, or as accurate"
                             " and smaller (<= and >=, with at least one strict)": strict_both,
                             "identical trials do not dominate each other: dominating needs strictly better"
                             " in at least one of the two": weak_no_self,
                             "fewer parameters is better: a dominating trial is at most as large": bigger_is_better,
                             "return a boolean mask with one entry per trial, not the indices of the front":
                             indices})
