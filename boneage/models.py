"""Networks: a backbone's final feature maps → global pooling → (+ sex) → K-way age
distribution head, and the class activation map (CAM) of that head.

Grayscale inputs (1 channel) are replicated to the 3 channels the (ImageNet) backbone
expects, which keeps pretrained first-layer filters exact; 3-channel inputs (the
aggregator's stacked regions H, R1, R2) go in as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boneage.backbones import create_backbone, input_stats
from boneage.config import ModelConfig
from boneage.ldl import expectation


class AgeNet(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int = 1, load_pretrained: bool = True):
        """`load_pretrained=False` builds the architecture only (weights come from a
        checkpoint); the input normalisation still follows `cfg.pretrained`."""
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(
                f"in_channels must be 1 (grayscale) or 3 (stacked regions), got {in_channels}"
            )
        self.cfg = cfg
        self.in_channels = in_channels
        weights = cfg.pretrained if load_pretrained else "none"
        self.backbone, self.n_features = create_backbone(cfg.backbone, weights, cfg.output_stride)
        mean, std = input_stats(cfg.backbone, cfg.pretrained)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.sex_embed = nn.Linear(1, cfg.sex_dim) if cfg.sex_dim else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.n_features + cfg.sex_dim, cfg.k)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_channels, H, W] floats in [0, 1] → [B, C, h, w]."""
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
        feats = self.feature_maps(x)
        z = self.pool(feats)
        if self.sex_embed is not None:
            if sex is None:
                raise ValueError("this model takes sex as input (sex_dim > 0)")
            z = torch.cat([z, self.sex_embed(sex.view(-1, 1).to(z.dtype))], dim=1)
        logits = self.head(self.dropout(z))
        return (logits, feats) if return_features else logits

    @torch.no_grad()
    def cam(
        self, feats: torch.Tensor, logits: torch.Tensor, window: int, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class activation maps for the classes within ±window months of the predicted
        age (expectation), ReLU'd, upsampled to `size`, normalised to [0, 1].

        The class weights are centred (minus their mean over all K classes) before use:
        softmax is unchanged when one vector is added to every class's weights, so only
        the centred weights say what speaks for these ages rather than for any age.

        Returns (cams [B, H, W] in [0, 1], raw peak value per image [B]).
        """
        p = torch.softmax(logits.float(), dim=1)
        age = expectation(p)  # [B]
        k = torch.arange(self.cfg.k, device=logits.device, dtype=torch.float32)
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
