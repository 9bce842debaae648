"""SparseEncoder gives the dense encoder's posterior means: sprites anywhere, at the borders, blank images."""

import pytest
import torch

import sparse_encoder
from model import BetaVAE_B, BetaVAE_H
from sparse_encoder import MAX_SPARSE_WIDTH, SparseEncoder, supports


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


@pytest.mark.parametrize("model_class", [BetaVAE_B, BetaVAE_H])
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


def test_supports_both_models_and_rejects_others():
    assert supports(BetaVAE_B()) and supports(BetaVAE_H())
    with pytest.raises(ValueError, match="Conv2d"):
        SparseEncoder(torch.nn.Linear(2, 2))


def test_an_empty_batch_gives_no_codes():
    assert SparseEncoder(trained_like(BetaVAE_B))(torch.zeros(0, 1, 64, 64, dtype=torch.uint8)).shape == (0, 10)


@pytest.mark.parametrize("channels", [1, 3])
def test_occupied_rows_and_columns_match_a_plain_reduction(channels):
    """The word-wise scan of uint8 images finds the same non-zero rows and columns as reducing pixels,
    for any byte value (128 and up set an int64 word's sign bit) and for colour images."""
    generator = torch.Generator().manual_seed(channels)
    images = torch.zeros(64, channels, 64, 64, dtype=torch.uint8)
    spots = torch.randint(0, 64, (64, 2, 5), generator=generator)
    for b in range(64):
        images[b, b % channels, spots[b, 0], spots[b, 1]] = torch.randint(1, 256, (5,), dtype=torch.uint8,
                                                                          generator=generator)
    images[0] = 0  # a blank image
    rows, columns = sparse_encoder._occupied(images)
    magnitude = images.amax(dim=1)
    assert torch.equal(rows, magnitude.amax(2) != 0)
    assert torch.equal(columns, magnitude.amax(1) != 0)
    assert not rows[0].any() and rows[1:].any(1).all()
