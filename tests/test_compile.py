"""--compile (torch.compile, inductor: the default backend) trains what the eager run trains, to float rounding,
compiling the student once and the teacher once per phase, the epoch's last, shorter batch running eagerly; and
--deterministic switches PyTorch to deterministic kernels."""
from __future__ import annotations

import json

import pytest
import torch

from engine.train import main
from utils.run_files import LOG_FILE

# 5 sketches + 10 photos a step over 24 photos: steps of 10, 10 and 4 photos, so every epoch ends on a short batch
RUN = ["--model", "convnextv2_atto", "--pretrained", "none", "--img_size", "32", "--batch_size", "15",
       "--epochs", "2", "--warmup_epochs", "1", "--max_val_images", "6", "--workers", "0", "--device", "cpu",
       "--no_figures"]


def logged_terms(run_dir) -> list[dict[str, float]]:
    records = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss_") and v is not None} for r in records]


def test_compiled_training_logs_the_eager_loss_terms(tree, tmp_path):
    import torch._dynamo
    from torch._dynamo.utils import counters

    main("sketchy", ["--data_root", str(tree), *RUN, "--savedir", str(tmp_path / "eager")])
    torch._dynamo.reset()
    counters.clear()
    try:
        main("sketchy", ["--data_root", str(tree), *RUN, "--compile", "--savedir", str(tmp_path / "compiled")])
        frames = dict(counters["frames"])
    finally:
        torch._dynamo.reset()
    eager, compiled = logged_terms(tmp_path / "eager"), logged_terms(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 2 and "loss_reverse" in eager[1]
    for a, b in zip(eager, compiled):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    # student once, teacher once per phase (grad mode differs); the short batches ran eagerly, compiling nothing
    assert frames.get("ok") == 3 and frames.get("total") == 3, frames


def test_deterministic_flag_switches_to_deterministic_kernels(tree, tmp_path):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    try:
        main("sketchy", ["--data_root", str(tree), *RUN, "--epochs", "1", "--warmup_epochs", "0",
                         "--max_steps_per_epoch", "1", "--deterministic", "--savedir", str(tmp_path / "run")])
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]
