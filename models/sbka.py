"""SBKA student and teacher (METHOD.md section 2) on any timm classifier, through timm's generic interface
(``forward_features``, ``forward_head(pre_logits=True)``, ``get_classifier``): nothing here names a family's
layers, so ConvNeXt, ConvNeXt-V2, ViT, ... all work alike."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import get_pretrained_cfg

from utils.errors import UserError

from models.defaults import CLASSIFIER_INIT_STD, IMAGENET_CLASSES, OFFICIAL_FILE


def check_model_name(model_name: str, flag: str = "--model") -> None:
    """Refuse a name timm does not know, or whose pretrained weights do not predict the 1000 ImageNet classes
    (read from timm's pretrained config: nothing is downloaded)."""
    if not timm.is_model(model_name):
        raise UserError(f"{flag} {model_name!r} is not a timm model (timm.list_models() lists them)")
    cfg = get_pretrained_cfg(model_name)
    classes = None if cfg is None else cfg.num_classes
    if classes is not None and classes != IMAGENET_CLASSES:
        arch = model_name.split(".")[0]
        in1k = [name for name in timm.list_pretrained(f"{arch}.*")
                if getattr(get_pretrained_cfg(name), "num_classes", None) == IMAGENET_CLASSES]
        hint = f" (e.g. {', '.join(in1k[:3])})" if in1k else ""
        raise UserError(f"{flag} {model_name} predicts {classes} classes, not the {IMAGENET_CLASSES} ImageNet "
                        f"classes that the cid_mask and the distillation targets are over: choose an ImageNet-1k "
                        f"classifier{hint}")


def _create(model_name: str, img_size: int, pretrained: bool) -> nn.Module:
    cfg = get_pretrained_cfg(model_name)
    # models with a fixed input size (ViT, ...) are built for the run's size; timm adapts their weights
    size = {"img_size": img_size} if cfg is not None and cfg.fixed_input_size else {}
    try:
        return timm.create_model(model_name, pretrained=pretrained, num_classes=IMAGENET_CLASSES, drop_path_rate=0.0,
                                 **size)
    except RuntimeError as exc:
        if not timm.is_model(model_name):
            raise UserError(f"--model {model_name!r} is not a timm model ({exc})") from None
        raise


def _backbone(model_name: str, img_size: int = 224) -> nn.Module:
    """The timm classifier ``model_name`` with a 1000-way head and random weights."""
    return _create(model_name, img_size, pretrained=False)


def _timm_pretrained_backbone(model_name: str, img_size: int) -> nn.Module:
    """``--pretrained timm``: timm's own weights for ``model_name`` (from its cache, else the Hugging Face Hub)."""
    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise UserError(f"--pretrained timm: timm has no pretrained weights for {model_name}; pass a file or none")
    try:
        return _create(model_name, img_size, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - offline, blocked, missing file: one sentence with what to do
        source = f"the Hugging Face Hub repository {cfg.hf_hub_id.rstrip('/')}" if cfg.hf_hub_id else cfg.url
        alternative = f", or download {cfg.url} and pass it as --pretrained FILE" if cfg.url else ""
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"--pretrained timm: timm could not load the pretrained weights of {model_name} "
                        f"({type(exc).__name__}: {reason}); run once with network access to cache them from "
                        f"{source} (set HF_HOME to choose where){alternative}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: a safetensors file, or a weights-only torch file holding the state dict
    itself or under ``model`` (the official ConvNeXt release) or ``state_dict``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad file
        raise UserError(f"pretrained checkpoint {path} cannot be read safely ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    state = raw
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"pretrained checkpoint {path} holds no state dict (expected tensors, or a dict with key "
                        "'model' or 'state_dict' holding them)")
    return state


def load_pretrained_file(model: nn.Module, path: str | Path) -> None:
    """Load a pretrained file strictly into a timm model: a timm-format state dict, or a family's foreign
    naming that timm's own ``checkpoint_filter_fn`` for that family translates (the official ConvNeXt /
    ConvNeXt-V2 checkpoints). Every key must be accounted for, with its shape."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"pretrained checkpoint {path} does not exist: download {OFFICIAL_FILE} into pretrained_model/ "
            "(README.md, section 'Pretrained weights'), or pass --pretrained timm for timm's weights of the model, "
            "or --pretrained none for a smoke run from random weights")
    state = _read_state_dict(path)
    translate = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    try:
        mapped = translate(state, model) if translate is not None else state
    except (KeyError, RuntimeError, ValueError, AttributeError) as exc:
        raise UserError(f"pretrained checkpoint {path} does not fit {type(model).__name__} "
                        f"({type(exc).__name__}: {exc}); does --model match the checkpoint?") from None
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


def imagenet_head(backbone: nn.Module) -> nn.Module:
    """The backbone's 1000-way classifier (timm's ``get_classifier``), applied to the pre-logits."""
    head = backbone.get_classifier()
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise UserError(f"{type(backbone).__name__} has no single trainable classifier (get_classifier() gave "
                        f"{type(head).__name__}): SBKA needs one 1000-way head")
    return head


def feature_width(backbone: nn.Module) -> int:
    """Width of the pre-logits feature (the retrieval embedding): the classifier's input."""
    head = imagenet_head(backbone)
    if isinstance(head, nn.Linear):
        return head.in_features
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def _pre_logits(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The feature the classifier reads (timm's pre-logits: pooled and normalised as the family does)."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


class SBKAStudent(nn.Module):
    """Backbone + pretrained 1000-way head (for distillation) + new seen-class classifier."""

    def __init__(self, backbone: nn.Module, n_seen: int, classifier_std: float = CLASSIFIER_INIT_STD):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_width(backbone)
        self.classifier = nn.Linear(self.feature_dim, n_seen)
        nn.init.trunc_normal_(self.classifier.weight, std=classifier_std)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (seen-class logits, 1000-way logits, feature)."""
        feature = _pre_logits(self.backbone, x)
        return self.classifier(feature), imagenet_head(self.backbone)(feature), feature

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding: the L2-normalised feature."""
        return F.normalize(_pre_logits(self.backbone, x).float(), dim=1)


class SBKATeacher(nn.Module):
    """The pretrained network; only its 1000-way head (timm's ``get_classifier()``) is trainable."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for p in self.head_parameters():
            p.requires_grad_(True)

    def head(self) -> nn.Module:
        return imagenet_head(self.backbone)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head().parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The frozen part never needs a graph; only the head may carry gradients.
        with torch.no_grad():
            feature = _pre_logits(self.backbone, x)
        return self.head()(feature)


def _pretrained_backbone(model_name: str, pretrained: Optional[str], img_size: int) -> nn.Module:
    """``pretrained``: None or ``none`` (random weights), ``timm`` (timm's own weights), or a file."""
    if pretrained is None or str(pretrained).lower() == "none":
        return _backbone(model_name, img_size)
    if str(pretrained).lower() == "timm":
        return _timm_pretrained_backbone(model_name, img_size)
    backbone = _backbone(model_name, img_size)
    load_pretrained_file(backbone, pretrained)
    return backbone


def weights_source(model_name: str, pretrained: Optional[str]) -> str:
    """Where a model's weights come from, in words (for the run's first lines)."""
    if pretrained is None or str(pretrained).lower() == "none":
        return "random weights"
    if str(pretrained).lower() == "timm":
        cfg = get_pretrained_cfg(model_name)
        return f"timm's {model_name.split('.')[0]}.{cfg.tag}" if cfg is not None and cfg.tag else "timm's weights"
    return str(pretrained)


def warn_random_weights() -> None:
    warnings.warn("--pretrained none: student and teacher start from RANDOM weights; this is a smoke run, "
                  "its numbers say nothing about SBKA", stacklevel=2)


def build_student(model_name: str, n_seen: int, pretrained: Optional[str] = None,
                  classifier_std: float = CLASSIFIER_INIT_STD, img_size: int = 224) -> SBKAStudent:
    return SBKAStudent(_pretrained_backbone(model_name, pretrained, img_size), n_seen, classifier_std)


def build_teacher(model_name: str, pretrained: Optional[str] = None, img_size: int = 224) -> SBKATeacher:
    return SBKATeacher(_pretrained_backbone(model_name, pretrained, img_size))


def load_student_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[SBKAStudent, dict[str, Any]]:
    """Rebuild the student saved by training (``model_best.pth.tar`` / ``checkpoint.pth.tar``).

    Returns the model (eval mode, on ``device``) and the checkpoint's ``config`` dict
    (keys ``setting``, ``model``, ``teacher_model``, ``n_seen``, ``img_size``, ``feature_dim``); the student is
    rebuilt from it, whatever the timm family.
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
    student = build_student(config["model"], int(config["n_seen"]), img_size=int(config.get("img_size", 224)))
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit model {config['model']}: {str(exc).splitlines()[0]}") from None
    return student.to(device).eval(), config
