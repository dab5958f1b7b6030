"""bench/gpu_check.py runs end to end (--smoke, CPU) and its report holds every section with sane numbers;
the uint8 loader + on-device normalisation (--gpu_normalize) gives the released pipeline's exact values."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.dataset import ListDataset
from data.transforms import normalize_on_device, train_transform
from data.transforms import test_transform as eval_transform
from engine.extract import extract_features
from engine.flags import build_train_parser, choose_setting
from engine.train import Trainer, seed_epoch
from models import build_student
from utils.distributed import DistInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check import SECTIONS, TITLES  # noqa: E402
from gpu_report import JSON_NAME, MD_NAME, Report  # noqa: E402


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out), "--smoke", "--profile",
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_smoke_run_reports_every_section_with_sane_numbers(smoke_report):
    data = json.loads((smoke_report / JSON_NAME).read_text())
    md = (smoke_report / MD_NAME).read_text()
    sections = data["sections"]
    assert set(sections) == {"data", *SECTIONS}
    for name, sec in sections.items():
        assert sec["status"] == "ok", (name, sec.get("error"), sec.get("traceback"))
        assert f"## {TITLES[name]}" in md
    assert not (smoke_report / "work").exists()          # generated data removed unless --keep_work

    train = sections["train"]["rows"]
    assert len(train) == 4 and all(_finite_positive(r["img_s"]) and _finite_positive(r["ms_step"]) for r in train)
    numerics = {r["quantity"]: r for r in sections["numerics"]["rows"]}
    for term in ("loss_ce", "loss_kd", "loss_prior", "loss_reverse", "student_grad_norm"):
        assert _finite_positive(numerics[term]["fp32"]) and numerics[term]["rel_diff"] < 0.05
    assert sections["numerics"]["evaluator_precision"]["tf32_off"] is True
    assert sections["numerics"]["evaluator_precision"]["cudnn_conv"] == "ieee"
    ops = sections["profile"]["top_ops"]
    assert ops and 0 < sum(o["share"] for o in ops) <= 1.0 + 1e-9
    assert all(_finite_positive(r["img_s"]) for r in sections["loader"]["rows"])
    e2e = sections["e2e"]["rows"]
    assert e2e[0]["ok"] is True
    epochs = [r for r in e2e if r["run"].startswith("epoch")]
    # the multi-process path with one process (DDP, the control group, the averaging), compiled (smoke: always)
    command = sections["e2e"]["command"]
    assert "--force_process_group" in command and "--compile eager" in command
    assert [r["run"].split()[1] for r in epochs] == ["0", "1", "2"] and all(r["steps"] >= 1 for r in epochs)
    assert _finite_positive(e2e[-1]["minutes"])
    extraction = sections["extraction"]["rows"]
    assert len(extraction) == 3 and all(r["images"] > 0 and _finite_positive(r["img_s"]) for r in extraction)
    rows = sections["evaluation"]["rows"]
    one_to_one = rows[0]
    assert 0 < one_to_one["class mAP@all"] <= 1 and _finite_positive(one_to_one["seconds"])
    diffs = [v for r in rows for k, v in r.items() if k.startswith("max diff")]
    assert len(diffs) == 8 and max(diffs) == 0.0       # the same CPU code on the same features
    assert {g["goal"] for g in data["goals"]} >= {"feature extraction", "full released Sketchy run on one GPU"}
    assert all(g["met"] is None for g in data["goals"])  # smoke sizes measure nothing


def test_failing_section_is_recorded_and_the_next_still_runs(tmp_path):
    report = Report(tmp_path, {"device": "cpu"})
    with report.section("bad", "Bad section") as sec:
        sec.row(config="before the failure", img_s=1.0)
        raise ValueError("boom")
    with report.section("good", "Good section") as sec:
        sec.row(config="fine", img_s=2.0)
    data = json.loads((tmp_path / JSON_NAME).read_text())
    assert data["sections"]["bad"]["status"] == "error" and "boom" in data["sections"]["bad"]["error"]
    assert data["sections"]["bad"]["rows"] == [{"config": "before the failure", "img_s": 1.0}]
    assert data["sections"]["good"]["status"] == "ok"
    assert "ValueError: boom" in (tmp_path / MD_NAME).read_text()


def test_device_normalisation_gives_the_released_values_and_draws():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    for seed in range(12):                               # covers no-op, flip-only and warped draws
        torch.manual_seed(seed)
        released = train_transform(32)(img)
        after_released = torch.rand(())
        torch.manual_seed(seed)
        raw = train_transform(32, normalize=False)(img)
        after_raw = torch.rand(())
        assert raw.dtype == torch.uint8
        assert torch.equal(normalize_on_device(raw[None])[0], released)
        assert torch.equal(after_raw, after_released)   # the same random draws were consumed


def _first_batch(tree, savedir, *extra):
    argv = ["--data_root", str(tree), "--savedir", str(savedir), "--model", "convnextv2_atto", "--pretrained",
            "none", "--img_size", "32", "--batch_size", "6", "--workers", "0", "--device", "cpu", *extra]
    setting = choose_setting("sketchy", argv)
    args = build_train_parser(setting, "sketchy").parse_args(argv)
    trainer = Trainer(args, setting, DistInfo(), torch.device("cpu"))
    seed_epoch(args.seed, 0, 0)
    trainer.sketch_sampler.set_epoch(0)
    trainer.photo_sampler.set_epoch(0)
    x, y, *_ = next(trainer.batches())
    return trainer.data.sketches[0][0], x, y


def test_trainer_gpu_normalize_feeds_the_model_the_same_batch(tree, tmp_path):
    x_ref, model_ref, y_ref = _first_batch(tree, tmp_path / "a")
    x_u8, model_u8, y_u8 = _first_batch(tree, tmp_path / "b", "--gpu_normalize", "--channels_last")
    assert x_ref.dtype == torch.float32 and x_u8.dtype == torch.uint8   # a quarter of the bytes through the loader
    assert model_ref.dtype == model_u8.dtype == torch.float32
    assert torch.equal(y_ref, y_u8) and torch.equal(model_ref, model_u8)
    assert model_u8.is_contiguous(memory_format=torch.channels_last)


def test_extraction_with_device_normalisation_matches(tree):
    from data.registry import get_setting, resolve_paths

    paths = resolve_paths(get_setting("sketchy/zeroshot1"), tree)
    torch.manual_seed(0)
    student = build_student("convnextv2_atto", 3)
    list_file = paths.list_file("photo_zero")
    ref = extract_features(student, ListDataset.from_list(paths.root, list_file, transform=eval_transform(32)),
                           torch.device("cpu"), batch_size=5)
    got = extract_features(student, ListDataset.from_list(paths.root, list_file,
                                                          transform=eval_transform(32, normalize=False)),
                           torch.device("cpu"), batch_size=5, on_device_normalize=True,
                           memory_format=torch.channels_last)
    assert np.array_equal(ref[1], got[1]) and len(ref[0]) == 16 == len(got[0])   # 2 unseen classes x 8
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-5)   # channels_last may reorder sums
