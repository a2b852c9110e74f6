"""Procedural driving scenes: road, lanes, horizon, obstacles and fog.

A stand-in for the CARLA scenes the B2M paper trained its VAE on, with known factors.
Each image (RGB, float32 in [0, 1], shape (3, height, width)) shows a sky gradient above a
horizon, ground below, a road whose edges converge to a vanishing point on the horizon and
bend with the road's curvature (the lateral shift grows with the square of distance),
dashed centre markings that shrink with distance, cars on the road (dark bodies with
red rear lights, smaller when farther), and fog that blends every pixel towards light grey
with a weight growing with distance times the fog level.

Geometry, per image: the horizon sits at row ``round(horizon * height)``. A ground row's
``depth`` runs from 0 (bottom row, nearest) to 1 (horizon). The road's centre column is
``width / 2 * (1 - 0.6 * lane_offset * (1 - depth)) + 0.45 * width * curvature * depth ** 2``
(the car's lateral offset moves the near road, the curvature bends the far road) and its
half-width ``0.5 * width * (1 - depth) + 1`` pixels, so both edges meet at the vanishing
point on the horizon. Fog blends a pixel towards :data:`FOG_GREY` with weight
``min(1, 1.4 * fog * (0.35 + 0.65 * depth))``; the sky counts as depth 1.

:func:`render_scenes` draws independent scenes (the artificial training/test sets);
:func:`render_sequence` draws a drive whose factors follow slow random walks, like the
8 Hz video frames people saw while their EEG was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raybrain.errors import SpecError

__all__ = ["Scenes", "render_scenes", "render_sequence", "scene_factors_matrix"]

FOG_GREY = np.array([0.82, 0.83, 0.85], dtype=np.float32)
"""RGB colour that fog blends every pixel towards."""
SKY_TOP, SKY_LOW = np.array([0.35, 0.55, 0.9]), np.array([0.7, 0.8, 0.95])
GRASS, ROAD = np.array([0.25, 0.5, 0.2]), np.array([0.3, 0.3, 0.32])
MARK = np.array([0.95, 0.95, 0.9])


@dataclass
class Scenes:
    """Rendered scenes and their factors.

    Attributes
    ----------
    images : np.ndarray of float32, shape (n, 3, height, width)
        RGB values in [0, 1].
    fog : np.ndarray of float32, shape (n,)
        Fog level in ``fog_range`` (within [0, 1]).
    curvature : np.ndarray of float32, shape (n,)
        Road curvature in [-1, 1]; positive bends the far road to the right.
    horizon : np.ndarray of float32, shape (n,)
        Horizon row as a fraction of the image height (0.3 .. 0.5).
    lane_offset : np.ndarray of float32, shape (n,)
        The car's lateral offset (-0.5 .. 0.5); positive moves the near road to the left.
    n_obstacles : np.ndarray of int64, shape (n,)
        Number of cars ahead (0 .. max_obstacles).
    obstacle_x, obstacle_depth, obstacle_size : np.ndarray of float64, shape (n, max_obstacles)
        Per car, ordered far to near: lateral position on the road (-0.8 .. 0.8 of the
        half-width), depth (0 near .. 1 horizon) and on-screen height in pixels (falls with
        depth); NaN in unused slots.
    obstacle_box : np.ndarray of int64, shape (n, max_obstacles, 4)
        Per car, its drawn pixel box ``(row0, row1, col0, col1)`` (half-open, clipped to the
        image), ``-1`` in unused slots and for a car that falls outside the image.
    """

    images: np.ndarray
    fog: np.ndarray
    curvature: np.ndarray
    horizon: np.ndarray
    lane_offset: np.ndarray
    n_obstacles: np.ndarray
    obstacle_x: np.ndarray
    obstacle_depth: np.ndarray
    obstacle_size: np.ndarray
    obstacle_box: np.ndarray


def _render_one(height: int, width: int, fog: float, curv: float, horizon: float,
                offset: float, cars: list[tuple[float, float]],
                phase: float) -> tuple[np.ndarray, list[float], list[tuple[int, int, int, int]]]:
    """One image (3, height, width) float32, and per car (far to near) height and box."""
    img = np.empty((height, width, 3), dtype=np.float64)
    hz = int(round(horizon * height))
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    # sky
    t = np.clip(rows / max(hz, 1), 0, 1)[..., None]
    sky = SKY_TOP * (1 - t) + SKY_LOW * t
    # ground: depth 1 at the horizon, 0 at the bottom row
    below = np.clip((rows - hz) / max(height - hz, 1), 1e-3, 1.0)  # 0 at horizon .. 1 bottom
    depth = 1.0 - below  # (H, 1)
    centre = width / 2 * (1 - 0.6 * offset * below) + curv * width * 0.45 * depth ** 2
    half = 0.5 * width * below + 1.0
    dx = (cols - centre) / half  # road coordinate: -1..1 across the road
    on_road = np.abs(dx) <= 1.0
    ground = np.where(on_road[..., None], ROAD, GRASS)
    # dashed centre line, period shrinking with distance
    dash = (np.sin(2 * np.pi * (3.0 / (below + 0.15) + phase)) > 0)
    marking = (np.abs(dx) < 0.04) & dash & on_road  # 4 % of the road: thinner when far
    ground = np.where(marking[..., None], MARK, ground)
    is_ground = (rows >= hz)[..., None]
    img[:] = np.where(is_ground, ground, sky)
    sizes, boxes = [], []
    for x, d in sorted(cars, key=lambda c: -c[1]):  # far cars first, near ones drawn over
        b = 1.0 - d
        row = hz + b * (height - hz)
        c = width / 2 * (1 - 0.6 * offset * b) + curv * width * 0.45 * d ** 2
        hw = 0.5 * width * b + 1.0
        car_h = max(2.0, 0.45 * (height - hz) * b)
        car_w = max(2.0, 0.5 * hw)
        cx = c + x * 0.6 * hw
        r0, r1 = int(round(row - car_h)), int(round(row))
        c0, c1 = int(round(cx - car_w / 2)), int(round(cx + car_w / 2))
        r0, c0 = max(r0, hz), max(c0, 0)
        r1, c1 = min(r1, height), min(c1, width)
        if r1 > r0 and c1 > c0:
            img[r0:r1, c0:c1] = (0.12, 0.1, 0.12)
            light_r = max(r0, r1 - max(1, (r1 - r0) // 3))
            img[light_r:r1, c0:c0 + max(1, (c1 - c0) // 4)] = (0.85, 0.1, 0.1)
            img[light_r:r1, c1 - max(1, (c1 - c0) // 4):c1] = (0.85, 0.1, 0.1)
            boxes.append((r0, r1, c0, c1))
        else:
            boxes.append((-1, -1, -1, -1))
        sizes.append(float(car_h))
    # fog: the sky counts as far away
    dist = np.where(rows >= hz, depth, 1.0)  # (H, 1)
    weight = np.clip(fog * (0.35 + 0.65 * dist) * 1.4, 0, 1)[..., None]
    img = img * (1 - weight) + FOG_GREY * weight
    return np.clip(img, 0, 1).transpose(2, 0, 1).astype(np.float32), sizes, boxes


def _assemble(n, height, width, fog, curv, horizon, offset, cars, phases, max_obstacles) -> Scenes:
    images = np.empty((n, 3, height, width), dtype=np.float32)
    ox = np.full((n, max_obstacles), np.nan)
    od = np.full((n, max_obstacles), np.nan)
    osz = np.full((n, max_obstacles), np.nan)
    obox = np.full((n, max_obstacles, 4), -1, dtype=np.int64)
    for i in range(n):
        images[i], sizes, boxes = _render_one(height, width, fog[i], curv[i], horizon[i],
                                              offset[i], cars[i], phases[i])
        ordered = sorted(cars[i], key=lambda c: -c[1])
        for k, ((x, d), sz, box) in enumerate(zip(ordered, sizes, boxes)):
            ox[i, k], od[i, k], osz[i, k], obox[i, k] = x, d, sz, box
    return Scenes(images, fog.astype(np.float32), curv.astype(np.float32),
                  horizon.astype(np.float32), offset.astype(np.float32),
                  np.array([len(c) for c in cars], dtype=np.int64), ox, od, osz, obox)


def _check(what: str, n: int, height: int, width: int, fog_range: tuple[float, float],
           max_obstacles: int, min_n: int) -> None:
    if int(n) != n or n < min_n:
        raise SpecError(f"{what} must be an integer >= {min_n}, got {n!r}")
    if int(height) != height or int(width) != width or height < 8 or width < 8:
        raise SpecError(f"scene height and width must be integers >= 8, got "
                        f"{height!r} x {width!r}")
    lo, hi = fog_range
    if not 0 <= lo <= hi <= 1:
        raise SpecError(f"fog_range must satisfy 0 <= low <= high <= 1, got {tuple(fog_range)}")
    if int(max_obstacles) != max_obstacles or max_obstacles < 0:
        raise SpecError(f"max_obstacles must be an integer >= 0, got {max_obstacles!r}")


def render_scenes(n: int, rng: np.random.Generator, *, height: int = 80, width: int = 160,
                  fog_range: tuple[float, float] = (0.0, 0.8), max_obstacles: int = 3) -> Scenes:
    """Render ``n`` independent scenes (the artificial training and test sets).

    Factors are drawn independently per scene: fog uniform in ``fog_range``, curvature
    uniform in [-1, 1], horizon in [0.3, 0.5], lane offset in [-0.5, 0.5], 0 ..
    ``max_obstacles`` cars at depths 0.05 .. 0.85 and lateral positions -0.8 .. 0.8.

    Parameters
    ----------
    n : int
        Number of scenes (>= 0).
    rng : numpy.random.Generator
        The only source of randomness: the same generator state gives the same scenes.
        The fog bounds do not change how many draws are taken, so two calls differing only
        in ``fog_range`` draw the same road, horizon and cars.
    height, width : int
        Image size in pixels (paper: 80 x 160).
    fog_range : (low, high)
        Bounds of the fog level, ``0 <= low <= high <= 1``.
    max_obstacles : int
        Most cars per scene.

    Returns
    -------
    Scenes
        ``images`` (n, 3, height, width) float32 and the factors of every scene.
    """
    _check("n", n, height, width, fog_range, max_obstacles, 0)
    fog = rng.uniform(*fog_range, n)
    curv = rng.uniform(-1, 1, n)
    horizon = rng.uniform(0.3, 0.5, n)
    offset = rng.uniform(-0.5, 0.5, n)
    counts = rng.integers(0, max_obstacles + 1, n)
    cars = [[(float(rng.uniform(-0.8, 0.8)), float(rng.uniform(0.05, 0.85))) for _ in range(k)]
            for k in counts]
    phases = rng.uniform(0, 1, n)
    return _assemble(n, height, width, fog, curv, horizon, offset, cars, phases, max_obstacles)


def _walk(rng: np.random.Generator, n: int, lo: float, hi: float, step: float) -> np.ndarray:
    """A random walk of ``n`` steps of s.d. ``step``, reflected into [lo, hi]."""
    x = np.empty(n)
    x[0] = rng.uniform(lo, hi)
    for i in range(1, n):
        v = x[i - 1] + rng.normal(0, step)
        x[i] = lo + abs(v - lo) if v < lo else (hi - abs(v - hi) if v > hi else v)
    return x


def render_sequence(n_frames: int, rng: np.random.Generator, *, height: int = 80,
                    width: int = 160, fog_range: tuple[float, float] = (0.0, 0.8),
                    max_obstacles: int = 3) -> Scenes:
    """Render one drive of ``n_frames`` consecutive frames whose factors change smoothly.

    Like the 8 Hz video frames people saw while their EEG was recorded: fog, curvature,
    horizon and lane offset follow random walks reflected at their bounds (steps of s.d.
    0.02, 0.05, 0.005 and 0.02 per frame), the centre dashes scroll, and cars approach
    (depth falls by 0.02 a frame until they pass) while new ones appear far ahead.

    Parameters
    ----------
    n_frames : int
        Number of frames (>= 1).
    rng : numpy.random.Generator
        The only source of randomness.
    height, width, fog_range, max_obstacles
        As in :func:`render_scenes`.

    Returns
    -------
    Scenes
        Frames in drive order, with their factors.
    """
    _check("n_frames", n_frames, height, width, fog_range, max_obstacles, 1)
    fog = _walk(rng, n_frames, *fog_range, 0.02)
    curv = _walk(rng, n_frames, -1, 1, 0.05)
    horizon = _walk(rng, n_frames, 0.3, 0.5, 0.005)
    offset = _walk(rng, n_frames, -0.5, 0.5, 0.02)
    cars_now: list[list[float]] = []
    cars, phases = [], []
    phase = 0.0
    for _ in range(n_frames):
        for c in cars_now:
            c[1] -= 0.02
        cars_now = [c for c in cars_now if c[1] > 0.03]
        if len(cars_now) < max_obstacles and rng.uniform() < 0.06:
            cars_now.append([float(rng.uniform(-0.8, 0.8)), 0.85])
        cars.append([(c[0], c[1]) for c in cars_now])
        phase = (phase + 0.15) % 1.0
        phases.append(phase)
    return _assemble(n_frames, height, width, fog, curv, horizon, offset, cars,
                     np.array(phases), max_obstacles)


def scene_factors_matrix(scenes: Scenes) -> np.ndarray:
    """The continuous factors of each scene, for a synthetic EEG generator.

    Parameters
    ----------
    scenes : Scenes

    Returns
    -------
    np.ndarray of float64, shape (n, 7)
        Columns: fog, curvature, horizon, lane offset, number of cars, lateral position and
        on-screen height (pixels) of the nearest car (both 0 when there is none).
    """
    n = len(scenes.fog)
    nx, ns = np.zeros(n), np.zeros(n)
    has = scenes.n_obstacles > 0
    if has.any():
        depth = np.where(np.isnan(scenes.obstacle_depth), np.inf, scenes.obstacle_depth)
        near = np.argmin(depth[has], axis=1)
        nx[has] = scenes.obstacle_x[has][np.arange(len(near)), near]
        ns[has] = scenes.obstacle_size[has][np.arange(len(near)), near]
    return np.column_stack([scenes.fog, scenes.curvature, scenes.horizon, scenes.lane_offset,
                            scenes.n_obstacles, nx, ns]).astype(np.float64)
