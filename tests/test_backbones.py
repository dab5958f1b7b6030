"""Any timm classifier as student or teacher: ConvNeXt-V2, ConvNeXt and a ViT each train (both phases), are
tested by a test script (modes 1 and 2) and served by the app; pretrained files load strictly into each family;
``--pretrained timm`` goes through timm's real loading path offline (a pre-filled Hugging Face cache)."""
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from engine.train import main
from models import build_student, build_teacher
from models.sbka import _backbone
from tests.fixtures import make_tree
from tests.test_test_scripts import FAST_FIT, SMALL, run
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.run_files import LAST_CHECKPOINT_FILE

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"convnextv2_atto": 320, "convnext_atto": 320, "vit_tiny_patch16_224": 192}   # name: feature width
IMG = 32


def _train_argv(data_root: Path, savedir: Path, model: str, *extra) -> list[str]:
    return ["--data_root", str(data_root), "--savedir", str(savedir), "--model", model, "--pretrained", "none",
            "--img_size", str(IMG), "--batch_size", "12", "--workers", "0", "--device", "cpu", "--epochs", "2",
            "--warmup_epochs", "1", "--max_steps_per_epoch", "1", "--max_val_images", "3", "--no_figures", *extra]


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    """(model name, data root, run dir) of a 2-step run (one warm-up, one bidirectional step) of that family."""
    model = request.param
    tmp = tmp_path_factory.mktemp(model)
    make_tree(tmp / "datasets", layout="sketchy", sketches=4, photos=4)
    main("sketchy", _train_argv(tmp / "datasets", tmp / "run", model))
    return model, tmp / "datasets", tmp / "run"


def test_each_family_trains_tests_and_serves(trained, monkeypatch, capsys):
    model, data_root, run_dir = trained
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["warmup", "bidirectional"] and log[1]["loss_reverse"] is not None
    ckpt = load_checkpoint(run_dir / LAST_CHECKPOINT_FILE)
    assert ckpt["config"]["model"] == ckpt["config"]["teacher_model"] == model
    assert ckpt["config"]["feature_dim"] == FAMILIES[model]
    for mode in ("1", "2"):
        code, out, err = run("test_sketchy_ext_zeroshot.py", "--resume_dir", run_dir, "--data_root", data_root,
                             "--mode", mode, "--no_figures", *SMALL, *FAST_FIT, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 0, err
        results = json.loads((run_dir / "results.json").read_text())
        assert results["feature_dim"] == FAMILIES[model] and results["provenance"]["mode"] == int(mode)
        assert (results["one_to_many"] is None) == (mode == "1")
    pytest.importorskip("starlette", reason="the app's extras are not installed")
    from app.searcher import load_searcher

    searcher = load_searcher(run_dir, "zero", data_root, workers=0)
    query = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(query).line([(5, 5), (60, 40), (10, 60)], fill="black", width=3)
    png = io.BytesIO()
    query.save(png, format="PNG")
    answer = searcher.search(png.getvalue(), k=3)
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3]
    distances = [r["distance"] for r in answer["results"]]
    assert distances == sorted(distances) and searcher.info()["model"] == model


@pytest.mark.parametrize("model", list(FAMILIES))
def test_a_timm_format_file_loads_strictly_into_each_family(model, tmp_path):
    torch.manual_seed(0)
    reference = _backbone(model, IMG).eval()
    path = tmp_path / f"{model}.pth"
    torch.save(reference.state_dict(), path)
    teacher = build_teacher(model, str(path), IMG)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), reference(x))
    student = build_student(model, 3, str(path), img_size=IMG)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in student.backbone.state_dict().items())
    broken = {k: v for i, (k, v) in enumerate(reference.state_dict().items()) if i != 3}
    torch.save({"state_dict": broken}, path)
    with pytest.raises(UserError, match=rf"pretrained checkpoint .* lacks key {list(reference.state_dict())[3]!r}"):
        build_teacher(model, str(path), IMG)


def test_a_teacher_without_the_imagenet_1k_head_is_refused(tmp_path):
    make_tree(tmp_path / "datasets", layout="sketchy", sketches=2, photos=2)
    argv = _train_argv(tmp_path / "datasets", tmp_path / "run", "convnextv2_atto", "--teacher_model",
                       "convnext_tiny.fb_in22k")
    with pytest.raises(UserError, match=r"^--teacher_model convnext_tiny\.fb_in22k predicts 21841 classes, not the "
                                        r"1000 ImageNet classes .*: choose an ImageNet-1k classifier \(e\.g\. "):
        main("sketchy", argv)
    assert not (tmp_path / "run").exists()


def test_another_teacher_family(tmp_path):
    """A ConvNeXt-V2 student with a ViT teacher: the teacher's head learns in the bidirectional phase."""
    make_tree(tmp_path / "datasets", layout="sketchy", sketches=4, photos=4)
    run_dir = tmp_path / "run"
    main("sketchy", _train_argv(tmp_path / "datasets", run_dir, "convnextv2_atto", "--teacher_model",
                                "vit_tiny_patch16_224", "--warmup_epochs", "0", "--epochs", "1"))
    ckpt = load_checkpoint(run_dir / LAST_CHECKPOINT_FILE)
    assert ckpt["config"]["teacher_model"] == "vit_tiny_patch16_224"
    assert set(ckpt["teacher_head"]) == {"weight", "bias"} and ckpt["teacher_head"]["weight"].shape == (1000, 192)


TIMM_LOAD = textwrap.dedent("""
    import shutil, sys, torch
    from models import build_teacher
    from utils.errors import UserError
    name, out, cached = sys.argv[1:]
    torch.save(build_teacher(name, "timm", 32).backbone.state_dict(), out)
    shutil.rmtree(cached)                       # the cache emptied: nothing to load offline
    try:
        build_teacher(name, "timm", 32)
    except UserError as exc:
        print("error:", exc)
""")


def test_pretrained_timm_loads_through_timm_offline(tmp_path):
    """timm's own loading path (hf_hub_download of model.safetensors, then timm's filter) from a pre-filled
    Hugging Face cache with the Hub switched off; an empty cache gives one sentence naming what to download."""
    from safetensors.torch import save_file

    name, repo = "convnextv2_atto.fcmae_ft_in1k", "timm/convnextv2_atto.fcmae_ft_in1k"
    torch.manual_seed(1)
    weights = {k: v.contiguous() for k, v in _backbone(name).state_dict().items()}
    cache = tmp_path / "hub"
    cached = cache / f"models--{repo.replace('/', '--')}"
    (cached / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(weights, str(cached / "snapshots" / ("0" * 40) / "model.safetensors"))
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text("0" * 40)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    loaded = tmp_path / "loaded.pth"
    res = subprocess.run([sys.executable, "-c", TIMM_LOAD, name, str(loaded), str(cached)], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    got = torch.load(loaded, weights_only=True)
    assert set(got) == set(weights) and all(torch.equal(got[k], weights[k]) for k in weights)
    assert res.stdout.startswith(f"error: --pretrained timm: timm could not load the pretrained weights of {name} ")
    assert f"from the Hugging Face Hub repository {repo}" in res.stdout
    assert "download https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_atto_1k_224_ema.pt" in res.stdout
