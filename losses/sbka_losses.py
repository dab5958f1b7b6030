"""The SBKA objective (METHOD.md sections 3-4): every term, its weight, and the total, in one place.

Each term is a local sum divided by a denominator. By default the denominator is the local count (the batch
for the cross-entropy and the prior, the photos for the distillation terms), which gives the released run's
means; a caller that splits a batch unevenly over processes passes the global counts instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from losses.defaults import PRIOR_WEIGHT, SEMANTIC_BIAS

# What each logged term is (the training-curve figure's legend).
LOSS_TERM_LABELS = {"loss_ce": "ce: seen-class cross-entropy", "loss_kd": "kd: student \u2190 teacher",
                    "loss_prior": "prior: Gaussian KL",
                    "loss_reverse": "reverse kd: teacher \u2190 student (after warm-up)"}

Count = Union[int, float, torch.Tensor]


def seen_class_cross_entropy(seen_logits: torch.Tensor, labels: torch.Tensor,
                             denominator: Optional[Count] = None) -> torch.Tensor:
    """``L_ce``: cross-entropy of the seen-class logits, summed and divided by ``denominator`` (default: the batch)."""
    total = F.cross_entropy(seen_logits.float(), labels, reduction="sum")
    return total / (len(labels) if denominator is None else denominator)


def semantic_soft_cross_entropy(input_logits: torch.Tensor, target_logits: torch.Tensor,
                                is_photo: torch.Tensor, mask: Optional[torch.Tensor] = None,
                                bias: float = SEMANTIC_BIAS, denominator: Optional[Count] = None) -> torch.Tensor:
    """Soft cross-entropy against ``softmax(target_logits + bias * mask)``, photos only.

    ``L = sum over photos of -sum_c p(c) log_softmax(input)_c / denominator`` (default: the number of photos,
    at least 1). Sketches carry no ImageNet semantics, so they do not contribute. Used as ``L_kd(s<-t)``
    (input = student, target = teacher) and reversed as ``L_kd(t<-s)``. Whether gradients reach the target
    is the caller's choice (pass ``target_logits.detach()`` to stop them). A batch without photos gives 0.
    """
    target = target_logits.float()
    if mask is not None:
        target = target + bias * mask.to(target.dtype)
    per_sample = -(F.softmax(target, dim=1) * F.log_softmax(input_logits.float(), dim=1)).sum(dim=1)
    weights = is_photo.to(per_sample.dtype)
    return (per_sample * weights).sum() / (weights.sum().clamp_min(1.0) if denominator is None else denominator)


def gaussian_prior_kl(features: torch.Tensor, generator: Optional[torch.Generator] = None,
                      denominator: Optional[Count] = None) -> torch.Tensor:
    """``KL(softmax(z) || softmax(f))`` with ``z ~ N(0, 1)`` drawn fresh, summed over the batch and divided by
    ``denominator`` (default: the batch, i.e. PyTorch's ``batchmean``)."""
    f = features.float()
    z = torch.randn(f.shape, generator=generator, device=f.device, dtype=f.dtype)
    total = F.kl_div(F.log_softmax(f, dim=1), F.softmax(z, dim=1), reduction="sum")
    return total / (f.shape[0] if denominator is None else denominator)


@dataclass(frozen=True)
class SBKAObjective:
    """The SBKA loss of one step. Defaults are the released run.

    - ``prior_weight``: weight of ``L_prior``; 0 leaves the prior out of the total (it is still measured,
      without a graph, so the log shows what the run did not train on).
    - ``semantic_bias``: weight of the cid_mask row in both distillation targets; 0 uses the plain logits.
    - ``detach_reverse_target``: a variant; ``L_kd(t<-s)`` then moves only the teacher head, not the student.

    The total's single backward gives METHOD section 4's gradients. Student: ``L_ce + L_kd(s<-t) +
    prior_weight * L_prior`` (``+ L_kd(t<-s)`` in the bidirectional phase unless detached). Teacher head:
    ``L_kd(t<-s)`` only -- the released code zeroes the teacher's gradients from ``L_kd(s<-t)`` before the
    reverse backward, which equals detaching the teacher logits inside ``L_kd(s<-t)``, as done here.
    """

    prior_weight: float = PRIOR_WEIGHT
    semantic_bias: float = SEMANTIC_BIAS
    detach_reverse_target: bool = False

    def term_weights(self) -> dict[str, float]:
        """How the logged terms add up to the logged total (a term weighted 0 is logged but not added)."""
        return {"loss_ce": 1.0, "loss_kd": 1.0, "loss_prior": self.prior_weight, "loss_reverse": 1.0}

    def __call__(self, student: tuple[torch.Tensor, torch.Tensor, torch.Tensor], teacher_logits: torch.Tensor, labels: torch.Tensor,
                 is_photo: torch.Tensor, cid_mask: Optional[torch.Tensor], bidirectional: bool,
                 samples: Optional[Count] = None, photos: Optional[Count] = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its terms (``loss_ce``, ``loss_kd``, ``loss_prior``, and ``loss_reverse`` when
        ``bidirectional``).

        ``student``: the student's forward (seen-class logits, 1000-way logits, feature); ``teacher_logits``:
        the teacher's 1000-way logits (with a graph in the bidirectional phase). ``is_photo``: 1 for photos, 0 for sketches. ``cid_mask``: one row of 1000 per seen class (None: no
        semantic bias, as for QuickDraw). ``samples`` / ``photos``: the denominators of the per-sample and the
        photos-only terms (default: this batch's counts).
        """
        seen_logits, imagenet_logits, feature = student
        mask = cid_mask[labels] if cid_mask is not None and self.semantic_bias != 0 else None
        bias = self.semantic_bias
        terms = {"loss_ce": seen_class_cross_entropy(seen_logits, labels, samples),
                 "loss_kd": semantic_soft_cross_entropy(imagenet_logits, teacher_logits.detach(), is_photo, mask,
                                                        bias, photos)}
        if self.prior_weight != 0:
            terms["loss_prior"] = gaussian_prior_kl(feature, denominator=samples)
            total = terms["loss_ce"] + terms["loss_kd"] + self.prior_weight * terms["loss_prior"]
        else:
            with torch.no_grad():
                terms["loss_prior"] = gaussian_prior_kl(feature, denominator=samples)
            total = terms["loss_ce"] + terms["loss_kd"]
        if bidirectional:
            target = imagenet_logits.detach() if self.detach_reverse_target else imagenet_logits
            terms["loss_reverse"] = semantic_soft_cross_entropy(teacher_logits, target, is_photo, mask, bias, photos)
            total = total + terms["loss_reverse"]
        return total, terms
