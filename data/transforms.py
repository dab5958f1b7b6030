"""Pre-processing of METHOD.md section 5, with Pillow and torchvision."""
from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomAffineXY:
    """With probability ``p`` apply: flip (0.5), independent x/y scale U(0.7,1.3) (0.5),
    rotation U(-30,30) degrees (0.5), translation U(-10,10) px in x and y (0.5).

    The released code draws these as independent ``Sometimes`` steps; torchvision's RandomAffine has no
    anisotropic scale, so the steps are composed into one matrix here and the image is resampled once
    (bilinear, constant fill 0 like the original augmenter's default).
    """

    def __init__(self, p: float = 0.7, scale=(0.7, 1.3), degrees: float = 30.0, translate_px: float = 10.0,
                 fill: int = 0):
        self.p, self.scale, self.degrees, self.translate_px, self.fill = p, scale, degrees, translate_px, fill

    def _matrix(self, w: int, h: int) -> tuple[float, ...] | None:
        rnd = lambda a, b: a + (b - a) * torch.rand(()).item()  # noqa: E731 - torch RNG keeps runs seeded
        coin = lambda q: torch.rand(()).item() < q  # noqa: E731
        if not coin(self.p):
            return None
        sx = sy = 1.0
        angle = tx = ty = 0.0
        flip = coin(0.5)
        if coin(0.5):
            sx, sy = rnd(*self.scale), rnd(*self.scale)
        if coin(0.5):
            angle = math.radians(rnd(-self.degrees, self.degrees))
        if coin(0.5):
            tx, ty = rnd(-self.translate_px, self.translate_px), rnd(-self.translate_px, self.translate_px)
        # forward map about the image centre: p' = R S F (p - c) + c + t ; PIL wants the inverse.
        fx = -1.0 if flip else 1.0
        cos, sin = math.cos(angle), math.sin(angle)
        a, b = cos * sx * fx, -sin * sy
        c, d = sin * sx * fx, cos * sy
        det = a * d - b * c
        ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
        cx, cy = w / 2.0, h / 2.0
        ox, oy = cx + tx, cy + ty
        return (ia, ib, cx - ia * ox - ib * oy, ic, id_, cy - ic * ox - id_ * oy)

    def __call__(self, img: Image.Image) -> Image.Image:
        m = self._matrix(*img.size)
        if m is None:
            return img
        return img.transform(img.size, Image.Transform.AFFINE, m, resample=Image.Resampling.BILINEAR,
                             fillcolor=(self.fill,) * len(img.getbands()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, scale={self.scale}, degrees={self.degrees}, " \
               f"translate_px={self.translate_px})"


def train_transform(img_size: int = 224) -> T.Compose:
    return T.Compose([RandomAffineXY(), T.Resize((img_size, img_size)), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_transform(img_size: int = 224) -> T.Compose:
    return T.Compose([T.Resize((img_size, img_size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


