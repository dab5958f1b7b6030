"""Extraction, evaluation and the app compute in exact float32: TF32 off for matmuls AND cuDNN convolutions, read
inside each code path (the flags are global switches, so a CPU run shows what a CUDA run would use)."""
import pytest
import torch
from torch.utils.data import TensorDataset

from tests.helpers_retrieval import write_features
from utils import precision


@pytest.fixture
def tf32_on():
    """TF32 switched on for both, as a user's earlier code (or PyTorch's cuDNN default) might leave it."""
    before = precision.tf32_flags()
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    assert not precision.tf32_off(precision.tf32_flags())
    yield
    torch.set_float32_matmul_precision(before["float32_matmul_precision"])
    torch.backends.cudnn.allow_tf32 = before["cudnn_allow_tf32"]


class RecordingStudent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[dict] = []

    def embed(self, x):
        self.seen.append(precision.tf32_flags())
        return torch.nn.functional.normalize(x.flatten(1), dim=1)


def test_extraction_runs_with_tf32_off(tf32_on):
    from engine.extract import extract_features

    student = RecordingStudent()
    data = TensorDataset(torch.randn(5, 3, 2, 2), torch.arange(5))
    extract_features(student, data, torch.device("cpu"), batch_size=2)
    assert len(student.seen) == 3 and all(precision.tf32_off(f) for f in student.seen)


def test_evaluation_scores_with_tf32_off(tf32_on, tmp_path, monkeypatch, capsys):
    import engine.evaluate as evaluate

    seen = []
    original = evaluate.RetrievalProblem.evaluate

    def recording(self, *a, **kw):
        seen.append(precision.tf32_flags())
        return original(self, *a, **kw)

    monkeypatch.setattr(evaluate.RetrievalProblem, "evaluate", recording)
    write_features(tmp_path)
    evaluate.main(["--resume_dir", str(tmp_path), "--mode", "1", "--no_figures", "--device", "cpu"],
                  setting_name="sketchy/zeroshot1")
    assert seen and all(precision.tf32_off(f) for f in seen)


def test_app_loads_its_model_with_tf32_off(tf32_on, tmp_path, monkeypatch):
    pytest.importorskip("uvicorn")
    import app.searcher
    import search_app

    seen = []

    class Stop(Exception):
        pass

    def recording_load(*a, **kw):
        seen.append(precision.tf32_flags())
        raise Stop

    monkeypatch.setattr(app.searcher, "load_searcher", recording_load)
    with pytest.raises(Stop):
        search_app.main(["--resume_dir", str(tmp_path), "--device", "cpu", "--port", "0"])
    assert len(seen) == 1 and precision.tf32_off(seen[0])


def test_amp_is_bf16_autocast_on_cuda_only():
    assert isinstance(precision.autocast(torch.device("cpu"), True), type(precision.autocast("cpu", False)))
    with precision.autocast(torch.device("cpu"), True):
        assert not torch.is_autocast_enabled("cpu")
    assert precision.AMP_DTYPE is torch.bfloat16
