"""Networks: a backbone's final feature maps → global pooling → (+ sex) → K-way age
distribution head, and the class activation map (CAM) of that head.

Grayscale inputs (1 channel) are replicated to the 3 channels the (ImageNet) backbone
expects, which keeps pretrained first-layer filters exact; 3-channel inputs (the
aggregator's stacked regions H, R1, R2) go in as they are; any other count of stacked
grayscale regions (2, 4, 5) gets a first convolution with that many input channels whose
filters are the pretrained filters' mean over RGB scaled by 3/C, so C identical channels
give exactly the response of the pretrained network to that grayscale image.

With `fusion: per_region` each of the C regions instead gets its own backbone (grayscale,
pretrained filters exact), and their pooled features are concatenated before the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boneage.backbones import create_backbone, input_stats
from boneage.config import ModelConfig
from boneage.ldl import expectation
from boneage.precision import fold_batchnorm


class AgeNet(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int = 1, load_pretrained: bool = True):
        """`load_pretrained=False` builds the architecture only (weights come from a
        checkpoint); the input normalisation still follows `cfg.pretrained`."""
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.cfg = cfg
        self.in_channels = in_channels
        weights = cfg.pretrained if load_pretrained else "none"
        self.backbone, self.n_features = create_backbone(cfg.backbone, weights, cfg.output_stride)
        mean, std = input_stats(cfg.backbone, cfg.pretrained)
        self.branches = None
        if cfg.fusion == "per_region" and in_channels > 1:
            # one backbone per region: the first is self.backbone, the others are copies
            # built the same way (same pretrained start), each fed one region as grayscale
            extra = [create_backbone(cfg.backbone, weights, cfg.output_stride)[0]
                     for _ in range(in_channels - 1)]  # fmt: skip
            self.branches = nn.ModuleList(extra)
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
            self.sex_embed = nn.Linear(1, cfg.sex_dim) if cfg.sex_dim else None
            self.dropout = nn.Dropout(cfg.dropout)
            self.head = nn.Linear(self.n_features * in_channels + cfg.sex_dim, cfg.k)
            return
        if in_channels not in (1, 3):
            _adapt_first_conv(self.backbone, in_channels)
            mean, std = [sum(mean) / 3] * in_channels, [sum(std) / 3] * in_channels
        c = 3 if in_channels == 1 else in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, c, 1, 1), persistent=False)
        self.sex_embed = nn.Linear(1, cfg.sex_dim) if cfg.sex_dim else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.n_features + cfg.sex_dim, cfg.k)

    def fold_batchnorm(self) -> int:
        """Fold the backbones' batch norms into their convolutions (inference only; see
        precision.fold_batchnorm). Returns the number of pairs folded."""
        n = 0
        for net in [self.backbone, *(self.branches or [])]:
            first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
            gen = torch.Generator().manual_seed(0)
            example = torch.rand(1, first.in_channels, 64, 64, generator=gen) * 4 - 2
            n += fold_batchnorm(net, example)
        return n

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_channels, H, W] floats in [0, 1] → [B, C, h, w]."""
        if self.branches is not None:
            raise ValueError("fusion per_region has one feature map per region; no single CAM")
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.backbone(x)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        if self.cfg.pool == "max":
            return feats.amax(dim=(2, 3))
        return feats.mean(dim=(2, 3))

    def forward(
        self, x: torch.Tensor, sex: torch.Tensor | None = None, return_features: bool = False
    ):
        if self.branches is not None:
            if return_features:
                raise ValueError("fusion per_region: no single feature map to return")
            feats = None
            z = torch.cat([self.pool(self._branch(i, x[:, i : i + 1]))
                           for i in range(self.in_channels)], dim=1)  # fmt: skip
        else:
            feats = self.feature_maps(x)
            z = self.pool(feats)
        if self.sex_embed is not None:
            if sex is None:
                raise ValueError("this model takes sex as input (sex_dim > 0)")
            z = torch.cat([z, self.sex_embed(sex.view(-1, 1).to(z.dtype))], dim=1)
        logits = self.head(self.dropout(z))
        return (logits, feats) if return_features else logits

    def _branch(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Region i ([B, 1, H, W]) through its own backbone."""
        x = (x.expand(-1, 3, -1, -1) - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return (self.backbone if i == 0 else self.branches[i - 1])(x)

    @torch.no_grad()
    def cam(
        self,
        feats: torch.Tensor,
        logits: torch.Tensor,
        window: int | None,
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class activation maps, ReLU'd, upsampled to `size`, normalised to [0, 1].

        window: the classes within ±window months of the predicted age (expectation),
        equally weighted; None: every class weighted by its predicted probability, i.e.
        the CAM of the expected class weights under the predicted age distribution.

        The class weights are centred (minus their mean over all K classes) before use:
        softmax is unchanged when one vector is added to every class's weights, so only
        the centred weights say what speaks for these ages rather than for any age.

        Returns (cams [B, H, W] in [0, 1], raw peak value per image [B]).
        """
        p = torch.softmax(logits.float(), dim=1)
        age = expectation(p)  # [B]
        k = torch.arange(self.cfg.k, device=logits.device, dtype=torch.float32)
        if window is None:
            sel = p
        else:
            sel = ((k[None, :] - age[:, None]).abs() <= window).float()  # [B, K]
            sel = sel / sel.sum(dim=1, keepdim=True).clamp_min(1)
        weights = self.head.weight[:, : self.n_features].float()
        weights = weights - weights.mean(dim=0, keepdim=True)
        w = sel @ weights  # [B, C]
        cam = torch.einsum("bc,bchw->bhw", w, feats.float()).relu()
        peak = cam.amax(dim=(1, 2))
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        return cam.clamp(0, 1), peak


def _adapt_first_conv(backbone: nn.Module, channels: int) -> None:
    """Swap the first 3-channel convolution for one taking `channels` inputs."""
    for name, mod in backbone.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
            new = nn.Conv2d(
                channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode,
            )  # fmt: skip
            with torch.no_grad():
                w = mod.weight.mean(dim=1, keepdim=True) * (3.0 / channels)
                new.weight.copy_(w.repeat(1, channels, 1, 1))
                if mod.bias is not None:
                    new.bias.copy_(mod.bias)
            if type(mod) is not nn.Conv2d:  # e.g. timm's Conv2dSame: keep its padding logic
                mod.weight = nn.Parameter(new.weight.detach().clone())
                mod.in_channels = channels
                return
            parent_name, _, attr = name.rpartition(".")
            parent = backbone.get_submodule(parent_name) if parent_name else backbone
            setattr(parent, attr, new)
            return
    raise ValueError("backbone has no 3-channel input convolution to adapt")
