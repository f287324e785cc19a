"""The networks, as plain nn.Modules: MLP encoder/decoder, a small conv pair for 28x28
images, the generator G(eta, x) and the critic f(x, z)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.mlp import MLPParams, activate


@torch.no_grad()
def copy_weights(params, values) -> None:
    """params[i] <- values[i] in place (a stage's end takes its weight average)."""
    for p, v in zip(params, values):
        p.copy_(v)


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


def _group_norm(channels: int) -> nn.GroupNorm:
    # per-image statistics: E(y) of one image never depends on the rest of its batch (BatchNorm's would)
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class _ResBlock(nn.Module):
    """h + conv(act(norm(conv(act(norm(h)))))): 3x3 convolutions at a fixed resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = _group_norm(channels), nn.Conv2d(channels, channels, 3, 1, 1)
        self.norm2, self.conv2 = _group_norm(channels), nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.conv1(F.leaky_relu(self.norm1(h), 0.2))
        return h + self.conv2(F.leaky_relu(self.norm2(r), 0.2))


def _channels_last(h: torch.Tensor) -> torch.Tensor:
    # cuDNN's fastest layout on a GPU; on the CPU the default layout is kept (same numbers either way)
    return h.contiguous(memory_format=torch.channels_last) if h.is_cuda else h


def _check_conv_side(side: int, channels) -> int:
    channels = tuple(int(c) for c in channels)
    if not channels or min(channels) < 1:
        raise ValueError(f"conv autoencoder channels must be one or more positive widths, got {channels}")
    factor = 2 ** len(channels)
    if side < factor or side % factor:
        raise ValueError(f"a conv autoencoder with {len(channels)} stride-2 stages needs an image side divisible "
                         f"by {factor}, got {side}")
    return side // factor


class ConvEncoder(nn.Module):
    """(N, C*H*W) -> (N, latent_dim) for square images (C = in_channels, channels first): one
    stride-2 4x4 convolution per entry of `channels` (each halves the side), GroupNorm +
    LeakyReLU(0.2) after each, `res_blocks` residual blocks at the lowest resolution, then a
    linear map to the latent."""

    def __init__(self, side: int, latent_dim: int, channels=(32, 64), res_blocks: int = 0, in_channels: int = 1):
        super().__init__()
        self.low = _check_conv_side(side, channels)
        self.side, self.channels, self.in_channels = side, tuple(channels), in_channels
        ins = (in_channels, *self.channels[:-1])
        self.down = nn.ModuleList(nn.Conv2d(a, b, 4, 2, 1) for a, b in zip(ins, self.channels))
        self.norms = nn.ModuleList(_group_norm(c) for c in self.channels)
        self.blocks = nn.Sequential(*(_ResBlock(self.channels[-1]) for _ in range(res_blocks)))
        self.fc = nn.Linear(self.channels[-1] * self.low ** 2, latent_dim)

    def front(self, y: torch.Tensor) -> torch.Tensor:
        """The convolutional part: (N, C*H*W) -> (N, channels[-1] * low**2), the input of the dense `fc`."""
        h = _channels_last(y.reshape(-1, self.in_channels, self.side, self.side))
        for conv, norm in zip(self.down, self.norms):
            h = F.leaky_relu(norm(conv(h)), 0.2)
        return self.blocks(h).flatten(1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc(self.front(y))

    def dense(self) -> MLPParams:
        """`fc` as the fused encode op takes it: encoder(y) = ops.encode(enc.dense(), y, front=enc.front)."""
        return MLPParams([self.fc.weight], [self.fc.bias], "leaky_relu", 0.2, None)


class ConvDecoder(nn.Module):
    """(N, latent_dim) -> (N, C*H*W) in [0, 1], the mirror of ConvEncoder: a linear map to the
    lowest resolution, `res_blocks` residual blocks, one stride-2 4x4 transposed convolution per
    width (GroupNorm + LeakyReLU after each but the last, C = out_channels out of the last), a
    sigmoid."""

    def __init__(self, side: int, latent_dim: int, channels=(32, 64), res_blocks: int = 0, out_channels: int = 1):
        super().__init__()
        self.low = _check_conv_side(side, channels)
        self.side, self.channels = side, tuple(channels)
        self.fc = nn.Linear(latent_dim, self.channels[-1] * self.low ** 2)
        self.blocks = nn.Sequential(*(_ResBlock(self.channels[-1]) for _ in range(res_blocks)))
        ins = self.channels[::-1]  # deepest first
        outs = (*ins[1:], out_channels)
        self.up = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, 2, 1) for a, b in zip(ins, outs))
        self.norms = nn.ModuleList(_group_norm(c) for c in outs[:-1])

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """The convolutional part: the dense head's output (N, channels[-1] * low**2) -> images (N, C*H*W)."""
        h = _channels_last(h.reshape(-1, self.channels[-1], self.low, self.low))
        h = self.blocks(h)
        for i, conv in enumerate(self.up):
            h = conv(h)
            if i < len(self.norms):
                h = F.leaky_relu(self.norms[i](h), 0.2)
        return torch.sigmoid(h).contiguous().flatten(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.tail(F.leaky_relu(self.fc(z), 0.2))

    def dense(self) -> MLPParams:
        """`fc` + LeakyReLU as the fused generate op takes it: decoder(z) = tail(head(z)), head = this."""
        return MLPParams([self.fc.weight], [self.fc.bias], "leaky_relu", 0.2, "leaky_relu")


# ------------------------------------------------------------------ the patch autoencoder (default for images)
#
# Every layer is a GEMM on channels-last (N, H, W, C) tensors, the shape both oneDNN/MKL and the GPU's tensor
# cores run at speed: a (2s)x(2s) stride-s convolution is a space-to-depth rearrangement of the padded image
# into s x s cells, the 2 x 2 neighbouring cells side by side, and one matrix product; its transpose is one
# matrix product per position followed by an overlap-add of the 2 x 2 cells it writes. Small convolutions with
# one or a few channels (the image's own) are where oneDNN is slowest; here they are plain GEMMs.

def space_to_depth(x: torch.Tensor, s: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, H/s, W/s, s*s*C), each s x s cell's values in (row, column, channel) order."""
    n, h, w, c = x.shape
    return x.reshape(n, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h // s, w // s, s * s * c)


def depth_to_space(x: torch.Tensor, s: int) -> torch.Tensor:
    """The inverse of space_to_depth."""
    n, h, w, c = x.shape
    return x.reshape(n, h, w, s, s, c // (s * s)).permute(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, c // (s * s))


def _conv_init(weight: torch.Tensor, bias: torch.Tensor, fan_in: int) -> None:
    # nn.Conv2d's default initialisation, for the same starting point as the layer this replaces
    nn.init.kaiming_uniform_(weight, a=5 ** 0.5)
    nn.init.uniform_(bias, -fan_in ** -0.5, fan_in ** -0.5)


class PatchConv2d(nn.Module):
    """Conv2d(cin, cout, 2s, stride s, padding s/2) on channels-last (N, H, W, cin) -> (N, H/s, W/s, cout),
    computed as one GEMM. `weight` has nn.Conv2d's layout (cout, cin, 2s, 2s), so F.conv2d is its reference."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if stride < 2 or stride % 2:
            raise ValueError(f"PatchConv2d needs an even stride >= 2, got {stride}")
        self.cin, self.cout, self.stride = cin, cout, stride
        self.weight = nn.Parameter(torch.empty(cout, cin, 2 * stride, 2 * stride))
        self.bias = nn.Parameter(torch.empty(cout))
        _conv_init(self.weight, self.bias, cin * 4 * stride * stride)

    def gemm_weight(self) -> torch.Tensor:
        """(cout, 4 s^2 cin): kernel tap (s*du + a, s*dv + b) of channel c at column ((du, dv), (a, b), c)."""
        s = self.stride
        w = self.weight.reshape(self.cout, self.cin, 2, s, 2, s)  # (o, c, du, a, dv, b)
        return w.permute(0, 2, 4, 3, 5, 1).reshape(self.cout, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        cells = space_to_depth(F.pad(x, (0, 0, s // 2, s // 2, s // 2, s // 2)), s)
        h, w = cells.shape[1] - 1, cells.shape[2] - 1
        window = torch.cat([cells[:, du:du + h, dv:dv + w] for du in (0, 1) for dv in (0, 1)], -1)
        return F.linear(window, self.gemm_weight(), self.bias)


class PatchConvTranspose2d(nn.Module):
    """ConvTranspose2d(cin, cout, 2s, stride s, padding s/2) on channels-last (N, H, W, cin) ->
    (N, sH, sW, cout): one GEMM gives every position's (2s)x(2s) patch, and the four s x s quarters of the
    patches are added into place (overlap-add). `weight` has nn.ConvTranspose2d's layout (cin, cout, 2s, 2s)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if stride < 2 or stride % 2:
            raise ValueError(f"PatchConvTranspose2d needs an even stride >= 2, got {stride}")
        self.cin, self.cout, self.stride = cin, cout, stride
        self.weight = nn.Parameter(torch.empty(cin, cout, 2 * stride, 2 * stride))
        self.bias = nn.Parameter(torch.empty(cout))
        _conv_init(self.weight, self.bias, cout * 4 * stride * stride)

    def gemm_weight(self) -> torch.Tensor:
        """(4 s^2 cout, cin): row ((du, dv), (a, b), o) is kernel tap (s*du + a, s*dv + b) of output channel o."""
        s = self.stride
        w = self.weight.reshape(self.cin, self.cout, 2, s, 2, s)  # (c, o, du, a, dv, b)
        return w.permute(2, 4, 3, 5, 1, 0).reshape(-1, self.cin)

    def channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on channels-last x (N, H, W, cin), its output channels first (N, cout, sH, sW): one GEMM
        gives every position's (2s)x(2s) patch, torch's col2im (F.fold) adds the overlapping patches up."""
        n, h, w, _ = x.shape
        s = self.stride
        patches = F.linear(x.reshape(n, h * w, self.cin), self.weight.reshape(self.cin, -1).t())  # (n, hw, cout*4s^2)
        out = F.fold(patches.transpose(1, 2), (h * s, w * s), 2 * s, padding=s // 2, stride=s)
        return out + self.bias.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channels_first(x).permute(0, 2, 3, 1)


class PatchEncoder(nn.Module):
    """(N, C*H*W) channels-first images -> (N, latent_dim): a (2s)x(2s) stride-s convolution (C -> width) and
    LeakyReLU(0.2), `depth` per-position linear layers (width -> width, LeakyReLU), a linear map of the
    (H/s, W/s, width) features to the latent. Every layer a GEMM (see PatchConv2d)."""

    def __init__(self, side: int, latent_dim: int, width: int = 64, depth: int = 1, stride: int = 4,
                 in_channels: int = 1):
        super().__init__()
        self.low = _check_patch_side(side, stride)
        self.side, self.width, self.stride, self.in_channels = side, width, stride, in_channels
        self.conv = PatchConv2d(in_channels, width, stride)
        self.mix = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.fc = nn.Linear(width * self.low ** 2, latent_dim)

    def front(self, y: torch.Tensor) -> torch.Tensor:
        """The convolutional part: (N, C*H*W) -> (N, low * low * width), the input of the dense `fc`."""
        # channels-last strides, which oneDNN/cuDNN keep for the output (for one channel .contiguous(memory_format=
        # channels_last) would keep NCHW strides, and the output would be NCHW)
        x = y.reshape(-1, self.in_channels, self.side, self.side).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        # torch's own convolution (oneDNN / cuDNN) in channels-last: its output, permuted, is (N, H/s, W/s, width)
        # without a copy
        h = F.leaky_relu(F.conv2d(x, self.conv.weight, self.conv.bias, self.stride, self.stride // 2), 0.2)
        h = h.permute(0, 2, 3, 1)
        for layer in self.mix:
            h = F.leaky_relu(layer(h), 0.2)
        return h.flatten(1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc(self.front(y))

    def dense(self) -> MLPParams:
        """`fc` as the fused encode op takes it: encoder(y) = ops.encode(enc.dense(), y, front=enc.front)."""
        return MLPParams([self.fc.weight], [self.fc.bias], "leaky_relu", 0.2, None)


class PatchDecoder(nn.Module):
    """(N, latent_dim) -> (N, C*H*W) in [0, 1], channels first; the mirror of PatchEncoder: a linear map to
    (H/s, W/s, width) and LeakyReLU, `depth` per-position linear layers, a (2s)x(2s) stride-s transposed
    convolution (width -> C), a sigmoid."""

    def __init__(self, side: int, latent_dim: int, width: int = 64, depth: int = 1, stride: int = 4,
                 out_channels: int = 1):
        super().__init__()
        self.low = _check_patch_side(side, stride)
        self.side, self.width, self.stride, self.out_channels = side, width, stride, out_channels
        self.fc = nn.Linear(latent_dim, width * self.low ** 2)
        self.mix = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.conv = PatchConvTranspose2d(width, out_channels, stride)

    def tail_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The convolutional part before the sigmoid: the dense head's output (N, low * low * width) -> (N, C*H*W)."""
        h = h.reshape(-1, self.low, self.low, self.width)
        for layer in self.mix:
            h = F.leaky_relu(layer(h), 0.2)
        return self.conv.channels_first(h).flatten(1)  # flatten, not reshape(n, -1): n may be 0

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """The convolutional part: the dense head's output (N, low * low * width) -> images (N, C*H*W)."""
        return torch.sigmoid(self.tail_logits(h))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder before its sigmoid (stage 1 trains through binary_cross_entropy_with_logits)."""
        return self.tail_logits(F.leaky_relu(self.fc(z), 0.2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))

    def dense(self) -> MLPParams:
        """`fc` + LeakyReLU as the fused generate op takes it: decoder(z) = tail(head(z)), head = this."""
        return MLPParams([self.fc.weight], [self.fc.bias], "leaky_relu", 0.2, "leaky_relu")


def _check_patch_side(side: int, stride: int) -> int:
    if stride < 2 or stride % 2:
        raise ValueError(f"the patch autoencoder needs an even stride >= 2, got {stride}")
    if side < stride or side % stride:
        raise ValueError(f"the patch autoencoder with stride {stride} needs an image side divisible by {stride}, "
                         f"got {side}")
    return side // stride


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


def conv_fits(image_shape, conv_channels=(32, 64), *, conv_design: str = "strided", patch_stride: int = 4,
              **_) -> bool:
    """Whether the conv autoencoder of `conv_design` takes images of `image_shape` ((H, W) or (C, H, W)):
    square, with a side divisible by the design's total stride (2**len(conv_channels), or patch_stride)."""
    if image_shape is None or len(image_shape) not in (2, 3):
        return False
    h, w = image_shape[-2:]
    factor = patch_stride if conv_design == "patch" else 2 ** len(conv_channels)
    return h == w and h >= factor and h % factor == 0


def resolve_kind(kind: str, image_shape, conv_channels=(32, 64), **arch) -> str:
    """'auto' -> 'conv' where the images fit the conv autoencoder (conv_fits), else 'mlp' (flat rows, odd sizes)."""
    if kind == "auto":
        return "conv" if conv_fits(image_shape, conv_channels, **arch) else "mlp"
    return kind


def build_autoencoder(kind: str, data_dim: int, latent_dim: int, hidden=(512, 256),
                      image_shape: tuple[int, ...] | None = None, *, conv_design: str = "strided",
                      conv_channels=(32, 64), res_blocks: int = 0, patch_width: int = 64, patch_depth: int = 1,
                      patch_stride: int = 4) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair: "mlp" uses `hidden` (decoder mirrored); "conv" needs square images,
    `image_shape` (H, W) or (C, H, W), and builds `conv_design`: "patch" (PatchEncoder/PatchDecoder with
    patch_width, patch_depth, patch_stride) or "strided" (ConvEncoder/ConvDecoder with conv_channels, one
    stride-2 stage each, and res_blocks); "auto" picks (resolve_kind). AutoencoderConfig.arch_kwargs() gives
    the keyword arguments."""
    arch = dict(conv_design=conv_design, patch_stride=patch_stride)
    kind = resolve_kind(kind, image_shape, conv_channels, **arch)
    if kind == "mlp":
        encoder = MLP([data_dim, *hidden, latent_dim], "leaky_relu", 0.2)
        decoder = MLP([latent_dim, *reversed(hidden), data_dim], "leaky_relu", 0.2, "sigmoid")
        return encoder, decoder
    if kind == "conv":
        if image_shape is None or len(image_shape) not in (2, 3) or image_shape[-1] != image_shape[-2]:
            raise ValueError(f"the conv autoencoder needs square images (N, H, W) or (N, C, H, W) with H == W, "
                             f"got {image_shape}")
        side, c = image_shape[-1], (image_shape[0] if len(image_shape) == 3 else 1)
        if conv_design == "patch":
            return (PatchEncoder(side, latent_dim, patch_width, patch_depth, patch_stride, in_channels=c),
                    PatchDecoder(side, latent_dim, patch_width, patch_depth, patch_stride, out_channels=c))
        if conv_design != "strided":
            raise ValueError(f"conv_design must be 'patch' or 'strided', got {conv_design!r}")
        return (ConvEncoder(side, latent_dim, conv_channels, res_blocks, in_channels=c),
                ConvDecoder(side, latent_dim, conv_channels, res_blocks, out_channels=c))
    raise ValueError(f"autoencoder kind must be 'auto', 'mlp' or 'conv', got {kind!r}")
