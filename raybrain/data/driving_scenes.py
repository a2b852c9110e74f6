"""Procedural driving scenes: road, lanes, horizon, obstacles and fog.

A stand-in for the CARLA scenes the B2M paper trained its VAE on, with known factors.
Each image (RGB, float32 in [0, 1], shape (3, height, width)) shows a sky gradient above a
horizon, ground below, a road whose edges converge to a vanishing point on the horizon and
bend with the road's curvature (the lateral shift grows with the square of distance),
dashed centre markings that shrink with distance, cars on the road (dark bodies with
red rear lights, smaller when farther), and fog that blends every pixel towards light grey
with a weight growing with distance times the fog level.

:func:`render_scenes` draws independent scenes (the artificial training/test sets);
:func:`render_sequence` draws a drive whose factors follow slow random walks, like the
8 Hz video frames people saw while their EEG was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Scenes", "render_scenes", "render_sequence", "scene_factors_matrix"]

FOG_GREY = np.array([0.82, 0.83, 0.85], dtype=np.float32)
SKY_TOP, SKY_LOW = np.array([0.35, 0.55, 0.9]), np.array([0.7, 0.8, 0.95])
GRASS, ROAD, MARK = np.array([0.25, 0.5, 0.2]), np.array([0.3, 0.3, 0.32]), np.array([0.95, 0.95, 0.9])


@dataclass
class Scenes:
    """Rendered scenes and their factors.

    Attributes
    ----------
    images : np.ndarray of float32, shape (n, 3, height, width), values in [0, 1]
    fog : (n,) in [0, 1]; curvature : (n,) in [-1, 1]; horizon : (n,) row fraction of the
    horizon; lane_offset : (n,) lateral offset of the car in road half-widths;
    n_obstacles : (n,) int; obstacle_x, obstacle_depth, obstacle_size : (n, max_obstacles)
    lateral position (-1..1 of the road), depth (0 near .. 1 horizon) and on-screen height
    (pixels) of each car, NaN where there is none.
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


def _render_one(height: int, width: int, fog: float, curv: float, horizon: float,
                offset: float, cars: list[tuple[float, float]], phase: float) -> tuple[np.ndarray, list[float]]:
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
    marking = (np.abs(dx) < 0.04 + 0.0 * below) & dash & on_road
    ground = np.where(marking[..., None], MARK, ground)
    is_ground = (rows >= hz)[..., None]
    img[:] = np.where(is_ground, ground, sky)
    sizes = []
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
        sizes.append(float(car_h))
    # fog: the sky counts as far away
    dist = np.where(rows >= hz, depth, 1.0)  # (H, 1)
    weight = np.clip(fog * (0.35 + 0.65 * dist) * 1.4, 0, 1)[..., None]
    img = img * (1 - weight) + FOG_GREY * weight
    return np.clip(img, 0, 1).transpose(2, 0, 1).astype(np.float32), sizes


def _assemble(n, height, width, fog, curv, horizon, offset, cars, phases, max_obstacles) -> Scenes:
    images = np.empty((n, 3, height, width), dtype=np.float32)
    ox = np.full((n, max_obstacles), np.nan)
    od = np.full((n, max_obstacles), np.nan)
    osz = np.full((n, max_obstacles), np.nan)
    for i in range(n):
        images[i], sizes = _render_one(height, width, fog[i], curv[i], horizon[i], offset[i],
                                       cars[i], phases[i])
        ordered = sorted(cars[i], key=lambda c: -c[1])
        for k, ((x, d), s) in enumerate(zip(ordered, sizes)):
            ox[i, k], od[i, k], osz[i, k] = x, d, s
    return Scenes(images, fog.astype(np.float32), curv.astype(np.float32),
                  horizon.astype(np.float32), offset.astype(np.float32),
                  np.array([len(c) for c in cars], dtype=np.int64), ox, od, osz)


def render_scenes(n: int, rng: np.random.Generator, *, height: int = 80, width: int = 160,
                  fog_range: tuple[float, float] = (0.0, 0.8), max_obstacles: int = 3) -> Scenes:
    """``n`` independent scenes, deterministic in ``rng``."""
    fog = rng.uniform(*fog_range, n)
    curv = rng.uniform(-1, 1, n)
    horizon = rng.uniform(0.3, 0.5, n)
    offset = rng.uniform(-0.5, 0.5, n)
    counts = rng.integers(0, max_obstacles + 1, n)
    cars = [[(float(rng.uniform(-0.8, 0.8)), float(rng.uniform(0.05, 0.85))) for _ in range(k)]
            for k in counts]
    phases = rng.uniform(0, 1, n)
    return _assemble(n, height, width, fog, curv, horizon, offset, cars, phases, max_obstacles)


def _walk(rng, n, lo, hi, step, start=None):
    x = np.empty(n)
    x[0] = rng.uniform(lo, hi) if start is None else start
    for i in range(1, n):
        v = x[i - 1] + rng.normal(0, step)
        x[i] = lo + abs(v - lo) if v < lo else (hi - abs(v - hi) if v > hi else v)
    return x


def render_sequence(n_frames: int, rng: np.random.Generator, *, height: int = 80,
                    width: int = 160, fog_range: tuple[float, float] = (0.0, 0.8),
                    max_obstacles: int = 3) -> Scenes:
    """A drive of ``n_frames`` consecutive frames whose factors change smoothly.

    Fog, curvature, horizon and lane offset follow reflected random walks; cars approach
    (their depth falls frame by frame) and new ones appear on the horizon.
    """
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
    """Continuous factors of each scene, float64 (n, 7): fog, curvature, horizon, lane
    offset, number of cars, lateral position and on-screen size of the nearest car (0 when
    there is none)."""
    near = np.nanargmin(np.where(np.isnan(scenes.obstacle_depth), np.inf, scenes.obstacle_depth),
                        axis=1)
    rows = np.arange(len(near))
    has = scenes.n_obstacles > 0
    nx = np.where(has, scenes.obstacle_x[rows, near], 0.0)
    ns = np.where(has, scenes.obstacle_size[rows, near], 0.0)
    return np.column_stack([scenes.fog, scenes.curvature, scenes.horizon, scenes.lane_offset,
                            scenes.n_obstacles, np.nan_to_num(nx), np.nan_to_num(ns)]).astype(np.float64)
