"""Encoder outputs for binary images that are blank outside a box, on CPU, without convolving the blank.

A dSprites image is one binary sprite, at most 27×27 pixels, on an exactly zero background. Two facts
make its encoding cheap, both exact up to float rounding order (codes equal the dense encoder's to
about 1e-6; tests/test_sparse_encoder.py):

1. Wherever a convolution's window sees only background, its output is the output for an all-zero
   image: a fixed map, computed once. So conv2 and conv3 run only on the output window that the sprite
   can reach, and every other position is taken from the blank-image maps.
2. conv1 reads 4×4 binary pixels, so each of its outputs is one of 2^16 vectors, and sprites produce
   only a few thousand of them (2,406 in all of dSprites). conv2 is a sum over its 16 taps of
   W2[tap] @ h1, so for each 4×4 pattern seen and each tap that product is computed once and kept in a
   table (_TapTable): conv2 at a position is then the sum of 16 table rows, about 30× fewer operations
   than convolving.

Map sizes for 64×64 input: x (B, 1, 64, 64) -> h1 (B, C1, 32, 32) -> h2 (B, C2, 16, 16) -> h3 (B, C3, 8, 8)
-> the rest of the encoder, unchanged. Per batch: find each sprite's box (_content_boxes), one square
window of h2 for the batch, the patterns of the h1 window under it (_h1_patterns), conv3's input built
from table sums and the blank map (_conv3_inputs), conv3 by PyTorch on that window only, h3 pasted
into the blank map, then the encoder's remaining layers. The per-pixel loops are numba kernels (compiled
on first use, a few seconds, then cached in __pycache__) that release the GIL: evaluate.CodeCache
encodes several batches at once in threads, and a SparseEncoder may be called from several threads.
The disentanglement protocol encodes every one of dSprites' 737,280 images, and the encoder is its main
cost; eval_bench.py measures this against the dense encoder.

Works for any encoder that begins with two Conv2d(k=4, s=2, p=1) + ReLU pairs and a third convolution
that halves the map (stride 2: kernel 4 with padding 1, as the β-VAE encoders H and B have, or kernel 2
without padding, as disentanglement_lib's encoder DLIB has) + ReLU, and whose encode(x) returns the last
layer's output split into (μ, logσ²) or (μ, None); `supports` checks both. A batch that is not binary
and one-channel, or whose content reaches across most of the image, runs through the dense encoder.
CPU only: on a GPU the dense encoder is fast.
"""

import threading

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import nn

# A window of h2 wider than this (of 16) saves too little to pay for the gathers: use the dense encoder.
MAX_SPARSE_WIDTH = 12
# conv2's zero padding: its pattern number (past the 2^16 pixel patterns) and its block of rows in the tap
# table (conv2's bias on tap 0, zeros on the 15 others, so that every position's sum has the bias once).
PAD_PATTERN, PAD = 1 << 16, 0


def _is_down_conv(layer: nn.Module) -> bool:
    """Conv2d with kernel 4, stride 2, padding 1: each output row u reads input rows 2u-1 .. 2u+2."""
    return (isinstance(layer, nn.Conv2d) and layer.kernel_size == (4, 4) and layer.stride == (2, 2)
            and layer.padding == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1
            and layer.padding_mode == "zeros" and layer.bias is not None)


def _is_halving_conv(layer: nn.Module) -> bool:
    """Conv2d with stride 2 and kernel 4, padding 1 (H, B) or kernel 2, padding 0 (DLIB): each output row u
    reads input rows 2u-p .. 2u-p+k-1, and a 16×16 map becomes 8×8."""
    return (isinstance(layer, nn.Conv2d) and layer.kernel_size in ((4, 4), (2, 2)) and layer.stride == (2, 2)
            and layer.padding == ((layer.kernel_size[0] - 2) // 2,) * 2 and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.padding_mode == "zeros" and layer.bias is not None)


def supports(model: nn.Module) -> bool:
    """True when `model.encoder` starts with two (down-conv, ReLU) pairs and a (halving conv, ReLU) pair, as
    the H, B and DLIB encoders do, and `model.encode(x)` is the encoder's output split into (μ, logσ²) (or
    (μ, None)): checked on two images."""
    layers = list(getattr(model, "encoder", []))
    if not (isinstance(getattr(model, "z_dim", None), int) and len(layers) > 6
            and all(_is_down_conv(layers[i]) for i in (0, 2)) and _is_halving_conv(layers[4])
            and all(isinstance(layers[i], nn.ReLU) for i in (1, 3, 5))):
        return False
    weight = layers[0].weight
    probe = torch.zeros(2, layers[0].in_channels, 64, 64, device=weight.device, dtype=weight.dtype)
    probe[1, :, 20:30, 24:40] = 1
    with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
        stats, (mu, logvar) = model.encoder(probe), model.encode(probe)
    z = model.z_dim
    return (stats.dim() == 2 and torch.equal(mu, stats[:, :z])
            and (logvar is None or (stats.shape[1] == 2 * z and torch.equal(logvar, stats[:, z:]))))


# ----------------------------------------------------------------------------------------- window geometry


def _reach(lo: torch.Tensor, hi: torch.Tensor, size_out: int, kernel: int = 4,
           padding: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Input rows [lo, hi] (B,) that differ from the blank image -> the output rows of a stride-2 convolution
    that they reach: output row u reads input rows 2u-padding .. 2u-padding+kernel-1."""
    u0 = torch.div(lo + padding - kernel + 2, 2, rounding_mode="floor").clamp(min=0)  # ceil((lo+p-k+1) / 2)
    u1 = torch.div(hi + padding, 2, rounding_mode="floor").clamp(max=size_out - 1)
    return u0, u1


def _window(rows: tuple, cols: tuple, size_out: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """One square window size S for the whole batch, and each image's top-left corner (B,), (B,)."""
    size = int(torch.maximum(rows[1] - rows[0], cols[1] - cols[0]).max()) + 1
    return size, rows[0].clamp(max=size_out - size), cols[0].clamp(max=size_out - size)


# ----------------------------------------------------------------------------------------- numba kernels


@njit(cache=True, nogil=True)
def _content_boxes(pixels):
    """pixels (B, H, W) uint8 -> boxes (B, 4) int64: top, bottom, left, right of the non-zero pixels, inclusive
    ((0, 0, 0, 0) for a blank image: it differs from the blank map nowhere, so any window is right), and
    whether every pixel is 0 or 1."""
    batch, height, width = pixels.shape
    boxes = np.zeros((batch, 4), np.int64)
    others = 0
    for b in range(batch):
        columns = np.zeros(width, np.uint8)  # OR of all rows
        top, bottom = -1, -1
        for r in range(height):
            row_or = np.uint8(0)
            for c in range(width):
                row_or |= pixels[b, r, c]
                columns[c] |= pixels[b, r, c]
            if row_or != 0:
                bottom = r
                if top < 0:
                    top = r
        if top >= 0:
            left, right = 0, width - 1
            while columns[left] == 0:
                left += 1
            while columns[right] == 0:
                right -= 1
            boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3] = top, bottom, left, right
        for c in range(width):
            if columns[c] > 1:
                others += 1
                break
    return boxes, others == 0


@njit(cache=True, nogil=True)
def _h1_patterns(pixels, top, left, size, first_row, patterns, rows):
    """For each image, the h1 window that the size×size window of h2 at (top, left) reads: h1 rows
    2·top-1 .. 2·top+2·size (side 2·size+2), and the same columns. Fills patterns (B, side, side) with the
    4×4 pixels conv1 reads there, as a 16-bit number whose bit 4a+b is pixel (2p-1+a, 2q-1+b) (0 outside
    the image: conv1's padding), or PAD_PATTERN at h1 rows and columns -1 and 32 (conv2's padding); and
    rows with first_row[pattern]. Returns how many are not in the table yet (first_row < 0)."""
    batch, side = patterns.shape[0], patterns.shape[1]
    unknown = 0
    for b in range(batch):
        for k in range(side):
            p = 2 * top[b] - 1 + k
            for m in range(side):
                q = 2 * left[b] - 1 + m
                pattern = 0
                if p < 0 or p > 31 or q < 0 or q > 31:
                    pattern = PAD_PATTERN
                else:
                    for a in range(4):
                        y = 2 * p - 1 + a
                        if 0 <= y < 64:
                            for c in range(4):
                                x = 2 * q - 1 + c
                                if 0 <= x < 64 and pixels[b, y, x] != 0:
                                    pattern |= 1 << (4 * a + c)
                patterns[b, k, m] = pattern
                rows[b, k, m] = first_row[pattern]
                if first_row[pattern] < 0:
                    unknown += 1
    return unknown


@njit(cache=True, nogil=True)
def _conv3_inputs(rows, table, blank2, top2, left2, size2, top3, left3, pad3, out):
    """conv3's input, out (B, side, side, C2): h2 rows 2·top3-pad3 .. 2·top3-pad3+side-1 (and columns), i.e.
    what the window of h3 at (top3, left3) reads (side = 2·size3 + kernel3 - 2; pad3 is conv3's padding,
    0 or 1). Inside the h2 window at (top2, left2): conv2 + ReLU
    as the sum of the table rows of its 16 taps (rows (B, 2·size2+2, 2·size2+2), from _h1_patterns, tap
    (i, j) at row + 4i + j), summed in tap order; elsewhere the blank map blank2 (18, 18, C2), whose ring
    of zeros is conv3's padding."""
    batch, side, channels = out.shape[0], out.shape[1], out.shape[3]
    for b in range(batch):
        total = np.empty(channels, np.float32)
        for r in range(side):
            h2_row = 2 * top3[b] - pad3 + r
            for c in range(side):
                h2_col = 2 * left3[b] - pad3 + c
                u, v = h2_row - top2[b], h2_col - left2[b]
                if 0 <= u < size2 and 0 <= v < size2:
                    total[:] = 0
                    for i in range(4):
                        for j in range(4):
                            row = rows[b, 2 * u + i, 2 * v + j] + 4 * i + j
                            for ch in range(channels):
                                total[ch] += table[row, ch]
                    for ch in range(channels):
                        out[b, r, c, ch] = max(total[ch], np.float32(0))
                else:
                    out[b, r, c, :] = blank2[h2_row + 1, h2_col + 1, :]


@njit(cache=True, nogil=True)
def _products_in_order(a, b):
    """a (k, n) @ b (n, m), fp32, each sum taken in index order. A BLAS product may group a sum differently
    for other shapes (or threads), which would make a row's result depend on the rows computed with it."""
    k, n = a.shape
    m = b.shape[1]
    out = np.zeros((k, m), np.float32)
    for i in range(k):
        for t in range(n):
            for j in range(m):
                out[i, j] += a[i, t] * b[t, j]
    return out


def warm_up() -> None:
    """Compile the kernels now (a few seconds once after installing; numba caches them in __pycache__)."""
    pixels = np.zeros((1, 64, 64), np.uint8)
    corner = np.zeros(1, np.int64)
    patterns = np.zeros((1, 4, 4), np.int64)
    first_row = np.zeros(PAD_PATTERN + 1, np.int64)
    _content_boxes(pixels)
    _h1_patterns(pixels, corner, corner, 1, first_row, patterns, patterns.copy())
    _conv3_inputs(patterns, np.zeros((16, 1), np.float32), np.zeros((18, 18, 1), np.float32), corner, corner, 1,
                  corner, corner, 1, np.zeros((1, 4, 4, 1), np.float32))
    _products_in_order(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32))


# ----------------------------------------------------------------------------------------- the encoder


class _TapTable:
    """conv2's tap products for the conv1 patterns seen so far: rows (16·ids, C2), fp32, where row 16·id + 4a + b
    holds W2[:, :, a, b] @ h1(pattern), plus conv2's bias when a = b = 0; id PAD stands for conv2's padding.
    first_row maps a pattern (0 .. PAD_PATTERN) to 16·id, or -1 while it has not been seen."""

    def __init__(self, conv2: nn.Conv2d, dtype: torch.dtype):
        self.first_row = np.full(PAD_PATTERN + 1, -1, np.int64)
        self.first_row[PAD_PATTERN] = 16 * PAD
        self.rows = np.zeros((16, conv2.out_channels), np.float32)
        self.rows[0] = conv2.bias.detach().to(dtype).float().numpy()

    def add(self, patterns: np.ndarray, products: np.ndarray) -> None:
        """New patterns (k,) and their rows (16·k, C2). The rows are in place before first_row points at them,
        so a thread reading the table meanwhile never finds a row that is not there."""
        first = len(self.rows)
        self.rows = np.concatenate([self.rows, products])
        self.first_row[patterns] = first + 16 * np.arange(len(patterns))


class SparseEncoder:
    """Posterior means μ (B, z) of `model` (and logσ² with `encode`), convolving only where the images are
    not blank, and conv1 and conv2 not at all."""

    def __init__(self, model: nn.Module):
        if not supports(model):
            raise ValueError("SparseEncoder needs an encoder that starts with two Conv2d(4, 2, 1) + ReLU pairs and "
                             "a Conv2d(4, 2, 1) or Conv2d(2, 2) + ReLU, and an encode(x) that splits the "
                             "encoder's output into (mu, logvar)")
        if model.encoder[0].weight.device.type != "cpu":
            raise ValueError("SparseEncoder runs on the CPU; on a GPU use the model's own encode")
        layers = list(model.encoder)
        self.model, self.z_dim = model, model.z_dim
        self.conv1, self.conv2, self.conv3 = layers[0], layers[2], layers[4]
        self.rest, self.head = nn.Sequential(*layers[6:-1]), layers[-1]  # after conv3; the μ/logσ² layer
        self.body = nn.Sequential(*layers[:-1])  # the dense path
        with torch.no_grad():
            self.has_logvar = model.encode(torch.zeros(1, self.conv1.in_channels, 64, 64))[1] is not None
        self._cache: dict = {}  # tables by _key
        self._lock = threading.Lock()  # SparseEncoder may be called from several threads at once

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """images (B, C, 64, 64) of any dtype (uint8 straight from the data is cheapest), times scale
        -> μ (B, z_dim)."""
        return self.encode(images, scale)[0]

    @torch.no_grad()
    def encode(self, images: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images (B, C, 64, 64) times scale -> μ (B, z_dim) and logσ² (B, z_dim) (None when the model has none),
        from the last layer run in fp32 (see _head)."""
        if images.shape[2:] != (64, 64):
            raise ValueError(f"SparseEncoder takes 64×64 images, got {tuple(images.shape[2:])}")
        pixels = _binary_pixels(images)
        features = None if pixels is None else self._sparse_features(pixels, scale)
        if features is None:
            features = self.body(self._as_input(images, scale).contiguous(memory_format=torch.channels_last))
        stats = self._head(features)
        return stats[:, :self.z_dim], (stats[:, self.z_dim:2 * self.z_dim] if self.has_logvar else None)

    def _sparse_features(self, pixels: np.ndarray, scale: float) -> torch.Tensor | None:
        """Binary pixels (B, 64, 64) uint8 -> the input of the encoder's last layer, or None when the batch
        is not binary or its content is too wide for windows to pay."""
        batch = pixels.shape[0]
        boxes, binary = _content_boxes(pixels)
        if batch == 0 or not binary:
            return None
        boxes = torch.from_numpy(boxes)
        rows = _reach(*_reach(boxes[:, 0], boxes[:, 1], 32), 16)  # the h2 rows and columns that differ from blank
        cols = _reach(*_reach(boxes[:, 2], boxes[:, 3], 32), 16)
        size2, top2, left2 = _window(rows, cols, 16)
        if size2 > MAX_SPARSE_WIDTH:
            return None
        kernel3, pad3 = self.conv3.kernel_size[0], self.conv3.padding[0]
        size3, top3, left3 = _window(_reach(top2, top2 + size2 - 1, 8, kernel3, pad3),
                                     _reach(left2, left2 + size2 - 1, 8, kernel3, pad3), 8)
        top2, left2, top3, left3 = top2.numpy(), left2.numpy(), top3.numpy(), left3.numpy()
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
        table = self._tap_table(scale, dtype)
        side1 = 2 * size2 + 2
        patterns = np.empty((batch, side1, side1), np.int64)
        first_rows = np.empty((batch, side1, side1), np.int64)
        if _h1_patterns(pixels, top2, left2, size2, table.first_row, patterns, first_rows):
            with self._lock:  # batches may be encoded in parallel threads (evaluate.CodeCache)
                new = np.unique(patterns[table.first_row[patterns] < 0])
                if len(new):
                    table.add(new, self._tap_products(torch.from_numpy(new), scale, dtype).numpy())
            first_rows = table.first_row[patterns]
        blank2, blank3 = self._blank_maps(dtype)
        side3 = 2 * size3 + kernel3 - 2  # h2 rows 2·top3-pad3 .. feed h3 rows top3 .. top3+size3-1
        h3_input = np.empty((batch, side3, side3, blank2.shape[2]), np.float32)
        _conv3_inputs(first_rows, table.rows, blank2.numpy(), top2, left2, size2, top3, left3, pad3, h3_input)
        h3_input = torch.from_numpy(h3_input).to(dtype).permute(0, 3, 1, 2)  # (B, C2, side3, side3), channels-last
        h3_window = F.conv2d(h3_input, self.conv3.weight, self.conv3.bias, stride=2).relu_()  # (B, C3, S3, S3)
        h3 = blank3.to(h3_window.dtype).repeat(batch, 1, 1, 1)  # (B, 8, 8, C3)
        steps = torch.arange(size3)
        top3, left3 = torch.from_numpy(top3), torch.from_numpy(left3)
        h3[torch.arange(batch)[:, None, None], (top3[:, None] + steps)[:, :, None],
           (left3[:, None] + steps)[:, None, :]] = h3_window.permute(0, 2, 3, 1)
        return self.rest(h3.permute(0, 3, 1, 2))  # h3 (B, C3, 8, 8), channels-last in memory

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder's last layer, always in fp32: under bf16 autocast its output would be rounded to
        bf16's 8-bit mantissa, and the code values would tie far more often than the data does (which
        also slows DCI's exact trees, whose cost grows with ties)."""
        with torch.autocast(features.device.type, enabled=False):
            return self.head(features.float())

    def _as_input(self, images: torch.Tensor, scale: float) -> torch.Tensor:
        x = images.to(self.conv1.weight.dtype)
        return x * scale if scale != 1.0 else x

    def _key(self, name: str, *extra) -> tuple:
        """Key of a cached table: the arithmetic in force and the weights' identity and version (an in-place
        update bumps it), so a table never outlives the weights it was computed from."""
        weights = [p for layer in (self.conv1, self.conv2, self.conv3) for p in (layer.weight, layer.bias)]
        return (name, *extra, *[(p.data_ptr(), p._version) for p in weights])

    def _tap_table(self, scale: float, dtype: torch.dtype) -> _TapTable:
        key = self._key("taps", scale, dtype)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = _TapTable(self.conv2, dtype)
            return self._cache[key]

    def _tap_products(self, patterns: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
        """Pixel patterns (k,) -> (16·k, C2) fp32: row 16·i + 4a + b is W2[:, :, a, b] @ h1, h1 being conv1 + ReLU
        on the pattern's 4×4 pixels (times scale), plus conv2's bias on tap 0. With dtype bf16 (autocast), the
        pixels, weights, biases and h1 are rounded to it and the products summed in fp32, as a bf16 convolution
        does. Every sum runs in index order (_products_in_order), so a pattern's rows are the same whichever
        patterns are computed with it: a code does not depend on which batch, or thread, met a pattern first."""

        def rounded(t: torch.Tensor) -> torch.Tensor:  # to the arithmetic's dtype, held as fp32
            return t.detach().to(dtype).float()

        conv1, conv2 = self.conv1, self.conv2
        bits = ((patterns[:, None] >> torch.arange(16)) & 1).float()  # (k, 16): pixel 4a+b
        x = bits * rounded(torch.tensor(scale, dtype=torch.float32))  # the pixels as conv1 reads them
        w1 = rounded(conv1.weight).reshape(conv1.out_channels, 16).T.contiguous()  # (16, C1)
        h1 = _products_in_order(x.numpy(), w1.numpy()) + rounded(conv1.bias).numpy()  # (k, C1): conv1 there
        h1 = rounded(torch.from_numpy(h1).relu_())
        w2 = rounded(conv2.weight).permute(1, 2, 3, 0).reshape(conv2.in_channels, -1)  # (C1, 16·C2): tap-major
        products = torch.from_numpy(_products_in_order(h1.numpy(), w2.contiguous().numpy()))  # (k, 16·C2)
        products = products.reshape(-1, conv2.out_channels)  # (16·k, C2)
        products[::16] += rounded(conv2.bias)  # tap 0 carries the bias
        return products

    def _blank_maps(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """h2 of an all-zero image with a ring of zeros (its padding), (18, 18, C2) fp32, and h3 (8, 8, C3),
        both channels-last, computed in `dtype` (autocast for bf16) and held as fp32."""
        key = self._key("blank", dtype)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._compute_blank_maps(dtype)
            return self._cache[key]

    def _compute_blank_maps(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        blank = torch.zeros(1, self.conv1.in_channels, 64, 64)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            h2 = F.relu(self.conv2(F.relu(self.conv1(blank))))  # (1, C2, 16, 16)
            h3 = F.relu(self.conv3(h2))  # (1, C3, 8, 8)
        return (F.pad(h2.float(), (1, 1, 1, 1))[0].permute(1, 2, 0).contiguous(),
                h3.float()[0].permute(1, 2, 0).contiguous())


def _binary_pixels(images: torch.Tensor) -> np.ndarray | None:
    """images (B, 1, 64, 64) -> (B, 64, 64) uint8 numpy (no copy for uint8), or None for more than one channel
    or, for other dtypes, values other than 0 and 1 (uint8 values are checked by _content_boxes)."""
    if images.shape[1] != 1 or images.device.type != "cpu":
        return None
    pixels = images[:, 0]
    if pixels.dtype != torch.uint8:
        if not bool(((pixels == 0) | (pixels == 1)).all()):
            return None
        pixels = pixels.to(torch.uint8)
    return pixels.contiguous().numpy()
