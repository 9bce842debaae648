"""fast_conv.ConvTranspose2d computes what torch.nn.ConvTranspose2d computes: outputs and all gradients."""

import pytest
import torch
from torch import nn

from hardware import fast_conv
from model import build_model

# (C_in, C_out, kernel, stride, padding, input side, bias): the decoders' layers, phase forward or not.
LAYERS = [
    (32, 1, 4, 2, 1, 8, True),  # model B's last layer on dSprites: the phase forward
    (32, 3, 4, 2, 1, 6, True),  # the last layer on colour images: the phase forward
    (32, 32, 4, 2, 1, 5, True),  # the inner layers: oneDNN's forward, the bias summed apart
    (256, 64, 4, 1, 0, 1, True),  # model H's first up-conv, 1×1 -> 4×4
    (16, 2, 4, 2, 1, 4, False),  # InfoGAN's layers have no bias
]


def pair(c_in, c_out, kernel, stride, padding, bias):
    """A torch.nn layer and a fast_conv layer with the same parameters (float64 for exact comparison)."""
    torch.manual_seed(0)
    ours = fast_conv.ConvTranspose2d(c_in, c_out, kernel, stride, padding, bias=bias).double()
    theirs = nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, bias=bias).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def forward_backward(layer, x, grad_out, autocast=False):
    """The layer's output and the gradients of <output, grad_out> for the input and each parameter."""
    x = x.detach().requires_grad_()
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.backward(grad_out.to(y.dtype))
    return y, [x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("c_in, c_out, kernel, stride, padding, side, bias", LAYERS)
def test_output_and_gradients_equal_torch_nn(c_in, c_out, kernel, stride, padding, side, bias, channels_last):
    ours, theirs = pair(c_in, c_out, kernel, stride, padding, bias)
    x = torch.randn(3, c_in, side, side, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        ours, theirs = ours.to(memory_format=torch.channels_last), theirs.to(memory_format=torch.channels_last)
    with torch.no_grad():
        grad_out = torch.randn_like(theirs(x))
    expected, expected_grads = forward_backward(theirs, x, grad_out)
    y, grads = forward_backward(ours, x, grad_out)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(expected_grads) == 2 + bias
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_casts_as_torch_nn_does():
    """An inner layer under bf16 autocast: bf16 output, fp32 gradients, within bf16 rounding of torch.nn's."""
    ours, theirs = pair(32, 32, 4, 2, 1, True)
    ours, theirs = ours.float(), theirs.float()
    x, grad_out = torch.randn(4, 32, 8, 8), torch.randn(4, 32, 16, 16)
    expected, expected_grads = forward_backward(theirs, x, grad_out, autocast=True)
    y, grads = forward_backward(ours, x, grad_out, autocast=True)
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected.float(), rtol=0.02, atol=0.05)
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == want.dtype == torch.float32  # gradients reach the fp32 parameters through the casts
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.05 * want.abs().max().item())


def test_last_layer_stays_fp32_under_bf16_autocast():
    """A phase-forward layer computes in fp32 from a bf16 input: torch.nn's fp32 result on that input."""
    ours, theirs = pair(32, 1, 4, 2, 1, True)
    ours, theirs = ours.float(), theirs.float()
    x = torch.randn(4, 32, 8, 8).bfloat16()  # what the bf16 layers before it hand on
    grad_out = torch.randn(4, 1, 16, 16)
    expected, expected_grads = forward_backward(theirs, x.float(), grad_out)
    y, grads = forward_backward(ours, x, grad_out, autocast=True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert grads[0].dtype == torch.bfloat16  # the input's gradient goes back in the input's dtype
    torch.testing.assert_close(grads[0].float(), expected_grads[0], rtol=0.02, atol=0.02)
    for got, want in zip(grads[1:], expected_grads[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_phase_forward_only_where_it_computes_the_same_sums():
    def phase(*args, **kwargs):
        return fast_conv.ConvTranspose2d(*args, **kwargs).phase_forward

    assert phase(32, 1, 4, 2, 1) and phase(32, 3, 4, 2, 1) and phase(32, 4, 4, 2, 1)
    assert not phase(32, 5, 4, 2, 1)  # many outputs: oneDNN's own forward is faster
    assert not phase(32, 1, 4, 1, 0) and not phase(32, 1, 3, 2, 1) and not phase(32, 1, 4, 2, 0)
    assert not phase(32, 1, 4, 2, 1, output_padding=1) and not phase(32, 2, 4, 2, 1, groups=2)


def test_phase_weight_is_the_transposed_conv_per_output_parity():
    """Each output pixel is the 2×2 conv of its phase, by the index arithmetic of phase_weight's docstring."""
    torch.manual_seed(1)
    weight, x = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(1, 2, 3, 3, dtype=torch.float64)
    expected = torch.zeros(1, 1, 8, 8, dtype=torch.float64)  # padded by 1: output pixel o sits at o + 1
    for i in range(3):
        for j in range(3):
            for kh in range(4):
                for kw in range(4):
                    expected[0, 0, 2 * i + kh, 2 * j + kw] += (x[0, :, i, j] * weight[:, 0, kh, kw]).sum()
    got = fast_conv.phase_conv_transpose(x, weight, None)
    torch.testing.assert_close(got, expected[:, :, 1:-1, 1:-1], rtol=1e-12, atol=1e-12)


def test_models_keep_the_reference_state_dict():
    """Every model's up-convs are ours, each with torch.nn's keys and shapes (test_model checks the key names)."""
    for name in ("H", "B", "DLIB"):
        model = build_model(name, z_dim=10, nc=3)
        layers = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert layers and all(isinstance(m, fast_conv.ConvTranspose2d) for m in layers)
        for layer in layers:
            plain = nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                       layer.padding, bias=layer.bias is not None)
            assert {k: v.shape for k, v in plain.state_dict().items()} == {
                k: v.shape for k, v in layer.state_dict().items()}


def test_no_grad_forward_equals_torch_nn():
    ours, theirs = pair(32, 1, 4, 2, 1, True)
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
