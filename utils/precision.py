"""The numerics of each phase on CUDA, decided once.

- Extraction, evaluation and the app compute in exact float32: TF32 off for matmuls AND cuDNN convolutions
  (ConvNeXt's stem and downsampling layers are convolutions), so features and rankings do not depend on the
  card.
- Training keeps what the released run had: cuDNN's defaults (TF32 convolutions allowed) with
  ``cudnn.benchmark`` on, as the released training scripts set it.
- ``--amp`` means one thing everywhere: bf16 autocast, on CUDA only.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

AMP_DTYPE = torch.bfloat16


def exact_float32() -> None:
    """TF32 off for float32 matmuls and cuDNN convolutions (extraction, evaluation, the app)."""
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def released_training_numerics() -> None:
    """cuDNN autotuning on, as the released training scripts set it; TF32 left at PyTorch's defaults."""
    torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    """The ``--amp`` context: bf16 autocast on CUDA; on any other device (or without ``--amp``) plain float32."""
    if amp and torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=AMP_DTYPE)
    return nullcontext()


def tf32_flags() -> dict[str, Any]:
    """The switches that decide whether float32 work may round to TF32 (read by tests and the GPU check)."""
    return {"float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}


def tf32_off(flags: dict[str, Any]) -> bool:
    """Whether ``flags`` (from :func:`tf32_flags`) leave both matmuls and convolutions in exact float32."""
    return (flags["float32_matmul_precision"] == "highest" and not flags["cuda_matmul_allow_tf32"]
            and not flags["cudnn_allow_tf32"])
