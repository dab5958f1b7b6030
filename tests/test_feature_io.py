"""features_zero.pickle: the released layout, the restricted unpickler and the validation messages."""
import os
import pickle

import numpy as np
import pytest

from retrieval.feature_io import FeatureSet, load_features, save_features
from tests.helpers_retrieval import clustered_features, numpy1_protocol2_pickle, numpy1_protocol4_pickle
from utils.errors import UserError


def released_items(n_gallery: int = 40, n_query: int = 12, dim: int = 70) -> list:
    """Arrays large enough that their data needs BINSTRING / BINBYTES (over 255 bytes)."""
    f = clustered_features(n_query, n_gallery, n_classes=3, dim=dim)
    return [f.gallery, f.gallery_labels, f.query, f.query_labels, None]


def assert_loaded(path, items) -> None:
    got = load_features(path)
    np.testing.assert_array_equal(got.gallery, items[0])
    np.testing.assert_array_equal(got.gallery_labels, items[1])
    np.testing.assert_array_equal(got.query, items[2])
    np.testing.assert_array_equal(got.query_labels, items[3])
    assert got.gallery.dtype == np.float32 and got.query_labels.dtype == np.int64


def test_round_trip_in_the_released_layout(tmp_path):
    items = released_items()
    path = tmp_path / "features_zero.pickle"
    save_features(FeatureSet(*items[:4]), path)
    raw = pickle.loads(path.read_bytes())      # our own file: a plain list of five items
    assert isinstance(raw, list) and len(raw) == 5 and raw[4] is None
    assert_loaded(path, items)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy2_pickles_are_accepted(tmp_path, protocol):
    items = released_items()
    path = tmp_path / "f.pickle"
    path.write_bytes(pickle.dumps(items, protocol=protocol))
    assert_loaded(path, items)


@pytest.mark.parametrize("writer", [numpy1_protocol2_pickle, numpy1_protocol4_pickle])
def test_numpy1_style_pickles_are_accepted(tmp_path, writer):
    items = released_items(n_gallery=10, n_query=4, dim=8) if writer is numpy1_protocol4_pickle else released_items()
    path = tmp_path / "f.pickle"
    path.write_bytes(writer(items))
    assert b"numpy.core.multiarray" in path.read_bytes() and b"numpy._core" not in path.read_bytes()
    assert_loaded(path, items)


class _Planted:
    """Unpickling this would create a file (the side effect the loader must prevent)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_code_running_pickle_is_refused_and_has_no_effect(tmp_path):
    planted = tmp_path / "planted.txt"
    path = tmp_path / "features_zero.pickle"
    path.write_bytes(pickle.dumps([_Planted(planted), None, None, None, None], protocol=2))
    with pytest.raises(UserError, match="refused.*nothing of it was run"):
        load_features(path)
    assert not planted.exists()


def test_shell_command_pickle_is_refused(tmp_path):
    planted = tmp_path / "planted.txt"
    payload = b"cposix\nsystem\n(Vtouch " + str(planted).encode() + b"\ntR."
    path = tmp_path / "f.pickle"
    path.write_bytes(payload)
    with pytest.raises(UserError, match="posix.system"):
        load_features(path)
    assert not planted.exists()


def _variant(items: list, index: int, value) -> list:
    out = list(items)
    out[index] = value
    return out


@pytest.mark.parametrize("make,message", [
    (lambda it: it[:4], "list of five items.*found 4 items"),
    (lambda it: {"a": 1}, "found a dict"),
    (lambda it: _variant(it, 0, it[0][0]), r"item 1 \(gallery features\) must be a 2-D float array, found a 1-D"),
    (lambda it: _variant(it, 2, it[2].astype(np.int64)), r"item 3 \(query features\) must be a 2-D float array"),
    (lambda it: _variant(it, 2, it[2][:, :5]), "gallery features are 70-d but query features are 5-d"),
    (lambda it: _variant(it, 1, it[1].astype(np.float64)), r"item 2 \(gallery labels\) must be a 1-D integer array"),
    (lambda it: _variant(it, 3, it[3][:-1]), r"item 4 \(query labels\) has 11 entries but item 3 has 12 rows"),
    (lambda it: _variant(it, 0, np.full_like(it[0], np.nan)), "contains NaN"),
    (lambda it: _variant(it, 4, "scores"), "item 5 must be None or an array"),
])
def test_invalid_layouts_are_one_sentence(tmp_path, make, message):
    path = tmp_path / "features_zero.pickle"
    path.write_bytes(pickle.dumps(make(released_items()), protocol=4))
    with pytest.raises(UserError, match=message) as info:
        load_features(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "features_zero.pickle"
    path.write_bytes(pickle.dumps(released_items(), protocol=4)[:100])
    with pytest.raises(UserError, match="corrupt or not a pickle|not a readable pickle"):
        load_features(path)
    with pytest.raises(UserError, match="does not exist"):
        load_features(tmp_path / "absent.pickle")


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    save_features(FeatureSet(*released_items()[:4]), tmp_path / "features_zero.pickle")
    assert os.listdir(tmp_path) == ["features_zero.pickle"]
