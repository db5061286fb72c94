"""Image similarity for tests, without numpy: PSNR and a block SSIM.

Media outputs are checked by how close they look to a reference, never by
their bytes (encoders change between builds). :func:`psnr` is in decibels
over RGB (99 for identical images; ≥ 30 dB is a close match, ≥ 40 dB
invisible). :func:`ssim` is the structural similarity of the luma, averaged
over 8×8 blocks (1.0 identical, ≥ 0.9 the same picture, a shifted or
different picture scores far lower). Both take Pillow images of one size.
"""

from __future__ import annotations

import math

from PIL import Image, ImageChops

IDENTICAL_PSNR = 99.0
_BLOCK = 8
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _same_size(a: Image.Image, b: Image.Image) -> None:
    if a.size != b.size:
        raise ValueError(f"images differ in size: {a.size} and {b.size}")


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio of two images over their RGB channels, in dB."""
    _same_size(a, b)
    histogram = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).histogram()
    squared = sum(count * (index % 256) ** 2 for index, count in enumerate(histogram))
    mse = squared / (a.size[0] * a.size[1] * 3)
    return IDENTICAL_PSNR if mse == 0 else 10 * math.log10(255**2 / mse)


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Mean SSIM of the luma over 8×8 blocks (an image smaller than a block is one block)."""
    _same_size(a, b)
    width, height = a.size
    luma_a = a.convert("L").tobytes()
    luma_b = b.convert("L").tobytes()
    step_x, step_y = min(_BLOCK, width), min(_BLOCK, height)
    scores: list[float] = []
    for top in range(0, height - step_y + 1, step_y):
        for left in range(0, width - step_x + 1, step_x):
            xs: list[int] = []
            ys: list[int] = []
            for row in range(top, top + step_y):
                start = row * width + left
                xs.extend(luma_a[start : start + step_x])
                ys.extend(luma_b[start : start + step_x])
            scores.append(_block_ssim(xs, ys))
    return sum(scores) / len(scores)


def _block_ssim(xs: list[int], ys: list[int]) -> float:
    count = len(xs)
    mean_x, mean_y = sum(xs) / count, sum(ys) / count
    var_x = sum((x - mean_x) ** 2 for x in xs) / count
    var_y = sum((y - mean_y) ** 2 for y in ys) / count
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / count
    return ((2 * mean_x * mean_y + _C1) * (2 * cov + _C2)) / (
        (mean_x**2 + mean_y**2 + _C1) * (var_x + var_y + _C2)
    )


def region_psnr(a: Image.Image, box_a: tuple[int, int, int, int], b: Image.Image) -> float:
    """PSNR of the ``box_a`` region of ``a`` against the whole of ``b``."""
    return psnr(a.crop(box_a), b)


def gradient_energy(image: Image.Image) -> float:
    """Mean absolute difference between horizontal neighbours of the luma: edges and
    detail raise it, blurring lowers it."""
    luma = image.convert("L")
    shifted = luma.transform(luma.size, Image.Transform.AFFINE, (1, 0, 1, 0, 1, 0))
    width, height = luma.size
    inner = (0, 0, width - 1, height)
    histogram = ImageChops.difference(luma.crop(inner), shifted.crop(inner)).histogram()
    return sum(index * count for index, count in enumerate(histogram)) / ((width - 1) * height)
