"""BN statistics per route, batch vs running statistics, feature maps, perceptibility."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.eval.analysis import batch_vs_running, bn_statistics, feature_maps, feature_noise, perceptibility


def test_perceptibility_of_a_known_perturbation():
    r = torch.zeros(2, 3, 4, 4)
    r[0, :, 0, 0] = torch.tensor([0.3, 0.4, 0.0])  # one pixel with ‖r_k‖ = 0.5 among K = 16
    r[1] = 0.1  # every pixel ‖r_k‖² = 3·0.01
    p = perceptibility(r)
    assert p[0] == pytest.approx((0.25 / 16) ** 0.5) and p[1] == pytest.approx(0.03 ** 0.5)
    assert perceptibility(r[1]).shape == (1,)
    with pytest.raises(ValueError, match="r must be"):
        perceptibility(torch.zeros(3, 4))


def test_bn_statistics_per_route():
    torch.manual_seed(0)
    m = rl.models.create_model("smallcnn", 10, in_channels=1, width=8, norm="mbn")
    m.train()
    with rl.nn.route(m, "adv"):
        m(torch.rand(16, 1, 8, 8) * 3)  # a different distribution through the adv route
    stats = bn_statistics(m, channels=4)
    layer = next(iter(stats.values()))
    assert set(layer) == {"channels", "clean", "adv"} and len(layer["adv"]["mean"]) == 4
    assert layer["clean"]["mean"] == [0.0] * 4 and layer["adv"]["mean"] != [0.0] * 4


def test_batch_vs_running_and_feature_maps(trained_model, digits):
    x, _ = digits
    bn_name = next(n for n, mod in trained_model.named_modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = {k: v.clone() for k, v in trained_model.state_dict().items()}
    s = batch_vs_running(trained_model, x[:128], bn_name, channels=5)
    assert len(s["batch_var"]) == 5 and all(v >= 0 for v in s["batch_var"])
    for k, v in trained_model.state_dict().items():
        assert torch.equal(v, before[k])
    x_adv = rl.attacks.create("pgd", eps=0.2, steps=5, seed=0)(trained_model, x[:32])
    maps = feature_maps(trained_model, x[:32], x_adv, bn_name)
    assert maps["clean_in"].shape[0] == 32 and not torch.equal(maps["clean_in"], maps["adv_in"])
    noise = feature_noise(maps)
    assert noise["before"] > 0 and noise["after"] > 0
    with pytest.raises(ValueError, match="module"):
        feature_maps(trained_model, x[:2], x[:2], "nope")
