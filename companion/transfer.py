"""Transfer learning: reuse what a network learned on one task for another.

- freezing: :func:`freeze`, :func:`unfreeze`, :func:`count_trainable` (frozen batch-norm
  layers go to evaluation mode, see :class:`SmallCNN`);
- per-layer learning rates: :func:`param_groups` for ``torch.optim`` parameter groups;
- progressive unfreezing: :func:`progressive_unfreezing`;
- the course's own pretrained vision model: :class:`SmallCNN`, pretrained on MNIST-5k
  digits 0-4 by :func:`pretrain_source_cnn` and cached with a SHA-256 checksum, to be
  reused on digits 5-9 (:func:`digit_transfer_data`, :func:`few_shot_indices`);
- fine-tuning the top of MiniLM on frozen lower-layer states: :func:`minilm_states`,
  :func:`state_batches`, :class:`TopLayersClassifier`, :func:`fit_top_layers`;
- domain adaptation between scikit-learn's 8x8 digits and MNIST-5k
  (:func:`digit_domains`): adaptive batch norm (:func:`adapt_bn`) and a gradient-reversal
  layer (:class:`GradReverse`, :func:`grad_reverse`, :func:`train_dann`).
"""
from __future__ import annotations

import copy
import hashlib
import io
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .runtime import cache_dir, fast_mode, get_device, seed_everything

BatchNorm = nn.modules.batchnorm._BatchNorm  # BatchNorm1d, 2d and 3d share this base class


# ---------------------------------------------------------------- freezing

def _under(name: str, prefixes: Sequence[str]) -> bool:
    """True when the dotted ``name`` is one of ``prefixes`` or lies inside one ("head" covers "head.weight")."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(model: nn.Module, trainable: Sequence[str] = ("head",)) -> int:
    """Freeze every parameter of ``model`` except those under the names in ``trainable``.

    A parameter is trainable when its name (as in ``model.named_parameters()``) starts with
    one of the prefixes followed by a dot: ``"head"`` keeps ``head.weight`` and
    ``head.bias``; ``"block3"`` keeps everything in ``block3``. Batch-norm layers outside
    the trainable part go to evaluation mode, so their running statistics stay those of
    pretraining; the others follow the model's mode. Returns the number of trainable
    scalars.
    """
    if isinstance(trainable, str):
        trainable = (trainable,)
    for name, p in model.named_parameters():
        p.requires_grad_(_under(name, trainable))
    for name, module in model.named_modules():
        if isinstance(module, BatchNorm):
            module.train(model.training and _under(name, trainable))
    return count_trainable(model)


def unfreeze(model: nn.Module) -> int:
    """Make every parameter trainable again (batch norm follows the model's mode); returns the count."""
    for p in model.parameters():
        p.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, BatchNorm):
            module.train(model.training)
    return count_trainable(model)


def count_trainable(model: nn.Module) -> int:
    """Number of scalars in parameters with ``requires_grad=True``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen_bn_to_eval(model: nn.Module) -> None:
    """Put every batch-norm layer whose parameters are all frozen into evaluation mode."""
    for module in model.modules():
        params = list(module.parameters()) if isinstance(module, BatchNorm) else []
        if params and not any(p.requires_grad for p in params):
            module.eval()


def param_groups(model: nn.Module, base_lr: float, head_lr: float, head: str = "head") -> list[dict]:
    """Two optimizer parameter groups: the body at ``base_lr`` and the head at ``head_lr``.

    Returns ``[{"params": [...], "lr": base_lr}, {"params": [...], "lr": head_lr}]``: the
    trainable parameters outside ``head`` first, then those inside it, each list in
    ``model.named_parameters()`` order. Frozen parameters are left out; a group may be
    empty. Pass the result to any ``torch.optim`` optimizer.
    """
    body, top = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (top if _under(name, (head,)) else body).append(p)
    return [{"params": body, "lr": base_lr}, {"params": top, "lr": head_lr}]


def layerwise_groups(model: nn.Module, order: Sequence[str], head_lr: float, decay: float = 0.5) -> list[dict]:
    """Discriminative learning rates (ULMFiT): ``order`` lists prefixes from the output down.

    The first prefix gets ``head_lr``, the next ``head_lr * decay``, then ``decay**2``...
    Only trainable parameters are included; empty groups are dropped.
    """
    groups = []
    for depth, prefix in enumerate(order):
        params = [p for n, p in model.named_parameters() if p.requires_grad and _under(n, (prefix,))]
        if params:
            groups.append({"params": params, "lr": head_lr * decay**depth, "name": prefix})
    return groups


# ---------------------------------------------------------------- the course's CNN

class SmallCNN(nn.Module):
    """Three conv blocks (conv 3x3, batch norm, ReLU, optional 2x2 max pool), global average pooling, a linear head.

    Input (N, 1, H, W), or (N, H*W) for square images; output (N, n_classes) logits.
    ``features(x)`` gives the (N, widths[-1]) vector the head reads. The blocks are
    called ``block1``..``block3`` and the classifier ``head``, the names that
    :func:`freeze` and :func:`param_groups` take.

    ``keep_frozen_bn_eval`` (default True): ``model.train()`` leaves batch-norm layers
    whose parameters are all frozen in evaluation mode (what Keras does for a frozen
    layer). Plain PyTorch modules put every layer back in training mode.
    """

    def __init__(self, n_classes: int = 5, widths: Sequence[int] = (16, 32, 64),
                 pools: Sequence[bool] = (True, True, True), in_channels: int = 1):
        super().__init__()
        c_in = in_channels
        for i, (width, pool) in enumerate(zip(widths, pools), start=1):
            layers = [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            self.add_module(f"block{i}", nn.Sequential(*layers))
            c_in = width
        self.n_blocks = len(widths)
        self.head = nn.Linear(c_in, n_classes)
        self.keep_frozen_bn_eval = True

    def features(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            side = math.isqrt(x.shape[1])
            x = x.view(len(x), 1, side, side)
        for i in range(1, self.n_blocks + 1):
            x = getattr(self, f"block{i}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and getattr(self, "keep_frozen_bn_eval", True):
            frozen_bn_to_eval(self)
        return self


# ---------------------------------------------------------------- the source and target tasks

@dataclass(frozen=True)
class TransferData:
    """MNIST-5k cut in two tasks: digits 0-4 (source) and digits 5-9 (target), labels 0-4 in both.

    Images are (N, 784) float32 in [0, 1]; labels (N,) int64. The source has a train and a
    validation part; the target a pool to draw few labelled examples from, and a test part.
    """

    source_train: tuple[Tensor, Tensor]
    source_val: tuple[Tensor, Tensor]
    target_pool: tuple[Tensor, Tensor]
    target_test: tuple[Tensor, Tensor]


def digit_transfer_data(seed: int = 0) -> TransferData:
    """The split every transfer experiment of chapter 9 uses (stratified, from ``data.split``)."""
    from . import data

    parts = data.split(data.load_mnist5k(), test_fraction=0.2, val_fraction=0.2, seed=seed)

    def task(part: str, low: bool) -> tuple[Tensor, Tensor]:
        X, y = parts.tensors(part)
        keep = y < 5 if low else y >= 5
        return X[keep], y[keep] - (0 if low else 5)

    return TransferData(task("train", True), task("val", True), task("train", False),
                        task("test", False))


def few_shot_indices(y: Tensor | np.ndarray, k: int, seed: int = 0) -> Tensor:
    """``k`` random indices of each class in ``y`` (N,), classes in order: (k * C,) int64."""
    y = torch.as_tensor(y)
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).squeeze(1)
        if len(members) < k:
            raise ValueError(f"class {int(c)} has only {len(members)} examples, {k} asked for")
        picks.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picks)


# ---------------------------------------------------------------- pretraining with a checksummed cache

SOURCE_CNN_VERSION = 1


def _source_settings(fast: bool) -> dict:
    return {"epochs": 3 if fast else 10, "batch_size": 64, "lr": 3e-3}


def checkpoint_path(fast: bool):
    """Where :func:`pretrain_source_cnn` caches its weights (a ``.sha256`` file lies beside it)."""
    return cache_dir() / f"source-cnn-{'fast' if fast else 'full'}-v{SOURCE_CNN_VERSION}.pt"


def _sha256_bytes(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def pretrain_source_cnn(fast: bool | None = None, *, seed: int = 0, device=None, progress: bool = True,
                        rebuild: bool = False) -> SmallCNN:
    """The course's pretrained CNN: :class:`SmallCNN` trained on MNIST-5k digits 0-4.

    The first call trains it (a few seconds in fast mode, under a minute in full mode) and
    stores the weights under :func:`companion.runtime.cache_dir` with their SHA-256; later
    calls load them. A cache file that fails its checksum or cannot be read is reported
    and rebuilt. Fast and full mode keep separate checkpoints (``fast=None`` follows the
    current mode). The model comes back in evaluation mode on ``device``, with a
    ``pretraining`` dict (epochs, validation accuracy, whether it came from the cache).
    """
    from .training import evaluate, fit

    fast = fast_mode() if fast is None else fast
    device = device or get_device()
    path = checkpoint_path(fast)
    sum_path = path.with_suffix(".sha256")
    model = SmallCNN(n_classes=5)
    if path.exists() and sum_path.exists() and not rebuild:
        try:
            blob = path.read_bytes()
            if _sha256_bytes(blob) == sum_path.read_text().strip():
                saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                model.load_state_dict(saved["state"])
                model.pretraining = {**saved["info"], "from_cache": True}
                return model.to(device).eval()
            print(f"[companion] cached {path.name} failed its checksum; retraining it")
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            print(f"[companion] cached {path.name} is unreadable ({type(err).__name__}); retraining it")
    settings = _source_settings(fast)
    d = digit_transfer_data()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        model = SmallCNN(n_classes=5)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings["epochs"])
        hist = fit(model, d.source_train, d.source_val, epochs=settings["epochs"], optimizer=optimizer,
                   scheduler=schedule, batch_size=settings["batch_size"], device=device, progress=progress,
                   seed=seed)
    info = {"epochs": settings["epochs"], "val_acc": float(evaluate(model, d.source_val)["acc"]),
            "train_size": int(len(d.source_train[1])), "final_loss": float(hist["loss"][-1])}
    buffer = io.BytesIO()
    torch.save({"state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "info": info}, buffer)
    blob = buffer.getvalue()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: runs in parallel never share it
    tmp.write_bytes(blob)
    tmp.replace(path)  # atomic: a crash mid-write leaves no half file behind
    sum_path.write_text(_sha256_bytes(blob) + "\n")
    model.pretraining = {**info, "from_cache": False}
    return model.to(device).eval()


def transfer_model(pretrained: SmallCNN, n_classes: int = 5, seed: int = 0) -> SmallCNN:
    """A copy of ``pretrained`` with a fresh head of ``n_classes`` outputs (seeded), in training mode."""
    model = copy.deepcopy(pretrained)
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(model.head.in_features, n_classes)
    with torch.no_grad():
        bound = 1 / math.sqrt(head.in_features)
        head.weight.copy_(torch.rand(head.weight.shape, generator=g) * 2 * bound - bound)
        head.bias.copy_(torch.rand(head.bias.shape, generator=g) * 2 * bound - bound)
    model.head = head.to(next(pretrained.parameters()).device)
    unfreeze(model.train())
    return model


def fit_steps(model: nn.Module, train: tuple[Tensor, Tensor], *, steps: int, optimizer: torch.optim.Optimizer,
              batch_size: int = 25, val=None, device=None, progress: bool = True, seed: int = 0):
    """:func:`companion.training.fit` for about ``steps`` optimizer steps, whatever the size of ``train``.

    With a few dozen examples an "epoch" is one or two steps, so comparing runs by
    epochs would give the larger training sets more updates; this gives every run the
    same number (rounded up to whole epochs). The batch size is capped at the data size.
    """
    from .training import fit

    n = len(train[1])
    batch_size = min(batch_size, n)
    epochs = math.ceil(steps / math.ceil(n / batch_size))
    return fit(model, train, val, epochs=epochs, optimizer=optimizer, batch_size=batch_size, device=device,
               progress=progress, seed=seed)


def progressive_unfreezing(model: nn.Module, train: tuple[Tensor, Tensor], val=None, *,
                           stages: Sequence[Sequence[str]], steps_per_stage: int, base_lr: float, head_lr: float,
                           batch_size: int = 25, device=None, progress: bool = True, seed: int = 0):
    """Train in stages, unfreezing more of the network each time (ULMFiT's gradual unfreezing).

    ``stages`` lists the trainable prefixes of each stage, e.g.
    ``[("head",), ("head", "block3"), ("head", "block3", "block2")]``. Each stage freezes
    the rest (:func:`freeze`), builds a new Adam over :func:`param_groups` (the body at
    ``base_lr``, the head at ``head_lr``) and runs :func:`fit_steps`. Returns the
    per-epoch :class:`companion.training.History` of all stages, with a ``stage`` column.
    """
    from .training import History

    history = History()
    for i, stage in enumerate(stages):
        model.train()
        freeze(model, trainable=stage)
        optimizer = torch.optim.Adam(param_groups(model, base_lr, head_lr))
        hist = fit_steps(model, train, steps=steps_per_stage, optimizer=optimizer, batch_size=batch_size, val=val,
                         device=device, progress=progress, seed=seed + i)
        for epoch in range(hist.epochs):
            history.log({k: v[epoch] for k, v in hist.metrics.items()} | {"stage": i})
    return history


# ---------------------------------------------------------------- adaptive batch norm

@torch.no_grad()
def adapt_bn(model: nn.Module, X: Tensor, batch_size: int = 256) -> nn.Module:
    """Adaptive batch norm (Li et al., 2016): re-estimate every batch-norm layer's statistics on ``X``.

    Each batch-norm layer's running statistics are reset, then ``X`` (N, ...) goes through
    the model in batches of ``batch_size`` with only the batch-norm layers in training
    mode and ``momentum=None``, so the running statistics become the plain average over
    the batches (PyTorch's cumulative moving average). Weights are untouched; momentum
    and every layer's mode are restored afterwards. Changes ``model`` in place and returns it.
    """
    norms = [m for m in model.modules() if isinstance(m, BatchNorm)]
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, len(X), batch_size):
        model(X[start:start + batch_size].to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    for m, mode in modes.items():
        m.training = mode
    return model


# ---------------------------------------------------------------- gradient reversal

class GradReverse(torch.autograd.Function):
    """Identity on the way forward; multiplies the gradient by ``-lam`` on the way back (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.lam * grad, None  # no gradient for lam


def grad_reverse(x: Tensor, lam: float = 1.0) -> Tensor:
    """``GradReverse.apply(x, lam)``: same values as ``x``; gradients reach ``x`` times ``-lam``."""
    return GradReverse.apply(x, lam)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule for lambda: 2 / (1 + exp(-gamma * p)) - 1, from 0 at p = 0 to almost 1 at p = 1."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


# ---------------------------------------------------------------- two digit domains

@dataclass(frozen=True)
class Domains:
    """Labelled source images and target images, each (N, 1, size, size) float32, standardised.

    ``source``/``source_test`` are scikit-learn's 8x8 digits; ``target``/``target_test`` are
    MNIST-5k images shrunk to the same size. The target's labels are for testing only.
    """

    source: tuple[Tensor, Tensor]
    source_test: tuple[Tensor, Tensor]
    target: tuple[Tensor, Tensor]
    target_test: tuple[Tensor, Tensor]


def shrink(images: Tensor, size: int = 8) -> Tensor:
    """Resize (N, 1, H, W) images to (N, 1, size, size) by averaging pixel blocks (``F.interpolate``, mode "area")."""
    return F.interpolate(images, size=(size, size), mode="area")


def digit_domains(seed: int = 0, size: int = 8) -> Domains:
    """scikit-learn digits (source) and MNIST-5k shrunk to ``size`` x ``size`` (target).

    Each domain is stratified 80/20 into an adaptation part and a test part, rescaled so
    that every image's largest pixel is 1, then standardised with the *source* training
    part's mean and standard deviation (one number each): the target gets the source's
    scaling, as it would at deployment.
    """
    from . import data

    digits, mnist = data.load_digits(), data.load_mnist5k()

    def as_images(ds, side):
        X = torch.as_tensor(ds.X).view(-1, 1, side, side)
        return X, torch.as_tensor(ds.y)

    Xs, ys = as_images(digits, 8)
    Xt, yt = as_images(mnist, 28)
    if size != 8:
        Xs = F.interpolate(Xs, size=(size, size), mode="bilinear", align_corners=False)
    Xt = shrink(Xt[:, :, 4:24, 4:24], size)  # MNIST centres each digit in a 20x20 box; digits fill theirs
    Xs = Xs / Xs.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    Xt = Xt / Xt.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    s_tr, s_te = data.stratified_split(ys.numpy(), 0.2, seed)
    t_tr, t_te = data.stratified_split(yt.numpy(), 0.2, seed)
    mean, std = Xs[s_tr].mean(), Xs[s_tr].std()

    def part(X, y, idx):
        idx = torch.as_tensor(np.random.default_rng(seed).permutation(idx))
        return ((X[idx] - mean) / std).contiguous(), y[idx]

    return Domains(part(Xs, ys, s_tr), part(Xs, ys, s_te), part(Xt, yt, t_tr), part(Xt, yt, t_te))


def digit_cnn(seed: int = 0) -> SmallCNN:
    """The domain-adaptation classifier for 8x8 images: :class:`SmallCNN` with widths 32, 64, 64, one pool."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(n_classes=10, widths=(32, 64, 64), pools=(False, True, False))


class DomainClassifier(nn.Module):
    """A small MLP that tells source (0) from target (1) features: (N, D) -> (N, 2) logits."""

    def __init__(self, n_features: int = 64, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def train_dann(model: SmallCNN, source: tuple[Tensor, Tensor], target: Tensor, *, epochs: int,
               lr: float = 1e-3, batch_size: int = 64, lam_max: float = 1.0, device=None,
               progress: bool = True, seed: int = 0):
    """Domain-adversarial training (DANN): classify the source, and make the features domain-blind.

    Every step takes a labelled source batch and an unlabelled target batch. The label
    loss is the source cross-entropy; the domain classifier reads
    ``grad_reverse(features, lam)`` of both batches (passed together, so batch norm sees
    a mixed batch) and learns to tell them apart, while the reversed gradient pushes the
    feature extractor to make that impossible. ``lam`` ramps from 0 to ``lam_max`` with
    :func:`dann_lambda`. Returns ``(domain_classifier, history)`` where history has
    per-epoch ``loss``, ``domain_loss``, ``domain_acc`` and ``lam``.
    """
    from tqdm.auto import tqdm

    from .training import History

    device = device or get_device()
    model.to(device).train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        disc = DomainClassifier(model.head.in_features).to(device)
    optimizer = torch.optim.Adam([*model.parameters(), *disc.parameters()], lr=lr)
    Xs, ys = source
    g = torch.Generator().manual_seed(seed)
    steps = max(1, len(Xs) // batch_size)
    history = History()
    bar = tqdm(range(epochs), desc="DANN epochs", disable=not progress)
    for epoch in bar:
        s_order = torch.randperm(len(Xs), generator=g)
        t_order = torch.randperm(len(target), generator=g)
        totals = np.zeros(3)
        for step in range(steps):
            lam = lam_max * dann_lambda((epoch * steps + step) / (epochs * steps))
            si = s_order[step * batch_size:(step + 1) * batch_size]
            ti = t_order[(step * batch_size) % len(target):][:batch_size]
            xs, y, xt = Xs[si].to(device), ys[si].to(device), target[ti].to(device)
            feats = model.features(torch.cat([xs, xt]))
            label_loss = F.cross_entropy(model.head(feats[:len(xs)]), y)
            domain = torch.cat([torch.zeros(len(xs)), torch.ones(len(xt))]).long().to(device)
            domain_logits = disc(grad_reverse(feats, lam))
            domain_loss = F.cross_entropy(domain_logits, domain)
            optimizer.zero_grad()
            (label_loss + domain_loss).backward()
            optimizer.step()
            totals += [label_loss.item(), domain_loss.item(),
                       (domain_logits.argmax(1) == domain).float().mean().item()]
        logs = dict(zip(["loss", "domain_loss", "domain_acc"], totals / steps)) | {"lam": lam}
        history.log(logs)
        bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
    model.eval()
    return disc, history


# ---------------------------------------------------------------- MiniLM: fine-tune the top layers

def _additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, T) 0/1 attention mask -> (N, 1, 1, T) additive mask: 0 where attended, a huge negative elsewhere."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@torch.no_grad()
def minilm_states(texts: Sequence[str], n_top: int = 1, tokenizer=None, model=None, batch_size: int = 64,
                  max_length: int = 128, progress: bool = True) -> dict[str, np.ndarray]:
    """Run MiniLM's frozen lower layers once: the token states entering its top ``n_top`` layers.

    Returns ``{"tokens": (L, 384) float16, "lengths": (N,) int64}``: the states of every
    real (non-padding) token of every text, one text after another, and how many tokens
    each text has (``L = lengths.sum()``). Stored this way they fit in a cache file
    (:func:`companion.data.cached_arrays`); :func:`state_batches` pads them back into
    batches. Fine-tuning only the top layers never needs the layers below again.
    """
    from tqdm.auto import tqdm

    from .pretrained import load_minilm

    if model is None:
        tokenizer, model = load_minilm()
    device = next(model.parameters()).device
    tokens, lengths = [], []
    for i in tqdm(range(0, len(texts), batch_size), desc="frozen MiniLM layers", disable=not progress):
        batch = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1 - n_top]
        mask = batch["attention_mask"].bool()
        tokens.append(hidden[mask].cpu().half())  # row-major: text by text, token by token
        lengths.append(mask.sum(1).cpu())
    return {"tokens": torch.cat(tokens).numpy(), "lengths": torch.cat(lengths).numpy().astype(np.int64)}


def state_batches(tokens: np.ndarray, lengths: np.ndarray, batch_size: int = 64) -> list[tuple[Tensor, Tensor]]:
    """Pad the packed states of :func:`minilm_states` into batches of consecutive texts.

    Returns a list of ``(hidden (B, T, H) float32, mask (B, T) int64)`` with zeros at the
    padding positions; sort the texts by length beforehand to keep the padding small.
    """
    tokens, lengths = torch.as_tensor(tokens).float(), torch.as_tensor(lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    out = []
    for i in range(0, len(lengths), batch_size):
        lens = lengths[i:i + batch_size]
        T = int(lens.max())
        hidden = tokens.new_zeros(len(lens), T, tokens.shape[1])
        mask = torch.zeros(len(lens), T, dtype=torch.int64)
        for row, (start, n) in enumerate(zip(starts[i:i + batch_size].tolist(), lens.tolist())):
            hidden[row, :n] = tokens[start:start + n]
            mask[row, :n] = 1
        out.append((hidden, mask))
    return out


class TopLayersClassifier(nn.Module):
    """MiniLM's top transformer layer(s), mean pooling, L2 normalisation and a linear ``head``.

    forward(hidden (N, T, 384), mask (N, T)) -> (N, n_classes) logits. ``top`` holds copies
    of the encoder's last layers (trainable); ``head`` can start from a linear probe.
    """

    def __init__(self, encoder, n_top: int = 1, n_classes: int = 2, head: nn.Linear | None = None):
        super().__init__()
        self.top = nn.ModuleList(copy.deepcopy(layer) for layer in encoder.encoder.layer[-n_top:])
        size = encoder.config.hidden_size
        self.head = copy.deepcopy(head) if head is not None else nn.Linear(size, n_classes)

    def embed(self, hidden: Tensor, mask: Tensor) -> Tensor:
        from .pretrained import mean_pool

        extended = _additive_mask(mask, hidden.dtype)
        for layer in self.top:
            hidden = layer(hidden, attention_mask=extended)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return F.normalize(mean_pool(hidden, mask), dim=-1)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.head(self.embed(hidden, mask))


def fit_top_layers(model: TopLayersClassifier, batches: list[tuple[Tensor, Tensor]], y: Tensor, *, epochs: int,
                   optimizer: torch.optim.Optimizer, progress: bool = True, seed: int = 0):
    """Train ``model`` on precomputed ``minilm_states`` batches with labels ``y`` (N,) in the same order.

    Each epoch visits the batches in a new random order. Returns the History (loss, acc).
    """
    from tqdm.auto import tqdm

    from .training import History

    offsets = np.cumsum([0] + [len(h) for h, _ in batches])
    device = next(model.parameters()).device
    y = y.to(device)
    g = torch.Generator().manual_seed(seed)
    history = History()
    bar = tqdm(range(epochs), desc="fine-tuning epochs", disable=not progress)
    for _ in bar:
        model.train()
        loss_sum, correct = 0.0, 0
        for b in torch.randperm(len(batches), generator=g).tolist():
            hidden, mask = (t.to(device) for t in batches[b])
            target = y[offsets[b]:offsets[b + 1]]
            logits = model(hidden, mask)
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(target)
            correct += (logits.argmax(1) == target).sum().item()
        logs = {"loss": loss_sum / offsets[-1], "acc": correct / offsets[-1]}
        history.log(logs)
        bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
    model.eval()
    return history


@torch.no_grad()
def predict_top_layers(model: TopLayersClassifier, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Logits for every precomputed batch, concatenated on the CPU: (N, n_classes)."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(hidden.to(device), mask.to(device)).cpu() for hidden, mask in batches])
