"""Frozen backbone features of the model side: a feature file, or images through a backbone.

The brain-in-the-loop method trains a small adaptor over *frozen* features of a
pretrained network (CLIP, SimCLR, DINOv2 in the paper). Features are computed once,
under ``no_grad``, and then read as an array ``(n_items, d)``:

- :func:`load_features`: a feature file (``.npy``, ``.npz``, ``.h5``/``.hdf5``);
- :func:`backbone_features`: images through an open_clip model (``encode_image``) or a
  torchvision classifier with its classification head removed, by name, with weights from
  a local checkpoint or random (``pretrained=None`` / ``weights=None``). Nothing is
  downloaded. A checkpoint that does not fit the architecture is one SpecError line.

open_clip and torchvision are imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from raybrain.errors import SpecError

__all__ = ["load_features", "backbone_features", "BACKBONE_LIBRARIES"]

BACKBONE_LIBRARIES = ("open_clip", "torchvision")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_features(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read a feature array ``(n_items, d)`` from ``.npy``, ``.npz`` or ``.h5``/``.hdf5``.

    Parameters
    ----------
    path : path
    key : str, optional
        Array name inside ``.npz``/HDF5 (None: the file must hold exactly one).

    Returns
    -------
    np.ndarray of float32, shape (n_items, d)

    Raises
    ------
    SpecError
        Missing or unreadable file, unknown suffix, ambiguous or missing key, an array that
        is not 2-D, not numeric or not finite.
    """
    p = Path(path)
    where = f"feature file '{os.fspath(path)}'"
    if not p.is_file():
        raise SpecError(f"{where} not found; expected an existing .npy, .npz or .h5 file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files)
                k = _pick(names, key, where)
                arr = z[k]
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as f:
                names = [n for n in f if isinstance(f[n], h5py.Dataset)]
                arr = np.asarray(f[_pick(names, key, where)])
        else:
            raise SpecError(f"{where}: unknown format; expected .npy, .npz or .h5/.hdf5, got "
                            f"'{p.name}'")
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"{where} could not be read ({type(exc).__name__}: "
                        f"{_first_line(exc)}); the file may be corrupt or truncated") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SpecError(f"{where}: features must be 2-D (n_items, d), got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise SpecError(f"{where}: features must be numeric, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(arr))[0])
        raise SpecError(f"{where}: item {r}, dim {c} is {arr[r, c]}; expected finite features")
    return arr.astype(np.float32)


def _pick(names: list[str], key: str | None, where: str) -> str:
    if key is not None:
        if key not in names:
            raise SpecError(f"{where} has no array {key!r}; expected one of {sorted(names)}")
        return key
    if len(names) != 1:
        raise SpecError(f"{where} holds {len(names)} arrays {sorted(names)[:10]}; name one "
                        f"with key")
    return names[0]


def _images_tensor(images: Any):
    """Images as a float tensor (n, 3, H, W) in [0, 1]."""
    import torch

    if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, Path)):
        from PIL import Image

        arrs = []
        for path in images:
            try:
                with Image.open(path) as im:
                    arrs.append(np.asarray(im.convert("RGB").resize((224, 224)),
                                           dtype=np.float32) / 255.0)
            except Exception as exc:
                raise SpecError(f"image '{path}' could not be read ({_first_line(exc)})") from None
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        return x
    x = torch.as_tensor(np.asarray(images.detach().cpu() if hasattr(images, "detach")
                                   else images))
    if x.ndim != 4 or (x.shape[1] != 3 and x.shape[-1] != 3):
        raise SpecError(f"images must have shape (n, 3, H, W) or (n, H, W, 3), got "
                        f"{tuple(x.shape)}")
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise SpecError("float images must be finite and in [0, 1] (or pass uint8 in 0..255)")
    return x


def _open_clip_model(name: str, checkpoint):
    import open_clip

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise SpecError(f"checkpoint '{checkpoint}' not found; expected a local file (no "
                        f"downloads here) or None for random weights")
    try:
        model = open_clip.create_model(name, pretrained=None if checkpoint is None
                                       else os.fspath(checkpoint))
    except Exception as exc:
        if checkpoint is None:
            raise SpecError(f"open_clip model {name!r} could not be built "
                            f"({_first_line(exc)})") from None
        raise SpecError(f"checkpoint '{checkpoint}' does not fit open_clip model {name!r} "
                        f"({type(exc).__name__}: {_first_line(exc)})") from None
    visual = model.visual
    size = visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return model, model.encode_image, size, mean, std


def _strip_head(model):
    import torch.nn as nn

    for attr in ("fc", "heads", "head", "classifier"):
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return model
    raise SpecError(f"torchvision model {type(model).__name__} has no fc/heads/head/"
                    f"classifier attribute to remove; expected a classification network")


def _torchvision_model(name: str, checkpoint, image_size: int):
    import torch
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except Exception as exc:
        raise SpecError(f"torchvision model {name!r} could not be built ({_first_line(exc)}); "
                        f"expected a name from torchvision.models.list_models()") from None
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise SpecError(f"checkpoint '{checkpoint}' not found; expected a local file (no "
                            f"downloads here) or None for random weights")
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise SpecError(f"checkpoint '{checkpoint}' does not fit torchvision model {name!r} "
                            f"({type(exc).__name__}: {_first_line(exc)})") from None
    model = _strip_head(model)
    return model, model, (image_size, image_size), _IMAGENET_MEAN, _IMAGENET_STD


def backbone_features(images: Any, name: str, library: str = "open_clip",
                      checkpoint: str | os.PathLike | None = None, batch_size: int = 64,
                      device: str = "cpu", image_size: int = 224) -> np.ndarray:
    """Frozen features of images through a named backbone, computed once under no_grad.

    Images are resized (bilinear, antialiased) to the backbone's input size and
    normalised with its mean/std (open_clip: the model's preprocessing config; torchvision:
    ImageNet statistics).

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (n, 3, H, W) or (n, H, W, 3), or list of paths
        uint8 in 0..255 or float in [0, 1]; paths are read with PIL as RGB.
    name : str
        open_clip model name (e.g. ``"ViT-B-32"``) or torchvision model name (e.g.
        ``"resnet18"``).
    library : {"open_clip", "torchvision"}
    checkpoint : path, optional
        Local weights (open_clip: any format ``open_clip.create_model(pretrained=path)``
        loads; torchvision: a ``state_dict`` saved by ``torch.save``). None: random weights.
    batch_size : int
    device : str
    image_size : int
        torchvision input size (open_clip models know theirs).

    Returns
    -------
    np.ndarray of float32, shape (n, d)
        ``encode_image`` output (open_clip, unnormalised) or the penultimate features
        (torchvision).

    Raises
    ------
    SpecError
        Unknown library or model, missing checkpoint, a checkpoint that does not fit the
        architecture (one line), malformed images.
    """
    import torch
    import torch.nn.functional as F

    if library not in BACKBONE_LIBRARIES:
        raise SpecError(f"library must be one of {list(BACKBONE_LIBRARIES)}, got {library!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise SpecError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    x = _images_tensor(images)
    if library == "open_clip":
        module, encode, size, mean, std = _open_clip_model(name, checkpoint)
    else:
        module, encode, size, mean, std = _torchvision_model(name, checkpoint, int(image_size))
    module = module.to(device).eval()
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], int(batch_size)):
            batch = x[i:i + int(batch_size)].to(device)
            if tuple(batch.shape[-2:]) != tuple(size):
                batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False,
                                      antialias=True)
            feats = encode((batch - m) / s)
            out.append(feats.reshape(feats.shape[0], -1).float().cpu())
    return torch.cat(out).numpy().astype(np.float32)
