"""Boxes and coordinate frames."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.geometry import Affine, clip, crop_resize, expand, iou, letterbox, square


def test_affine_compose_and_inverse():
    a = Affine(2, 10, 3, -5)
    b = Affine(0.5, 1, 0.25, 2)
    box = (1.0, 2.0, 3.0, 4.0)
    assert a.then(b).box(box) == pytest.approx(b.box(a.box(box)))
    assert a.inverse().box(a.box(box)) == pytest.approx(box)


def test_letterbox_maps_back_to_the_source():
    img = np.zeros((200, 100), np.uint8)
    img[50:70, 20:40] = 255  # a bright square at x 20..40, y 50..70
    sq, to_img = letterbox(img, 100)
    assert sq.shape == (100, 100)
    ys, xs = np.nonzero(sq > 127)
    found = to_img.box((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    assert found == pytest.approx((20, 50, 40, 70), abs=2)
    assert sq[:, :20].max() == 0  # centred padding


def test_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0
    assert expand((10, 10, 20, 30), 0.1) == pytest.approx((9, 8, 21, 32))
    assert square((0, 0, 10, 20)) == (-5, 0, 15, 20)
    assert clip((-5, -1, 50, 20), 40, 30) == (0, 0, 40, 20)


def test_crop_resize_pads_outside_and_keeps_content():
    img = np.full((100, 100), 200, np.uint8)
    crop = crop_resize(img, (-50, 0, 50, 100), 50)
    assert crop.shape == (50, 50)
    assert crop[:, :20].max() == 0 and crop[:, 30:].min() == 200
    grad = np.tile(np.arange(100, dtype=np.uint8), (100, 1))
    c = crop_resize(grad, (10, 10, 60, 60), 50)
    np.testing.assert_allclose(c[25], np.arange(10, 60), atol=1)
