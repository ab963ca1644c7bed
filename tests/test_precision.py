"""precision.fold_batchnorm: inference nets with their batch norms folded into the
convolutions give the same outputs; anything it cannot fold exactly is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from boneage.config import ModelConfig
from boneage.models import AgeNet
from boneage.precision import fold_batchnorm
from boneage.training import load_model, save_model


def _randomise_bn(net: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18"])
def test_folded_agenet_gives_the_same_ages_and_cams(backbone, tmp_path):
    torch.manual_seed(0)
    net = AgeNet(ModelConfig(backbone=backbone, pretrained="none", k=24, sex_dim=4,
                             output_stride=16), in_channels=1, load_pretrained=False)  # fmt: skip
    _randomise_bn(net)
    net.eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x, sex = torch.rand(2, 1, 64, 64), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        logits, feats = net(x, sex, return_features=True)
    save_model(net, tmp_path / "m", {"kind": "localizer", "stage": "hand", "img_size": 64})
    folded, _ = load_model(tmp_path / "m")
    as_trained, _ = load_model(tmp_path / "m", fold=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in as_trained.modules()) == n_bn
    with torch.no_grad():
        logits2, feats2 = folded(x, sex, return_features=True)
        cam, _ = net.cam(feats, logits, None, (64, 64))
        cam2, _ = folded.cam(feats2, logits2, None, (64, 64))
    assert torch.allclose(logits2, logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(feats2, feats, atol=1e-4, rtol=1e-4)
    assert torch.allclose(cam2, cam, atol=1e-4)


class _Reuse(nn.Module):
    """The convolution's output also feeds the sum past the batch norm: folding the batch
    norm into the convolution would change that second use."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


@pytest.mark.parametrize(
    "make, bn_of",
    [  # not fed by a convolution; a fold that would change the output (undone)
        (lambda: nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.BatchNorm2d(3)), lambda n: n[2]),
        (_Reuse, lambda n: n.bn),
    ],
    ids=["after-relu", "conv-output-reused"],
)
def test_a_batch_norm_that_cannot_be_folded_exactly_stays(make, bn_of):
    net = make()
    _randomise_bn(net)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
        assert fold_batchnorm(net, x) == 0
        assert isinstance(bn_of(net), nn.BatchNorm2d) and torch.allclose(net(x), ref)


def test_folding_needs_eval_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(net, torch.randn(1, 3, 8, 8))
