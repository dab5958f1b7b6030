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
    precision.allow_tf32()
    assert not precision.tf32_off(precision.tf32_flags())
    yield
    precision.restore_tf32(before)
    assert precision.tf32_flags() == before


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


@pytest.mark.skipif(not precision.has_precision_api(), reason="this torch has only the allow_tf32 flags")
@pytest.mark.parametrize("user_setting", ["generic tf32", "per-operator tf32", "legacy allow_tf32"])
def test_exact_float32_reads_back_through_the_per_operator_switches(user_setting):
    """torch >= 2.9: the per-operator fp32_precision switches decide; a mix with the legacy allow_tf32 flags makes
    torch refuse to read the legacy ones. Whatever a user set before, exact_float32 leaves every matmul and
    convolution switch at "ieee", and reading back never touches the legacy flags."""
    import warnings

    before = precision.tf32_flags()
    try:
        if user_setting == "generic tf32":
            torch.backends.fp32_precision = "tf32"
        elif user_setting == "per-operator tf32":
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        else:
            torch.backends.cudnn.conv.fp32_precision = "ieee"     # the new API first: the mix torch complains of
            torch.backends.cudnn.allow_tf32 = True
            torch.set_float32_matmul_precision("high")
        with warnings.catch_warnings():
            warnings.simplefilter("error")                       # no deprecation of what the project calls
            precision.exact_float32()
            flags = precision.tf32_flags()
        assert flags["api"] == "fp32_precision" and precision.tf32_off(flags)
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        precision.allow_tf32()
        assert torch.backends.cudnn.conv.fp32_precision == "tf32" and not precision.tf32_off(precision.tf32_flags())
    finally:
        torch.backends.fp32_precision = "none"
        precision.restore_tf32(before)


def test_amp_is_bf16_autocast_on_cuda_only():
    assert isinstance(precision.autocast(torch.device("cpu"), True), type(precision.autocast("cpu", False)))
    with precision.autocast(torch.device("cpu"), True):
        assert not torch.is_autocast_enabled("cpu")
    assert precision.AMP_DTYPE is torch.bfloat16
