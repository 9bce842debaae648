"""ConvTranspose2d that runs the same sums through faster CPU kernels.

The models use it in place of torch.nn's layer: same parameters, same state_dict keys, same results
up to float rounding. Only on the CPU does it differ from torch.nn, in three ways, each chosen by
timing the decoders' layers alone (`python bench.py --layers`, natively and under the AVX2 cap; the
figures are in the README):

1. The bias gradient. oneDNN sums it inside the backward, and for large outputs that sum is slow:
   the backward of the 16×16 -> 32×32 layer of 32 channels takes about a third less time when
   oneDNN computes only the input and weight gradients and the bias gradient is a plain sum of the
   output gradient over (batch, height, width).
2. The forward of a 4×4 stride-2 transposed conv with few outputs (the decoders' last layer, to 1 or
   3 channels) is slow in oneDNN's fp32 kernels. Each output pixel sums 2×2 input pixels × 2×2 taps,
   which taps depending only on the pixel's phase (row and column parity); so the same forward is one
   ordinary 2×2 conv with 4 × out_channels outputs, one set per phase, and an interleave of the
   phases: about twice as fast under the AVX2 cap.
3. That last layer runs in fp32 even under bf16 autocast: with so few outputs bf16 saves nothing
   there, and oneDNN's bf16 backward for it was the slower one. Its logits are fp32 either way.

On CUDA, and under torch.compile, the layer is exactly torch.nn's.
"""

import torch
import torch.nn.functional as F
from torch import nn

PHASE_MAX_CHANNELS = 4  # transposed convs with at most this many outputs take the phase forward


def phase_weight(weight: torch.Tensor, bias: torch.Tensor | None):
    """A 4×4 stride-2 padding-1 transposed conv's weight (C_in, C_out, 4, 4) as a 2×2 conv's.

    Output pixel 2m + a - 1 (a: its parity) takes taps kh = 2p + a from input pixels m - p. A 2×2
    window at m over the input padded by 1 covers pixels m - 1 (its row r = 0, so p = 1) and m
    (r = 1, p = 0): conv tap r is transposed tap 2(1 - r) + a. Output channels are ordered
    (row phase a, column phase b, C_out), so the bias repeats four times.
    """
    c_in, c_out = weight.shape[:2]
    taps = weight.reshape(c_in, c_out, 2, 2, 2, 2).flip(2, 4)  # (C_in, C_out, r, a, s, b)
    conv_weight = taps.permute(3, 5, 1, 0, 2, 4).reshape(4 * c_out, c_in, 2, 2)  # (4·C_out, C_in, r, s)
    return conv_weight, None if bias is None else bias.repeat(4)


def phase_conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv_transpose2d(x, weight, bias, stride=2, padding=1) for 4×4 kernels: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""
    batch, _, height, width = x.shape
    c_out = weight.shape[1]
    phases = F.conv2d(x, *phase_weight(weight, bias), padding=1)  # (B, 4·C_out, H + 1, W + 1)
    phases = phases.reshape(batch, 2, 2, c_out, height + 1, width + 1)  # (B, a, b, C_out, m, n)
    # Pixel (2m + a, 2n + b) of the output padded by one on each side; drop the padding.
    padded = phases.permute(0, 4, 1, 5, 2, 3).reshape(batch, 2 * height + 2, 2 * width + 2, c_out)
    return padded[:, 1:-1, 1:-1].permute(0, 3, 1, 2)  # (B, C_out, 2H, 2W), channels-last strides


class TransposedConv(torch.autograd.Function):
    """One transposed conv whose backward sums the bias gradient outside oneDNN (point 1)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        if layer.phase_forward:
            return phase_conv_transpose(x, weight, bias)
        return F.conv_transpose2d(x, weight, bias, layer.stride, layer.padding, layer.output_padding,
                                  layer.groups, layer.dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, layer.stride, layer.padding, layer.dilation, True,
            layer.output_padding, layer.groups, [need_x, need_weight, False])
        grad_bias = grad_out.sum((0, 2, 3)) if need_bias else None
        return grad_x, grad_weight, grad_bias, None


def cpu_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Run `layer` through TransposedConv, casting as autocast would have (its casts stay on the tape),
    except that phase-forward layers stay fp32 (point 3)."""
    weight, bias = layer.weight, layer.bias
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.float32 if layer.phase_forward else torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    with torch.autocast("cpu", enabled=False):
        return TransposedConv.apply(x, weight, bias, layer)


class ConvTranspose2d(nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d with the CPU backward of point 1, and the phase forward in fp32 of points
    2 and 3 where it applies (4×4 kernel, stride 2, padding 1, at most PHASE_MAX_CHANNELS outputs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phase_forward = (self.kernel_size == (4, 4) and self.stride == (2, 2) and self.padding == (1, 1)
                              and self.output_padding == (0, 0) and self.dilation == (1, 1) and self.groups == 1
                              and self.out_channels <= PHASE_MAX_CHANNELS)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        # Under torch.compile Inductor chooses the kernels; traced through TransposedConv it chose slower ones.
        if x.device.type != "cpu" or output_size is not None or torch.compiler.is_compiling():
            return super().forward(x, output_size)
        return cpu_forward(self, x)
