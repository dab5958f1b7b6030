"""List parsing, the registry's file discovery, image errors, cid_mask loading and augmentation."""
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from data.cid_mask import load_cid_mask
from data.dataset import ListDataset, holdout_indices
from data.lists import parse_list_file, read_class_file
from data.registry import QUICKDRAW_AUTHORS_NAMES, QUICKDRAW_PUBLIC_NAMES, SAKE_NAMES, get_setting, resolve_paths
from data.transforms import RandomAffineXY, pillow_affine, train_transform, warp_affine
from data.transforms import test_transform as eval_transform
from tests.fixtures import make_tree
from utils.errors import UserError


def test_paths_with_spaces_keep_every_token_but_the_last(tmp_path):
    f = tmp_path / "list.txt"
    f.write_text("png_ready/alarm clock/158.png 2\n\nsketches/palm tree/5838176637681664.png 16\n")
    paths, labels = parse_list_file(f)
    assert paths == ["png_ready/alarm clock/158.png", "sketches/palm tree/5838176637681664.png"]
    assert labels.tolist() == [2, 16]


@pytest.mark.parametrize("bad", ["just_a_path.png", "a/b.png two", "3"])
def test_malformed_line_names_file_and_line(tmp_path, bad):
    f = tmp_path / "list.txt"
    f.write_text(f"ok/a.png 0\n{bad}\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(f))}, line 2: expected"):
        parse_list_file(f)


def test_label_out_of_range_names_file_line_and_class_count(tmp_path):
    f = tmp_path / "list.txt"
    f.write_text("a/x.png 0\na/y.png 1\na/z.png 5\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(f))}, line 3: label 5 is outside 0..2"):
        parse_list_file(f, n_classes=3, class_file="cname_cid.txt")


def test_class_file_ids_are_checked(tmp_path):
    f = tmp_path / "cname_cid.txt"
    f.write_text("alarm clock 1\nairplane 0\n")
    assert read_class_file(f) == ["airplane", "alarm clock"]
    f.write_text("a 0\nb 2\n")
    with pytest.raises(UserError, match="ids must be 0..1"):
        read_class_file(f)


@pytest.mark.parametrize("layout,names", [("quickdraw_authors", QUICKDRAW_AUTHORS_NAMES),
                                          ("quickdraw", QUICKDRAW_PUBLIC_NAMES), ("quickdraw_sake", SAKE_NAMES)])
def test_quickdraw_every_naming_scheme_is_found(tmp_path, layout, names):
    make_tree(tmp_path, layout, test_list=False, cid_mask=False)
    paths = resolve_paths(get_setting("quickdraw/zeroshot"), tmp_path)
    assert paths.list_file("sketch_train").name == names["sketch_train"]
    assert paths.list_file("photo_zero").name == names["photo_zero"]
    assert paths.list_file("sketch_test") is None


def test_missing_lists_name_every_file_looked_for(tmp_path):
    (tmp_path / "QuickDraw" / "zeroshot").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        resolve_paths(get_setting("quickdraw/zeroshot"), tmp_path)
    for name in list(QUICKDRAW_PUBLIC_NAMES.values())[:1] + [SAKE_NAMES["photo_zero"], "all_photo_zero.txt"]:
        assert name in str(err.value)


def test_incomplete_authors_quickdraw_folder_names_every_file_looked_for(tmp_path):
    make_tree(tmp_path, "quickdraw_authors", test_list=False, cid_mask=False, sketches=2, photos=2)
    split = tmp_path / "QuickDraw" / "zeroshot"
    (split / QUICKDRAW_AUTHORS_NAMES["photo_zero"]).unlink()
    with pytest.raises(UserError) as err:
        resolve_paths(get_setting("quickdraw/zeroshot"), tmp_path)
    message = str(err.value)
    for scheme in (QUICKDRAW_AUTHORS_NAMES, QUICKDRAW_PUBLIC_NAMES, SAKE_NAMES):
        for role in ("sketch_train", "sketch_zero", "photo_train", "photo_zero"):
            assert scheme[role] in message
    assert "missing all_photo_filelist_zero.txt" in message and "missing sketch_filelist_train.txt" not in message


def test_missing_dataset_folder_says_what_to_create(tmp_path):
    with pytest.raises(UserError, match=r"dataset folder .*TUBerlin does not exist: create it.*README"):
        resolve_paths(get_setting("tuberlin/zeroshot"), tmp_path)


def test_missing_and_corrupt_images_name_path_and_list_line(tmp_path):
    make_tree(tmp_path, "sketchy")
    paths = resolve_paths(get_setting("sketchy/zeroshot1"), tmp_path)
    ds = ListDataset.from_list(paths.root, paths.list_file("photo_train"), 3, eval_transform(32))
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == ds.labels[0]
    (paths.root / ds.paths[1]).write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=rf"{re.escape(ds.paths[1])} cannot be decoded \(.*photo_filelist_train.txt, line 2\)"):
        ds[1]
    (paths.root / ds.paths[2]).unlink()
    with pytest.raises(UserError, match=r"does not exist \(.*line 3\)"):
        ds[2]


def test_grayscale_sketch_becomes_rgb(tmp_path):
    Image.new("L", (20, 20), 255).save(tmp_path / "s.png")
    ds = ListDataset(tmp_path, ["s.png"], np.array([0]), eval_transform(16))
    assert ds[0][0].shape == (3, 16, 16)


def test_holdout_is_per_class_deterministic_and_disjoint():
    labels = np.repeat(np.arange(4), [40, 20, 1, 7])
    keep, held = holdout_indices(labels, 0.05)
    keep2, held2 = holdout_indices(labels, 0.05)
    assert np.array_equal(held, held2) and not set(keep) & set(held)
    assert len(keep) + len(held) == len(labels)
    counts = np.bincount(labels[held], minlength=4)
    assert counts.tolist() == [2, 1, 0, 1]  # every 20th from the end of each class; singletons stay


def py2_numpy_dict_pickle(arrays: dict) -> bytes:
    """Bytes as Python 2 + NumPy 1 write ``pickle.dump({id: float64 array}, f, 2)``: the array data is a
    py2 ``str`` (BINSTRING) and the globals are spelled ``numpy.core.multiarray``."""
    out = [b"\x80\x02}("]
    for key, arr in arrays.items():
        data = np.ascontiguousarray(arr, dtype="<f8").tobytes()
        out.append(b"K" + bytes([key])
                   + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                   + b"(K\x01M" + len(arr).to_bytes(2, "little") + b"\x85"
                   + b"cnumpy\ndtype\nU\x02f8K\x00K\x01\x87R"
                   + b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                   + b"\x89T" + len(data).to_bytes(4, "little") + data + b"tb")
    out.append(b"u.")
    return b"".join(out)


def test_python2_protocol2_cid_mask_loads(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {0: rng.random(1000), 2: rng.random(1000)}
    f = tmp_path / "cid_mask.pickle"
    f.write_bytes(py2_numpy_dict_pickle(arrays))
    # the stock unpickler reads the same bytes (so the builder really writes the Python-2 format)
    assert np.array_equal(pickle.loads(f.read_bytes(), encoding="latin1")[2], arrays[2])
    mask = load_cid_mask(f, n_seen=3)
    assert mask.shape == (3, 1000) and mask.dtype == torch.float32
    assert torch.allclose(mask[0], torch.from_numpy(arrays[0]).float())
    assert torch.all(mask[1] == 0)


def test_cid_mask_of_wrong_width_is_refused(tmp_path):
    f = tmp_path / "cid_mask.pickle"
    f.write_bytes(py2_numpy_dict_pickle({0: np.zeros(200)}))
    with pytest.raises(UserError, match="class 0 has 200 values, expected 1000"):
        load_cid_mask(f, n_seen=3)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_code_running_cid_mask_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "cid_mask.pickle"
    f.write_bytes(pickle.dumps({0: _Evil(marker)}, protocol=2))
    with pytest.raises(UserError, match=r"refused: it asks to run (posix|os)\.system"):
        load_cid_mask(f, n_seen=1)
    assert not marker.exists()


def test_missing_cid_mask_warns_and_gives_zeros(tmp_path):
    with pytest.warns(UserWarning, match="zero cid_mask"):
        mask = load_cid_mask(tmp_path / "cid_mask.pickle", n_seen=4)
    assert mask.shape == (4, 1000) and mask.abs().sum() == 0


def test_train_transform_is_seeded_and_changes_images():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    t = train_transform(32)
    torch.manual_seed(3)
    a = torch.stack([t(img) for _ in range(8)])
    torch.manual_seed(3)
    b = torch.stack([t(img) for _ in range(8)])
    assert torch.equal(a, b)
    plain = eval_transform(32)(img)
    assert any(not torch.allclose(a[i], plain) for i in range(8))
    assert a.shape == (8, 3, 32, 32)


def test_affine_flip_only_mirrors_exactly():
    img = Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))
    aug = RandomAffineXY(p=1.0)
    for seed in range(200):  # find a draw that flips and does nothing else
        torch.manual_seed(seed)
        drawn = aug.draw()
        if drawn and drawn[0] and drawn[1] is None:
            torch.manual_seed(seed)
            np.testing.assert_array_equal(np.asarray(aug(img)), np.asarray(img)[:, ::-1])
            return
    pytest.fail("no pure flip drawn in 200 seeds")


def test_affine_is_about_the_top_left_pixel_with_black_fill():
    """A pure translation by (tx, ty) moves pixel (0, 0) to about (tx, ty) and fills the edge with black."""
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    aug = RandomAffineXY(p=1.0)
    for seed in range(500):
        torch.manual_seed(seed)
        flip, c = aug.draw() or (True, None)
        if not flip and c is not None and c[0] == 1.0 and c[1] == 0.0 and c[4] == 1.0 and c[2] < -3 and c[5] < -3:
            torch.manual_seed(seed)
            out = np.asarray(aug(img))
            tx, ty = -c[2], -c[5]
            assert out[0, 0].tolist() == [0, 0, 0]                  # uncovered corner: fill 0
            assert out[int(ty) + 2, int(tx) + 2].tolist() == [255, 255, 255]
            return
    pytest.fail("no pure translation drawn")


# ---------------------------------------------------------------------------------- the released warp's grid
def skimage_style_warp(img: np.ndarray, sx, sy, angle, tx, ty) -> np.ndarray:
    """Independent reference of ``warp(img, AffineTransform(scale=(sx, sy), rotation=angle,
    translation=(tx, ty)).inverse, preserve_range=True).astype('uint8')``: integer coordinates are pixel
    centres (x = column, y = row); each output pixel samples the input at ``A^-1 (p - t)`` bilinearly, a
    neighbour outside the image counts as 0; the result is truncated to uint8."""
    a = img.astype(np.float64).reshape(img.shape[0], img.shape[1], -1)
    h, w, _ = a.shape
    fwd = np.array([[sx * np.cos(angle), -sy * np.sin(angle)], [sx * np.sin(angle), sy * np.cos(angle)]])
    rows, cols = np.mgrid[0:h, 0:w]
    x, y = np.linalg.solve(fwd, np.stack([cols.ravel() - tx, rows.ravel() - ty]))
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def at(r, c):
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        out = np.zeros((len(r), a.shape[2]))
        out[inside] = a[r[inside], c[inside]]
        return out

    value = (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
             + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)
    return value.reshape(img.shape).astype(np.uint8)


def _sketch_like(size: int = 64) -> Image.Image:
    from PIL import ImageDraw

    rng = np.random.default_rng(1)
    img = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(img)
    for _ in range(8):
        pen.line([tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(3)], fill=(0, 0, 0), width=2)
    return img


def _photo_like(size: int = 48) -> Image.Image:
    rng = np.random.default_rng(2)
    coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).convert("L")


# (scale x, scale y, rotation in radians, translation x, translation y), within the released ranges
WARP_DRAWS = [(1.21, 0.83, 0.35, 5.3, -7.1), (0.7, 1.3, -0.52, -10.0, 10.0), (1.0, 1.0, 0.0, 3.5, 2.25),
              (1.08, 0.91, 0.2, 0.0, 0.0), (1.29, 1.17, -0.09, -2.7, 9.9), (0.76, 0.95, 0.47, 8.4, 0.6)]


@pytest.mark.parametrize("make", [_sketch_like, _photo_like])
@pytest.mark.parametrize("draw", WARP_DRAWS)
def test_warp_samples_the_released_pixel_centre_grid(make, draw):
    img = make()
    expected = skimage_style_warp(np.asarray(img), *draw).astype(int)
    got = np.asarray(warp_affine(img, pillow_affine(*draw))).astype(int)
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    assert diff.mean() <= 0.5 and diff.max() <= 1, (diff.mean(), diff.max())   # in uint8 levels


def test_random_affine_applies_the_flip_then_its_drawn_warp():
    img = _sketch_like(32)
    aug = RandomAffineXY(p=1.0)
    for seed in range(100):
        torch.manual_seed(seed)
        flip, coeffs = aug.draw()
        if flip and coeffs is not None:
            torch.manual_seed(seed)
            mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            np.testing.assert_array_equal(np.asarray(aug(img)), np.asarray(warp_affine(mirrored, coeffs)))
            return
    pytest.fail("no flip + warp drawn in 100 seeds")
