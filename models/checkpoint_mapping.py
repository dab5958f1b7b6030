"""Key mapping between the official ConvNeXt-V2 naming and timm's.

Official -> timm is timm's own ``checkpoint_filter_fn``; the inverse here lets the tests (and anyone
without the official file) write a checkpoint in the official naming from timm weights.
"""
from __future__ import annotations

import re

import torch


def timm_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm ConvNeXtV2 state dict to the official ``convnextv2_*_ema.pt`` naming."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.([0-9]+)\.downsample\.([0-9]+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.([0-9]+)\.blocks\.([0-9]+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv")
        if "mlp.grn" in k:
            k = k.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
            v = v.reshape(1, 1, 1, -1)
        k = k.replace("mlp.fc", "pwconv")
        k = k.replace("head.fc.", "head.")
        k = k.replace("head.norm.", "norm.")
        out[k] = v.clone()
    return out
