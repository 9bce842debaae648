"""Encoder means of images that are blank outside a box, without convolving the blank.

A dSprites image is one sprite, at most 27×27 pixels, on an exactly zero background. Wherever a
convolution's window sees only background, its output equals the output for an all-zero image: a
fixed map, computed once. `SparseEncoder` runs the encoder's first three stride-2 convolutions only
on the output window that the sprite can reach, and takes every other position from that blank-image
map. Inside the window the arithmetic is the encoder's own (same weights, same inputs, the padding
spelled out as zeros), so the codes equal the dense encoder's up to float rounding order (about 1e-6),
for roughly half the FLOPs: the disentanglement protocol encodes every one of the 737,280 images, and
the encoder is its main cost.

Map sizes for 64×64 input: x (B, C, 64, 64) -> h1 (B, C1, 32, 32) -> h2 (B, C2, 16, 16) -> h3 (B, C3, 8, 8)
-> the rest of the encoder, unchanged. h1 is never built whole: the window of h1 that the h2 window
needs is convolved straight from the matching window of x.

Both β-VAE encoders (H and B) begin with three Conv2d(k=4, s=2, p=1) + ReLU pairs; another encoder is
refused with a ValueError. A batch whose content reaches across most of the image runs densely.
"""

import torch
import torch.nn.functional as F
from torch import nn

# A window of h2 wider than this (of 16) saves too little to pay for the gathers: use the dense encoder.
MAX_SPARSE_WIDTH = 12


def _is_down_conv(layer: nn.Module) -> bool:
    """Conv2d with kernel 4, stride 2, padding 1: each output row u reads input rows 2u-1 .. 2u+2."""
    return (isinstance(layer, nn.Conv2d) and layer.kernel_size == (4, 4) and layer.stride == (2, 2)
            and layer.padding == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1)


def supports(model: nn.Module) -> bool:
    """True when the encoder starts with three (down-conv, ReLU) pairs, as both β-VAE encoders do."""
    layers = list(getattr(model, "encoder", []))
    return (len(layers) > 6 and all(_is_down_conv(layers[i]) for i in (0, 2, 4))
            and all(isinstance(layers[i], nn.ReLU) for i in (1, 3, 5)))


def _reach(lo: torch.Tensor, hi: torch.Tensor, size_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input rows [lo, hi] (B,) that differ from the blank image -> the output rows they reach."""
    u0 = torch.div(lo - 1, 2, rounding_mode="floor").clamp(min=0)  # ceil((lo - 2) / 2)
    u1 = torch.div(hi + 1, 2, rounding_mode="floor").clamp(max=size_out - 1)
    return u0, u1


def _window(rows: tuple, cols: tuple, size_out: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """One square window size S for the whole batch, and each image's top-left corner (B,), (B,)."""
    size = int(torch.maximum(rows[1] - rows[0], cols[1] - cols[0]).max()) + 1
    return size, rows[0].clamp(max=size_out - size), cols[0].clamp(max=size_out - size)


def _flat_windows(top: torch.Tensor, left: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Rows of a channels-last map viewed as (B·height·width, C) covering each image's size×size
    window at (top, left) -> (B·size·size,) indices, window-major per image."""
    steps = torch.arange(size, device=top.device)
    image = torch.arange(top.shape[0], device=top.device) * (height * width)
    rows = (top[:, None] + steps)[:, :, None] * width  # (B, S, 1)
    cols = (left[:, None] + steps)[:, None, :]  # (B, 1, S)
    return (image[:, None, None] + rows + cols).reshape(-1)


def _occupied(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) -> which rows (B, H) and columns (B, W) hold a non-zero pixel (any channel).
    uint8 images (the data as stored) are read 8 pixels per int64 word, several times faster than
    reducing bytes; columns come from OR-ing all rows together."""
    magnitude = x if x.dtype in (torch.uint8, torch.bool) else x.abs()
    magnitude = magnitude[:, 0] if x.shape[1] == 1 else magnitude.amax(dim=1)  # (B, H, W)
    batch, height, width = magnitude.shape
    if magnitude.dtype != torch.uint8 or width % 8 != 0:
        return magnitude.amax(2) != 0, magnitude.amax(1) != 0
    words = magnitude.contiguous().view(torch.int64).view(batch, height, width // 8)
    merged = words
    while merged.shape[1] > 1:  # OR of all rows, by halves
        half = merged.shape[1] // 2
        folded = merged[:, :half] | merged[:, half:2 * half]
        merged = folded if merged.shape[1] % 2 == 0 else torch.cat([folded, merged[:, 2 * half:]], dim=1)
    columns = merged.reshape(batch, width // 8).view(torch.uint8)  # (B, W): OR over rows, per pixel
    return words.ne(0).any(2), columns.ne(0)


def _content_box(x: torch.Tensor) -> tuple[tuple, tuple]:
    """x (B, C, H, W) -> ((top, bottom), (left, right)) of its non-zero pixels, each (B,), inclusive.
    A blank image gets the box (0, 0): it differs from the blank map nowhere, so any window is right."""
    def extent(occupied):  # (B, L) bool
        positions = torch.arange(occupied.shape[1], device=x.device)
        first = torch.where(occupied, positions, occupied.shape[1]).amin(1)
        last = torch.where(occupied, positions, -1).amax(1)
        blank = first > last
        return first.masked_fill(blank, 0), last.masked_fill(blank, 0)
    rows, columns = _occupied(x)
    return extent(rows), extent(columns)


def _crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: int) -> torch.Tensor:
    """x (B, C, H, W) -> (B, side, side, C) windows at (top, left) per image, zero outside the image
    (the first conv's padding; windows reach at most 3 pixels past an edge)."""
    batch, height, width = x.shape[0], x.shape[2], x.shape[3]
    steps = torch.arange(side, device=x.device)
    rows, cols = top[:, None] + steps, left[:, None] + steps  # (B, side) each
    picked = x.permute(0, 2, 3, 1)[torch.arange(batch, device=x.device)[:, None], rows.clamp(0, height - 1)]
    index = cols.clamp(0, width - 1)[:, None, :, None].expand(-1, side, -1, x.shape[1])
    window = torch.gather(picked, 2, index)  # (B, side rows, side cols, C)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    return window * inside[..., None].to(window.dtype)


class SparseEncoder:
    """Posterior means μ (B, z) of `model`, convolving only where the images are not blank."""

    def __init__(self, model: nn.Module):
        if not supports(model):
            raise ValueError("SparseEncoder needs an encoder that starts with three Conv2d(4, 2, 1) + ReLU pairs")
        layers = list(model.encoder)
        self.model = model
        self.conv1, self.conv2, self.conv3 = layers[0], layers[2], layers[4]
        self.rest, self.head = nn.Sequential(*layers[6:-1]), layers[-1]  # after conv3; the μ/logσ² layer
        self.body = nn.Sequential(*layers[:-1])  # the dense path, for batches the windows would not help
        self._blank: dict = {}

    def _blank_maps(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h2 of an all-zero image, channels-last with a ring of zeros (its padding) (18, 18, C2),
        and h3 (8, 8, C3), in the arithmetic now in force (autocast or not), dtype of `like`."""
        device = like.device
        key = (device, like.dtype, torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        if key not in self._blank:
            blank = torch.zeros(1, self.conv1.in_channels, 64, 64, device=device, dtype=self.conv1.weight.dtype)
            h2 = F.relu(self.conv2(F.relu(self.conv1(blank))))  # (1, C2, 16, 16)
            h3 = F.relu(self.conv3(h2))  # (1, C3, 8, 8)
            self._blank[key] = (F.pad(h2, (1, 1, 1, 1))[0].permute(1, 2, 0).to(like.dtype).contiguous(),
                                h3[0].permute(1, 2, 0).to(like.dtype).contiguous())
        return self._blank[key]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """images (B, C, 64, 64) of any dtype (uint8 straight from the data is cheapest), times scale
        -> μ (B, z_dim)."""
        batch = images.shape[0]
        if batch == 0:
            return self._mean(self.body(self._as_input(images, scale)))
        if images.shape[2:] != (64, 64):
            raise ValueError(f"SparseEncoder takes 64×64 images, got {tuple(images.shape[2:])}")
        rows, cols = _content_box(images)  # input rows and columns that differ from the blank image
        rows, cols = _reach(*_reach(*rows, 32), 16), _reach(*_reach(*cols, 32), 16)  # ... and the h2 ones
        size2, top2, left2 = _window(rows, cols, 16)
        if size2 > MAX_SPARSE_WIDTH:
            x = self._as_input(images, scale).contiguous(memory_format=torch.channels_last)
            return self._mean(self.body(x))
        h2_window = self._h2_window(images, scale, top2, left2, size2)  # (B, C2, S2, S2)
        blank2, blank3 = self._blank_maps(h2_window)

        # conv3's input: the part of h2 (with its zero ring) that its output window reads, side×side per
        # image: the blank map there, with the h2 window pasted in (the region always contains it).
        size3, top3, left3 = _window(_reach(top2, top2 + size2 - 1, 8), _reach(left2, left2 + size2 - 1, 8), 8)
        side = 2 * size3 + 2  # h2 rows 2·top3-1 .. feed h3 rows top3 ..; +1 for the zero ring
        region = _flat_windows(2 * top3, 2 * left3, side, 18, 18) % (18 * 18)  # (B·side²,) into blank2
        h3_input = blank2.view(-1, blank2.shape[2]).index_select(0, region)  # (B·side·side, C2)
        h3_input.index_copy_(0, _flat_windows(top2 + 1 - 2 * top3, left2 + 1 - 2 * left3, size2, side, side),
                             h2_window.permute(0, 2, 3, 1).reshape(-1, blank2.shape[2]))
        h3_input = h3_input.view(batch, side, side, -1).permute(0, 3, 1, 2)  # (B, C2, side, side)
        h3_window = F.conv2d(h3_input, self.conv3.weight, self.conv3.bias, stride=2).relu_()  # (B, C3, S3, S3)
        h3 = blank3.repeat(batch, 1, 1).view(-1, blank3.shape[2])  # (B·8·8, C3)
        h3.index_copy_(0, _flat_windows(top3, left3, size3, 8, 8),
                       h3_window.permute(0, 2, 3, 1).reshape(-1, blank3.shape[2]))
        h3 = h3.view(batch, 8, 8, -1).permute(0, 3, 1, 2)  # (B, C3, 8, 8), channels-last in memory
        return self._mean(self.rest(h3))

    def _mean(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder's last layer, always in fp32: under bf16 autocast its output would be rounded to
        bf16's 8-bit mantissa, and the code values would tie far more often than the data does (which
        also slows DCI's exact trees, whose cost grows with ties)."""
        with torch.autocast(features.device.type, enabled=False):
            return self.head(features.float())[:, : self.model.z_dim]

    def _as_input(self, images: torch.Tensor, scale: float) -> torch.Tensor:
        x = images.to(self.conv1.weight.dtype)
        return x * scale if scale != 1.0 else x

    def _h2_window(self, images, scale: float, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
        """The size×size window of h2 at (top, left) per image, from the matching windows of h1 and x."""
        side1 = 2 * size + 2  # h1 rows 2·top-1 .. 2·top+2·size
        side0 = 2 * side1 + 2  # x rows 4·top-3 .. 4·top+4·size+2
        x_window = self._as_input(_crop(images, 4 * top - 3, 4 * left - 3, side0), scale)  # (B, side0, side0, C)
        h1 = F.conv2d(x_window.permute(0, 3, 1, 2), self.conv1.weight, self.conv1.bias, stride=2).relu_()
        # Rows -1 and 32 of h1 are conv2's zero padding, not conv1 outputs: zero them where the window has them.
        h1[top == 0, :, 0, :] = 0
        h1[top + size == 16, :, -1, :] = 0
        h1[left == 0, :, :, 0] = 0
        h1[left + size == 16, :, :, -1] = 0
        return F.conv2d(h1, self.conv2.weight, self.conv2.bias, stride=2).relu_()
