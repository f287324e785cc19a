"""The networks, as plain nn.Modules: MLP encoder/decoder, a small conv pair for 28x28
images, the generator G(eta, x) and the critic f(x, z)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.mlp import MLPParams, activate


class MLP(nn.Module):
    """Linear layers with `activation` between them; `output_activation` after the last."""

    def __init__(self, sizes: list[int], activation: str = "leaky_relu", negative_slope: float = 0.2,
                 output_activation: str | None = None):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {sizes}")
        self.sizes = list(sizes)
        self.activation, self.negative_slope, self.output_activation = activation, negative_slope, output_activation
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            u = layer(u)
            if i < len(self.layers) - 1:
                u = activate(u, self.activation, self.negative_slope)
        return torch.sigmoid(u) if self.output_activation == "sigmoid" else u

    def params(self) -> MLPParams:
        """The weights as the hot ops take them (tensors shared, not copied)."""
        return MLPParams([l.weight for l in self.layers], [l.bias for l in self.layers],
                         self.activation, self.negative_slope, self.output_activation)


class ConvEncoder(nn.Module):
    """(N, H*W) -> (N, latent_dim) for square images with side divisible by 4."""

    def __init__(self, side: int, latent_dim: int, channels: int = 32):
        super().__init__()
        if side % 4:
            raise ValueError(f"ConvEncoder needs an image side divisible by 4, got {side}")
        self.side = side
        self.conv1 = nn.Conv2d(1, channels, 4, 2, 1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, 2, 1)
        self.fc = nn.Linear(2 * channels * (side // 4) ** 2, latent_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = y.reshape(-1, 1, self.side, self.side)
        h = F.leaky_relu(self.conv1(h), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        return self.fc(h.flatten(1))


class ConvDecoder(nn.Module):
    """(N, latent_dim) -> (N, H*W) in [0, 1]."""

    def __init__(self, side: int, latent_dim: int, channels: int = 32):
        super().__init__()
        self.side, self.channels = side, channels
        self.fc = nn.Linear(latent_dim, 2 * channels * (side // 4) ** 2)
        self.deconv1 = nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(channels, 1, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fc(z), 0.2).reshape(-1, 2 * self.channels, self.side // 4, self.side // 4)
        h = F.leaky_relu(self.deconv1(h), 0.2)
        return torch.sigmoid(self.deconv2(h)).flatten(1)


class Generator(nn.Module):
    """G(eta, x) -> z: an MLP on cat(eta, x)."""

    def __init__(self, noise_dim: int, cond_dim: int, latent_dim: int, hidden=(256, 256), negative_slope=0.2):
        super().__init__()
        self.noise_dim, self.cond_dim, self.latent_dim = noise_dim, cond_dim, latent_dim
        self.mlp = MLP([noise_dim + cond_dim, *hidden, latent_dim], "leaky_relu", negative_slope)

    def forward(self, eta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([eta, x], 1))


class Critic(nn.Module):
    """f(x, z) -> scalar: an MLP on cat(x, z) with LeakyReLU hidden layers."""

    def __init__(self, cond_dim: int, latent_dim: int, hidden=(256, 256), negative_slope=0.2):
        super().__init__()
        self.cond_dim, self.latent_dim = cond_dim, latent_dim
        self.mlp = MLP([cond_dim + latent_dim, *hidden, 1], "leaky_relu", negative_slope)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x, z], 1)).squeeze(1)


def build_autoencoder(kind: str, data_dim: int, latent_dim: int, hidden=(512, 256),
                      image_shape: tuple[int, int] | None = None) -> tuple[nn.Module, nn.Module]:
    if kind == "mlp":
        encoder = MLP([data_dim, *hidden, latent_dim], "leaky_relu", 0.2)
        decoder = MLP([latent_dim, *reversed(hidden), data_dim], "leaky_relu", 0.2, "sigmoid")
        return encoder, decoder
    if kind == "conv":
        if image_shape is None or image_shape[0] != image_shape[1] or image_shape[0] % 4:
            raise ValueError(f"the conv autoencoder needs square images with side divisible by 4, got {image_shape}")
        return ConvEncoder(image_shape[0], latent_dim), ConvDecoder(image_shape[0], latent_dim)
    raise ValueError(f"autoencoder kind must be 'mlp' or 'conv', got {kind!r}")
