import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import utils  # noqa: E402, F401 - sets OpenMP up before torch loads, as every entry point does (utils/runtime.py)
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A small generated Sketchy-layout tree (3 seen classes x 8 sketches + 8 photos), one per test module;
    modules that need another size define their own ``tree``."""
    from tests.fixtures import make_tree

    root = tmp_path_factory.mktemp("data")
    make_tree(root, "sketchy", sketches=8, photos=8)
    return root
