"""Stimulus images for CLIP models: read, resize, normalise (numpy + Pillow).

Two sources:

- a folder of image files with an **order file**: a text file with one image file name
  per line (relative to the folder), line ``k`` naming the image of stimulus ``k`` (the
  ``k``-th row of the targets: SPoSE rows, RDM rows). Blank trailing lines are ignored;
  ``#`` starts a comment line.
- an **array file** (``.npy``, or ``.npz`` with one array or key ``images``):
  ``(N, H, W, 3)`` uint8 (0..255) or ``(N, 3, H, W)`` float in [0, 1].

Every image is resized to ``size x size`` with no crop (bilinear, Pillow), as the CLIP-HBA
code (``transforms.Resize((224, 224))``), and kept as uint8 ``(N, size, size, 3)``
(uint8 inputs) or float32 ``(N, 3, size, size)`` in [0, 1] (float inputs) so a THINGS-sized
set stays small; :meth:`ImageSet.batch` normalises on the fly with
``(x - mean) / std`` per channel. The CLIP-HBA code normalises with THINGS statistics
(:data:`THINGS_MEAN`, :data:`THINGS_STD`), not CLIP's (:data:`CLIP_MEAN`, :data:`CLIP_STD`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybrain.errors import SpecError

__all__ = ["CLIP_MEAN", "CLIP_STD", "NORMALISATIONS", "THINGS_MEAN", "THINGS_STD", "ImageSet",
           "load_image_array", "load_image_folder", "read_order_file", "resize_images"]

THINGS_MEAN = (0.52997664, 0.48070561, 0.41943838)
"""Per-channel mean of the THINGS images (the CLIP-HBA code's normalisation)."""
THINGS_STD = (0.27608301, 0.26593025, 0.28238822)
"""Per-channel standard deviation of the THINGS images."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's normalisation mean (open_clip ``OPENAI_DATASET_MEAN``)."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's normalisation standard deviation."""

NORMALISATIONS = {"things": (THINGS_MEAN, THINGS_STD), "clip": (CLIP_MEAN, CLIP_STD),
                  "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
"""Named (mean, std) pairs accepted by :class:`ImageSet`."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class ImageSet:
    """Resized stimulus images, one per stimulus, in stimulus order.

    Attributes
    ----------
    pixels : np.ndarray
        uint8 (N, size, size, 3) or float32 (N, 3, size, size) in [0, 1].
    names : list of str
        One name per image (file names, or ``"image_<k>"`` for arrays).
    normalisation : str
        Key of :data:`NORMALISATIONS` used by :meth:`batch`.
    """

    pixels: np.ndarray
    names: list[str]
    normalisation: str = "things"

    def __post_init__(self):
        if self.normalisation not in NORMALISATIONS:
            raise SpecError(f"image normalisation must be one of {sorted(NORMALISATIONS)}, got "
                            f"{self.normalisation!r}")

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def size(self) -> int:
        """Side length of the square images."""
        return int(self.pixels.shape[1] if self.pixels.dtype == np.uint8 else self.pixels.shape[2])

    def batch(self, index) -> np.ndarray:
        """Normalised float32 images of the given stimuli.

        Parameters
        ----------
        index : array_like of int, shape (B,)

        Returns
        -------
        np.ndarray of float32, shape (B, 3, size, size)
        """
        idx = np.asarray(index, dtype=np.int64)
        x = self.pixels[idx]
        if x.dtype == np.uint8:
            x = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        mean, std = NORMALISATIONS[self.normalisation]
        m = np.asarray(mean, dtype=np.float32)[None, :, None, None]
        s = np.asarray(std, dtype=np.float32)[None, :, None, None]
        return ((x - m) / s).astype(np.float32)


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SpecError(f"image size must be a positive integer (pixels), got {size!r}")
    return size


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a stack of images to ``size x size`` (bilinear, no crop).

    Parameters
    ----------
    images : np.ndarray
        uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1].
    size : int

    Returns
    -------
    np.ndarray
        uint8 (N, size, size, 3), or float32 (N, 3, size, size).
    """
    from PIL import Image

    size = _check_size(size)
    x = np.asarray(images)
    if x.dtype == np.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise SpecError(f"uint8 images must have shape (N, H, W, 3), got {x.shape}")
        if x.shape[1:3] == (size, size):
            return np.ascontiguousarray(x)
        return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                         for im in x]) if len(x) else np.zeros((0, size, size, 3), np.uint8)
    if x.dtype.kind != "f" or x.ndim != 4 or x.shape[1] != 3:
        raise SpecError(f"images must be uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1], "
                        f"got {x.dtype} {x.shape}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise SpecError(f"float images must be finite and in [0, 1], got range "
                        f"[{np.nanmin(x):g}, {np.nanmax(x):g}]")
    x = x.astype(np.float32)
    if x.shape[2:] == (size, size):
        return np.ascontiguousarray(x)
    out = np.empty((len(x), 3, size, size), np.float32)
    for k, im in enumerate(x):
        for c in range(3):
            out[k, c] = np.asarray(Image.fromarray(im[c]).resize((size, size),
                                                                          Image.BILINEAR))
    return np.clip(out, 0.0, 1.0)


def read_order_file(path: str | os.PathLike) -> list[str]:
    """Image file names, one per line, in stimulus order (``#`` lines are comments)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"image order file '{p}' not found; expected a text file with one image "
                        f"file name per line")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if not ln.startswith("#")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise SpecError(f"image order file '{p}' is empty; expected one image file name per line")
    if "" in lines:
        raise SpecError(f"image order file '{p}': entry {lines.index('') + 1} is empty; expected "
                        f"one image file name per line")
    seen: dict[str, int] = {}
    for k, name in enumerate(lines):
        if name in seen:
            raise SpecError(f"image order file '{p}' names {name!r} twice (stimuli "
                            f"{seen[name]} and {k}); expected one image per stimulus")
        seen[name] = k
    return lines


def load_image_folder(folder: str | os.PathLike, order, size: int = 224, *,
                      normalisation: str = "things", n_stimuli: int | None = None) -> ImageSet:
    """Read the images named by an order file (or list) from a folder.

    Parameters
    ----------
    folder : path
    order : path or sequence of str
        Order file (see the module docstring) or the names themselves.
    size : int
        Output side length (224 for ViT-L-14).
    normalisation : {"things", "clip", "none"}
    n_stimuli : int or None
        Number of target stimuli; the order must name exactly that many images.

    Returns
    -------
    ImageSet
        uint8 pixels (N, size, size, 3), RGB.
    """
    from PIL import Image, UnidentifiedImageError

    d = Path(folder)
    if not d.is_dir():
        raise SpecError(f"image folder '{d}' not found; expected a directory of image files")
    names = read_order_file(order) if isinstance(order, (str, os.PathLike)) else list(order)
    if n_stimuli is not None and len(names) != n_stimuli:
        raise SpecError(f"the image order names {len(names)} images but the targets describe "
                        f"{n_stimuli} stimuli; expected one image per stimulus")
    size = _check_size(size)
    out = np.empty((len(names), size, size, 3), np.uint8)
    for k, name in enumerate(names):
        f = d / name
        if not f.is_file():
            raise SpecError(f"image {name!r} (stimulus {k}) not found in '{d}'")
        try:
            with Image.open(f) as im:
                out[k] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        except (UnidentifiedImageError, OSError) as exc:
            raise SpecError(f"image '{f}' (stimulus {k}) could not be read "
                            f"({type(exc).__name__}); expected an image file") from None
    return ImageSet(out, names, normalisation)


def load_image_array(path: str | os.PathLike, size: int = 224, *, normalisation: str = "things",
                     n_stimuli: int | None = None, key: str | None = None) -> ImageSet:
    """Read images from an array file (see the module docstring for the layouts).

    Parameters
    ----------
    path : path
        ``.npy`` or ``.npz``.
    size, normalisation, n_stimuli
        As :func:`load_image_folder`.
    key : str or None
        Array name inside an ``.npz`` (None: ``images``, or the only array).

    Returns
    -------
    ImageSet
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"image array file '{p}' not found; expected a .npy or .npz file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files)
                k = key or ("images" if "images" in names else (names[0] if len(names) == 1
                                                                 else None))
                if k not in names:
                    raise SpecError(f"image array file '{p}' holds {names}; name the array with "
                                    f"key (expected 'images' or a single array)")
                arr = z[k]
        elif p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            raise SpecError(f"image array file '{p}' has suffix {p.suffix!r}; expected .npy or "
                            f".npz")
    except SpecError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise SpecError(f"image array file '{p}' could not be read ({type(exc).__name__}); "
                        f"expected a numpy array file") from None
    if n_stimuli is not None and arr.ndim >= 1 and arr.shape[0] != n_stimuli:
        raise SpecError(f"image array file '{p}' holds {arr.shape[0]} images but the targets "
                        f"describe {n_stimuli} stimuli; expected one image per stimulus")
    pixels = resize_images(arr, size)
    return ImageSet(pixels, [f"image_{k}" for k in range(len(pixels))], normalisation)
