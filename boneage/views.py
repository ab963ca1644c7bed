"""Loading a store's images as letterboxed squares at network resolution, in parallel.

Used by training (decode once into memory) and by attend (streamed in batches).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from boneage.geometry import Affine, letterbox
from boneage.imageio import decode_png
from boneage.store import ImageStore


@dataclass
class ViewBatch:
    ids: list[str]
    x: np.ndarray  # uint8 [n, S, S]
    to_view: list[Affine]  # input pixel → view (stored image) pixel


def _load_shard(args: tuple[Path, int, frozenset[str] | None]) -> ViewBatch:
    path, size, wanted = args
    table = pq.read_table(path, columns=["id", "png"])
    ids, xs, affs = [], [], []
    for id_, png in zip(
        table.column("id").to_pylist(), table.column("png").to_pylist(), strict=True
    ):
        if wanted is not None and id_ not in wanted:
            continue
        sq, aff = letterbox(decode_png(png), size)
        ids.append(id_)
        xs.append(sq)
        affs.append(aff)
    x = np.stack(xs) if xs else np.zeros((0, size, size), np.uint8)
    return ViewBatch(ids, x, affs)


def iter_view_shards(
    store_dir: Path, size: int, ids: set[str] | None = None, workers: int = 0
) -> Iterator[ViewBatch]:
    """Yield letterboxed views shard by shard (store order), decoding in a process pool."""
    store = ImageStore(store_dir)
    wanted = frozenset(ids) if ids is not None else None
    jobs = [(store.root / name, size, wanted) for name in store.shards]
    workers = min(workers or os.cpu_count() or 1, max(1, len(jobs)))
    if workers <= 1:
        for job in jobs:
            yield _load_shard(job)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_load_shard, jobs)


def load_views(
    store_dir: Path, size: int, ids: set[str] | None = None, workers: int = 0
) -> ViewBatch:
    """All (selected) images of a store as one uint8 array [N, size, size]."""
    parts = list(iter_view_shards(store_dir, size, ids, workers))
    all_ids = [i for p in parts for i in p.ids]
    x = np.concatenate([p.x for p in parts]) if parts else np.zeros((0, size, size), np.uint8)
    return ViewBatch(all_ids, x, [a for p in parts for a in p.to_view])
