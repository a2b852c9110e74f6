"""The variational autoencoder of the B2M driving task (pure torch).

The paper (B2M, "Driving Task Extended Methods") gives the encoder as five convolution +
leaky-ReLU layers with channels ``[3, 32, 64, 128, 256]``, then one fully connected layer
of 1024 units, a 64-d embedding (to match the 64 EEG channels), dropout ``p = 0.1`` in every
convolutional and fully connected layer, and batch norm on the last encoder convolution;
the decoder mirrors it (``[256, 128, 64, 32, 3]``) on 80 x 160 images. Five layers but
four channel transitions, and no kernel sizes: our reading is

- ``enc.0``..``enc.3``: convolutions 3->32->64->128->256, kernel 4, stride 2, padding 1
  (80 x 160 -> 40 x 80 -> 20 x 40 -> 10 x 20 -> 5 x 10);
- ``enc.4``: a fifth convolution 256->256, kernel 3, stride 1, padding 1 (keeps 5 x 10),
  followed by batch norm -- the only batch norm in the model;
- flatten -> fully connected ``fc_units`` (1024) -> two linear heads ``mu`` and ``logvar``
  of ``latent_dim`` (64).

The decoder: latent -> fully connected ``fc_units`` -> fully connected to 256 x 5 x 10 ->
a 256->256 convolution (3 x 3, stride 1, padding 1) -> transposed convolutions
256->128->64->32->3 (kernel 4, stride 2, padding 1) -> sigmoid, so reconstructions lie in
[0, 1]. Every convolution and fully connected layer is followed by leaky ReLU (slope 0.2)
and dropout; the ``mu``/``logvar`` heads and the output layer (the last transposed
convolution, followed by the sigmoid) have neither.

The embedding aligned with brain data is ``mu``, the posterior mean (deterministic, no
sampling noise); see :meth:`DrivingVAE.encode`.

With the paper's settings the model has 28,986,691 trainable parameters, 90 % of them in
the two fully connected layers next to the 12,800-unit feature map.
"""

from __future__ import annotations

import torch
from torch import nn

from raybrain.errors import SpecError

__all__ = ["DrivingVAE", "vae_loss"]

LEAKY_SLOPE = 0.2


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VAE objective, per pixel.

    Parameters
    ----------
    recon, x : torch.Tensor, shape (B, C, H, W)
        Reconstruction and target, both in [0, 1].
    mu, logvar : torch.Tensor, shape (B, latent_dim)
        Posterior mean and log variance.
    kl_weight : float
        Weight of the KL term (``beta`` of a beta-VAE).

    Returns
    -------
    loss, recon_mse, kl : torch.Tensor, shape ()
        ``recon_mse`` is the mean squared error over all elements. ``kl`` is the batch mean
        of ``KL(N(mu, exp(logvar)) || N(0, I))`` summed over the latent dimensions, divided
        by the number of elements per image ``C * H * W``, so that both terms are per pixel.
        ``loss = recon_mse + kl_weight * kl``; with ``kl_weight = 1`` this is the negative
        ELBO per pixel of a Gaussian decoder with variance 1/2, up to an additive constant.
    """
    recon_mse = torch.mean((recon - x) ** 2)
    per_image = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    kl = per_image.mean() / x[0].numel()
    return recon_mse + kl_weight * kl, recon_mse, kl


class DrivingVAE(nn.Module):
    """Variational autoencoder for driving scenes (layout in the module docstring).

    Parameters
    ----------
    channels : tuple of 5 ints
        Encoder widths ``(in, c1, c2, c3, c4)``; the paper's ``(3, 32, 64, 128, 256)``.
        ``in`` is 3 (RGB) or 1 (grey).
    fc_units : int
        Width of the fully connected layers (paper: 1024).
    latent_dim : int
        Latent size (paper: 64, the EEG channel count).
    dropout : float in [0, 1)
        Dropout after every convolution and fully connected layer (paper: 0.1).
    image_size : (height, width)
        Both positive multiples of 16 (four stride-2 convolutions); paper: (80, 160).

    Attributes
    ----------
    feature_shape : (c4, height // 16, width // 16)
        Shape of the last encoder feature map (paper: (256, 5, 10)).
    """

    vae_loss = staticmethod(vae_loss)

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
            raise SpecError(f"VAE image height and width must be positive multiples of 16 "
                            f"(four stride-2 convolutions), got {h} x {w}")
        if int(fc_units) < 1 or int(latent_dim) < 1:
            raise SpecError(f"VAE fc_units and latent_dim must be >= 1, got "
                            f"fc_units={fc_units}, latent_dim={latent_dim}")
        if not 0 <= dropout < 1:
            raise SpecError(f"VAE dropout must lie in [0, 1), got {dropout}")
        fc_units, latent_dim = int(fc_units), int(latent_dim)
        self.channels, self.latent_dim, self.image_size = channels, latent_dim, (h, w)
        self.feature_shape = (channels[4], h // 16, w // 16)
        n_feat = channels[4] * (h // 16) * (w // 16)

        def act() -> list[nn.Module]:
            return [nn.LeakyReLU(LEAKY_SLOPE), nn.Dropout(dropout)]

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
        """Posterior parameters of a batch of images.

        Parameters
        ----------
        x : torch.Tensor, shape (B, C, H, W)
            Images in [0, 1], ``(C, H, W) == (channels[0], *image_size)``.

        Returns
        -------
        mu, logvar : torch.Tensor, each shape (B, latent_dim)
            ``mu`` is the embedding aligned with brain data.
        """
        want = (self.channels[0], *self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise SpecError(f"VAE input must have shape (B, {want[0]}, {want[1]}, {want[2]}), "
                            f"got {tuple(x.shape)}")
        feat = self.enc_fc(self.enc(x))
        return self.enc_mu(feat), self.enc_logvar(feat)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Sample ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)``.

        Parameters
        ----------
        mu, logvar : torch.Tensor, each shape (B, latent_dim)

        Returns
        -------
        z : torch.Tensor, shape (B, latent_dim)
        """
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from latents.

        Parameters
        ----------
        z : torch.Tensor, shape (B, latent_dim)

        Returns
        -------
        recon : torch.Tensor, shape (B, C, H, W)
            Values in [0, 1].
        """
        return self.dec(self.dec_fc(z).view(-1, *self.feature_shape))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample (training mode; ``z = mu`` in eval mode) and decode.

        Parameters
        ----------
        x : torch.Tensor, shape (B, C, H, W), values in [0, 1]

        Returns
        -------
        recon : torch.Tensor, shape (B, C, H, W), values in [0, 1]
        mu, logvar : torch.Tensor, each shape (B, latent_dim)
        """
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decode(z), mu, logvar
