"""SparseEncoder gives the dense encoder's outputs: sprites anywhere, at the borders, blank images, in fp32 and
bf16; its pattern and box kernels against plain computations."""

import numpy as np
import pytest
import torch

from evaluation import sparse_encoder
from evaluation.sparse_encoder import MAX_SPARSE_WIDTH, SparseEncoder, supports
from model import BetaVAE_B, BetaVAE_DLIB, BetaVAE_H


def sprites(n: int, seed: int, max_side: int = 27) -> torch.Tensor:
    """(n, 1, 64, 64) random blobs of up to max_side pixels, many touching an image border."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 64, 64)
    for i in range(n):
        h, w = torch.randint(1, max_side + 1, (2,), generator=g).tolist()
        top, left = torch.randint(0, 64 - h + 1, (1,), generator=g).item(), torch.randint(0, 64 - w + 1, (1,),
                                                                                           generator=g).item()
        if i % 4 == 0:  # pin a quarter of them to a corner or an edge
            top, left = (0, 64 - w) if i % 8 == 0 else (64 - h, 0)
        x[i, 0, top:top + h, left:left + w] = (torch.rand(h, w, generator=g) > 0.3).float()
    x[-1] = 0  # a blank image
    return x


def trained_like(model_class):
    torch.manual_seed(0)
    model = model_class().eval()
    for p in model.parameters():  # non-zero biases, so blank regions are not simply zero
        p.data.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("model_class", [BetaVAE_B, BetaVAE_H, BetaVAE_DLIB])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sparse_means_equal_dense_means(model_class, channels_last):
    model = trained_like(model_class)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = sprites(64, seed=1)
    with torch.no_grad():
        dense = model.encode(x)[0]
    sparse = SparseEncoder(model)(x)
    assert sparse.shape == dense.shape == (64, model.z_dim)
    torch.testing.assert_close(sparse, dense, rtol=0, atol=2e-5)


def test_sparse_under_bf16_autocast_matches_dense_bf16():
    model = trained_like(BetaVAE_B)
    x = sprites(32, seed=2)
    with torch.no_grad():
        fp32 = model.encode(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dense = model.encode(x)[0].float()
            sparse = SparseEncoder(model)(x).float()
    # bf16 rounds differently where the window's summation order differs, so the two bf16 results are
    # not bitwise equal; they must be as close to each other as each is to fp32.
    bf16_error = (dense - fp32).abs().max()
    assert 0 < bf16_error < 0.1
    assert (sparse - dense).abs().max() <= bf16_error
    assert (sparse - fp32).abs().max() <= 2 * bf16_error


def test_wide_content_falls_back_to_the_dense_encoder():
    model = trained_like(BetaVAE_B)
    x = (torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    with torch.no_grad():
        dense = model.encode(x)[0]
    torch.testing.assert_close(SparseEncoder(model)(x), dense, rtol=0, atol=0)
    assert MAX_SPARSE_WIDTH < 16


def test_supports_the_three_models_and_rejects_others():
    assert supports(BetaVAE_B()) and supports(BetaVAE_H()) and supports(BetaVAE_DLIB())
    odd = BetaVAE_DLIB()
    odd.encoder[4] = torch.nn.Conv2d(32, 64, 3, 2, 1)  # halves the map too, but a kernel the windows don't know
    assert not supports(odd)
    with pytest.raises(ValueError, match="Conv2d"):
        SparseEncoder(torch.nn.Linear(2, 2))


def test_an_empty_batch_gives_no_codes():
    assert SparseEncoder(trained_like(BetaVAE_B))(torch.zeros(0, 1, 64, 64, dtype=torch.uint8)).shape == (0, 10)


def test_content_boxes_match_a_plain_reduction_and_flag_values_other_than_0_and_1():
    generator = torch.Generator().manual_seed(1)
    images = torch.zeros(64, 64, 64, dtype=torch.uint8)
    spots = torch.randint(0, 64, (64, 2, 5), generator=generator)
    for b in range(64):
        images[b, spots[b, 0], spots[b, 1]] = 1
    images[0] = 0  # a blank image
    boxes, binary = sparse_encoder._content_boxes(images.numpy())
    assert binary
    for b in range(1, 64):
        rows, cols = images[b].amax(1).nonzero()[:, 0], images[b].amax(0).nonzero()[:, 0]
        assert boxes[b].tolist() == [rows.min(), rows.max(), cols.min(), cols.max()]
    assert boxes[0].tolist() == [0, 0, 0, 0]
    images[5, 3, 7] = 255
    assert not sparse_encoder._content_boxes(images.numpy())[1]


def test_conv1_patterns_are_the_pixels_conv1_reads():
    """Pattern bit 4a+b is pixel (2p-1+a, 2q-1+b) of h1 position (p, q): the same number as a stride-2
    convolution with weights 2^(4a+b) and conv1's padding; conv2's padding is PAD_PATTERN."""
    images = sprites(16, seed=4).to(torch.uint8)
    powers = (2.0 ** torch.arange(16)).view(1, 1, 4, 4)
    full = torch.nn.functional.conv2d(images.float(), powers, stride=2, padding=1)[:, 0].long()  # (B, 32, 32)
    size = 6
    top, left = torch.arange(16) % (17 - size), torch.flip(torch.arange(16), (0,)) % (17 - size)
    side = 2 * size + 2
    patterns = np.empty((16, side, side), np.int64)
    first_rows = np.empty_like(patterns)
    first_row = np.full(sparse_encoder.PAD_PATTERN + 1, -1, np.int64)
    first_row[sparse_encoder.PAD_PATTERN] = 0  # padding is always known; pixel patterns are not, yet
    unknown = sparse_encoder._h1_patterns(images[:, 0].numpy(), top.numpy(), left.numpy(), size, first_row,
                                          patterns, first_rows)
    assert unknown == patterns.size - (patterns == sparse_encoder.PAD_PATTERN).sum()
    padded = torch.nn.functional.pad(full, (1, 1, 1, 1), value=sparse_encoder.PAD_PATTERN)  # h1 rows -1 .. 32
    for b in range(16):
        rows, cols = slice(2 * top[b], 2 * top[b] + side), slice(2 * left[b], 2 * left[b] + side)
        assert np.array_equal(patterns[b], padded[b, rows, cols].numpy())


@pytest.mark.parametrize("model_class", [BetaVAE_B, BetaVAE_H, BetaVAE_DLIB])
def test_logvar_and_uint8_input_match_the_dense_encoder(model_class):
    model = trained_like(model_class)
    x = sprites(48, seed=5)
    with torch.no_grad():
        mu, logvar = model.encode(x)
    sparse = SparseEncoder(model)
    sparse_mu, sparse_logvar = sparse.encode(x.to(torch.uint8))
    torch.testing.assert_close(sparse_mu, mu, rtol=0, atol=2e-5)
    torch.testing.assert_close(sparse_logvar, logvar, rtol=0, atol=2e-5)
    assert torch.equal(sparse(x), sparse_mu)  # float and uint8 input: the same codes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_patterns_table_rows_do_not_depend_on_the_patterns_computed_with_it(dtype):
    """Batches encoded in parallel threads add the patterns they meet first, so which patterns are computed
    together varies from run to run; each pattern's rows must not, or the codes would differ between runs."""
    sparse = SparseEncoder(trained_like(BetaVAE_B))
    patterns = torch.randint(0, 1 << 16, (600,), generator=torch.Generator().manual_seed(0))
    together = sparse._tap_products(patterns, 1.0, dtype)  # (16·600, C2)
    for start, stop in [(0, 1), (0, 7), (5, 105), (300, 600)]:
        alone = sparse._tap_products(patterns[start:stop], 1.0, dtype)
        assert torch.equal(alone, together[16 * start:16 * stop]), (start, stop)
    reversed_rows = sparse._tap_products(patterns.flip(0), 1.0, dtype).view(600, 16, -1).flip(0)
    assert torch.equal(reversed_rows.reshape(together.shape), together)


def test_codes_do_not_depend_on_the_images_encoded_before():
    """The pattern table grows with every batch; an image's code must be the same whichever batches, in
    whichever order or thread, filled the table before it."""
    model = trained_like(BetaVAE_B)
    x = sprites(64, seed=11)
    fresh = SparseEncoder(model)(x)  # every pattern of x computed in one go
    seasoned = SparseEncoder(model)
    seasoned(sprites(16, seed=12))
    for image in x.split(1):  # x's patterns added a few at a time, after others
        seasoned(image)
    assert torch.equal(seasoned(x), fresh)


def test_tap_products_are_conv2_of_conv1_on_the_pattern():
    model = trained_like(BetaVAE_B)
    sparse = SparseEncoder(model)
    patterns = torch.tensor([0, 1, 0b1010_0101_1111_0000, (1 << 16) - 1])
    bits = ((patterns[:, None] >> torch.arange(16)) & 1).float().view(-1, 1, 4, 4)
    with torch.no_grad():
        conv1 = model.encoder[0]
        h1 = torch.relu(torch.nn.functional.conv2d(bits, conv1.weight, conv1.bias)).flatten(1).double()  # (4, C1)
        w2 = model.encoder[2].weight.double()  # (C2, C1, 4, 4)
        expected = torch.einsum("kc,ocij->kijo", h1, w2).reshape(-1, w2.shape[0])
        expected[::16] += model.encoder[2].bias.double()
    torch.testing.assert_close(sparse._tap_products(patterns, 1.0, torch.float32).double(), expected,
                               rtol=0, atol=1e-5)


def test_tables_follow_weights_changed_in_place():
    model = trained_like(BetaVAE_B)
    sparse = SparseEncoder(model)
    x = sprites(32, seed=6)
    sparse(x)
    with torch.no_grad():
        for p in model.encoder[:6].parameters():
            p.mul_(1.5)  # as an optimiser step would: in place
        dense = model.encode(x)[0]
    torch.testing.assert_close(sparse(x), dense, rtol=0, atol=2e-5)


def test_images_that_are_not_binary_run_densely_with_the_same_codes(monkeypatch):
    def sparse_path(*args):
        raise AssertionError("the pattern table is only for binary images")

    monkeypatch.setattr(sparse_encoder, "_conv3_inputs", sparse_path)
    model = trained_like(BetaVAE_B)
    x = sprites(16, seed=7) * torch.rand(16, 1, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        dense = model.encode(x)[0]
    torch.testing.assert_close(SparseEncoder(model)(x), dense, rtol=0, atol=2e-5)  # channels-last: other order
    grey = (sprites(16, seed=9) * 200).to(torch.uint8)  # uint8 but 0/200: scale 1/255 as an image folder
    with torch.no_grad():
        dense = model.encode(grey.float() / 255)[0]
    torch.testing.assert_close(SparseEncoder(model)(grey, 1 / 255), dense, rtol=0, atol=2e-5)


def test_supports_only_encoders_whose_encode_splits_the_encoder_output():
    class Tanh(BetaVAE_B):
        def encode(self, x):
            mu, logvar = super().encode(x)
            return torch.tanh(mu), logvar

    class NoPosterior(BetaVAE_B):
        def encode(self, x):
            return self.encoder(x)[:, :self.z_dim], None

    assert not supports(Tanh())
    assert supports(NoPosterior())
    model = NoPosterior()
    mu, logvar = SparseEncoder(model).encode(sprites(8, seed=10))
    assert logvar is None and mu.shape == (8, 10)
    assert not supports(torch.nn.Linear(2, 2))
