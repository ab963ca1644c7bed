"""CAM → box and erasing, on hand-made CAMs."""

from __future__ import annotations

import numpy as np

from boneage.cam_boxes import cam_to_box, erase
from boneage.config import AttendStageConfig

CFG = AttendStageConfig(tau=0.5, margin=0.0, min_area=0.01)
PRIOR = (1.0, 2.0, 3.0, 4.0)


def test_largest_component_wins():
    cam = np.zeros((100, 100), np.float32)
    cam[10:20, 10:20] = 1.0  # small blob (100 px)
    cam[50:90, 30:60] = 0.8  # large blob (1200 px)
    cb = cam_to_box(cam, CFG, PRIOR)
    assert cb.status == "ok"
    assert cb.box == (30, 50, 60, 90)
    assert cb.area == np.mean(cam >= 0.5)
    assert 0.8 < cb.mass_in_box < 1


def test_fallback_when_nothing_passes_or_too_small():
    assert cam_to_box(np.zeros((50, 50)), CFG, PRIOR).status == "fallback_prior"
    cam = np.zeros((100, 100))
    cam[0:3, 0:3] = 1  # 9 px < 1 % of the image
    cb = cam_to_box(cam, CFG, PRIOR)
    assert cb.status == "fallback_prior" and cb.box == PRIOR


def test_erase_modes_only_touch_the_box():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64)).astype(np.uint8)
    for mode in ("mean", "noise", "blur"):
        e = erase(img, (10, 20, 30, 40), mode, rng)
        np.testing.assert_array_equal(e[:20], img[:20])
        np.testing.assert_array_equal(e[:, :10], img[:, :10])
        assert not np.array_equal(e[20:40, 10:30], img[20:40, 10:30])
    assert (erase(img, (10, 20, 30, 40), "mean", rng)[20:40, 10:30] == round(img.mean())).all()


def test_refine_foreground_takes_the_object_holding_the_cam():
    from boneage.cam_boxes import refine_foreground

    rng = np.random.default_rng(0)
    view = rng.normal(30, 3, (100, 100)).clip(0, 255).astype(np.uint8)
    view[:, :10] = 0  # letterbox padding on the left
    view[20:90, 30:70] = 160  # the "hand"
    view[5:12, 80:90] = 220  # a marker, brighter but elsewhere (0.8 % of the area)
    cam = np.zeros((100, 100))
    cam[60:70, 40:50] = 1.0  # the CAM lights up part of the hand only
    box = refine_foreground(view, cam, (10.0, 0.0, 100.0, 100.0))
    assert box == (30.0, 20.0, 70.0, 90.0)
    cam_on_marker = np.zeros((100, 100))
    cam_on_marker[6:10, 82:88] = 1.0
    # a marker is never the hand, however much CAM it holds
    assert refine_foreground(view, cam_on_marker, (10.0, 0.0, 100.0, 100.0)) is None
    assert refine_foreground(view, cam_on_marker, (10.0, 0.0, 100.0, 100.0), 0.0) == (
        80.0, 5.0, 90.0, 12.0,
    )  # fmt: skip
    # a flat view has no foreground: the caller keeps the CAM box (status cam_only)
    assert refine_foreground(np.full((50, 50), 7, np.uint8), cam[:50, :50], (0, 0, 50, 50)) is None


def test_cam_mask_ignores_activation_off_the_radiograph():
    from boneage.cam_boxes import mask_to_foreground

    view = np.full((60, 60), 20, np.uint8)
    view[10:50, 20:40] = 180  # the hand
    cam = np.zeros((60, 60))
    cam[2:8, 50:58] = 1.0  # strongest activation: background
    cam[30:36, 25:31] = 0.4  # weaker: on the hand
    masked = mask_to_foreground(cam, view, (0, 0, 60, 60))
    assert masked[2:8, 50:58].max() == 0.0
    assert masked.max() == 1.0 and masked[30:36, 25:31].min() == 1.0
    cb = cam_to_box(masked, CFG, PRIOR)
    assert cb.box == (25.0, 30.0, 31.0, 36.0)
    # a view without contrast leaves the CAM as it is
    assert mask_to_foreground(cam, np.zeros((60, 60), np.uint8), (0, 0, 60, 60)) is cam


def test_refine_never_picks_a_small_object_such_as_a_marker_or_an_edge_strip():
    from boneage.cam_boxes import refine_foreground

    view = np.full((80, 80), 20, np.uint8)
    view[0:2, :] = 200  # a bright film-edge strip along the top (160 px = 2.5 %)
    view[30:75, 20:60] = 150  # the hand
    cam = np.zeros((80, 80))
    cam[0:2, 10:70] = 1.0  # most CAM mass on the strip
    cam[40:60, 30:50] = 0.05
    assert refine_foreground(view, cam, (0, 0, 80, 80)) == (20.0, 30.0, 60.0, 75.0)
    only_strip = np.zeros((80, 80))
    only_strip[0:2, 10:70] = 1.0
    assert refine_foreground(view, only_strip, (0, 0, 80, 80)) is None
