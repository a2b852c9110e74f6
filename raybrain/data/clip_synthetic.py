"""Synthetic CLIP-HBA data with a known answer (numpy).

Images are small procedural scenes (:func:`procedural_images`): a two-colour gradient
background and one object (disc, square, triangle, ring or striped patch) of random colour,
position, size and texture. A **hidden teacher**, a fixed random convolutional network
(:class:`Teacher`), sees each image and produces

- early features (the coarse spatial layout of its first convolution, 64-d), and
- a behavioural embedding (``n_dims``, non-negative and sparse, on SPoSE's raw scale:
  mean row sum 10, as the THINGS SPoSE rows), computed from later layers.

From these come the targets:

- ``embeddings`` (N, n_dims): the teacher's behavioural embedding;
- ``triplets``/``odd``: odd-one-out trials on random triplets with SPoSE's choice rule
  (``p(odd = i) ∝ exp(x_j . x_k)``, sampled; or the arg max with ``choice="argmax"``);
- ``rdms`` (P, T, N, N): time-resolved RDMs of P participants. Participant p's
  representation at time t is ``g_e(t - tau_p) E_p + g_l(t - tau_p) L_p + sigma eps_t``:
  a transient early component (Gaussian bump at 100 ms, width 40 ms) carrying the early
  features, a sustained late component (logistic rise at 200 ms, slope 30 ms) carrying the
  behavioural embedding, and fresh Gaussian noise at every time point. ``E_p`` and ``L_p``
  are participant-specific distortions of the shared (standardised) features with strength
  ``d`` (``distortion``): per-feature gains ``exp(d z_p)`` (how much the participant weighs
  each dimension) followed by a mixing ``I + d R_p / sqrt(k)``; ``tau_p`` is a participant
  latency shift. The early and late components are scaled to unit variance per feature
  before the distortion. ``rdm_t = 1 - Pearson r`` between the stimuli's
  representations. Before onset the RDMs are pure noise.

``informative=True``: the targets describe the returned images. ``informative=False``
(null): the same teacher describes an *unrelated*, independently drawn image set; the
targets have the same distribution but carry no information about the returned images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raybrain.errors import SpecError

__all__ = ["SyntheticCLIPData", "Teacher", "procedural_images", "synthetic_clip_data",
           "synthetic_labels"]

_ADJ = ["red", "round", "striped", "bright", "dark", "small", "large", "green", "blue",
        "square", "soft", "metal"]
_NOUN = ["object", "thing", "texture", "shape", "pattern", "animal"]


def synthetic_labels(n: int) -> list[str]:
    """``n`` distinct two-word labels ("red object", "round thing", ...), n <= 72."""
    pairs = [f"{a} {b}" for b in _NOUN for a in _ADJ]
    if not 1 <= n <= len(pairs):
        raise SpecError(f"synthetic labels: n_dims must be in [1, {len(pairs)}], got {n}")
    return pairs[:n]


def procedural_images(n: int, size: int = 32, rng: np.random.Generator | None = None
                      ) -> np.ndarray:
    """Procedural RGB scenes.

    Parameters
    ----------
    n : int
    size : int
        Side length in pixels (>= 8).
    rng : np.random.Generator or None

    Returns
    -------
    np.ndarray of uint8, shape (n, size, size, 3)
    """
    if size < 8:
        raise SpecError(f"procedural images need size >= 8 pixels, got {size}")
    rng = rng or np.random.default_rng(0)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = np.empty((n, size, size, 3), np.float64)
    for k in range(n):
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        ang = rng.uniform(0, 2 * np.pi)
        g = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) + 0.5
        img = c0 * (1 - g[..., None]) + c1 * g[..., None]
        cx, cy = rng.uniform(0.3, 0.7, 2)
        r = rng.uniform(0.15, 0.35)
        shape = rng.integers(5)
        dx, dy = xx - cx, yy - cy
        if shape == 0:
            mask = dx ** 2 + dy ** 2 < r ** 2
        elif shape == 1:
            mask = (np.abs(dx) < r) & (np.abs(dy) < r)
        elif shape == 2:
            mask = (dy > -r) & (dy < r) & (np.abs(dx) < (r - dy) / 2)
        elif shape == 3:
            d2 = dx ** 2 + dy ** 2
            mask = (d2 < r ** 2) & (d2 > (0.5 * r) ** 2)
        else:
            mask = (np.abs(dx) < r) & (np.abs(dy) < r)
        col = rng.uniform(0, 1, 3)
        freq, theta = rng.uniform(2, 8), rng.uniform(0, np.pi)
        tex = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy))
        amount = 1.0 if shape == 4 else rng.uniform(0, 0.6)
        obj = col * (1 - amount * 0.8 * tex[..., None])
        img = np.where(mask[..., None], obj, img)
        out[k] = img
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def _pool(x: np.ndarray, cells: int) -> np.ndarray:
    """Average pool (N, C, H, W) to (N, C, cells, cells) over near-equal blocks."""
    rows = np.array_split(np.arange(x.shape[2]), cells)
    cols = np.array_split(np.arange(x.shape[3]), cells)
    return np.stack([np.stack([x[:, :, r][:, :, :, c].mean(axis=(2, 3)) for c in cols], -1)
                     for r in rows], -2)


class Teacher:
    """A fixed random convolutional network: the hidden source of synthetic targets.

    conv 5 x 5, stride 2, 16 channels, ReLU -> (early) 2 x 2 average pool, 64-d ->
    [global mean, global max, early], standardised -> linear 96 -> 64, ReLU, standardised
    -> linear 64 -> n_dims, ReLU (sparse, non-negative) -> scaled to a mean row sum of 10
    (as SPoSE).
    The standardisation constants and the scale come from 128 calibration images drawn
    at construction, so each image's output depends on that image alone.

    Parameters
    ----------
    n_dims : int
    seed : int
        The teacher's weights.
    size : int
        Side length of the calibration images (that of the images it will see).
    """

    def __init__(self, n_dims: int = 66, seed: int = 0, size: int = 32):
        rng = np.random.default_rng([seed, 7])
        self.n_dims = n_dims
        self.k1 = rng.normal(0, 1, (16, 3, 5, 5)) / np.sqrt(75)
        self.k1 += rng.normal(0, 0.3, (16, 3, 1, 1))  # colour sensitivity
        self.w2 = rng.normal(0, 1, (96, 64)) / np.sqrt(96)
        self.w3 = rng.normal(0, 1, (64, n_dims)) / np.sqrt(64)
        self.b3 = -0.5 * np.ones(n_dims)
        calib = procedural_images(128, size, np.random.default_rng([seed, 8]))
        z, _ = self._conv(calib)
        self._z = (z.mean(0), z.std(0) + 1e-8)
        late = np.maximum(((z - self._z[0]) / self._z[1]) @ self.w2, 0.0)
        self._late = (late.mean(0), late.std(0) + 1e-8)
        self._scale = 1.0
        self._scale = 10.0 / max(float(self._head(z).sum(1).mean()), 1e-8)

    def _conv(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(images, dtype=np.float64).transpose(0, 3, 1, 2) / 255.0 - 0.5
        win = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(2, 3))[:, :, ::2, ::2]
        n, _, hh, ww = win.shape[:4]
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * hh * ww, -1)  # (N h w, 75)
        h = np.maximum(cols @ self.k1.reshape(len(self.k1), -1).T, 0.0)
        h = h.reshape(n, hh, ww, -1).transpose(0, 3, 1, 2)  # (N, 16, h, w)
        early = _pool(h, 2).reshape(len(x), -1)  # (N, 64)
        return np.concatenate([h.mean(axis=(2, 3)), h.max(axis=(2, 3)), early], axis=1), early

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Early features and behavioural embedding of images.

        Parameters
        ----------
        images : np.ndarray of uint8, shape (N, H, W, 3)

        Returns
        -------
        early : np.ndarray, shape (N, 64)
        embedding : np.ndarray, shape (N, n_dims), non-negative
        """
        z, early = self._conv(images)
        return early, self._head(z)

    def _head(self, z: np.ndarray) -> np.ndarray:
        late = np.maximum(((z - self._z[0]) / self._z[1]) @ self.w2, 0.0)
        late = (late - self._late[0]) / self._late[1]
        return np.maximum(late @ self.w3 + self.b3, 0.0) * self._scale


@dataclass
class SyntheticCLIPData:
    """Synthetic CLIP-HBA data.

    Attributes
    ----------
    images : np.ndarray of uint8, shape (N, size, size, 3)
    embeddings : np.ndarray of float64, shape (N, n_dims)
        Behavioural targets (raw scale, non-negative).
    labels : list of str, length n_dims
    rdms : np.ndarray of float32, shape (P, T, N, N)
    times : np.ndarray of float64, shape (T,), seconds
    triplets : np.ndarray of int64, shape (M, 3)
    odd : np.ndarray of int64, shape (M,)
        Position of the teacher's odd one out.
    informative : bool
    """

    images: np.ndarray
    embeddings: np.ndarray
    labels: list[str]
    rdms: np.ndarray
    times: np.ndarray
    triplets: np.ndarray
    odd: np.ndarray
    informative: bool


def _corr_rdm(r: np.ndarray) -> np.ndarray:
    """1 - Pearson between rows, for every leading index: (..., N, k) -> (..., N, N)."""
    rc = r - r.mean(-1, keepdims=True)
    z = rc / np.maximum(np.linalg.norm(rc, axis=-1, keepdims=True), 1e-12)
    d = 1.0 - z @ np.swapaxes(z, -1, -2)
    n = r.shape[-2]
    d[..., np.arange(n), np.arange(n)] = 0.0
    return np.clip(d, 0.0, 2.0)


def _distort(x: np.ndarray, d: float, rng: np.random.Generator) -> np.ndarray:
    """A participant's view of standardised features (N, k): per-feature gains
    ``exp(d z)`` (which dimensions the participant weighs) then a mixing ``I + d R / sqrt(k)``."""
    k = x.shape[1]
    gains = np.exp(d * rng.normal(0, 1, k))
    return (x * gains) @ (np.eye(k) + d * rng.normal(0, 1, (k, k)) / np.sqrt(k))


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def synthetic_clip_data(n_images: int = 96, *, size: int = 32, n_dims: int = 66,
                        times_ms: tuple[float, float, float] = (-100, 600, 20),
                        n_participants: int = 1, n_triplets: int = 1000,
                        informative: bool = True, seed: int = 0, distortion: float = 0.3,
                        latency_jitter_ms: float = 20.0, rdm_noise: float = 0.5,
                        choice: str = "spose") -> SyntheticCLIPData:
    """Images and teacher targets (see the module docstring).

    Parameters
    ----------
    n_images : int
        N >= 3.
    size : int
        Image side length.
    n_dims : int
        Behavioural dimensions (<= 72).
    times_ms : (start, stop, step)
        Time axis in ms, stop inclusive.
    n_participants : int
        P.
    n_triplets : int
        Odd-one-out trials M.
    informative : bool
        False: targets from an unrelated image set (null).
    seed : int
        Everything (images, teacher, participants, trials) follows from it.
    distortion : float
        Strength ``d`` of the participant-specific feature distortions (0: identical
        participants up to latency and noise).
    latency_jitter_ms : float
        Participant latencies are uniform in ``[-jitter, +jitter]``.
    rdm_noise : float
        Standard deviation ``sigma`` of the per-time representation noise (the standardised
        components have unit variance per feature).
    choice : {"spose", "argmax"}
        Odd-one-out rule: sampled from SPoSE's softmax, or the most similar pair.

    Returns
    -------
    SyntheticCLIPData
    """
    from raybrain.data.meg_targets import time_axis

    if n_images < 3:
        raise SpecError(f"synthetic data need n_images >= 3, got {n_images}")
    if n_participants < 1 or n_triplets < 0:
        raise SpecError(f"n_participants must be >= 1 and n_triplets >= 0, got "
                        f"{n_participants} and {n_triplets}")
    if choice not in ("spose", "argmax"):
        raise SpecError(f"choice must be 'spose' or 'argmax', got {choice!r}")
    if distortion < 0 or rdm_noise < 0 or latency_jitter_ms < 0:
        raise SpecError(f"distortion, rdm_noise and latency_jitter_ms must be >= 0, got "
                        f"{distortion}, {rdm_noise}, {latency_jitter_ms}")
    labels = synthetic_labels(n_dims)
    times = time_axis(*times_ms)
    images = procedural_images(n_images, size, np.random.default_rng([seed, 0]))
    seen = images if informative else procedural_images(n_images, size,
                                                         np.random.default_rng([seed, 2]))
    teacher = Teacher(n_dims, seed, size)
    early, emb = teacher.features(seen)

    rng = np.random.default_rng([seed, 3])
    k_e = 32
    e_std = _standardise(early) @ rng.normal(0, 1, (early.shape[1], k_e)) / np.sqrt(
        early.shape[1])
    e_std = _standardise(e_std)
    l_std = _standardise(emb)
    rdms = np.empty((n_participants, len(times), n_images, n_images), np.float32)
    for p in range(n_participants):
        e_p = _distort(e_std, distortion, rng)
        l_p = _distort(l_std, distortion, rng)
        tau = rng.uniform(-latency_jitter_ms, latency_jitter_ms) / 1000.0
        t = times - tau
        g_e = np.exp(-0.5 * ((t - 0.1) / 0.04) ** 2)
        g_l = 1.0 / (1.0 + np.exp(-(t - 0.2) / 0.03))
        g_e[times <= 0], g_l[times <= 0] = 0.0, 0.0
        rep = np.concatenate([g_e[:, None, None] * e_p[None], g_l[:, None, None] * l_p[None]],
                             axis=-1)
        rep = rep + rdm_noise * rng.normal(0, 1, rep.shape)
        rdms[p] = _corr_rdm(rep)

    trip_rng = np.random.default_rng([seed, 4])
    triplets = np.stack([trip_rng.choice(n_images, 3, replace=False) for _ in range(n_triplets)]
                        ) if n_triplets else np.zeros((0, 3), np.int64)
    if n_triplets:
        a, b, c = emb[triplets[:, 0]], emb[triplets[:, 1]], emb[triplets[:, 2]]
        s = np.column_stack([(b * c).sum(1), (a * c).sum(1), (a * b).sum(1)])
        if choice == "argmax":
            odd = np.argmax(s, axis=1)
        else:
            pr = np.exp(s - s.max(1, keepdims=True))
            pr /= pr.sum(1, keepdims=True)
            u = trip_rng.uniform(size=(n_triplets, 1))
            odd = np.minimum((u > np.cumsum(pr, axis=1)).sum(1), 2)
    else:
        odd = np.zeros(0, np.int64)
    return SyntheticCLIPData(images, emb, labels, rdms, times, triplets.astype(np.int64),
                             np.asarray(odd, dtype=np.int64), informative)
