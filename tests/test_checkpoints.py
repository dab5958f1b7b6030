"""Official-naming checkpoints load strictly into timm models; bad files fail with one sentence."""

import pytest
import torch

from models import build_teacher, load_pretrained_file
from models.checkpoint_mapping import timm_to_official
from models.sbka import _backbone
from utils.checkpoint import atomic_save, load_checkpoint
from utils.errors import UserError


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    torch.manual_seed(0)
    reference = _backbone("convnextv2_atto")
    # give the LayerNorm/GRN parameters non-trivial values so a mis-mapping would show in the logits
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd = timm_to_official(reference.state_dict())
    assert "downsample_layers.0.0.weight" in sd and "stages.1.0.grn.gamma" in sd and "head.weight" in sd
    assert sd["stages.1.0.grn.gamma"].shape[:3] == (1, 1, 1) and "norm.weight" in sd
    path = tmp_path_factory.mktemp("pre") / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": sd}, path)
    return reference.eval(), sd, path


def test_official_checkpoint_gives_the_same_logits(official):
    reference, _, path = official
    teacher = build_teacher("convnextv2_atto", str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher(x), reference(x), atol=1e-5)


def test_missing_key_is_named(official, tmp_path):
    _, sd, _ = official
    broken = dict(sd)
    del broken["stages.2.1.grn.beta"]
    path = tmp_path / "broken.pt"
    torch.save({"model": broken}, path)
    with pytest.raises(UserError, match=r"lacks key 'stages\.2\.blocks\.1\.mlp\.grn\.bias'"):
        load_pretrained_file(_backbone("convnextv2_atto"), path)


def test_unexpected_key_is_named(official, tmp_path):
    _, sd, _ = official
    path = tmp_path / "extra.pt"
    torch.save({"model": {**sd, "stages.0.0.extra": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match=r"unexpected key 'stages\.0\.blocks\.0\.extra'"):
        load_pretrained_file(_backbone("convnextv2_atto"), path)


def test_wrong_model_size_is_a_shape_error(official):
    _, _, path = official
    with pytest.raises(UserError, match=r"has shape .*does --model match"):
        load_pretrained_file(_backbone("convnextv2_femto"), path)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_code_running_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(UserError, match="not a weights-only checkpoint"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="cannot be read safely"):
        load_pretrained_file(_backbone("convnextv2_atto"), path)


def test_missing_pretrained_file_points_to_readme(tmp_path):
    with pytest.raises(UserError, match=r"does not exist: download convnextv2_tiny_1k_224_ema\.pt .*--pretrained none"):
        load_pretrained_file(_backbone("convnextv2_atto"), tmp_path / "nope.pt")


def test_atomic_save_keeps_previous_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    atomic_save({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth.tar"]  # no temp file left behind
