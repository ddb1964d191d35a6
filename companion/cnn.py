"""Convolutional networks: convolution and pooling from scratch, classic filters, data
augmentation with torch ops, and the famous architectures built layer by layer.

Shapes follow ``torch.nn.functional``: images are ``(N, C, H, W)`` (batch, channels,
height, width), kernels ``(O, C, kh, kw)`` (output channels, input channels, height,
width). Every from-scratch function returns a new tensor and matches its PyTorch
counterpart (``F.conv2d``, ``F.max_pool2d``, ``F.avg_pool2d``); the architectures
reproduce the published (or ``torchvision``'s documented) parameter counts exactly.

Contents:

- arithmetic: :func:`conv_output_size`, :func:`conv_params`
- operations: :func:`conv2d_loop`, :func:`conv2d`, :func:`max_pool2d_loop`,
  :func:`max_pool2d`, :func:`avg_pool2d`
- images: :data:`FILTERS`, :func:`sample_photo`, :func:`apply_filter`
- augmentation: :func:`random_shift_rotate`, :class:`AugmentedBatches`
- models for the chapter's experiments: :func:`guide_cnn`, :func:`cnn1d`
- the tour: :func:`lenet5`, :func:`alexnet`, :func:`vgg16`, :class:`BasicBlock`,
  :class:`Bottleneck`, :func:`resnet50`, :class:`InceptionModule`, :func:`efficientnet`,
  :func:`compound_scaling`, :func:`scaled_cnn`, :data:`PUBLISHED`
- helpers: :func:`count_params`, :func:`count_macs`, :func:`benchmark_conv2d`,
  :func:`conv_explorer` (an ipywidgets explorer)
"""
from __future__ import annotations

import math
import time
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

def _pair(v) -> tuple[int, int]:
    """3 -> (3, 3); (2, 1) -> (2, 1)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


# ====================================================================== arithmetic

def conv_output_size(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Length of a convolution's (or pooling's) output along one axis.

    ``floor((n + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``, the formula in
    ``torch.nn.Conv2d``'s documentation: the input padded on both sides, minus the span of
    the (dilated) kernel, divided by the stride and rounded down, plus the first position.
    """
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_params(in_channels: int, out_channels: int, kernel_size, bias: bool = True, groups: int = 1) -> int:
    """Trainable parameters of ``nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias, groups=groups)``.

    Each of the ``out_channels`` filters sees ``in_channels / groups`` channels through a
    ``kh x kw`` window, plus one bias per filter.
    """
    kh, kw = _pair(kernel_size)
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)


def count_params(model: nn.Module) -> int:
    """Number of trainable scalar parameters of ``model`` (works on the meta device too)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ====================================================================== convolution

def _same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) for padding='same' (the extra pixel goes right/bottom)."""
    (kh, kw), (dh, dw) = kernel, dilation
    th, tw = dh * (kh - 1), dw * (kw - 1)
    return tw // 2, tw - tw // 2, th // 2, th - th // 2


def _pad_input(x: Tensor, weight_hw: tuple[int, int], stride, padding, dilation):
    """Return (x padded, stride pair, dilation pair): handles int, pair, 'valid' and 'same' padding."""
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            return x, stride, dilation
        if padding != "same":
            raise ValueError(f"padding should be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions (as in PyTorch)")
        return F.pad(x, _same_padding(weight_hw, dilation)), stride, dilation
    ph, pw = _pair(padding)
    return (F.pad(x, (pw, pw, ph, ph)) if ph or pw else x), stride, dilation


def conv2d_loop(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """2-D convolution (cross-correlation, like ``F.conv2d``) by sliding the kernel in a Python loop.

    x (N, C, H, W), weight (O, C, kh, kw), bias (O,) or None -> (N, O, H_out, W_out).
    Written for reading, not speed: one output position per iteration. At position
    (i, j) the window ``x[:, :, i*sh : i*sh+kh, j*sw : j*sw+kw]`` is multiplied entry by
    entry with each of the O filters and summed over channels and the window.
    """
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    x = F.pad(x, (pw, pw, ph, ph))
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = x.new_zeros(n, o, out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]           # (N, C, kh, kw)
            out[:, :, i, j] = (window[:, None] * weight[None]).sum(dim=(2, 3, 4))  # (N, O)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1) -> Tensor:
    """2-D convolution as one matrix product over every window (im2col). Matches ``F.conv2d``.

    x (N, C, H, W) or (C, H, W); weight (O, C, kh, kw); bias (O,) or None; stride,
    padding and dilation an int or an (h, w) pair (padding also 'valid' or 'same').
    Returns (N, O, H_out, W_out), each side given by :func:`conv_output_size`.

    im2col: copy every window the kernel visits into one row of a matrix ``cols`` of
    shape (N * H_out * W_out, kh * kw * C); the kernel, flattened to (O, kh * kw * C),
    then gives all outputs in one product ``cols @ kernel.T``. The image is first copied
    into channels-last order (N, H, W, C), so that each window row is gathered from runs of
    C neighbouring numbers; ``F.unfold`` (the same columns, ordered C, kh, kw, see
    :func:`conv2d_unfold`) gathers single numbers and is several times slower on a CPU.
    The result is a channels-last view: an ordinary (N, O, H_out, W_out) tensor whose
    memory is ordered like PyTorch's own convolution output for channels-last inputs.
    """
    if x.dim() == 3:
        return conv2d(x[None], weight, bias, stride, padding, dilation)[0]
    o, c, kh, kw = weight.shape
    if x.shape[1] != c:
        raise ValueError(f"x has {x.shape[1]} channels but the kernel expects {c}")
    x, (sh, sw), (dh, dw) = _pad_input(x, (kh, kw), stride, padding, dilation)
    n = x.shape[0]
    x = x.permute(0, 2, 3, 1).contiguous()                              # (N, H, W, C) in memory
    # every window as a view: (N, H_out, W_out, C, span_h, span_w), then keep every d-th entry
    windows = x.unfold(1, dh * (kh - 1) + 1, sh).unfold(2, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    out_h, out_w = windows.shape[1], windows.shape[2]
    cols = windows.permute(0, 1, 2, 4, 5, 3).reshape(n * out_h * out_w, kh * kw * c)  # the copy
    kernel = weight.permute(0, 2, 3, 1).reshape(o, kh * kw * c)          # rows ordered like cols
    out = cols @ kernel.T if bias is None else torch.addmm(bias, cols, kernel.T)      # (N*L, O)
    return out.view(n, out_h, out_w, o).permute(0, 3, 1, 2)


def conv2d_unfold(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """The textbook im2col with ``F.unfold``: cols (N, C*kh*kw, L), then (O, C*kh*kw) @ cols. Matches ``F.conv2d``.

    x (N, C, H, W), weight (O, C, kh, kw) -> (N, O, H_out, W_out).
    """
    o, c, kh, kw = weight.shape
    out_h = conv_output_size(x.shape[2], kh, _pair(stride)[0], _pair(padding)[0])
    out_w = conv_output_size(x.shape[3], kw, _pair(stride)[1], _pair(padding)[1])
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)        # (N, C*kh*kw, L)
    out = (weight.reshape(o, -1) @ cols).view(x.shape[0], o, out_h, out_w)
    return out if bias is None else out + bias.view(1, o, 1, 1)


# ====================================================================== pooling

def max_pool2d_loop(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Max pooling with a Python loop over output positions (for reading). Matches ``F.max_pool2d``.

    x (N, C, H, W) -> (N, C, H_out, W_out). Padding is filled with -inf, so a padded
    border can never win the max.
    """
    (kh, kw) = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    x = F.pad(x, (pw, pw, ph, ph), value=-math.inf)
    n, c, h, w = x.shape
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = x.new_empty(n, c, out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            out[:, :, i, j] = x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].amax(dim=(2, 3))
    return out


def _windows(x: Tensor, kernel_size, stride, padding, fill: float) -> Tensor:
    """Every pooling window as a view: (N, C, H_out, W_out, kh, kw), padded with ``fill``."""
    (kh, kw) = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=fill)
    return x.unfold(2, kh, sh).unfold(3, kw, sw)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Max pooling without loops. Matches ``F.max_pool2d`` (``ceil_mode=False``, no dilation).

    x (N, C, H, W) or (C, H, W); kernel_size, stride (default: kernel_size) and padding an
    int or an (h, w) pair. ``Tensor.unfold`` views every window without copying
    (N, C, H_out, W_out, kh, kw); the max over the last two axes is the result. Padding is
    filled with -inf so that it never wins.
    """
    if x.dim() == 3:
        return max_pool2d(x[None], kernel_size, stride, padding)[0]
    return _windows(x, kernel_size, stride, padding, -math.inf).amax(dim=(-2, -1))


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Average pooling. Matches ``F.avg_pool2d`` with its defaults (zero padding counts in the mean)."""
    if x.dim() == 3:
        return avg_pool2d(x[None], kernel_size, stride, padding)[0]
    return _windows(x, kernel_size, stride, padding, 0.0).mean(dim=(-2, -1))


def benchmark_conv2d(shape=(32, 16, 28, 28), out_channels: int = 32, kernel: int = 3, padding: int = 1,
                     repeats: int = 20, seed: int = 0) -> dict[str, float]:
    """Median seconds per call of :func:`conv2d` and ``F.conv2d`` on random float32 data.

    Returns ``{"companion": s, "torch": s, "torch_im2col": s, "ratio": companion / torch,
    "max_abs_diff": d}``. ``torch_im2col`` is ``F.conv2d`` with its oneDNN and NNPACK
    backends switched off, so that PyTorch falls back to its own im2col + matrix product,
    the same algorithm as :func:`conv2d`. The calls are interleaved, so a busy machine
    slows all of them alike.
    """
    import warnings

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    w = torch.randn(out_channels, shape[1], kernel, kernel, generator=g)
    b = torch.randn(out_channels, generator=g)

    def plain_torch():
        with warnings.catch_warnings():  # switching oneDNN off warns about TF32 on Intel GPUs: irrelevant here
            warnings.simplefilter("ignore")
            with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
                return F.conv2d(x, w, b, padding=padding)

    calls = {"companion": lambda: conv2d(x, w, b, padding=padding),
             "torch": lambda: F.conv2d(x, w, b, padding=padding),
             "torch_im2col": plain_torch}
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for fn in calls.values():
            fn(), fn()
        for _ in range(repeats):
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        diff = (calls["companion"]() - calls["torch"]()).abs().max().item()
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {**med, "ratio": med["companion"] / med["torch"], "max_abs_diff": diff}


# ====================================================================== images and filters

FILTERS: dict[str, list[list[float]]] = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "box blur": [[1 / 9] * 3] * 3,
    "Gaussian blur": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "Sobel x (vertical edges)": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "Sobel y (horizontal edges)": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "Prewitt x": [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]],
    "Laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "Laplacian (8-neighbour)": [[1, 1, 1], [1, -8, 1], [1, 1, 1]],
    "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
}
"""Classic 3x3 image kernels, as nested lists (row by row)."""


def filter_kernel(name: str, dtype=torch.float32) -> Tensor:
    """One of :data:`FILTERS` as a (1, 1, 3, 3) weight tensor for :func:`conv2d`."""
    return torch.tensor(FILTERS[name], dtype=dtype).view(1, 1, 3, 3)


def sample_photo(name: str = "china.jpg", gray: bool = True, scale: int = 1) -> Tensor:
    """One of scikit-learn's two sample photographs (offline), as a float tensor in [0, 1].

    ``gray=True``: (H, W) luminance (ITU-R 601 weights); otherwise (3, H, W) RGB.
    ``scale`` > 1 shrinks it by average pooling. china.jpg is 427 x 640 pixels.
    """
    from sklearn.datasets import load_sample_image

    img = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    if scale > 1:
        img = avg_pool2d(img, scale)
    if gray:
        return (torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1) * img).sum(0)
    return img


def apply_filter(image: Tensor, kernel: Tensor | str, stride=1, padding=1) -> Tensor:
    """Convolve a gray image (H, W) with a (3, 3) or (1, 1, kh, kw) kernel (or a :data:`FILTERS` name)."""
    if isinstance(kernel, str):
        kernel = filter_kernel(kernel, image.dtype)
    kernel = kernel.reshape(1, 1, *kernel.shape[-2:]).to(image.dtype)
    return conv2d(image[None, None], kernel, stride=stride, padding=padding)[0, 0]


# ====================================================================== augmentation

def random_shift_rotate(x: Tensor, max_shift: float = 0.1, max_degrees: float = 10.0,
                        generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by up to ``max_shift`` of its size and rotate it by up to ``max_degrees``.

    x (N, C, H, W) -> same shape. One random affine map per image, applied with
    ``F.affine_grid`` + ``F.grid_sample`` (bilinear; pixels from outside the image are 0).
    Draws from ``generator`` (on the CPU) so runs repeat.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    # affine_grid works in coordinates where the image spans [-1, 1]: a shift of a
    # fraction f of the width is 2f in those units
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 2 * max_shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)           # (N, 2, 3)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class AugmentedBatches:
    """Shuffled mini-batches of ``(transform(X[idx]), y[idx])``, freshly drawn every epoch.

    Pass it to :func:`companion.training.fit` as the training data: each iteration (one
    per epoch) reshuffles and re-augments, so the network never sees exactly the same
    image twice. X (N, C, H, W), y (N,).
    """

    def __init__(self, X: Tensor, y: Tensor, batch_size: int = 64, transform=random_shift_rotate,
                 seed: int = 0, **transform_kwargs):
        self.X, self.y, self.batch_size = X, y, batch_size
        self.transform, self.kwargs = transform, transform_kwargs
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.X) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.X), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.transform(self.X[idx], generator=self.generator, **self.kwargs), self.y[idx]


# ====================================================================== the chapter's own models

def guide_cnn(in_channels: int = 1, n_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
              dropouts: Sequence[float] = (0.2, 0.3, 0.4), hidden: int = 512, image_size: int = 28) -> nn.Sequential:
    """The guide's three-block CNN, for 28 x 28 gray images by default.

    Each block: conv3x3-ReLU-BN, conv3x3-ReLU-BN (padding 1 keeps the size), 2x2 max pool
    (halves it), dropout. Then a head: flatten, a dense layer with BN and dropout 0.5,
    and the logits. 28 -> 14 -> 7 -> 3 pixels; input (B, 1, 28, 28) -> logits (B, 10).
    The model is ``Sequential(block1, block2, block3, head)``.
    """
    blocks: list[nn.Module] = []
    c, size = in_channels, image_size
    for width, p in zip(widths, dropouts):
        blocks.append(nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(width),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(width),
            nn.MaxPool2d(2), nn.Dropout(p)))
        c, size = width, size // 2
    head = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, hidden), nn.ReLU(), nn.BatchNorm1d(hidden),
                         nn.Dropout(0.5), nn.Linear(hidden, n_classes))
    return nn.Sequential(*blocks, head)


def cnn1d(n_classes: int = 10, channels: int = 25, length: int = 40) -> nn.Sequential:
    """The MNIST-1D paper's small 1-D CNN: three conv layers (kernel 5, 3, 3; stride 2), ReLU, a linear layer.

    Input (B, 40) signals or (B, 1, 40) -> logits (B, 10). 5,210 parameters.
    """
    n = length
    for k in (5, 3, 3):
        n = conv_output_size(n, k, stride=2, padding=1)
    return nn.Sequential(
        nn.Unflatten(1, (1, length)),
        nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(channels * n, n_classes),
    )


def cnn1d_bn(n_classes: int = 10, channels: int = 32, length: int = 40) -> nn.Sequential:
    """A small modern 1-D CNN: three (conv k=5 'same', batch norm, ReLU, max pool 2) blocks, global max pool, linear.

    The global max pool makes the output ignore *where* along the signal a pattern sits,
    which suits MNIST-1D's randomly shifted digits. Input (B, 40) -> logits (B, 10).
    """
    layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]
    c = 1
    for _ in range(3):
        layers += [nn.Conv1d(c, channels, 5, padding=2), nn.BatchNorm1d(channels), nn.ReLU(), nn.MaxPool1d(2)]
        c = channels
    layers += [nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(c, n_classes)]
    return nn.Sequential(*layers)


# ====================================================================== the architecture tour

PUBLISHED: dict[str, tuple[int, str]] = {
    "LeNet-5": (60_000, "LeCun et al. 1998: 'about 60,000 trainable parameters'"),
    "AlexNet (torchvision layout)": (61_100_840, "torchvision's documented count for alexnet"),
    "AlexNet (original, two GPUs)": (60_000_000, "Krizhevsky et al. 2012: '60 million parameters'"),
    "VGG-16": (138_357_544, "torchvision's documented count for vgg16 (Simonyan & Zisserman: 138M)"),
    "ResNet-50": (25_557_032, "torchvision's documented count for resnet50 (He et al.: 25.6M)"),
    "Inception (3a)": (159_000, "Szegedy et al. 2014, Table 1: 159K"),
    "EfficientNet-B0": (5_288_548, "torchvision's documented count (Tan & Le: 5.3M)"),
    "EfficientNet-B1": (7_794_184, "torchvision's documented count (Tan & Le: 7.8M)"),
    "EfficientNet-B2": (9_109_994, "torchvision's documented count (Tan & Le: 9.2M)"),
    "EfficientNet-B3": (12_233_232, "torchvision's documented count (Tan & Le: 12M)"),
}
"""Published parameter counts (1000 ImageNet classes, 3-channel input) and where they come from."""


def lenet5(n_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) with full connections between C3 and S2 and a plain linear output.

    Input (B, 1, 28, 28) (padding 2 makes it the paper's 32 x 32) -> (B, n_classes). tanh
    and average pooling as in the paper. 61,706 parameters for 10 classes (the paper's C3
    connected each map to only some inputs, and its output used RBF units: about 60,000).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),   # C1, S2: 6 x 14 x 14
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),                      # C3, S4: 16 x 5 x 5
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Tanh(),                                # C5
        nn.Linear(120, 84), nn.Tanh(),                                        # F6
        nn.Linear(84, n_classes),
    )


def alexnet(n_classes: int = 1000, original: bool = False) -> nn.Sequential:
    """AlexNet for (B, 3, 224, 224) images.

    ``original=False``: torchvision's single-GPU layout (64-192-384-256-256 channels),
    61,100,840 parameters. ``original=True``: the 2012 paper's 96-256-384-384-256
    channels, with conv2, conv4 and conv5 split in two groups (one per GPU),
    60,965,224 parameters. Local response normalisation has no parameters and is left out.
    """
    if original:
        c, g = (96, 256, 384, 384, 256), (1, 2, 1, 2, 2)
    else:
        c, g = (64, 192, 384, 256, 256), (1, 1, 1, 1, 1)
    return nn.Sequential(
        nn.Conv2d(3, c[0], 11, stride=4, padding=2, groups=g[0]), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2, groups=g[1]), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1, groups=g[2]), nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, padding=1, groups=g[3]), nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, padding=1, groups=g[4]), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(6), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(c[4] * 6 * 6, 4096), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, n_classes),
    )


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
"""VGG-16's convolutional part: numbers are 3x3 conv layers (output channels), 'M' a 2x2 max pool."""


def vgg16(n_classes: int = 1000, config: Sequence = VGG16_CONFIG) -> nn.Sequential:
    """VGG-16 (Simonyan & Zisserman 2014): 13 3x3 conv layers in 5 blocks, then 3 dense layers.

    (B, 3, 224, 224) -> (B, n_classes); 138,357,544 parameters for 1000 classes.
    """
    layers: list[nn.Module] = []
    c = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    layers += [nn.AdaptiveAvgPool2d(7), nn.Flatten(),
               nn.Linear(c * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
               nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
               nn.Linear(4096, n_classes)]
    return nn.Sequential(*layers)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The shortcut of a residual block: identity when shapes agree, else 1x1 conv (strided) + BN."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """ResNet's basic block (ResNet-18/34): two 3x3 convs and a shortcut.

    out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). conv1 carries the stride;
    convs have no bias (BN's shift does that job). The shortcut is the identity when the
    shapes agree and a projection (1x1 conv with the stride, then BN) when the stride is
    not 1 or the channel count changes. x (N, in_channels, H, W) -> (N, out_channels, H', W').
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet's bottleneck block (ResNet-50/101/152): 1x1 reduce, 3x3, 1x1 expand (x4), plus a shortcut.

    ``width`` is the narrow middle; the block outputs ``expansion * width`` channels. The
    stride sits on the 3x3 conv (torchvision's "ResNet v1.5").
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def resnet(block: type, layers: Sequence[int], n_classes: int = 1000, in_channels: int = 3) -> nn.Sequential:
    """A ResNet for ImageNet-sized images: 7x7 stem, four stages of ``block``, global pool, linear.

    Stage widths 64, 128, 256, 512; every stage after the first halves the resolution in
    its first block. ``resnet(Bottleneck, [3, 4, 6, 3])`` is ResNet-50.
    """
    expansion = getattr(block, "expansion", 1)
    stages: list[nn.Module] = [nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
    c = 64
    for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
        blocks = []
        for j in range(n):
            blocks.append(block(c, width, stride=2 if (j == 0 and i > 0) else 1))
            c = width * expansion
        stages.append(nn.Sequential(*blocks))
    stages += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes)]
    return nn.Sequential(*stages)


def resnet50(n_classes: int = 1000) -> nn.Sequential:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]; 25,557,032 parameters for 1000 classes."""
    return resnet(Bottleneck, [3, 4, 6, 3], n_classes)


class InceptionModule(nn.Module):
    """GoogLeNet's Inception module (v1): four branches in parallel, concatenated along channels.

    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1. The 1x1 "reduce" convs shrink
    the channels before the expensive wide kernels. Output channels c1 + c3 + c5 + pool_proj;
    the spatial size is kept. Convs have biases and ReLU, as in the paper.
    """

    def __init__(self, in_channels: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int):
        super().__init__()

        def conv(i, o, k):
            return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2), nn.ReLU())

        self.branch1 = conv(in_channels, c1, 1)
        self.branch3 = nn.Sequential(conv(in_channels, c3_reduce, 1), conv(c3_reduce, c3, 3))
        self.branch5 = nn.Sequential(conv(in_channels, c5_reduce, 1), conv(c5_reduce, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv(in_channels, pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


# ---------------------------------------------------------------------- EfficientNet

def compound_scaling(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15) -> dict[str, float]:
    """EfficientNet's rule: depth x alpha**phi, width x beta**phi, resolution x gamma**phi.

    The constants were found by a small grid search with alpha * beta**2 * gamma**2 ~= 2,
    so the compute (FLOPs grow like depth * width**2 * resolution**2) roughly doubles for
    each step of phi. Returns the three multipliers and that FLOPs factor.
    """
    d, w, r = alpha ** phi, beta ** phi, gamma ** phi
    return {"depth": d, "width": w, "resolution": r, "flops": d * w ** 2 * r ** 2}


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of 8, never more than 10 % down (as the reference code does)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool -> 1x1 conv down -> SiLU -> 1x1 conv up -> sigmoid -> rescale x."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))


def _conv_bn_act(i: int, o: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(i, o, k, stride=stride, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(o),
            *([nn.SiLU()] if act else [])]


class MBConv(nn.Module):
    """EfficientNet's mobile inverted bottleneck: 1x1 expand, depthwise kxk, squeeze-excite, 1x1 project.

    The depthwise conv (``groups`` = channels) filters each channel on its own, which costs
    k*k parameters per channel instead of k*k*channels. A residual connection when the
    stride is 1 and the channel count is unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = _make_divisible(in_channels * expand)
        layers: list[nn.Module] = []
        if mid != in_channels:
            layers += _conv_bn_act(in_channels, mid, 1)
        layers += _conv_bn_act(mid, mid, kernel, stride, groups=mid)
        layers.append(SqueezeExcite(mid, max(1, in_channels // 4)))
        layers += _conv_bn_act(mid, out_channels, 1, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


#: EfficientNet-B0's stages: (expand ratio, kernel, stride, output channels, repeats); stem 32 channels, head 1280.
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                   (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))

#: The published variants: name -> (width multiplier, depth multiplier, resolution).
EFFICIENTNET_VARIANTS = {"B0": (1.0, 1.0, 224), "B1": (1.0, 1.1, 240), "B2": (1.1, 1.2, 260), "B3": (1.2, 1.4, 300)}


def efficientnet(width: float = 1.0, depth: float = 1.0, n_classes: int = 1000, dropout: float = 0.2) -> nn.Sequential:
    """EfficientNet with width and depth multipliers applied to B0 (channels to multiples of 8, repeats rounded up).

    ``efficientnet(1.0, 1.0)`` is B0 (5,288,548 parameters); the ``EFFICIENTNET_VARIANTS``
    multipliers give B1-B3 with torchvision's exact counts.
    """
    stem = _make_divisible(32 * width)
    layers: list[nn.Module] = _conv_bn_act(3, stem, 3, stride=2)
    c = stem
    for expand, kernel, stride, out, repeats in EFFICIENTNET_B0:
        out = _make_divisible(out * width)
        for j in range(int(math.ceil(repeats * depth))):
            layers.append(MBConv(c, out, expand, kernel, stride if j == 0 else 1))
            c = out
    head = 4 * c
    layers += _conv_bn_act(c, head, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(head, n_classes)]
    return nn.Sequential(*layers)


def scaled_cnn(phi: float = 0, n_classes: int = 10, base_depth: int = 4, base_width: int = 16,
               base_resolution: int = 28) -> tuple[nn.Sequential, int]:
    """A small CNN for gray images scaled by :func:`compound_scaling` (the tiny demo of EfficientNet's rule).

    Three stages of ``depth`` 3x3 conv-BN-ReLU layers with ``width``, 2x and 4x channels,
    a 2x2 max pool after each, global average pooling and a linear layer. Returns
    ``(model, resolution)``: the input side the rule asks for.
    """
    m = compound_scaling(phi)
    depth = max(1, round(base_depth * m["depth"]))
    width = round(base_width * m["width"])
    resolution = int(round(base_resolution * m["resolution"]))
    layers: list[nn.Module] = []
    c = 1
    for stage in range(3):
        for _ in range(depth):
            layers += [nn.Conv2d(c, width * 2 ** stage, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width * 2 ** stage), nn.ReLU()]
            c = width * 2 ** stage
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes)]
    return nn.Sequential(*layers), resolution


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass through the conv and linear layers.

    Runs the model on a meta tensor (no memory, no arithmetic) with hooks that read each
    layer's output shape: a conv output element costs (C_in / groups) * kh * kw MACs, a
    linear one ``in_features``. Works for models built on the meta device too.
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d) or isinstance(module, nn.Conv1d):
            per = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += output.numel() * per
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


# ====================================================================== plots and the explorer

def show_feature_maps(model: nn.Module, image: Tensor, conv: nn.Module | None = None, n: int = 8, axes=None):
    """Plot ``n`` kernels of a conv layer (default: the model's first) and their feature maps on ``image`` (C, H, W).

    The maps are the conv layer's outputs (before any activation), read with a forward hook
    while the model runs in evaluation mode. Kernels show their first input channel.
    """
    import matplotlib.pyplot as plt

    conv = conv or next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    captured = {}
    handle = conv.register_forward_hook(lambda mod, inp, out: captured.setdefault("maps", out.detach()))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(image[None].to(conv.weight.device))
    finally:
        model.train(was)
        handle.remove()
    maps = captured["maps"][0].cpu()
    kernels = conv.weight.detach().cpu()[:n, 0]
    n = min(n, len(kernels))
    if axes is None:
        _, axes = plt.subplots(2, n + 1, figsize=(1.6 * (n + 1), 3.4))
    axes[0, 0].imshow(image[0].cpu().numpy(), cmap="gray")
    axes[0, 0].set_title("input", fontsize=9)
    axes[1, 0].axis("off")
    for k in range(n):
        limit = kernels[k].abs().max().item()
        axes[0, k + 1].imshow(kernels[k].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[0, k + 1].set_title(f"kernel {k}", fontsize=9)
        axes[1, k + 1].imshow(maps[k].numpy(), cmap="magma")
        axes[1, k + 1].set_title(f"map {k}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return axes


def conv_explorer(image: Tensor | None = None):
    """Pick a filter, a stride, a padding and a pooling; see the feature map and the output-size arithmetic.

    ``image``: a gray (H, W) tensor; default: scikit-learn's china.jpg shrunk 4x (106 x 160).
    Returns the ``ipywidgets`` container: leave it as a cell's last expression to show it.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    image = sample_photo(scale=4) if image is None else image
    name = w.Dropdown(options=list(FILTERS), value="Sobel x (vertical edges)", description="filter")
    stride = w.IntSlider(value=1, min=1, max=4, description="stride")
    padding = w.IntSlider(value=1, min=0, max=3, description="padding")
    pool = w.Dropdown(options=["none", "max 2x2", "average 2x2"], value="none", description="then pool")
    out = w.Output()

    def draw(*_):
        h, wd = image.shape
        s, p = stride.value, padding.value
        fmap = apply_filter(image, name.value, stride=s, padding=p)
        oh, ow = conv_output_size(h, 3, s, p), conv_output_size(wd, 3, s, p)
        text = (f"conv: floor(({h} + 2*{p} - 3) / {s}) + 1 = {oh},  floor(({wd} + 2*{p} - 3) / {s}) + 1 = {ow}"
                f"  ->  {tuple(fmap.shape)}")
        if pool.value != "none":
            op = max_pool2d if pool.value.startswith("max") else avg_pool2d
            fmap = op(fmap[None], 2)[0]
            text += f";  2x2 pool -> {tuple(fmap.shape)}"
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [4, 1, 4]})
            axes[0].imshow(image.numpy(), cmap="gray")
            axes[0].set_title(f"input {tuple(image.shape)}")
            k = filter_kernel(name.value)[0, 0]
            axes[1].imshow(k.numpy(), cmap="RdBu_r", vmin=-k.abs().max().item(), vmax=k.abs().max().item())
            for (i, j), v in zip([(i, j) for i in range(3) for j in range(3)], k.flatten().tolist()):
                axes[1].text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=8)
            axes[1].set_title("kernel")
            axes[2].imshow(fmap.numpy(), cmap="gray")
            axes[2].set_title(f"{name.value}: output {tuple(fmap.shape)}")
            for ax in axes:
                ax.set_xticks([])
                ax.set_yticks([])
            fig.suptitle(text, fontsize=9, y=0.02, va="bottom")
            plt.show()

    for control in (name, stride, padding, pool):
        control.observe(draw, names="value")
    box = w.VBox([w.HBox([name, pool]), w.HBox([stride, padding]), out])
    draw()
    return box
