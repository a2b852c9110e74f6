"""Procedural driving scenes: shapes, determinism, fog, curvature, cars, drives, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from raybrain.data.driving_scenes import (
    FOG_GREY,
    _render_one,
    render_scenes,
    render_sequence,
    scene_factors_matrix,
)
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit

FACTOR_FIELDS = ("fog", "curvature", "horizon", "lane_offset", "n_obstacles", "obstacle_x",
                 "obstacle_depth", "obstacle_size", "obstacle_box")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _road_mask(img: np.ndarray) -> np.ndarray:
    """(H, W) bool: grey pixels (asphalt and markings) in a fog-free image (3, H, W)."""
    r, g, b = img
    return (np.abs(g - r) < 0.08) & (np.abs(g - b) < 0.08)


@pytest.mark.parametrize("size", [(80, 160), (32, 48)])
def test_shapes_dtypes_and_ranges(size):
    h, w = size
    s = render_scenes(20, _rng(0), height=h, width=w, max_obstacles=3)
    assert s.images.shape == (20, 3, h, w) and s.images.dtype == np.float32
    assert s.images.min() >= 0 and s.images.max() <= 1
    for name in ("fog", "curvature", "horizon", "lane_offset", "n_obstacles"):
        assert getattr(s, name).shape == (20,), name
    assert np.all((s.fog >= 0) & (s.fog <= 0.8))
    assert np.all(np.abs(s.curvature) <= 1)
    assert np.all((s.horizon >= 0.3) & (s.horizon <= 0.5))
    assert np.all(np.abs(s.lane_offset) <= 0.5)
    assert s.n_obstacles.dtype == np.int64 and set(s.n_obstacles) <= {0, 1, 2, 3}
    assert s.obstacle_x.shape == s.obstacle_depth.shape == s.obstacle_size.shape == (20, 3)
    assert s.obstacle_box.shape == (20, 3, 4)
    used = np.arange(3)[None, :] < s.n_obstacles[:, None]
    assert np.array_equal(~np.isnan(s.obstacle_depth), used)
    assert np.array_equal(~np.isnan(s.obstacle_size), used)
    assert np.all(s.obstacle_box[~used] == -1)
    # cars listed far to near; the on-screen size falls with depth
    for i in np.flatnonzero(s.n_obstacles >= 2):
        k = s.n_obstacles[i]
        assert np.all(np.diff(s.obstacle_depth[i, :k]) <= 0)
        assert np.all(np.diff(s.obstacle_size[i, :k]) >= 0)


def test_deterministic_in_the_rng():
    a = render_scenes(8, _rng(5))
    b = render_scenes(8, _rng(5))
    c = render_scenes(8, _rng(6))
    assert np.array_equal(a.images, b.images)
    for name in FACTOR_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.images, c.images)
    d = render_sequence(10, _rng(5))
    e = render_sequence(10, _rng(5))
    assert np.array_equal(d.images, e.images) and np.array_equal(d.curvature, e.curvature)


def test_fog_lowers_contrast_and_greys_far_pixels_most():
    clear = render_scenes(16, _rng(1), fog_range=(0.0, 0.0))
    foggy = render_scenes(16, _rng(1), fog_range=(0.8, 0.8))
    half = render_scenes(16, _rng(1), fog_range=(0.4, 0.4))
    # the fog bounds do not change the draws: same roads and cars
    for name in FACTOR_FIELDS[1:]:
        np.testing.assert_array_equal(getattr(clear, name), getattr(foggy, name))
    std_clear = clear.images.std(axis=(1, 2, 3))
    std_half = half.images.std(axis=(1, 2, 3))
    std_foggy = foggy.images.std(axis=(1, 2, 3))
    print(f"pixel std: clear {std_clear.mean():.3f}, fog 0.4 {std_half.mean():.3f}, "
          f"fog 0.8 {std_foggy.mean():.3f}")
    assert np.all(std_foggy < std_half) and np.all(std_half < std_clear)
    grey = FOG_GREY[:, None, None]
    h = clear.images.shape[2]
    for i in range(16):
        hz = int(round(float(clear.horizon[i]) * h))
        dist = np.abs(foggy.images[i] - grey).mean(axis=0)  # (H, W)
        far = dist[hz:hz + 3].mean()  # just below the horizon
        near = dist[-3:].mean()  # bottom rows
        assert far < near, (i, far, near)
        # the fog's weight, seen through the paired clear image, grows with depth row by row
        base = np.abs(clear.images[i] - grey).mean(axis=0)
        ok = base > 0.05
        ratio = np.array([(np.abs(half.images[i] - grey).mean(axis=0)[r][ok[r]]
                           / base[r][ok[r]]).mean() for r in range(hz + 1, h)])
        assert np.all(np.diff(ratio) >= -1e-3), i  # more fog (a lower ratio) further away
        assert ratio[0] < ratio[-1] - 0.1


def test_curvature_shifts_the_far_road_in_its_sign_and_edges_converge():
    s = render_scenes(40, _rng(2), fog_range=(0.0, 0.0), max_obstacles=0)
    h, w = s.images.shape[2:]
    checked = 0
    for i in range(40):
        hz = int(round(float(s.horizon[i]) * h))
        road = _road_mask(s.images[i])
        far_row = hz + int(round(0.15 * (h - hz)))  # depth 0.85
        cols = np.flatnonzero(road[far_row])
        assert cols.size > 0
        centre = cols.mean() - (w - 1) / 2
        if abs(s.curvature[i]) > 0.25:
            assert np.sign(centre) == np.sign(s.curvature[i]), (i, centre, s.curvature[i])
            checked += 1
        widths = [road[r].sum() for r in (hz + 2, far_row, h - 1)]
        assert widths[0] < widths[1] < widths[2], widths  # converging to the vanishing point
    assert checked >= 20


def test_cars_darken_their_box_and_nothing_else():
    args = dict(height=80, width=160, fog=0.0, curv=0.3, horizon=0.4, offset=0.1, phase=0.2)
    empty, _, _ = _render_one(cars=[], **args)
    with_car, sizes, boxes = _render_one(cars=[(0.2, 0.4)], **args)
    r0, r1, c0, c1 = boxes[0]
    assert r1 > r0 and c1 > c0 and sizes[0] >= 2
    inside = np.zeros((80, 160), dtype=bool)
    inside[r0:r1, c0:c1] = True
    assert np.array_equal(with_car[:, ~inside], empty[:, ~inside])
    assert with_car[:, inside].mean() < 0.7 * empty[:, inside].mean()
    # a nearer car is bigger
    _, sizes_near, boxes_near = _render_one(cars=[(0.2, 0.1)], **args)
    assert sizes_near[0] > sizes[0]
    assert boxes_near[0][1] - boxes_near[0][0] > r1 - r0
    # through the public renderer: every drawn car's box is darker than the ground around it
    s = render_scenes(30, _rng(3), fog_range=(0.0, 0.0))
    n_boxes = 0
    for i in range(30):
        for r0, r1, c0, c1 in s.obstacle_box[i]:
            if r0 < 0:
                continue
            n_boxes += 1
            assert s.images[i, :, r0:r1, c0:c1].mean() < 0.22
    assert n_boxes >= 20


def test_sequences_are_smooth():
    seq = render_sequence(64, _rng(4))
    ind = render_scenes(64, _rng(4))
    f_seq, f_ind = scene_factors_matrix(seq)[:, :4], scene_factors_matrix(ind)[:, :4]
    step_seq = np.abs(np.diff(f_seq, axis=0)).mean(0)
    step_ind = np.abs(np.diff(f_ind, axis=0)).mean(0)
    print("mean |step| drive vs independent:", np.round(step_seq, 4), np.round(step_ind, 4))
    assert np.all(step_seq < 0.2 * step_ind)
    pix_seq = np.abs(np.diff(seq.images, axis=0)).mean()
    pix_ind = np.abs(np.diff(ind.images, axis=0)).mean()
    assert pix_seq < 0.5 * pix_ind
    assert seq.n_obstacles.max() > 0  # cars do appear in a drive
    assert np.abs(np.diff(seq.n_obstacles)).max() <= 1


def test_scene_factors_matrix():
    s = render_scenes(25, _rng(7))
    f = scene_factors_matrix(s)
    assert f.shape == (25, 7) and f.dtype == np.float64 and np.isfinite(f).all()
    np.testing.assert_allclose(f[:, :5], np.column_stack(
        [s.fog, s.curvature, s.horizon, s.lane_offset, s.n_obstacles]))
    for i in range(25):
        if s.n_obstacles[i] == 0:
            assert f[i, 5] == f[i, 6] == 0
        else:
            k = np.nanargmin(s.obstacle_depth[i])
            assert (f[i, 5], f[i, 6]) == (s.obstacle_x[i, k], s.obstacle_size[i, k])
    assert scene_factors_matrix(render_scenes(3, _rng(0), max_obstacles=0)).shape == (3, 7)
    assert scene_factors_matrix(render_scenes(0, _rng(0))).shape == (0, 7)


def test_render_speed():
    """The cost bound is on this process's CPU time, which other processes competing for the
    cores do not inflate (wall-clock time on a loaded 2-core machine would)."""
    t0, c0 = time.perf_counter(), time.process_time()
    s = render_scenes(256, _rng(8))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"256 scenes at 80 x 160 rendered in {elapsed:.2f} s ({cpu:.2f} s of CPU)")
    assert s.images.shape == (256, 3, 80, 160)
    assert cpu < 10


@pytest.mark.parametrize("call, fragment", [
    (lambda: render_scenes(-1, _rng(0)), "-1"),
    (lambda: render_scenes(2, _rng(0), height=4), "4 x 160"),
    (lambda: render_scenes(2, _rng(0), fog_range=(0.6, 0.2)), "(0.6, 0.2)"),
    (lambda: render_scenes(2, _rng(0), fog_range=(0.0, 1.5)), "(0.0, 1.5)"),
    (lambda: render_scenes(2, _rng(0), max_obstacles=-1), "-1"),
    (lambda: render_sequence(0, _rng(0)), "n_frames"),
])
def test_bad_arguments_raise_spec_error(call, fragment):
    with pytest.raises(SpecError) as info:
        call()
    assert "\n" not in str(info.value) and fragment in str(info.value)
