"""The images of the demo world (:mod:`flair_riva.demo`): five kinds of synthetic 64 x 64 pictures.

Image kinds differ in colour and layout statistics that survive random conv features and average
pooling: ``person`` (skin-tone face on a plain mid-colour background), ``location`` (sky-blue top,
green/brown ground, a sun), ``organisation`` (white background, saturated logo, dark text bars),
and the unrelated kinds ``food`` (white plate on a red checkered cloth) and ``meme`` (white text bars
on black). Every image has its own colour, position and noise jitter (:func:`draw_image`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

IMAGE_SIZE = 64
IMAGE_KINDS = ("person", "location", "organisation", "food", "meme")


_SKIN = np.array([(233, 190, 160), (214, 160, 120), (180, 125, 85), (140, 90, 55), (250, 210, 180)], float)
_PERSON_BG = np.array([(100, 110, 140), (90, 130, 125), (125, 105, 140), (120, 120, 95), (140, 120, 110)], float)
_LOGO = np.array([(220, 30, 40), (30, 70, 210), (245, 130, 20), (140, 30, 170), (20, 160, 70)], float)
_FOOD = np.array([(170, 100, 40), (230, 160, 40), (90, 150, 50), (200, 60, 40)], float)


def _jitter(rng: np.random.Generator, colour, amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(colour, float) + rng.uniform(-amount, amount, 3), 0, 255)


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def draw_image(kind: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One synthetic image of ``kind`` as an (H, W, 3) uint8 array (see the module docstring)."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    img = np.zeros((s, s, 3), float)
    u = s / 64.0  # layout unit
    if kind == "person":
        img[:] = _jitter(rng, _PERSON_BG[rng.integers(len(_PERSON_BG))], 20)
        cy, cx = s * 0.46 + rng.uniform(-4, 4) * u, s * 0.5 + rng.uniform(-5, 5) * u
        ry, rx = rng.uniform(17, 21) * u, rng.uniform(13, 16) * u
        img[_ellipse(yy, xx, s * 1.05, cx, 18 * u, 26 * u)] = _jitter(rng, (60, 60, 80), 40)  # shoulders
        hair = _jitter(rng, (45, 30, 20), 20)
        img[_ellipse(yy, xx, cy - ry * 0.35, cx, ry * 0.85, rx * 1.1)] = hair
        img[_ellipse(yy, xx, cy, cx, ry, rx)] = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 10)
        for side in (-1, 1):
            img[_ellipse(yy, xx, cy - ry * 0.15, cx + side * rx * 0.42, 2.2 * u, 2.6 * u)] = (25, 20, 20)
        img[_ellipse(yy, xx, cy + ry * 0.45, cx, 1.6 * u, rx * 0.4)] = _jitter(rng, (150, 40, 50), 15)
    elif kind == "location":
        horizon = s * rng.uniform(0.45, 0.58)
        sky_top, sky_low = _jitter(rng, (70, 140, 230), 15), _jitter(rng, (170, 210, 245), 10)
        t = np.clip(yy / horizon, 0, 1)[..., None]
        img[:] = sky_top * (1 - t) + sky_low * t
        ground = _jitter(rng, [(60, 140, 50), (80, 150, 60), (130, 100, 60)][rng.integers(3)], 15)
        below = yy >= horizon
        img[below] = ground * (1 - 0.25 * (yy[below] - horizon)[:, None] / s)
        if rng.random() < 0.5:  # a hill / mountain
            peak_x, h = rng.uniform(0.2, 0.8) * s, rng.uniform(8, 16) * u
            hill = (yy < horizon) & (yy > horizon - h + np.abs(xx - peak_x) * 0.8)
            img[hill] = _jitter(rng, (110, 120, 110), 15)
        sx = rng.choice([rng.uniform(0.12, 0.3), rng.uniform(0.7, 0.88)]) * s
        img[_ellipse(yy, xx, rng.uniform(0.1, 0.22) * s, sx, 6 * u, 6 * u)] = _jitter(rng, (255, 225, 60), 10)
    elif kind == "organisation":
        img[:] = _jitter(rng, (246, 246, 246), 8)
        colour = _jitter(rng, _LOGO[rng.integers(len(_LOGO))], 15)
        cy, cx, r = rng.uniform(0.3, 0.45) * s, rng.uniform(0.3, 0.7) * s, rng.uniform(10, 14) * u
        if rng.random() < 0.5:
            img[(np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)] = colour
        else:
            img[_ellipse(yy, xx, cy, cx, r, r)] = colour
        y = cy + r + 5 * u
        for _ in range(rng.integers(2, 4)):
            w = rng.uniform(0.35, 0.75) * s
            x0 = rng.uniform(0.08, 0.92) * s - w / 2
            img[(yy >= y) & (yy < y + 3.5 * u) & (xx >= x0) & (xx < x0 + w)] = _jitter(rng, (40, 40, 50), 10)
            y += 7 * u
    elif kind == "food":
        check = max(3, int(rng.integers(5, 9) * u))
        off_y, off_x = rng.integers(0, check, 2)
        red = _jitter(rng, (200, 35, 40), 20)
        cells = (((yy + off_y) // check + (xx + off_x) // check) % 2).astype(bool)
        img[:] = _jitter(rng, (245, 240, 235), 8)
        img[cells] = red
        cy, cx, r = s * 0.5 + rng.uniform(-5, 5) * u, s * 0.5 + rng.uniform(-5, 5) * u, rng.uniform(19, 24) * u
        img[_ellipse(yy, xx, cy, cx, r, r)] = _jitter(rng, (250, 250, 250), 4)
        for _ in range(rng.integers(2, 5)):
            fy, fx = cy + rng.uniform(-0.45, 0.45) * r, cx + rng.uniform(-0.45, 0.45) * r
            img[_ellipse(yy, xx, fy, fx, rng.uniform(3, 7) * u, rng.uniform(3, 8) * u)] = _jitter(
                rng, _FOOD[rng.integers(len(_FOOD))], 15)
    elif kind == "meme":
        img[:] = _jitter(rng, (12, 12, 12), 10)
        for band_top in (rng.uniform(0.05, 0.12) * s, rng.uniform(0.72, 0.8) * s):
            for row in range(rng.integers(1, 3)):
                y0 = band_top + row * 7 * u
                x = rng.uniform(0.05, 0.15) * s
                while x < s * 0.9:  # words of the caption
                    w = rng.uniform(4, 12) * u
                    img[(yy >= y0) & (yy < y0 + 4.5 * u) & (xx >= x) & (xx < min(x + w, s * 0.92))] = _jitter(
                        rng, (245, 245, 245), 8)
                    x += w + rng.uniform(2, 4) * u
    else:
        raise ValueError(f"unknown image kind {kind!r} (one of {IMAGE_KINDS})")
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array, "RGB")
    if fmt == "PNG":
        image.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        image.save(buf, format="JPEG", quality=90, optimize=False)
    return buf.getvalue()
