"""Image decoding as the released loader's cv2.imread(IMREAD_COLOR) + BGR->RGB gives it (expected pixels by hand)."""
import numpy as np
import pytest
from PIL import Image

from data.dataset import ListDataset
from data.images import read_rgb, to_rgb
from retrieval.figures import tile_pixels

ORIENTATION = 0x0112
# EXIF orientation -> how the stored pixel array (rows, cols, 3) is turned into the displayed one
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                           # mirrored left-right
    3: lambda a: a[::-1, ::-1],                        # rotated 180
    4: lambda a: a[::-1],                              # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),                 # mirrored along the main diagonal
    6: lambda a: a[::-1].transpose(1, 0, 2),           # rotated 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),     # mirrored along the anti-diagonal
    8: lambda a: a[:, ::-1].transpose(1, 0, 2),        # rotated 90 degrees anticlockwise
}


def _stored_pattern() -> np.ndarray:
    """A 24 x 40 image with no symmetry: a red block at the top left, a blue one at the bottom middle."""
    a = np.full((24, 40, 3), 255, dtype=np.uint8)
    a[:8, :8] = (255, 0, 0)
    a[16:, 16:32] = (0, 0, 255)
    return a


def _jpeg_with_orientation(path, orientation: int) -> np.ndarray:
    """Write the pattern as a JPEG tagged with ``orientation``; returns the stored pixels as decoded."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(_stored_pattern()).save(path, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:                      # the stored (untransposed) pixels, same decoder
        assert raw.getexif()[ORIENTATION] == orientation
        return np.asarray(raw.convert("RGB"))


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_jpeg_exif_orientation_is_applied(tmp_path, orientation):
    stored = _jpeg_with_orientation(tmp_path / "x.jpg", orientation)
    expected = DISPLAYED[orientation](stored)
    got = np.asarray(ListDataset(tmp_path, ["x.jpg"], np.array([0])).load_image(0))
    np.testing.assert_array_equal(got, expected)
    assert (orientation == 1) == (got.shape == stored.shape and np.array_equal(got, stored))


def test_figure_tiles_apply_the_orientation(tmp_path):
    _jpeg_with_orientation(tmp_path / "x.jpg", 6)
    tile = tile_pixels(read_rgb, tmp_path / "x.jpg", 24).astype(int)
    assert tile.shape == (24, 24, 3)
    # rotated clockwise, the red block sits at the top right, the blue one along the left edge
    assert tile[1, 22, 0] > 200 and tile[1, 22, 1] < 80 and tile[1, 1].min() > 200
    assert tile[12, 1, 2] > 200 and tile[12, 1, 0] < 80


def _grey_png(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    return tmp_path / "g.png", np.repeat(grey[..., None], 3, 2)


def _palette_png(tmp_path):
    """Palette colours, index 0 fully transparent: expected = the colours, transparency ignored."""
    palette = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    idx = np.array([[0, 1, 2, 1], [2, 2, 0, 0]], dtype=np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([v for colour in palette for v in colour])
    img.save(tmp_path / "p.png", transparency=bytes([0, 255, 128]))
    return tmp_path / "p.png", np.array([[palette[i] for i in row] for row in idx], dtype=np.uint8)


def _rgba_png(tmp_path):
    """Transparent and half-transparent pixels: a compositing reader would mix in a background here."""
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (30, 140, 250)
    rgba[2:, :, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    return tmp_path / "a.png", np.broadcast_to(np.array((30, 140, 250), np.uint8), (4, 4, 3))


def _grey_alpha_png(tmp_path):
    la = np.stack([np.full((3, 3), 77, np.uint8), np.zeros((3, 3), np.uint8)], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    return tmp_path / "la.png", np.full((3, 3, 3), 77, np.uint8)


def _sixteen_bit_png(tmp_path):
    """16-bit grey: OpenCV keeps the high byte (Pillow's own convert would clip at 255)."""
    values = np.array([[0x0000, 0x00FF, 0x0100], [0x1234, 0x8000, 0xFFFF]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "w.png")
    with Image.open(tmp_path / "w.png") as raw:
        assert raw.mode.startswith("I")                # really a 16-bit greyscale PNG
    return tmp_path / "w.png", np.repeat((values >> 8).astype(np.uint8)[..., None], 3, 2)   # 0 0 1 / 18 128 255


def _oriented_jpeg(tmp_path):
    stored = _jpeg_with_orientation(tmp_path / "x.jpg", 6)
    return tmp_path / "x.jpg", DISPLAYED[6](stored)


PNG_CASES = [_grey_png, _palette_png, _rgba_png, _grey_alpha_png, _sixteen_bit_png]


@pytest.mark.parametrize("make", PNG_CASES, ids=lambda f: f.__name__.strip("_"))
def test_png_modes_decode_as_opencv_does(tmp_path, make):
    path, expected = make(tmp_path)
    got = np.asarray(read_rgb(path))
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("make", PNG_CASES + [_oriented_jpeg], ids=lambda f: f.__name__.strip("_"))
def test_same_pixels_as_opencv_when_installed(tmp_path, make):
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (make test-deps, or pip install -r "
                                            "requirements-test.txt)")
    path, _ = make(tmp_path)
    theirs = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].astype(int)
    ours = np.asarray(read_rgb(path)).astype(int)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= (3 if path.suffix == ".jpg" else 0)   # JPEG decoders may differ by 1-2


def test_alpha_is_dropped_unless_a_background_is_named():
    """Like cv2.imread, the alpha is dropped (transparent black stays black); the app's queries name white
    paper instead, and a half-transparent black stroke then blends halfway."""
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)          # transparent paper
    rgba[0, 1] = (0, 0, 0, 255)        # opaque ink
    rgba[1, 0] = (0, 0, 0, 128)        # half-transparent ink
    rgba[1, 1] = (200, 10, 10, 255)
    img = Image.fromarray(rgba, "RGBA")
    dropped = np.asarray(to_rgb(img))
    assert dropped[0, 0].tolist() == [0, 0, 0] and dropped[1, 1].tolist() == [200, 10, 10]
    on_white = np.asarray(to_rgb(img, alpha_background=(255, 255, 255)))
    assert on_white[0, 0].tolist() == [255, 255, 255] and on_white[0, 1].tolist() == [0, 0, 0]
    assert 120 <= on_white[1, 0, 0] <= 135 and on_white[1, 1].tolist() == [200, 10, 10]
