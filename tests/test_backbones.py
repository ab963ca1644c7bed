"""Backbones: feature-map shapes, offline ImageNet weights (real weights, real image), and the
failure modes of the pretrained options."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import color, data

from boneage import backbones, pretrained
from boneage.backbones import (
    GrayToRGBNormalize,
    InputSpec,
    create_backbone,
    imagenet_classifier,
    input_spec,
    to_model_input,
)
from boneage.pretrained import PretrainedWeightsError, hub_reachable

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(autouse=True)
def _two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(min(prev, 2))
    yield
    torch.set_num_threads(prev)


def _chelsea(size: tuple[int, int]) -> torch.Tensor:
    """skimage's chelsea (a cat), RGB in [0, 1], resized to ``size``: [1, 3, H, W]."""
    x = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def _normalise(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- offline weights


@pytest.mark.parametrize(
    "name",
    ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "tf_efficientnet_lite0"],
)
def test_offline_imagenet_classifies_chelsea_as_a_cat(name):
    spec = input_spec(name, "offline-imagenet")
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    model = imagenet_classifier(name, "offline-imagenet").eval()
    with torch.no_grad():
        probs = model(_normalise(_chelsea(spec.input_size), spec)).softmax(-1)[0]
    top = probs.topk(5)
    print(
        f"{name} @ {spec.input_size[0]} px top-5:",
        [(i, round(p, 3)) for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)],
    )
    assert top.indices[0].item() in CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum().item() > 0.7


def test_offline_native_resolutions():
    sizes = {
        n: input_spec(n, "offline-imagenet").input_size for n in pretrained.OFFLINE_IMAGENET_MODELS
    }
    assert sizes["efficientnet_lite0"] == (224, 224)
    assert sizes["efficientnet_lite1"] == (240, 240)
    assert sizes["tf_efficientnet_lite2"] == (260, 260)


def test_grayscale_radiograph_path_keeps_pretrained_behaviour():
    """A grey cat through to_model_input (channel replicated, then normalised) is still a cat."""
    spec = input_spec("efficientnet_lite0", "offline-imagenet")
    gray = (color.rgb2gray(data.chelsea()) * 255).round().astype(np.uint8)
    g = torch.from_numpy(gray)[None, None].float()
    g = F.interpolate(g, size=spec.input_size, mode="bilinear", antialias=True)
    g = g.round().clamp(0, 255).to(torch.uint8)  # [1, 1, 224, 224] uint8, like a stored image
    model = imagenet_classifier("efficientnet_lite0").eval()
    with torch.no_grad():
        top1 = model(to_model_input(g, spec)).argmax(-1).item()
    assert top1 in CAT_CLASSES


def test_offline_backbone_features_match_the_classifier_trunk():
    backbone, c = create_backbone("efficientnet_lite0", "offline-imagenet")
    classifier = imagenet_classifier("efficientnet_lite0")
    backbone.eval()
    classifier.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(backbone(x), classifier.forward_features(x), atol=1e-5)
    assert c == 1280
    assert backbone.input_spec == input_spec("efficientnet_lite0", "offline-imagenet")


def test_offline_mapping_fails_loudly_on_a_different_architecture():
    import timm

    wrong = timm.create_model("efficientnet_lite1", num_classes=1000)
    with pytest.raises(PretrainedWeightsError, match="in-order mapping is not valid"):
        pretrained._map_offline_state("efficientnet_lite0", wrong)


@pytest.mark.parametrize("name", ["resnet18", "tv:resnet18", "convnext_atto"])
def test_offline_imagenet_rejects_other_backbones(name):
    with pytest.raises(PretrainedWeightsError, match="efficientnet_lite0") as exc:
        create_backbone(name, "offline-imagenet")
    assert name in str(exc.value)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("efficientnet_lite0", 1280),
        ("resnet18", 512),
        ("tv:resnet18", 512),
        ("mobilenetv3_small_100", 576),
    ],
)
def test_feature_map_shapes(name, channels):
    backbone, c = create_backbone(name, "none")
    assert c == channels == backbone.out_channels
    assert backbone.training  # the channel probe must not leave the model in eval mode
    feats = backbone(torch.randn(2, 3, 128, 128))
    assert feats.shape == (2, channels, 4, 4)  # stride 32, no pooling
    feats.mean().backward()
    assert any(p.grad is not None for p in backbone.parameters())


def test_non_cnn_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet1'.*Did you mean"):
        create_backbone("resnet1")
    with pytest.raises(ValueError, match="unknown torchvision backbone"):
        create_backbone("tv:not_a_model")
    with pytest.raises(ValueError, match="not a CNN"):
        create_backbone("vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="pretrained must be one of"):
        create_backbone("resnet18", "imagenet")


# --------------------------------------------------------------------------- hub


def test_hub_without_network_fails_fast_with_a_helpful_message():
    import timm

    if hub_reachable("hf"):
        pytest.skip(
            "the Hugging Face hub is reachable from here, so pretrained='hub' would download "
            "instead of failing; the offline error path can only be checked without network"
        )
    if pretrained._timm_cached_file(timm.models.get_pretrained_cfg("efficientnet_lite0")):
        pytest.skip("efficientnet_lite0 hub weights are cached locally; 'hub' works offline")
    t0 = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as exc:
        create_backbone("efficientnet_lite0", "hub")
    elapsed = time.monotonic() - t0
    msg = str(exc.value)
    print(f"hub failure after {elapsed:.2f} s: {msg}")
    assert elapsed < 15.0
    assert "unreachable" in msg and "'efficientnet_lite0'" in msg
    assert "offline-imagenet" in msg and "none" in msg


def test_hub_for_a_model_without_published_weights_points_to_offline():
    # timm has no ImageNet weights of its own for efficientnet_lite1; no network needed.
    with pytest.raises(PretrainedWeightsError, match="offline-imagenet"):
        create_backbone("efficientnet_lite1", "hub")


# --------------------------------------------------------------------------- grayscale input


def test_to_model_input_replicates_and_normalises():
    spec = InputSpec((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (8, 8))
    x = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)  # [B=1, H=2, W=2]
    out = to_model_input(x, spec)
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    assert out[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert out[0, :, 0, 1].tolist() == [1.0, 1.0, 1.0]
    imagenet = to_model_input(x[:, None], mean=backbones.IMAGENET_MEAN, std=backbones.IMAGENET_STD)
    expected = (51 / 255 - 0.485) / 0.229
    assert imagenet[0, 0, 1, 0].item() == pytest.approx(expected, abs=1e-6)
    module = GrayToRGBNormalize.from_spec(spec)
    assert torch.equal(module(x), out)
    assert not dict(module.state_dict())  # constants are not checkpoint state
    floats = to_model_input(x.float() / 255.0, spec)
    assert torch.allclose(floats, out)
    with pytest.raises(ValueError):
        to_model_input(torch.zeros(1, 3, 2, 2), spec)


def test_input_stats_depend_on_the_weights():
    assert backbones.input_stats("efficientnet_lite0", "offline-imagenet") == (
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )
    # timm's own efficientnet_lite0 hub weights were trained with ImageNet mean/std
    assert backbones.input_stats("efficientnet_lite0", "hub")[0] == backbones.IMAGENET_MEAN
    assert backbones.input_stats("efficientnet_lite0")[0] == (0.5, 0.5, 0.5)
    assert backbones.input_stats("resnet18")[0] == backbones.IMAGENET_MEAN
    assert backbones.input_stats("inception_v3")[0] == (0.5, 0.5, 0.5)
