"""A small synthetic zero-shot SBIR dataset in the exact public Sketchy layout (METHOD.md section 1).

``python -m data.demo --out datasets/Demo`` writes ``datasets/Demo/Sketchy/`` with the real package's
folder and file names (images under ``256x256/...``, lists, class files and ``cid_mask.pickle`` in
``zeroshot1/``), so every loader and script runs unchanged with ``--data_root datasets/Demo`` and the
``sketchy/zeroshot1`` setting. Classes are simple shapes: sketches are hand-drawn-looking black outlines on
white, photos are coloured, shaded or textured objects on cluttered backgrounds.

Every image is drawn from its own generator seeded by (seed, modality, class, index), so the output is
byte-identical for a given seed (with the same NumPy and Pillow versions) and an image does not depend on
how many images of other classes are made.
"""
from __future__ import annotations

import colorsys
import pickle
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data.lists import list_text
from data.registry import SAKE_NAMES, get_setting
from utils.cli import ArgumentParser
from utils.cpus import usable_cores
from utils.errors import UserError, run_cli

SETTING_NAME = "sketchy/zeroshot1"
SEEN_CLASSES: tuple[str, ...] = (
    "arrow", "circle", "cloud", "diamond", "heart", "plus sign", "square", "triangle")
# Unseen classes include near neighbours of seen ones (hexagon ~ circle, star ~ plus sign) so zero-shot
# retrieval is not trivial, and a name with a space on each side of the split.
UNSEEN_CLASSES: tuple[str, ...] = ("crescent moon", "hexagon", "lightning bolt", "star")
CLASS_NAMES: tuple[str, ...] = tuple(sorted(SEEN_CLASSES + UNSEEN_CLASSES))

# The public package keeps these folder names whatever the image size.
SKETCH_DIR = "256x256/sketch/tx_000000000000_ready"
PHOTO_DIR = "256x256/photo/tx_000000000000_ready"
MARKER_FILE = "DEMO_DATASET.txt"     # lets --force tell a demo folder from a real dataset
N_IMAGENET = 1000
VAL_FRACTION = 0.2                   # seen-class sketches held out as the *_test (validation) list

DEFAULT_SKETCHES_PER_CLASS = 40
DEFAULT_PHOTOS_PER_CLASS = 40
DEFAULT_SIZE = 256

_SKETCH, _PHOTO = 0, 1               # modality codes in the per-image seed


# ---------------------------------------------------------------------------------------------- shapes
def _regular_polygon(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _star() -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(10) / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y - 2.5], axis=1) / 16.5     # image y points down; centre the lobes and tip


def _crescent() -> np.ndarray:
    """Outer unit circle minus an offset inner circle: the outer arc, then the inner arc back."""
    offset, inner_r = 0.45, 0.85
    x_cut = (1 - inner_r ** 2 + offset ** 2) / (2 * offset)
    y_cut = np.sqrt(1 - x_cut ** 2)
    outer_from = np.arctan2(y_cut, x_cut)
    outer = np.linspace(outer_from, 2 * np.pi - outer_from, 64)
    inner_from = np.arctan2(y_cut, x_cut - offset)
    inner = np.linspace(2 * np.pi - inner_from, inner_from, 48)
    pts_outer = np.stack([np.cos(outer), np.sin(outer)], axis=1)
    pts_inner = np.stack([offset + inner_r * np.cos(inner), inner_r * np.sin(inner)], axis=1)
    return np.vstack([pts_outer, pts_inner[1:-1]]) + [0.2, 0.0]


def _cloud() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 140, endpoint=False)
    r = 0.82 + 0.2 * np.abs(np.sin(3.5 * t))          # seven bumps
    x, y = r * np.cos(t) * 1.15, r * np.sin(t) * 0.75
    return np.stack([x, np.minimum(y, 0.5)], axis=1)  # flat underside


_SHAPES: dict[str, np.ndarray] = {
    "arrow": np.array([(-1, -0.2), (0.15, -0.2), (0.15, -0.62), (1, 0), (0.15, 0.62), (0.15, 0.2), (-1, 0.2)]),
    "circle": _regular_polygon(72),
    "cloud": _cloud(),
    "crescent moon": _crescent(),
    "diamond": np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]),
    "heart": _heart(),
    "hexagon": _regular_polygon(6, phase=0.0),
    "lightning bolt": np.array([(-0.1, -1), (0.55, -1), (0.15, -0.2), (0.6, -0.2), (-0.35, 1),
                                (-0.05, 0.1), (-0.5, 0.1)]),
    "plus sign": np.array([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
                           (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "star": _star(),
    "triangle": np.array([(0, -0.95), (0.95, 0.7), (-0.95, 0.7)]),
}
assert set(_SHAPES) == set(CLASS_NAMES)


def _random_pose(outline: np.ndarray, rng: np.random.Generator, canvas: int,
                 half_extent: tuple[float, float], margin: float = 0.04) -> np.ndarray:
    """Flip, rotate, stretch, scale and place a unit outline so that it lies inside a ``canvas`` square."""
    pts = outline.astype(np.float64).copy()
    if rng.random() < 0.5:
        pts[:, 0] = -pts[:, 0]
    angle = np.deg2rad(rng.uniform(-30, 30))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = (pts @ rot.T) * rng.uniform(0.85, 1.15, size=2) * (rng.uniform(*half_extent) * canvas)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    usable = canvas * (1 - 2 * margin)
    pts *= min(1.0, usable / float((hi - lo).max()))      # wide shapes (cloud, arrow) may need shrinking
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    # Any placement that keeps the bounding box inside the margins, biased towards the centre.
    low, high = canvas * margin - lo, canvas * (1 - margin) - hi
    return pts + low + (high - low) * rng.beta(2.0, 2.0, size=2)


def _resample_closed(pts: np.ndarray, spacing: float) -> np.ndarray:
    """Evenly spaced points along a closed polyline (so strokes can start and stop anywhere)."""
    closed = np.vstack([pts, pts[:1]])
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    t = np.arange(0.0, cum[-1], spacing)
    return np.stack([np.interp(t, cum, closed[:, 0]), np.interp(t, cum, closed[:, 1])], axis=1)


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Moving average along axis 0 (odd ``width``), same length as the input however short it is."""
    kernel = np.ones(width) / width
    padded = np.pad(values, ((width // 2, width // 2), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(values.shape[1])], axis=1)


# ---------------------------------------------------------------------------------------------- sketches
def draw_sketch(class_name: str, rng: np.random.Generator, size: int = DEFAULT_SIZE) -> Image.Image:
    """A hand-drawn-looking outline: wobbly, partly open or overshooting, 1-3 strokes, varying width."""
    ss = 2 * size                                            # drawn at 2x, then box-downsampled = anti-aliased
    outline = _random_pose(_SHAPES[class_name], rng, ss, (0.28, 0.42))
    dense = _resample_closed(outline, spacing=ss / 170)
    n = len(dense)
    # Slow periodic wobble along the outline (the hand's imprecision) ...
    u = np.arange(n) / n
    wobble = np.zeros_like(dense)
    for freq in (1, 2, 3, 5):
        amp = rng.normal(0, 0.012 * ss / freq, size=2)
        wobble += amp * np.sin(2 * np.pi * freq * u[:, None] + rng.uniform(0, 2 * np.pi, size=2))
    dense = dense + wobble
    img = Image.new("L", (ss, ss), 255)
    draw = ImageDraw.Draw(img)
    ink = int(rng.integers(0, 50))
    # Thick pens (5-8.5 px at 256 px): the demo trains at 64 px, where thinner strokes fade to faint grey.
    base_width = rng.uniform(5.0, 8.5) * 2
    # ... then the whole outline is traced as 1-3 strokes covering 93-108% of it: gaps and overlaps.
    n_strokes = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    covered = int(n * rng.uniform(0.93, 1.08))
    start = int(rng.integers(0, n))
    cuts = np.sort(rng.integers(int(0.15 * covered), int(0.85 * covered), size=n_strokes - 1))
    bounds = np.concatenate([[0], cuts, [covered]])
    for a, b in zip(bounds[:-1], bounds[1:]):
        a = a + int(rng.integers(0, 4))                       # pen lifted: a small gap before each stroke
        if b - a < 8:                                        # too short to read as a stroke
            continue
        idx = (start + np.arange(a, b)) % n
        stroke = dense[idx]
        progress = np.linspace(0, 1, len(stroke))[:, None]
        drift = progress * rng.normal(0, 0.02 * ss, size=2)  # stroke ends miss where they should meet
        tremor = _smooth(rng.normal(0, 0.004 * ss, size=stroke.shape), 5)
        stroke = stroke + drift + tremor + rng.normal(0, 0.004 * ss, size=2)
        width = max(2, int(round(base_width * rng.uniform(0.8, 1.2))))
        draw.line([tuple(p) for p in stroke], fill=ink, width=width)   # points are dense: no joints needed
    if rng.random() < 0.35:                                   # a short re-trace beside part of the outline
        length = int(n * rng.uniform(0.1, 0.3))
        idx = (int(rng.integers(0, n)) + np.arange(length)) % n
        stroke = dense[idx] + rng.normal(0, 0.012 * ss, size=2)
        draw.line([tuple(p) for p in stroke], fill=ink, width=max(2, int(base_width * 0.7)))
    return img.reduce(2)


# ---------------------------------------------------------------------------------------------- photos
def _random_colour(rng: np.random.Generator, saturation: tuple[float, float],
                   value: tuple[float, float]) -> np.ndarray:
    hsv = (rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(colorsys.hsv_to_rgb(*hsv), dtype=np.float32)


def _smooth_field(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, blotchiness: float,
                  size: int) -> Image.Image:
    """A linear colour gradient (random direction) with soft blotches, as an RGB image.

    The field is smooth, so it is computed on a 6x6 grid and upsampled: far cheaper than per-pixel maths.
    """
    axis = np.linspace(-0.5, 0.5, 6)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None] + 0.5, 0, 1)[..., None]
    field = start * (1 - ramp) + end * ramp + rng.uniform(-blotchiness, blotchiness, size=(6, 6, 3))
    coarse = Image.fromarray((np.clip(field, 0, 1) * 255 + 0.5).astype(np.uint8))
    return coarse.resize((size, size), Image.BICUBIC)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Muted gradient with soft colour blotches."""
    return _smooth_field(rng, _random_colour(rng, (0.05, 0.45), (0.35, 0.95)),
                         _random_colour(rng, (0.05, 0.45), (0.35, 0.95)), rng.uniform(0.04, 0.14), size)


def _clutter(rng: np.random.Generator, size: int) -> Image.Image:
    """Small translucent distractors (blobs, boxes, sticks, polygons), slightly out of focus."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(4, 11))):
        colour = tuple(int(c * 255) for c in _random_colour(rng, (0.1, 0.8), (0.2, 1.0)))
        fill = colour + (int(rng.integers(90, 220)),)
        cx, cy = rng.uniform(0, size, size=2)
        r = rng.uniform(0.04, 0.13) * size
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r], fill=fill)
        elif kind == 1:
            draw.rectangle([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r], fill=fill)
        elif kind == 2:
            end = (cx + rng.normal(0, 2 * r), cy + rng.normal(0, 2 * r))
            draw.line([(cx, cy), end], fill=fill, width=int(rng.integers(2, 7)))
        else:
            draw.polygon([tuple(p) for p in _regular_polygon(int(rng.integers(3, 6)), r, rng.uniform(0, 6))
                          + (cx, cy)], fill=fill)
    return layer.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 1.5)))


def _texture_mask(rng: np.random.Generator, size: int) -> Image.Image | None:
    """Where a second colour goes on the object: stripes, polka dots, or nothing (plain surface)."""
    kind = rng.integers(0, 3)
    if kind == 0:
        return None
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = axis[:, None], axis[None, :]
    if kind == 1:
        theta = rng.uniform(0, np.pi)
        phase = (np.float32(np.cos(theta)) * xx + np.float32(np.sin(theta)) * yy) / np.float32(rng.uniform(0.04, 0.1))
        marks = np.mod(phase, 1) < 0.5
    else:
        period = np.float32(rng.uniform(0.05, 0.09))
        marks = (np.mod(xx, period) - period / 2) ** 2 + (np.mod(yy, period) - period / 2) ** 2 < (period * 0.3) ** 2
    return Image.fromarray(marks.astype(np.uint8) * 255)


def _object_surface(rng: np.random.Generator, size: int) -> Image.Image:
    """A saturated colour lit from one side, maybe with stripes or dots in a second (lighter) colour."""
    base = _random_colour(rng, (0.55, 1.0), (0.55, 1.0))
    dark, light = base * 0.45, np.minimum(base * 1.25, 1)
    surface = _smooth_field(rng, dark, light, 0.03, size)
    marks = _texture_mask(rng, size)
    if marks is not None:
        second = _random_colour(rng, (0.2, 1.0), (0.6, 1.0))
        surface = Image.composite(_smooth_field(rng, second * 0.6, second, 0.03, size), surface, marks)
    return surface


def _scaled_mask(mask: Image.Image, factor: float) -> Image.Image:
    return mask.point([int(v * factor + 0.5) for v in range(256)])


def draw_photo(class_name: str, rng: np.random.Generator, size: int = DEFAULT_SIZE) -> Image.Image:
    """A filled, shaded object of the class with a dark rim and a drop shadow, on a cluttered background."""
    scene = _background(rng, size)
    clutter = _clutter(rng, size)
    scene.paste(clutter, (0, 0), clutter)

    outline = _random_pose(_SHAPES[class_name], rng, 2 * size, (0.22, 0.38))
    points = [tuple(p) for p in outline]
    mask = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    mask = mask.reduce(2)                                        # drawn at 2x: anti-aliased edges
    rim = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(rim).line(points + points[:1], fill=255, width=max(2, size // 40))
    rim = rim.reduce(2)

    black = Image.new("RGB", (size, size), 0)
    shift = tuple(int(v) for v in rng.integers(3, 9, size=2) * rng.choice([-1, 1], size=2))
    shadow = Image.new("L", (size, size), 0)
    shadow.paste(mask, shift)
    scene = Image.composite(black, scene, _scaled_mask(shadow.filter(ImageFilter.BoxBlur(4)), 0.45))
    obj = Image.composite(black, _object_surface(rng, size), _scaled_mask(rim, 0.55))  # dark rim = edge
    scene = Image.composite(obj, scene, mask)
    # Sensor-like grain over everything, so no region is perfectly flat.
    grain = rng.integers(-12, 13, size=(size, size, 1), dtype=np.int16) * rng.uniform(0.3, 1.0)
    pixels = np.asarray(scene, dtype=np.int16) + grain.astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- dataset
def image_rng(seed: int, modality: int, class_name: str, index: int) -> np.random.Generator:
    """The generator of one image; independent of every other image's."""
    return np.random.default_rng([seed, modality, CLASS_NAMES.index(class_name), index])


def demo_cid_mask() -> dict[int, np.ndarray]:
    """Pseudo WordNet relatedness {seen id: float64[1000]}: a few ImageNet classes per seen class.

    Seeded by the class name (CRC32, stable across runs, unlike ``hash``): relatedness is a property of
    the class, not of the drawn images.
    """
    mask = {}
    for cid, name in enumerate(sorted(SEEN_CLASSES)):
        rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
        row = np.zeros(N_IMAGENET, dtype=np.float64)
        related = rng.choice(N_IMAGENET, size=int(rng.integers(3, 7)), replace=False)
        row[related] = np.round(rng.uniform(0.3, 1.0, size=len(related)), 4)
        mask[cid] = row
    return mask


def _n_val(sketches_per_class: int) -> int:
    """Seen-class sketches per class held out for the *_test (validation) list."""
    return max(1, int(round(sketches_per_class * VAL_FRACTION)))


def _prepare_target(target: Path, force: bool) -> None:
    """Refuse to touch a non-empty folder unless --force, and never delete one data.demo did not make."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder: choose another --out")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not force:
        raise UserError(f"{target} already exists and is not empty: pass --force to replace the demo "
                        f"dataset there, or choose another --out")
    if not (target / MARKER_FILE).is_file():
        raise UserError(f"{target} has no {MARKER_FILE}, so it was not made by data.demo (it may be a real "
                        f"dataset): it is not deleted even with --force; choose another --out")
    shutil.rmtree(target)


def _write_list(path: Path, entries: Sequence[tuple[str, int]]) -> None:
    path.write_text(list_text(entries), encoding="utf-8")


def _zero_counts(sketches_per_class: int, photos_per_class: int, zero_per_class: int | None) -> tuple[int, int]:
    """(sketches, photos) of each unseen class: ``zero_per_class`` of each, or the seen-class counts."""
    if zero_per_class is None:
        return sketches_per_class, photos_per_class
    return zero_per_class, zero_per_class


def _draw_and_save(job: tuple[str, str, int, int, int, str]) -> None:
    """Draw one image and write it (a module-level function, so that a process pool can run it)."""
    kind, name, seed, index, size, path = job
    if kind == "sketch":
        draw_sketch(name, image_rng(seed, _SKETCH, name, index), size).save(path)
    else:
        draw_photo(name, image_rng(seed, _PHOTO, name, index), size).save(path, quality=90)


def _run_jobs(jobs: list, workers: int) -> None:
    if workers <= 1 or len(jobs) < 64:
        for job in jobs:
            _draw_and_save(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # Large chunks: one image takes milliseconds, so per-task overhead would dominate otherwise.
        for _ in pool.map(_draw_and_save, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
            pass


def generate_demo_dataset(out_root: Path, seed: int = 0,
                          sketches_per_class: int = DEFAULT_SKETCHES_PER_CLASS,
                          photos_per_class: int = DEFAULT_PHOTOS_PER_CLASS,
                          size: int = DEFAULT_SIZE, force: bool = False,
                          zero_per_class: int | None = None, workers: int = 1) -> Path:
    """Write the demo dataset under ``out_root/Sketchy``; returns that folder (list paths are relative to it).

    ``sketches_per_class``/``photos_per_class`` count the images of each *seen* class; each *unseen* class
    gets ``zero_per_class`` sketches and as many photos (default: the seen counts). ``workers`` processes
    draw the images; the output does not depend on it. Pass ``out_root`` as ``--data_root`` to the Sketchy
    (zeroshot1) scripts.
    """
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if sketches_per_class < 2:
        raise UserError(f"--sketches_per_class must be >= 2 (one for training, one for validation), "
                        f"got {sketches_per_class}")
    if photos_per_class < 1:
        raise UserError(f"--photos_per_class must be >= 1, got {photos_per_class}")
    if zero_per_class is not None and zero_per_class < 1:
        raise UserError(f"--zero_per_class must be >= 1, got {zero_per_class}")
    if size < 32:
        raise UserError(f"--size must be >= 32 pixels, got {size}")
    zero_sketches, zero_photos = _zero_counts(sketches_per_class, photos_per_class, zero_per_class)
    setting = get_setting(SETTING_NAME)
    root = Path(out_root) / setting.dataset_dir
    _prepare_target(root, force)
    split = root / setting.split_dir
    split.mkdir(parents=True, exist_ok=True)
    # Written first, so that an interrupted run can still be replaced with --force.
    (root / MARKER_FILE).write_text(
        "Synthetic demo dataset made by `python -m data.demo` (not real data): "
        f"seed={seed}, sketches_per_class={sketches_per_class}, photos_per_class={photos_per_class}, "
        f"zero_per_class={zero_per_class}, size={size}.\n"
        "It may be deleted and regenerated with --force.\n", encoding="utf-8")

    n_val = _n_val(sketches_per_class)
    lists: dict[str, list[tuple[str, int]]] = {role: [] for role in SAKE_NAMES}
    seen_ids = {name: i for i, name in enumerate(sorted(SEEN_CLASSES))}
    zero_ids = {name: i for i, name in enumerate(sorted(UNSEEN_CLASSES))}
    jobs = []
    for name in CLASS_NAMES:
        seen = name in seen_ids
        label = seen_ids[name] if seen else zero_ids[name]
        for folder in (SKETCH_DIR, PHOTO_DIR):
            (root / folder / name).mkdir(parents=True, exist_ok=True)
        for n in range(sketches_per_class if seen else zero_sketches):
            rel = f"{SKETCH_DIR}/{name}/{n}.png"
            jobs.append(("sketch", name, seed, n, size, str(root / rel)))
            role = ("sketch_train" if n < sketches_per_class - n_val else "sketch_test") if seen else "sketch_zero"
            lists[role].append((rel, label))
        for n in range(photos_per_class if seen else zero_photos):
            rel = f"{PHOTO_DIR}/{name}/{n}.jpg"
            jobs.append(("photo", name, seed, n, size, str(root / rel)))
            lists["photo_train" if seen else "photo_zero"].append((rel, label))
    _run_jobs(jobs, workers)

    for role, file_name in SAKE_NAMES.items():
        _write_list(split / file_name, lists[role])
    _write_list(split / "cname_cid.txt", list(seen_ids.items()))
    _write_list(split / "cname_cid_zero.txt", list(zero_ids.items()))
    with open(split / "cid_mask.pickle", "wb") as fh:
        pickle.dump(demo_cid_mask(), fh, protocol=2)       # the shipped masks are protocol-2 pickles
    return root


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m data.demo",
        description="Write a small synthetic zero-shot SBIR dataset in the public Sketchy layout.")
    parser.add_argument("--out", type=Path, default=Path("datasets/Demo"),
                        help="data root to write <out>/Sketchy/ under")
    parser.add_argument("--seed", type=int, default=0, help="seed of every drawing (same seed, same images)")
    parser.add_argument("--sketches_per_class", type=int, default=DEFAULT_SKETCHES_PER_CLASS,
                        help="sketches per seen class (a fifth of them become the *_test validation list)")
    parser.add_argument("--photos_per_class", type=int, default=DEFAULT_PHOTOS_PER_CLASS,
                        help="photos per seen class")
    parser.add_argument("--zero_per_class", type=int, default=None,
                        help="sketches and photos of each unseen class (default: the seen-class counts)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=min(2, usable_cores()),
                        help="processes drawing images (the output does not depend on it)")
    parser.add_argument("--force", action="store_true", help="replace a demo dataset already there")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    root = generate_demo_dataset(args.out, args.seed, args.sketches_per_class, args.photos_per_class,
                                 args.size, args.force, args.zero_per_class, args.workers)
    n_zero_sk, n_zero_ph = _zero_counts(args.sketches_per_class, args.photos_per_class, args.zero_per_class)
    n_val = _n_val(args.sketches_per_class)
    n_seen, n_unseen = len(SEEN_CLASSES), len(UNSEEN_CLASSES)
    print(f"demo dataset: {n_seen} seen + {n_unseen} unseen classes; sketches "
          f"{n_seen * (args.sketches_per_class - n_val)} train / {n_seen * n_val} val / "
          f"{n_unseen * n_zero_sk} zero, photos {n_seen * args.photos_per_class} train / "
          f"{n_unseen * n_zero_ph} zero; written to {root} in {time.perf_counter() - started:.1f} s "
          f"(use --data_root {args.out} with {SETTING_NAME})")


if __name__ == "__main__":
    run_cli(main)
