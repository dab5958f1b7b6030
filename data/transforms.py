"""Pre-processing of METHOD.md section 5, with Pillow and torchvision."""
from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomAffineXY:
    """The released code's sketch/photo augmentation, applied with probability ``p``.

    Each step independently: horizontal flip (0.5); independent x/y scale U(0.7,1.3) (0.5); rotation
    U(-30,30) degrees (0.5); translation U(-10,10) px in x and y (0.5). As in the original (skimage's
    ``AffineTransform`` + ``warp``), scale/rotation/translation form one affine map about the image's
    top-left corner, resampled bilinearly with constant fill 0 (black). torchvision's RandomAffine has
    neither anisotropic scale nor a corner origin, hence this small class on top of Pillow.
    """

    def __init__(self, p: float = 0.7, scale=(0.7, 1.3), degrees: float = 30.0, translate_px: float = 10.0,
                 fill: int = 0):
        self.p, self.scale, self.degrees, self.translate_px, self.fill = p, scale, degrees, translate_px, fill

    @staticmethod
    def _uniform(a: float, b: float) -> float:
        return a + (b - a) * torch.rand(()).item()  # torch's RNG, so --seed and worker seeding cover it

    def draw(self) -> tuple[bool, tuple[float, ...] | None] | None:
        """(flip, inverse affine coefficients for Pillow or None for no warp); None: image left alone."""
        coin = lambda q: torch.rand(()).item() < q  # noqa: E731
        if not coin(self.p):
            return None
        flip = coin(0.5)
        sx, sy = (self._uniform(*self.scale), self._uniform(*self.scale)) if coin(0.5) else (1.0, 1.0)
        angle = math.radians(self._uniform(-self.degrees, self.degrees)) if coin(0.5) else 0.0
        tx, ty = ((self._uniform(-self.translate_px, self.translate_px),
                   self._uniform(-self.translate_px, self.translate_px)) if coin(0.5) else (0.0, 0.0))
        if (sx, sy, angle, tx, ty) == (1.0, 1.0, 0.0, 0.0, 0.0):
            return flip, None
        # forward map p' = A p + t with A = [[sx cos, -sy sin], [sx sin, sy cos]]; Pillow wants the inverse.
        cos, sin = math.cos(angle), math.sin(angle)
        a, b, c, d = sx * cos, -sy * sin, sx * sin, sy * cos
        det = a * d - b * c
        ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
        return flip, (ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty))

    def __call__(self, img: Image.Image) -> Image.Image:
        drawn = self.draw()
        if drawn is None:
            return img
        flip, coeffs = drawn
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if coeffs is None:
            return img
        return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR,
                             fillcolor=(self.fill,) * len(img.getbands()))

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
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.to(torch.float32).div_(255).sub_(mean).div_(std)


def to_model_input(x: torch.Tensor, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                   on_device_normalize: bool = False) -> torch.Tensor:
    """A loader batch on ``device`` in ``memory_format``, normalised there when the loader sent uint8."""
    x = x.to(device, non_blocking=True)
    if on_device_normalize:
        x = normalize_on_device(x)
    return x.contiguous(memory_format=memory_format)
