"""The numerics of each phase on CUDA, decided once.

- Extraction, evaluation and the app compute in exact float32: TF32 off for matmuls AND cuDNN convolutions
  (ConvNeXt's stem and downsampling layers are convolutions), so features and rankings do not depend on the
  card.
- Training keeps what the released run had: cuDNN's defaults (TF32 convolutions allowed) with
  ``cudnn.benchmark`` on, as the released training scripts set it; ``--deterministic`` trades that for
  deterministic kernels.
- ``--amp`` means one thing everywhere: bf16 autocast, on CUDA only.

PyTorch 2.9 and newer have per-operator switches (``torch.backends.cuda.matmul.fp32_precision``,
``torch.backends.cudnn.conv.fp32_precision``, ...) beside the older ``allow_tf32`` flags, and refuse to read an
``allow_tf32`` flag once the two kinds were mixed. Where the installed torch has the new switches they are the
only ones used here, set and read back per operator; elsewhere the older flags.
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

AMP_DTYPE = torch.bfloat16
EXACT, TF32 = "ieee", "tf32"
# (name, the switch, the switches it falls back to when it says "none", the default when all say "none")
_OPERATORS = (
    ("cuda_matmul", ("cuda", "matmul"), (("cudnn",), ()), EXACT),
    ("cudnn_conv", ("cudnn", "conv"), (("cudnn",), ()), TF32),
    ("cudnn_rnn", ("cudnn", "rnn"), (("cudnn",), ()), TF32),
    ("mkldnn_matmul", ("mkldnn", "matmul"), (("mkldnn",), ()), EXACT),
    ("mkldnn_conv", ("mkldnn", "conv"), (("mkldnn",), ()), EXACT),
)


def _switch(path: tuple[str, ...]) -> Any:
    node: Any = torch.backends
    for part in path:
        node = getattr(node, part, None)
        if node is None:
            return None
    return node if hasattr(node, "fp32_precision") else None


def has_precision_api() -> bool:
    """Whether this torch has the per-operator ``fp32_precision`` switches (2.9 and newer)."""
    return _switch(("cuda", "matmul")) is not None and _switch(("cudnn", "conv")) is not None


def _effective(path: tuple[str, ...], parents: tuple[tuple[str, ...], ...], default: str) -> str:
    for candidate in (path, *parents):
        switch = _switch(candidate) if candidate else torch.backends
        value = getattr(switch, "fp32_precision", "none") if switch is not None else "none"
        if value != "none":
            return value
    return default


def _set_all(value: str) -> None:
    for _, path, _, _ in _OPERATORS:
        switch = _switch(path)
        if switch is not None and not (path[0] == "mkldnn" and value == TF32):
            switch.fp32_precision = value


def _set_tf32(on: bool) -> None:
    """TF32 on or off for float32 matmuls and cuDNN convolutions, through whichever API this torch has."""
    if has_precision_api():
        _set_all(TF32 if on else EXACT)
        return
    torch.set_float32_matmul_precision("high" if on else "highest")
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def exact_float32() -> None:
    """TF32 off for float32 matmuls and cuDNN convolutions (extraction, evaluation, the app)."""
    _set_tf32(False)


def allow_tf32() -> None:
    """TF32 on for matmuls and cuDNN convolutions, as a user's earlier code may leave it (tests, the GPU check)."""
    _set_tf32(True)


def released_training_numerics() -> None:
    """cuDNN autotuning on, as the released training scripts set it; TF32 left at PyTorch's defaults."""
    torch.backends.cudnn.benchmark = True


def deterministic_training() -> None:
    """``--deterministic``: no autotuning, deterministic cuDNN and cuBLAS kernels, and a warning for any operator
    left without a deterministic implementation (NCCL's reductions across GPUs are outside PyTorch's reach)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # read when cuBLAS creates its first handle
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    """The ``--amp`` context: bf16 autocast on CUDA; on any other device (or without ``--amp``) plain float32."""
    if amp and torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=AMP_DTYPE)
    return nullcontext()


def tf32_flags() -> dict[str, Any]:
    """What float32 matmuls and convolutions compute in, read back from the switches this torch uses
    (``ieee``: exact float32; ``tf32``: may round to TF32): read by tests and the GPU check."""
    if has_precision_api():
        flags: dict[str, Any] = {"api": "fp32_precision"}
        for name, path, parents, default in _OPERATORS:
            if _switch(path) is not None:
                flags[name] = _effective(path, parents, default)
        return flags
    matmul_exact = (torch.get_float32_matmul_precision() == "highest"
                    and not torch.backends.cuda.matmul.allow_tf32)
    return {"api": "allow_tf32", "cuda_matmul": EXACT if matmul_exact else TF32,
            "cudnn_conv": TF32 if torch.backends.cudnn.allow_tf32 else EXACT}


def tf32_off(flags: dict[str, Any]) -> bool:
    """Whether ``flags`` (from :func:`tf32_flags`) leave both matmuls and convolutions in exact float32."""
    return flags.get("cuda_matmul") == EXACT and flags.get("cudnn_conv") == EXACT


def restore_tf32(flags: dict[str, Any]) -> None:
    """Put back what :func:`tf32_flags` read (matmuls and convolutions)."""
    if has_precision_api():
        for name, path, _, _ in _OPERATORS:
            switch = _switch(path)
            if switch is not None and name in flags:
                switch.fp32_precision = flags[name]
        return
    torch.backends.cuda.matmul.allow_tf32 = flags["cuda_matmul"] == TF32
    torch.set_float32_matmul_precision("highest" if flags["cuda_matmul"] == EXACT else "high")
    torch.backends.cudnn.allow_tf32 = flags["cudnn_conv"] == TF32
