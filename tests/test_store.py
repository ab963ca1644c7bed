"""Image store writer/reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boneage.imageio import encode_png
from boneage.store import ImageStore, StoreWriter
from tests.corpus import textured


def _row(i: int) -> dict:
    px = textured(20 + i, 30, seed=i)
    return {
        "id": f"x{i}",
        "png": encode_png(px),
        "height": px.shape[0],
        "width": 30,
        "orig_height": px.shape[0] * 2,
        "orig_width": 60,
        "scale": 0.5,
        "sha256": "0" * 64,
    }


def test_roundtrip_and_sharding(tmp_path):
    with StoreWriter(tmp_path / "s", shard_size=3, long_side=64) as w:
        shards = [w.add(_row(i)) for i in range(7)]
    assert shards == ["shard-00000.parquet"] * 3 + ["shard-00001.parquet"] * 3 + [
        "shard-00002.parquet"
    ]
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    assert meta["n_rows"] == 7 and len(meta["shards"]) == 3
    store = ImageStore(tmp_path / "s")
    assert len(store) == 7 and store.ids == [f"x{i}" for i in range(7)]
    img = store.get("x4")
    np.testing.assert_array_equal(img.pixels, textured(24, 30, seed=4))
    assert (img.orig_height, img.orig_width, img.scale) == (48, 60, 0.5)
    assert [i.id for i in store.iter_images()] == store.ids
    assert [i.id for i in store.iter_images(["x6", "x0"])] == ["x6", "x0"]
    assert "x3" in store and "nope" not in store
    with pytest.raises(KeyError, match="nope"):
        store.get("nope")


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an image store"):
        ImageStore(tmp_path)
