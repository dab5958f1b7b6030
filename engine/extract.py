"""Feature extraction: L2-normalised student embeddings of a list dataset (batched, no grad)."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.registry import Setting
from models import SBKAStudent, load_student_checkpoint
from utils.errors import UserError
from utils.progress import progress


def load_student_for(setting: Setting, checkpoint: Path, device: torch.device) -> tuple[SBKAStudent, dict[str, Any]]:
    """The trained student of ``checkpoint``; refuses a checkpoint trained for another setting."""
    student, config = load_student_checkpoint(checkpoint, device)
    trained_for = config.get("setting")
    if trained_for is not None and trained_for != setting.name:
        raise UserError(f"checkpoint {checkpoint} was trained for {trained_for}, not {setting.name}: "
                        f"pass the right --checkpoint or --resume_dir")
    return student, config


def extract_features(student: SBKAStudent, dataset: Dataset, device: torch.device, batch_size: int = 80,
                     workers: int = 0, amp: bool = False, desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Embed every image of ``dataset`` in order: (float32 features N x D, int64 labels N)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if amp and device.type == "cuda"
                else nullcontext())
    features, labels = [], []
    student.eval()
    with torch.inference_mode(), autocast:
        for images, targets in progress(loader, desc=desc, unit="batch", leave=False):
            features.append(student.embed(images.to(device, non_blocking=True)).float().cpu().numpy())
            labels.append(targets.numpy())
    return np.concatenate(features).astype(np.float32), np.concatenate(labels).astype(np.int64)
