"""Pre-processing of METHOD.md section 5, with Pillow and torchvision."""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterator, Optional

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The generator the augmentation draws from (None: torch's global one); see drawing_from.
_generator: Optional[torch.Generator] = None


@contextlib.contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Within the block, the augmentation draws from ``generator`` instead of torch's global generator (the
    training loaders give each image of each epoch its own, data.dataset.SeededAugmentation)."""
    global _generator
    before, _generator = _generator, generator
    try:
        yield
    finally:
        _generator = before


def _rand() -> float:
    return torch.rand((), generator=_generator).item()


def pillow_affine(sx: float, sy: float, angle: float, tx: float, ty: float) -> tuple[float, ...]:
    """Pillow AFFINE coefficients that resample as the released code's
    ``warp(img, AffineTransform(scale=(sx, sy), rotation=angle, translation=(tx, ty)).inverse)`` does.

    skimage's forward map, in (x = column, y = row) coordinates whose integer values are pixel centres, is
    ``p' = A p + t`` with ``A = [[sx cos, -sy sin], [sx sin, sy cos]]``: scale, then rotation about the
    top-left pixel's centre, then translation. Pillow wants the output -> input map, and its coordinates
    are pixel corners (pixel i spans [i, i + 1), its centre is i + 0.5), so the half-pixel shift is
    composed in: ``corner_in = A^-1 (corner_out - 0.5 - t) + 0.5``.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    a, b, c, d = sx * cos, -sy * sin, sx * sin, sy * cos
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    ox, oy = tx + 0.5, ty + 0.5
    return ia, ib, 0.5 - (ia * ox + ib * oy), ic, id_, 0.5 - (ic * ox + id_ * oy)


def warp_affine(img: Image.Image, coeffs: tuple[float, ...], fill: int = 0) -> Image.Image:
    """Bilinear resampling with Pillow's ``coeffs`` (output -> input), as skimage's ``warp(order=1,
    mode='constant', cval=fill)`` and ``.astype('uint8')`` compute it.

    skimage treats each of the four neighbours of a sample that falls outside the image as ``fill``, so
    the warped image's edge blends into the fill over one pixel; Pillow instead fills samples outside the
    image and repeats the edge pixels for those just inside. A one-pixel border of ``fill`` around the
    image (the coefficients shifted by it) gives skimage's edge. Pillow truncates the interpolated value
    to uint8 as ``astype('uint8')`` does.
    """
    w, h = img.size
    colour = (fill,) * len(img.getbands())
    padded = Image.new(img.mode, (w + 2, h + 2), colour)
    padded.paste(img, (1, 1))
    ia, ib, c0, ic, id_, c1 = coeffs
    return padded.transform((w, h), Image.Transform.AFFINE, (ia, ib, c0 + 1.0, ic, id_, c1 + 1.0),
                            resample=Image.Resampling.BILINEAR, fillcolor=colour)


class RandomAffineXY:
    """The released code's sketch/photo augmentation, applied with probability ``p``.

    Each step independently: horizontal flip (0.5); independent x/y scale U(0.7,1.3) (0.5); rotation
    U(-30,30) degrees (0.5); translation U(-10,10) px in x and y (0.5). As in the original (skimage's
    ``AffineTransform`` + ``warp``), scale/rotation/translation form one affine map about the centre of
    the top-left pixel, resampled bilinearly on skimage's pixel-centre grid with constant fill 0 (black)
    and truncated to uint8 (``pillow_affine``, ``warp_affine``). torchvision's RandomAffine has neither
    anisotropic scale nor this origin, hence this small class on top of Pillow.
    """

    def __init__(self, p: float = 0.7, scale=(0.7, 1.3), degrees: float = 30.0, translate_px: float = 10.0,
                 fill: int = 0):
        self.p, self.scale, self.degrees, self.translate_px, self.fill = p, scale, degrees, translate_px, fill

    @staticmethod
    def _uniform(a: float, b: float) -> float:
        return a + (b - a) * _rand()  # torch's RNG (or the image's own generator), so --seed covers it

    def draw(self) -> tuple[bool, tuple[float, ...] | None] | None:
        """(flip, Pillow affine coefficients or None for no warp); None: image left alone."""
        coin = lambda q: _rand() < q  # noqa: E731
        if not coin(self.p):
            return None
        flip = coin(0.5)
        sx, sy = (self._uniform(*self.scale), self._uniform(*self.scale)) if coin(0.5) else (1.0, 1.0)
        angle = math.radians(self._uniform(-self.degrees, self.degrees)) if coin(0.5) else 0.0
        tx, ty = ((self._uniform(-self.translate_px, self.translate_px),
                   self._uniform(-self.translate_px, self.translate_px)) if coin(0.5) else (0.0, 0.0))
        if (sx, sy, angle, tx, ty) == (1.0, 1.0, 0.0, 0.0, 0.0):
            return flip, None
        return flip, pillow_affine(sx, sy, angle, tx, ty)

    def __call__(self, img: Image.Image) -> Image.Image:
        drawn = self.draw()
        if drawn is None:
            return img
        flip, coeffs = drawn
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if coeffs is None:
            return img
        return warp_affine(img, coeffs, self.fill)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, scale={self.scale}, degrees={self.degrees}, " \
               f"translate_px={self.translate_px})"


def _to_tensor(normalize: bool) -> list:
    """ToTensor + Normalize (float32, normalised on the CPU), or uint8 CHW for ``normalize_on_device``."""
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)] if normalize else [T.PILToTensor()]


def train_transform(img_size: int = 224, normalize: bool = True) -> T.Compose:
    """The released augmentation; ``normalize=False`` stops at uint8 (the same draws, a quarter of the bytes)."""
    return T.Compose([RandomAffineXY(), T.Resize((img_size, img_size)), *_to_tensor(normalize)])


def test_transform(img_size: int = 224, normalize: bool = True) -> T.Compose:
    return T.Compose([T.Resize((img_size, img_size)), *_to_tensor(normalize)])


def normalize_on_device(x: torch.Tensor) -> torch.Tensor:
    """uint8 batch (N x 3 x H x W) from a ``normalize=False`` transform -> what ToTensor + Normalize give.

    The same operations in the same order (``/255``, ``-mean``, ``/std`` in float32), so the values are
    bit-identical to the CPU pipeline's; run on the GPU, it moves the conversion off the loader workers.
    """
    mean, std = normalization_tensors(x.device)
    return x.to(torch.float32).div_(255).sub_(mean).div_(std)


@functools.lru_cache(maxsize=None)
def normalization_tensors(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std (1 x 3 x 1 x 1, float32) on ``device``, built once per device: building them per
    batch would copy from the host and synchronise the GPU twice per step."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


def to_model_input(x: torch.Tensor, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                   on_device_normalize: bool = False) -> torch.Tensor:
    """A loader batch on ``device`` in ``memory_format``, normalised there when the loader sent uint8."""
    x = x.to(device, non_blocking=True)
    if on_device_normalize:
        x = normalize_on_device(x)
    return x.contiguous(memory_format=memory_format)
