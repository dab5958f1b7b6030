"""SBKA student and teacher (METHOD.md section 2) on top of timm's ConvNeXtV2."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.convnext import checkpoint_filter_fn

from utils.errors import UserError

DEFAULT_MODEL = "convnextv2_tiny"
IMAGENET_CLASSES = 1000
CLASSIFIER_INIT_STD = 2e-5   # the released code's init of the new seen-class classifier


def _backbone(model_name: str) -> nn.Module:
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=IMAGENET_CLASSES, drop_path_rate=0.0)
    except RuntimeError as exc:  # unknown model name
        raise UserError(f"--model {model_name!r} is not a timm model ({exc})") from None


def _pre_logits(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled, LayerNorm'ed feature (timm's pre-logits)."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


class SBKAStudent(nn.Module):
    """Backbone + pretrained 1000-way head (for distillation) + new seen-class classifier."""

    def __init__(self, backbone: nn.Module, n_seen: int, classifier_std: float = CLASSIFIER_INIT_STD):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = backbone.num_features
        self.classifier = nn.Linear(self.feature_dim, n_seen)
        nn.init.trunc_normal_(self.classifier.weight, std=classifier_std)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (seen-class logits, 1000-way logits, feature)."""
        feature = _pre_logits(self.backbone, x)
        return self.classifier(feature), self.backbone.head.fc(feature), feature

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding: the L2-normalised feature."""
        return F.normalize(_pre_logits(self.backbone, x).float(), dim=1)


class SBKATeacher(nn.Module):
    """The pretrained network; only its 1000-way head (``backbone.head.fc``) is trainable."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for p in self.head_parameters():
            p.requires_grad_(True)

    def head(self) -> nn.Module:
        return self.backbone.head.fc

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.head.fc.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The frozen part never needs a graph; only the head may carry gradients.
        with torch.no_grad():
            feature = _pre_logits(self.backbone, x)
        return self.backbone.head.fc(feature)


def load_official_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load an official ConvNeXt-V2 checkpoint (``{'model': state_dict}``) strictly into a timm model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"pretrained checkpoint {path} does not exist: download convnextv2_tiny_1k_224_ema.pt into "
            "pretrained_model/ (README.md, section 'Pretrained weights'), or pass --pretrained none for a "
            "smoke run from random weights")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad file
        raise UserError(f"pretrained checkpoint {path} cannot be read safely ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"pretrained checkpoint {path} holds no state dict (expected a dict with key 'model')")
    try:
        mapped = checkpoint_filter_fn(state, model)
    except KeyError as exc:
        raise UserError(f"pretrained checkpoint {path} has unexpected key {exc.args[0]!r} "
                        f"for --model with {type(model).__name__}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    if missing:
        raise UserError(f"pretrained checkpoint {path} lacks key {missing[0]!r}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise UserError(f"pretrained checkpoint {path} has unexpected key {unexpected[0]!r}"
                        + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for k, v in mapped.items():
        if v.shape != expected[k].shape:
            raise UserError(f"pretrained checkpoint {path}: key {k!r} has shape {tuple(v.shape)}, the model "
                            f"expects {tuple(expected[k].shape)} (does --model match the checkpoint?)")
    model.load_state_dict(mapped, strict=True)


def _pretrained_backbone(model_name: str, pretrained: str | None) -> nn.Module:
    backbone = _backbone(model_name)
    if pretrained is None or str(pretrained).lower() == "none":
        return backbone
    load_official_checkpoint(backbone, pretrained)
    return backbone


def warn_random_weights() -> None:
    warnings.warn("--pretrained none: student and teacher start from RANDOM weights; this is a smoke run, "
                  "its numbers say nothing about SBKA", stacklevel=2)


def build_student(model_name: str, n_seen: int, pretrained: str | None = None,
                  classifier_std: float = CLASSIFIER_INIT_STD) -> SBKAStudent:
    return SBKAStudent(_pretrained_backbone(model_name, pretrained), n_seen, classifier_std)


def build_teacher(model_name: str, pretrained: str | None = None) -> SBKATeacher:
    return SBKATeacher(_pretrained_backbone(model_name, pretrained))


def load_student_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[SBKAStudent, dict[str, Any]]:
    """Rebuild the student saved by training (``model_best.pth.tar`` / ``checkpoint.pth.tar``).

    Returns the model (eval mode, on ``device``) and the checkpoint's ``config`` dict
    (keys ``setting``, ``model``, ``n_seen``, ``img_size``).
    """
    from utils.checkpoint import load_checkpoint  # local import: utils must not import models

    return student_from_checkpoint(load_checkpoint(path), path, device)


def student_from_checkpoint(ckpt: dict[str, Any], path: str | Path,
                            device: torch.device | str = "cpu") -> tuple[SBKAStudent, dict[str, Any]]:
    """:func:`load_student_checkpoint` on a checkpoint already read from ``path``."""
    config = ckpt.get("config")
    state = ckpt.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise UserError(f"checkpoint {path} was not written by this project's training (no 'config'/'state_dict')")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    student = build_student(config["model"], int(config["n_seen"]))
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit model {config['model']}: {str(exc).splitlines()[0]}") from None
    return student.to(device).eval(), config
