"""Generative models of chapter 7: the guide's autoencoder, a variational autoencoder, the guide's GAN.

Conventions used throughout (they are the ones the checks test):

- Images are flattened to ``(B, 784)`` with pixels in [0, 1] for the autoencoders. The
  decoders output **logits**; a pixel's intensity is ``sigmoid(logit)``. Losses are
  computed from the logits, the stable way (chapter 3).
- A reconstruction loss and the KL term are **summed over an example's dimensions**
  (pixels, latent coordinates) and **averaged over the batch**: one number per image,
  the scale on which the ELBO is written.
- The VAE encoder outputs ``mu`` and ``logvar`` = log sigma**2 (a log *variance*, not a
  log standard deviation), so sigma = exp(logvar / 2).
- The GAN works on images in [-1, 1] (the generator ends in ``tanh``). The
  discriminator outputs one **logit** per image; its losses use BCE with logits, with
  label 1 for real and 0 for fake. The generator uses the non-saturating loss
  ``-log D(G(z))``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


# ---------------------------------------------------------------- autoencoder

class Autoencoder(nn.Module):
    """The guide's dense autoencoder: 784-128-64-32 encoder, 32-64-128-784 decoder.

    ReLU after every layer, the 32-unit code included (as in the guide; ``relu_code=False``
    leaves the code linear); the decoder's last layer has no activation: it returns logits
    (B, 784), and ``sigmoid`` of them is the reconstructed image. 222,384 parameters.
    """

    def __init__(self, n_in: int = 784, sizes: tuple[int, ...] = (128, 64, 32), relu_code: bool = True):
        super().__init__()
        enc, dec = [], []
        widths = (n_in, *sizes)
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        back = widths[::-1]
        for a, b in zip(back[:-1], back[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        if not relu_code:
            enc.pop()
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec[:-1])  # no ReLU on the output logits

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 784) in [0, 1] -> reconstruction logits (B, 784)."""
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """x (B, 784) -> reconstructed images (B, 784) in [0, 1]."""
        return torch.sigmoid(self(x))


def reconstruction_loss(logits: Tensor, x: Tensor, kind: str = "bce") -> Tensor:
    """Per-example reconstruction loss, averaged over the batch.

    logits: (B, ...) decoder outputs before the sigmoid; x: (B, ...) targets in [0, 1].
    ``kind="bce"``: binary cross-entropy of sigmoid(logits) against x, computed stably from
    the logits; ``kind="mse"``: squared error between sigmoid(logits) and x. Either way the
    loss is summed over every dimension but the first and then averaged over the batch.
    Returns a 0-d tensor.
    """
    if kind == "bce":
        per_entry = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        per_entry = (torch.sigmoid(logits) - x) ** 2
    else:
        raise ValueError(f"kind must be 'bce' or 'mse', got {kind!r}")
    return per_entry.flatten(1).sum(dim=1).mean()


# ---------------------------------------------------------------- variational autoencoder

def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2). All three (B, L); eps ~ N(0, I) drawn by the caller."""
    return mu + torch.exp(0.5 * logvar) * eps


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL( N(mu, diag exp(logvar)) || N(0, I) ), summed over the L latent dims, averaged over the batch.

    mu, logvar: (B, L). Returns a 0-d tensor (>= 0): mean over b of
    -1/2 * sum_j (1 + logvar_bj - mu_bj**2 - exp(logvar_bj)).
    """
    per_example = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)
    return per_example.mean()


class VAE(nn.Module):
    """A dense VAE on flattened MNIST: 784-256-128 encoder with a mu and a logvar head, mirrored decoder.

    ``forward(x)`` returns ``(logits, mu, logvar)``: reconstruction logits (B, 784) and the
    posterior parameters (B, latent). ``decode(z)`` maps latent points (B, latent) to
    logits; ``sigmoid`` of them are images.
    """

    def __init__(self, n_in: int = 784, hidden: tuple[int, int] = (256, 128), latent: int = 2):
        super().__init__()
        h1, h2 = hidden
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(n_in, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.to_mu = nn.Linear(h2, latent)
        self.to_logvar = nn.Linear(h2, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU(),
                                     nn.Linear(h1, n_in))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, 784) -> (mu, logvar), each (B, latent)."""
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, latent) -> logits (B, 784)."""
        return self.decoder(z)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu) if self.training else torch.zeros_like(mu)
        return self.decode(reparameterize(mu, logvar, eps)), mu, logvar


def vae_loss(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Negative ELBO per example: BCE reconstruction + beta * KL. Returns (loss, reconstruction, kl), each 0-d."""
    rec = reconstruction_loss(logits, x, "bce")
    kl = kl_divergence(mu, logvar)
    return rec + beta * kl, rec, kl


# ---------------------------------------------------------------- GAN

def build_generator(latent_dim: int = 100, n_out: int = 784) -> nn.Sequential:
    """The guide's generator: latent_dim-256-512-1024-784, LeakyReLU(0.2) then batch norm after each hidden layer, tanh out.

    Keras's ``BatchNormalization(momentum=0.8)`` keeps 0.8 of the old running statistics;
    PyTorch's ``momentum`` is the weight of the new batch, so it becomes 0.2 (and Keras's
    default epsilon, 1e-3). Input (B, latent_dim), output (B, 1, 28, 28) in [-1, 1].
    """
    layers: list[nn.Module] = []
    widths = (latent_dim, 256, 512, 1024)
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(0.2), nn.BatchNorm1d(b, eps=1e-3, momentum=0.2)]
    layers += [nn.Linear(widths[-1], n_out), nn.Tanh()]
    if n_out == 784:
        layers.append(nn.Unflatten(1, (1, 28, 28)))
    return nn.Sequential(*layers)


def build_discriminator(n_in: int = 784) -> nn.Sequential:
    """The guide's discriminator: 784-512-256-1, LeakyReLU(0.2) and dropout 0.3 after each hidden layer.

    Input images (B, 1, 28, 28) (or (B, 784)); output one logit per image, (B, 1). The
    guide's final sigmoid is left out: the losses apply it themselves (BCE with logits).
    """
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 512), nn.LeakyReLU(0.2), nn.Dropout(0.3),
                         nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Linear(256, 1))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """BCE of real images against label 1 plus BCE of fakes against label 0, each averaged over its batch. 0-d."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: BCE of the fakes against label 1, i.e. mean of -log D(G(z)). 0-d."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def saturating_generator_loss(fake_logits: Tensor) -> Tensor:
    """The original minimax generator loss, mean of log(1 - D(G(z))): its gradient vanishes when D wins."""
    return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def gan_step(generator: nn.Module, discriminator: nn.Module, opt_g: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer, real: Tensor, z: Tensor,
             d_loss_fn=discriminator_loss, g_loss_fn=generator_loss) -> tuple[float, float]:
    """One GAN iteration: a discriminator step, then a generator step on the same fakes.

    real: (B, ...) a batch of real images; z: (B, latent) noise. The fakes G(z) are
    detached for the discriminator step (only D learns there) and not for the generator
    step (its gradient must flow back through D into G; only G's optimizer steps).
    Returns ``(d_loss, g_loss)`` as Python floats.
    """
    fake = generator(z)
    opt_d.zero_grad()
    d_loss = d_loss_fn(discriminator(real), discriminator(fake.detach()))
    d_loss.backward()
    opt_d.step()

    opt_g.zero_grad()
    g_loss = g_loss_fn(discriminator(fake))
    g_loss.backward()
    opt_g.step()
    return d_loss.item(), g_loss.item()


def interpolate(a: Tensor, b: Tensor, steps: int) -> Tensor:
    """Points on the straight line from a to b: (L,), (L,) -> (steps, L), endpoints included."""
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)[:, None]
    return (1 - t) * a + t * b
