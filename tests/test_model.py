"""Model shapes and the reference's state_dict key names."""

import pytest
import torch

from model import MODELS, BetaVAE_B, BetaVAE_H, build_model

H_KEYS = ["encoder.0", "encoder.2", "encoder.4", "encoder.6", "encoder.8", "encoder.11",
          "decoder.0", "decoder.3", "decoder.5", "decoder.7", "decoder.9", "decoder.11"]
B_KEYS = ["encoder.0", "encoder.2", "encoder.4", "encoder.6", "encoder.9", "encoder.11", "encoder.13",
          "decoder.0", "decoder.2", "decoder.4", "decoder.7", "decoder.9", "decoder.11", "decoder.13"]


@pytest.mark.parametrize("cls,layers", [(BetaVAE_H, H_KEYS), (BetaVAE_B, B_KEYS)])
def test_state_dict_keys_match_the_reference(cls, layers):
    expected = {f"{layer}.{p}" for layer in layers for p in ("weight", "bias")}
    assert set(cls(z_dim=10, nc=1).state_dict()) == expected


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("nc", [1, 3])
def test_shapes(name, nc):
    model = build_model(name, z_dim=7, nc=nc)
    x = torch.rand(5, nc, 64, 64)
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape
    assert mu.shape == logvar.shape == (5, 7)
    assert model.decode(mu).shape == (5, nc, 64, 64)


def test_layer_shapes_of_h():
    model = BetaVAE_H(z_dim=10, nc=3)
    h = torch.rand(2, 3, 64, 64)
    shapes = []
    for layer in model.encoder:
        h = layer(h)
        shapes.append(tuple(h.shape))
    assert shapes[8] == (2, 256, 1, 1) and shapes[-1] == (2, 20)


def test_reparametrisation_uses_mean_and_log_variance():
    model = BetaVAE_B(z_dim=3, nc=1)
    torch.manual_seed(0)
    mu = torch.zeros(20000, 3)
    logvar = torch.full((20000, 3), 2 * torch.log(torch.tensor(3.0)).item())  # sigma = 3
    from model import reparametrize

    z = reparametrize(mu + 1.0, logvar)
    assert z.mean().item() == pytest.approx(1.0, abs=0.05)
    assert z.std().item() == pytest.approx(3.0, rel=0.03)
    assert model.z_dim == 3
