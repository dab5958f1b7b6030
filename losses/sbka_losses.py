"""Semantic soft cross-entropy (both distillation directions) and the Gaussian-prior KL term."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

SEMANTIC_BIAS = 0.3


def semantic_soft_cross_entropy(input_logits: torch.Tensor, target_logits: torch.Tensor,
                                is_photo: torch.Tensor, mask: Optional[torch.Tensor] = None,
                                bias: float = SEMANTIC_BIAS) -> torch.Tensor:
    """Soft cross-entropy against ``softmax(target_logits + bias * mask)``, photos only.

    ``L = sum over photos of -sum_c p(c) log_softmax(input)_c / number of photos``. Sketches carry no
    ImageNet semantics, so they do not contribute. Used as ``L_kd(s<-t)`` (input = student, target =
    teacher) and reversed as ``L_kd(t<-s)``. Whether gradients reach the target is the caller's choice
    (pass ``target_logits.detach()`` to stop them). A batch without photos gives 0.
    """
    target = target_logits.float()
    if mask is not None:
        target = target + bias * mask.to(target.dtype)
    per_sample = -(F.softmax(target, dim=1) * F.log_softmax(input_logits.float(), dim=1)).sum(dim=1)
    weights = is_photo.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0)


def gaussian_prior_kl(features: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``KL(softmax(z) || softmax(f))`` with ``z ~ N(0, 1)`` drawn fresh, batch-mean reduction."""
    f = features.float()
    z = torch.randn(f.shape, generator=generator, device=f.device, dtype=f.dtype)
    return F.kl_div(F.log_softmax(f, dim=1), F.softmax(z, dim=1), reduction="batchmean")
