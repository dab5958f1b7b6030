"""Feature extraction: L2-normalised student embeddings of a list dataset (batched, no grad)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.registry import Setting
from data.transforms import to_model_input
from models import SBKAStudent, load_student_checkpoint, student_from_checkpoint
from utils.errors import UserError
from utils.precision import autocast, exact_float32
from utils.progress import progress


def load_student_for(setting: Optional[Setting], checkpoint: Path, device: torch.device,
                     ckpt: Optional[dict[str, Any]] = None) -> tuple[SBKAStudent, dict[str, Any]]:
    """The trained student of ``checkpoint`` (``ckpt``: its content, when already read); refuses a checkpoint
    trained for another setting than ``setting`` (when given)."""
    student, config = (load_student_checkpoint(checkpoint, device) if ckpt is None
                       else student_from_checkpoint(ckpt, checkpoint, device))
    trained_for = config.get("setting")
    if setting is not None and trained_for is not None and trained_for != setting.name:
        raise UserError(f"checkpoint {checkpoint} was trained for {trained_for}, not {setting.name}: "
                        f"pass the right --checkpoint or --resume_dir")
    return student, config


def iter_embeddings(student: SBKAStudent, dataset: Dataset, device: torch.device, batch_size: int = 80,
                    workers: int = 0, amp: bool = False, desc: str = "features", on_device_normalize: bool = False,
                    memory_format: torch.memory_format = torch.contiguous_format
                    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Embed ``dataset`` in order, one batch at a time: (float32 features b x D on ``device``, labels b).

    The features stay on the device (no copy back, hence no wait for the device, per batch: the next batch's
    copy and forward are queued while this one runs); ``extract_features`` copies them back once.

    ``on_device_normalize``: the dataset's transform stops at uint8 (``normalize=False``) and the
    normalisation runs on ``device``. Closing the generator early stops the loader's workers. Runs in exact
    float32 (utils/precision.exact_float32): features must not depend on the card.
    """
    exact_float32()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    student.eval()
    for images, targets in progress(loader, desc=desc, unit="batch", leave=False):
        # contexts per batch: a suspended generator must not leave inference mode or autocast on in the caller
        with torch.inference_mode(), autocast(device, amp):
            x = to_model_input(images, device, memory_format, on_device_normalize)
            features = student.embed(x).float()
        yield features, targets.numpy()


def extract_features(student: SBKAStudent, dataset: Dataset, device: torch.device, batch_size: int = 80,
                     workers: int = 0, amp: bool = False, desc: str = "features", **options: Any
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Embed every image of ``dataset`` in order: (float32 features N x D, int64 labels N), copied from the
    device once at the end."""
    batches = list(iter_embeddings(student, dataset, device, batch_size, workers, amp, desc, **options))
    features = torch.cat([f for f, _ in batches]).cpu().numpy()
    return features.astype(np.float32, copy=False), np.concatenate([y for _, y in batches]).astype(np.int64)

