"""DigitScenes: the embedded default dataset — multi-digit scenes built at run time from scikit-learn's 8x8 digits.

No download: ``sklearn.datasets.load_digits`` ships with scikit-learn. A scene is a smooth colour-gradient background
with 1-3 clutter strokes/blobs (labelled background) and 1-4 upscaled digits in contrasting ink colours on top.
Classes: 0 = background, ``c + 1`` = digit ``c``; soft ink edges are void (255).

``style`` draws the same scenes under a domain shift (the embedded stand-in for Cityscapes -> Dark Zurich):
``"day"`` (the training domain), ``"night"`` (the same layout darkened to 30-50 % brightness with a blue cast, 60 %
of the contrast and twice the sensor noise) and ``"texture"`` (a held-out background style: mid-tone sinusoidal stripes
instead of smooth light or dark gradients, the ink chosen against them as usual).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors

from segbandit.constants import IGNORE_INDEX

DIGIT_CLASSES: tuple[str, ...] = ("background",) + tuple(str(d) for d in range(10))
VOID = IGNORE_INDEX
INK_LABEL = 0.35  # normalised ink above this is the digit's class
INK_VOID = 0.15  # ink in (INK_VOID, INK_LABEL] is ambiguous -> void
INK_OPAQUE = 0.6  # ink at or above this paints the ink colour fully (opacity = ink / INK_OPAQUE, clipped)
SOURCE_SEED = 12345  # fixed train/val split of the source digits, independent of the scene seed
TRAIN_FRACTION = 0.8
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1}
DEFAULT_NUM_SAMPLES: dict[str, int] = {"train": 2000, "val": 256}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MIN_CONTRAST = 0.3  # luminance gap between ink and the background under it (in [0, 1])
STYLES: tuple[str, ...] = ("day", "night", "texture")  # the training domain and two shifted ones
_NIGHT_TINT = np.array([0.75, 0.85, 1.1], dtype=np.float32)  # sodium-free night: a blue cast


@functools.lru_cache(maxsize=1)
def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits -> glyphs float32 (N, 8, 8) in [0, 1], labels int64 (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def source_indices_for(split: str) -> np.ndarray:
    """Indices of the source digits a split may use: a fixed permutation, first 80% train, last 20% val."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown DigitScenes split {split!r}; valid splits: {', '.join(SPLIT_CODES)}")
    n = len(load_source_digits()[1])
    perm = np.random.default_rng(SOURCE_SEED).permutation(n)
    cut = int(round(TRAIN_FRACTION * n))
    return perm[:cut] if split == "train" else perm[cut:]


def _contrasting_colour(rng: np.random.Generator, lum_lo: float, lum_hi: float) -> np.ndarray:
    """An RGB colour (3,) in [0,1] whose luminance is >= _MIN_CONTRAST below lum_lo or above lum_hi."""
    cand = rng.random((64, 3), dtype=np.float32)  # (64, 3)
    lum = cand @ _LUMA  # (64,)
    ok = (lum <= lum_lo - _MIN_CONTRAST) | (lum >= lum_hi + _MIN_CONTRAST)
    if ok.any():
        return cand[int(np.argmax(ok))]
    # fall back to black or white, whichever is further from the background
    return np.full(3, 0.0 if lum_lo > 1.0 - lum_hi else 1.0, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (yy, xx), each float32 (size, size), read-only (shared by every scene of that size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth two-colour linear gradient, all light or all dark, (size, size, 3) float32 in [0, 1]."""
    light = rng.random() < 0.5
    lo, hi = (0.55, 1.0) if light else (0.0, 0.45)
    c0, c1 = rng.uniform(lo, hi, (2, 3)).astype(np.float32)  # (3,), (3,)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = _grid(size)  # (size, size)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)  # (size, size) in [0, 1]
    return c0 + (c1 - c0) * t[..., None]  # (size, size, 3)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Held-out background: mid-tone two-colour sinusoidal stripes, (size, size, 3) float32 in [0.25, 0.75]."""
    c0, c1 = rng.uniform(0.25, 0.75, (2, 3)).astype(np.float32)  # (3,), (3,)
    theta = rng.uniform(0.0, np.pi)
    cycles = rng.uniform(3.0, 8.0)
    yy, xx = _grid(size)
    t = (xx * np.cos(theta) + yy * np.sin(theta)) / size  # (size, size)
    wave = 0.5 + 0.5 * np.sin(2.0 * np.pi * cycles * t)
    return c0 + (c1 - c0) * wave[..., None]  # (size, size, 3)


def _night(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, float]:
    """Darken a scene (size, size, 3) in [0, 1]: 60 % of its contrast, scaled to 30-50 % with a blue cast; + noise std."""
    gain = rng.uniform(0.30, 0.50)
    mean = image.mean(axis=(0, 1), keepdims=True)
    flat = mean + 0.6 * (image - mean)  # lower contrast
    return flat * gain * _NIGHT_TINT, 0.04


def _box(lo_xy: np.ndarray, hi_xy: np.ndarray, size: int) -> tuple[slice, slice]:
    """The (rows, cols) slices of the pixels with lo <= (x, y) <= hi, clipped to the image."""
    (x0, y0), (x1, y1) = np.floor(lo_xy).astype(int), np.ceil(hi_xy).astype(int)
    return slice(max(y0, 0), min(y1 + 1, size)), slice(max(x0, 0), min(x1 + 1, size))


def _clutter_alpha(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Soft alpha of one thin curved stroke or one small blob: (alpha (h_box, w_box), box); alpha is 0 off the box."""
    yy, xx = _grid(size)
    if rng.random() < 0.7:  # quadratic Bezier stroke, thinner than digit strokes
        p0 = rng.uniform(0, size - 1, 2)
        length = rng.uniform(0.2, 0.8) * size
        ang = rng.uniform(0, 2 * np.pi)
        p2 = np.clip(p0 + length * np.array([np.cos(ang), np.sin(ang)]), 0, size - 1)
        normal = np.array([-np.sin(ang), np.cos(ang)])
        p1 = (p0 + p2) / 2 + normal * rng.normal(0.0, 0.25 * length)
        t = np.linspace(0.0, 1.0, 32)[:, None]  # (K, 1)
        pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.float32)  # (K, 2) as (x, y)
        half_width = rng.uniform(0.6, 1.4)
        box = _box(pts.min(0) - 2, pts.max(0) + 2, size)  # alpha is 0 beyond half_width + 0.5 < 2 px of the curve
        bx, by = xx[box], yy[box]  # (h_box, w_box)
        d2 = (bx[None] - pts[:, 0, None, None]) ** 2 + (by[None] - pts[:, 1, None, None]) ** 2  # (K, h_box, w_box)
        return np.clip(half_width + 0.5 - np.sqrt(d2.min(axis=0)), 0.0, 1.0), box
    cx, cy = rng.uniform(0, size - 1, 2)  # ellipse blob
    rx, ry = rng.uniform(1.5, 4.5, 2)
    ang = rng.uniform(0, np.pi)
    reach = max(rx, ry) * (1.0 + 0.5 / min(rx, ry)) + 1.0  # alpha > 0 needs rho < 1 + 0.5 / min(rx, ry)
    box = _box(np.array([cx, cy]) - reach, np.array([cx, cy]) + reach, size)
    bx, by = xx[box], yy[box]  # (h_box, w_box)
    u = (bx - cx) * np.cos(ang) + (by - cy) * np.sin(ang)
    v = -(bx - cx) * np.sin(ang) + (by - cy) * np.cos(ang)
    rho = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return np.clip((1.0 - rho) * min(rx, ry) + 0.5, 0.0, 1.0), box


def _digit_ink(glyph: np.ndarray, side: int) -> np.ndarray:
    """8x8 glyph in [0,1] -> bilinear-upscaled ink (side, side) normalised to peak 1 (1-px zero border first)."""
    padded = np.pad(glyph, 1)  # (10, 10): ink fades to 0 at the patch edge
    up = np.asarray(PIL.Image.fromarray(padded.astype(np.float32)).resize((side, side), PIL.Image.BILINEAR))
    return np.clip(up / max(float(up.max()), 1e-6), 0.0, 1.0)  # (side, side)


def render_scene(
    rng: np.random.Generator,
    glyphs: np.ndarray,
    digit_labels: np.ndarray,
    size: int = 64,
    min_digits: int = 1,
    max_digits: int = 4,
    scale_range: tuple[float, float] = (1.5, 3.5),
    clutter: bool = True,
    style: str = "day",
) -> tuple[np.ndarray, np.ndarray]:
    """One scene -> image uint8 (size, size, 3), mask int64 (size, size) in {0..10, 255}.

    ``glyphs`` (N, 8, 8) in [0, 1] and ``digit_labels`` (N,) are the source digits this scene may draw from.
    Background, clutter and digits use independent child streams of ``rng``, so toggling ``clutter`` leaves the
    background and the digits unchanged, and a ``"night"`` scene is its ``"day"`` scene darkened (same mask); a
    ``"texture"`` scene keeps the digits' glyphs, sizes and places on a striped background.
    """
    if style not in STYLES:
        raise ValueError(f"unknown DigitScenes style {style!r}; valid names: {', '.join(STYLES)}")
    bg_rng, clutter_rng, digit_rng = rng.spawn(3)
    background = _background(bg_rng, size)  # (size, size, 3)
    noise = bg_rng.normal(0.0, 0.02, (size, size, 3)).astype(np.float32)
    style_rng = rng.spawn(1)[0] if style != "day" else None  # a fourth stream: "day" scenes stay as they were
    if style == "texture":
        background = _stripes(style_rng, size)
    bg_lum = background @ _LUMA  # (size, size)
    image = background.copy()
    mask = np.zeros((size, size), dtype=np.int64)

    if clutter:  # ink-like strokes/blobs that stay background (0): "where the ink is" is not enough
        for _ in range(int(clutter_rng.integers(1, 4))):
            alpha, box = _clutter_alpha(clutter_rng, size)  # (h_box, w_box), 0 outside the box
            under = bg_lum[box][alpha > 0] if (alpha > 0).any() else bg_lum
            colour = _contrasting_colour(clutter_rng, float(under.min()), float(under.max()))
            image[box] = image[box] * (1 - alpha[..., None]) + colour * alpha[..., None]

    for _ in range(int(digit_rng.integers(min_digits, max_digits + 1))):
        j = int(digit_rng.integers(len(glyphs)))
        scale = digit_rng.uniform(*scale_range)
        side = min(int(round(10 * scale)), size)  # 8x8 glyph -> 8*scale px, plus the scaled 1-px border
        ink = _digit_ink(glyphs[j], side)  # (side, side)
        y0, x0 = (int(v) for v in digit_rng.integers(0, size - side + 1, 2))
        window = (slice(y0, y0 + side), slice(x0, x0 + side))
        under = bg_lum[window]
        colour = _contrasting_colour(digit_rng, float(under.min()), float(under.max()))
        opacity = np.clip(ink / INK_OPAQUE, 0.0, 1.0)[..., None]  # (side, side, 1): stroke cores fully cover
        image[window] = image[window] * (1 - opacity) + colour * opacity
        region = mask[window]  # view: later digits overwrite earlier ones
        region[ink > INK_LABEL] = int(digit_labels[j]) + 1
        region[(ink > INK_VOID) & (ink <= INK_LABEL)] = VOID

    if style == "night":
        image, std = _night(style_rng, image)
        noise = noise * (std / 0.02)
    image = np.clip(image + noise, 0.0, 1.0)
    return (image * 255.0 + 0.5).astype(np.uint8), mask


class DigitScenes(torch.utils.data.Dataset):
    """Multi-digit scenes on cluttered colour backgrounds, generated on the fly; ``__getitem__(i) -> (image, mask)``.

    Scene ``i`` is drawn from ``np.random.default_rng([seed, split_code, i])``: deterministic per (seed, split, i)
    and identical across DataLoader workers.  ``cache=True`` keeps every rendered scene in memory (uint8, 16 KB per
    64 px scene), so each is rendered once per process: a training run then spends its data time on the first
    epoch only. Train scenes use only train source digits (``source_indices``), val
    scenes only val ones. Without ``transforms``: tv_tensors.Image uint8 ``(3, size, size)`` and tv_tensors.Mask
    int64 ``(size, size)`` with 0 = background, ``c + 1`` = digit ``c``, 255 = void (soft ink edges).
    """

    num_classes: int = len(DIGIT_CLASSES)
    class_names: tuple[str, ...] = DIGIT_CLASSES
    ignore_index: int = VOID

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        size: int = 64,
        num_samples: int | None = None,
        min_digits: int = 1,
        max_digits: int = 4,
        scale_range: tuple[float, float] = (1.5, 3.5),
        clutter: bool = True,
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        cache: bool = False,
        style: str = "day",
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown DigitScenes style {style!r}; valid names: {', '.join(STYLES)}")
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown DigitScenes split {split!r}; valid splits: {', '.join(SPLIT_CODES)}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if size < 16:
            raise ValueError(f"size must be >= 16, got {size}")
        if not 0 <= min_digits <= max_digits:
            raise ValueError(f"need 0 <= min_digits <= max_digits, got min_digits={min_digits}, max_digits={max_digits}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        num_samples = DEFAULT_NUM_SAMPLES[split] if num_samples is None else int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.split = split
        self.split_code = SPLIT_CODES[split]
        self.seed = int(seed)
        self.size = int(size)
        self.num_samples = num_samples
        self.min_digits, self.max_digits = int(min_digits), int(max_digits)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.clutter = bool(clutter)
        self.style = style
        self.transforms = transforms
        self.source_indices = source_indices_for(split)  # (n_src,) indices into load_digits()
        glyphs, labels = load_source_digits()
        self._glyphs = glyphs[self.source_indices]  # (n_src, 8, 8)
        self._labels = labels[self.source_indices]  # (n_src,)
        self.cache = bool(cache)
        self._bank: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # images, masks, filled

    def _cached_scene(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene ``index`` from the in-memory bank (rendered on first access): uint8 (3, S, S), uint8 (S, S)."""
        if self._bank is None:  # allocated lazily, so that an unused dataset (or a pickled copy) costs nothing
            n, size = len(self), self.size
            self._bank = (
                torch.empty((n, 3, size, size), dtype=torch.uint8),  # (N, 3, S, S)
                torch.empty((n, size, size), dtype=torch.uint8),  # (N, S, S): labels 0..10 and 255 fit
                torch.zeros(n, dtype=torch.bool),
            )
        images, masks, filled = self._bank
        if not filled[index]:
            image, mask = self.scene(index)
            images[index] = torch.from_numpy(image).permute(2, 0, 1)
            masks[index] = torch.from_numpy(mask.astype(np.uint8))
            filled[index] = True
        return images[index], masks[index]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_bank"] = None  # DataLoader workers and copies start with an empty bank of their own
        return state

    def __len__(self) -> int:
        return self.num_samples

    def _checked_index(self, index: int) -> int:
        """``index`` in ``[0, len)`` (negative counts from the end); IndexError when out of range."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return index % n

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw scene ``index`` as numpy: image uint8 (size, size, 3), mask int64 (size, size)."""
        rng = np.random.default_rng([self.seed, self.split_code, self._checked_index(index)])
        return render_scene(
            rng, self._glyphs, self._labels, self.size, self.min_digits, self.max_digits, self.scale_range, self.clutter,
            self.style,
        )

    def raw_mask(self, index: int) -> np.ndarray:
        """The class map (size, size) int64 of scene ``index``, without transforms (for filtering by class)."""
        if self.cache:
            return self._cached_scene(self._checked_index(index))[1].numpy().astype(np.int64)
        return self.scene(index)[1]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if self.cache:
            image_u8, mask_u8 = self._cached_scene(self._checked_index(index))
            img_t = tv_tensors.Image(image_u8.clone())  # (3, size, size) uint8
            mask_t = tv_tensors.Mask(mask_u8.to(torch.int64))  # (size, size) int64
        else:
            image, mask = self.scene(index)
            img_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())  # (3, size, size) uint8
            mask_t = tv_tensors.Mask(torch.from_numpy(mask))  # (size, size) int64
        if self.transforms is not None:
            return self.transforms(img_t, mask_t)
        return img_t, mask_t

    def __repr__(self) -> str:
        style = "" if self.style == "day" else f", style={self.style!r}"
        return f"DigitScenes(split={self.split!r}, seed={self.seed}, size={self.size}, n={len(self)}{style})"
