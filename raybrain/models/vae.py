"""The B2M driving VAE (pure torch).

The paper lists the encoder as five conv + leaky-ReLU layers with channels
``[3, 32, 64, 128, 256]``: five layers but four channel transitions. Our reading:

- ``enc.0``..``enc.3``: convolutions 3->32->64->128->256, kernel 4, stride 2, padding 1
  (80 x 160 -> 40 x 80 -> 20 x 40 -> 10 x 20 -> 5 x 10);
- ``enc.4``: a fifth convolution 256->256, kernel 3, stride 1, padding 1 (keeps 5 x 10),
  followed by batch norm (the paper: batch norm on the last encoder convolution);
- flatten -> fully connected 1024 -> two heads ``mu`` and ``logvar`` (latent 64).

The decoder mirrors it: latent -> fully connected 1024 -> fully connected to 256 x 5 x 10
-> a 256->256 convolution (3 x 3) -> transposed convolutions 256->128->64->32->3 (kernel 4,
stride 2, padding 1) -> sigmoid, so reconstructions lie in [0, 1]. Every convolution and
fully connected layer is followed by leaky ReLU and dropout (p = 0.1 in the paper); the
``mu``/``logvar`` heads and the output layer have neither. The embedding aligned with brain
data is ``mu``.
"""

from __future__ import annotations

import torch
from torch import nn

from raybrain.errors import SpecError

__all__ = ["DrivingVAE", "vae_loss"]


class DrivingVAE(nn.Module):
    """Variational autoencoder for driving scenes.

    Parameters
    ----------
    channels : tuple of 5 ints
        Encoder widths ``(in, c1, c2, c3, c4)``; the paper's ``(3, 32, 64, 128, 256)``.
        ``in`` is 3 (RGB) or 1 (grey).
    fc_units : int
        Width of the fully connected layer (paper: 1024).
    latent_dim : int
        Latent size (paper: 64, the EEG channel count).
    dropout : float
        Dropout after every convolution and fully connected layer (paper: 0.1).
    image_size : (height, width)
        Both multiples of 16 (four stride-2 convolutions); paper: (80, 160).
    """

    def __init__(self, channels: tuple[int, ...] = (3, 32, 64, 128, 256), fc_units: int = 1024,
                 latent_dim: int = 64, dropout: float = 0.1,
                 image_size: tuple[int, int] = (80, 160)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5 or channels[0] not in (1, 3) or min(channels) < 1:
            raise SpecError(f"VAE channels must be 5 positive widths starting with 3 (RGB) or "
                            f"1 (grey), got {channels}")
        h, w = (int(v) for v in image_size)
        if h % 16 or w % 16 or h < 16 or w < 16:
            raise SpecError(f"VAE image size must be multiples of 16 (four stride-2 "
                            f"convolutions), got {h} x {w}")
        if not 0 <= dropout < 1:
            raise SpecError(f"VAE dropout must lie in [0, 1), got {dropout}")
        self.channels, self.latent_dim, self.image_size = channels, int(latent_dim), (h, w)
        self.feature_shape = (channels[4], h // 16, w // 16)
        n_feat = channels[4] * (h // 16) * (w // 16)

        def act():
            return [nn.LeakyReLU(0.2), nn.Dropout(dropout)]

        enc: list[nn.Module] = []
        for i in range(4):
            enc += [nn.Conv2d(channels[i], channels[i + 1], 4, stride=2, padding=1), *act()]
        enc += [nn.Conv2d(channels[4], channels[4], 3, padding=1),
                nn.BatchNorm2d(channels[4]), *act()]
        self.enc = nn.Sequential(*enc)
        self.enc_fc = nn.Sequential(nn.Flatten(), nn.Linear(n_feat, fc_units), *act())
        self.enc_mu = nn.Linear(fc_units, latent_dim)
        self.enc_logvar = nn.Linear(fc_units, latent_dim)
        self.dec_fc = nn.Sequential(nn.Linear(latent_dim, fc_units), *act(),
                                    nn.Linear(fc_units, n_feat), *act())
        dec: list[nn.Module] = [nn.Conv2d(channels[4], channels[4], 3, padding=1), *act()]
        for i in range(4, 1, -1):
            dec += [nn.ConvTranspose2d(channels[i], channels[i - 1], 4, stride=2, padding=1),
                    *act()]
        dec += [nn.ConvTranspose2d(channels[1], channels[0], 4, stride=2, padding=1), nn.Sigmoid()]
        self.dec = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, H, W) in [0, 1] -> ``mu``, ``logvar``, each (B, latent_dim)."""
        feat = self.enc_fc(self.enc(x))
        return self.enc_mu(feat), self.enc_logvar(feat)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``mu + exp(logvar / 2) * eps``, eps ~ N(0, I); (B, latent_dim)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (B, latent_dim) -> reconstruction (B, C, H, W) in [0, 1]."""
        return self.dec(self.dec_fc(z).view(-1, *self.feature_shape))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(reconstruction, mu, logvar)``; samples ``z`` in training mode only."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decode(z), mu, logvar


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VAE objective per pixel.

    Parameters
    ----------
    recon, x : torch.Tensor, shape (B, C, H, W)
    mu, logvar : torch.Tensor, shape (B, latent_dim)
    kl_weight : float

    Returns
    -------
    loss, recon_mse, kl : torch.Tensor, shape ()
        ``recon_mse``: mean squared error over all elements; ``kl``: the batch mean of
        ``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dims, divided by the
        number of elements per image (C * H * W), so both terms are per pixel;
        ``loss = recon_mse + kl_weight * kl``.
    """
    recon_mse = torch.mean((recon - x) ** 2)
    per_image = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    kl = per_image.mean() / x[0].numel()
    return recon_mse + kl_weight * kl, recon_mse, kl
