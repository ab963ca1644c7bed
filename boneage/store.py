"""The image store: Parquet shards with one row per image (normalized 8-bit PNG bytes).

Layout of a store directory::

    store.json                 # format version, long side, shard list, row count
    shard-00000.parquet ...    # columns: id, png, height, width, orig_height, orig_width,
                               #          scale, sha256

Readers open shards lazily and keep an id → (shard, row) index, so random access by id
and streaming over all rows both avoid reading more than needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from boneage.imageio import decode_png

STORE_VERSION = 1
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("png", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("orig_height", pa.int32()),
        ("orig_width", pa.int32()),
        ("scale", pa.float64()),
        ("sha256", pa.string()),
    ]
)


@dataclass(frozen=True)
class StoredImage:
    id: str
    pixels: np.ndarray  # 2-D uint8
    orig_height: int
    orig_width: int
    scale: float  # stored size / original size
    sha256: str


class StoreWriter:
    """Buffers rows and writes a shard every `shard_size` rows. Use as a context manager."""

    def __init__(self, root: Path, shard_size: int = 256, long_side: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob("shard-*.parquet"):
            old.unlink()
        self.shard_size = shard_size
        self.long_side = long_side
        self._rows: list[dict] = []
        self._shards: list[dict] = []
        self.n_rows = 0

    def add(self, row: dict) -> str:
        """Add one row (keys as in SCHEMA). Returns the name of the shard it lands in."""
        self._rows.append(row)
        name = self._shard_name(len(self._shards))
        if len(self._rows) >= self.shard_size:
            self.flush()
        return name

    @staticmethod
    def _shard_name(i: int) -> str:
        return f"shard-{i:05d}.parquet"

    def flush(self) -> None:
        if not self._rows:
            return
        name = self._shard_name(len(self._shards))
        table = pa.Table.from_pylist(self._rows, schema=SCHEMA)
        tmp = self.root / (name + ".tmp")
        pq.write_table(table, tmp, compression="none")  # PNG bytes are compressed already
        os.replace(tmp, self.root / name)
        self._shards.append({"file": name, "rows": len(self._rows)})
        self.n_rows += len(self._rows)
        self._rows = []

    def close(self) -> None:
        self.flush()
        meta = {
            "version": STORE_VERSION,
            "format": "png-uint8-gray",
            "long_side": self.long_side,
            "n_rows": self.n_rows,
            "shards": self._shards,
        }
        (self.root / "store.json").write_text(json.dumps(meta, indent=2) + "\n")

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


class ImageStore:
    """Read access to a store directory.

    >>> store = ImageStore(path)           # doctest: +SKIP
    >>> img = store.get("1377")            # StoredImage with decoded pixels
    >>> for img in store.iter_images(): ...
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        meta_path = self.root / "store.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root}: not an image store (no store.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("version") != STORE_VERSION:
            raise ValueError(f"{meta_path}: unsupported store version {self.meta.get('version')}")
        self.shards = [s["file"] for s in self.meta["shards"]]
        self._index: dict[str, tuple[int, int]] | None = None
        self._cache: tuple[int, pa.Table] | None = None

    def __len__(self) -> int:
        return int(self.meta["n_rows"])

    @property
    def index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            idx: dict[str, tuple[int, int]] = {}
            for s, name in enumerate(self.shards):
                ids = pq.read_table(self.root / name, columns=["id"]).column("id").to_pylist()
                for r, i in enumerate(ids):
                    idx[i] = (s, r)
            self._index = idx
        return self._index

    @property
    def ids(self) -> list[str]:
        return list(self.index)

    def __contains__(self, id_: str) -> bool:
        return id_ in self.index

    def _shard(self, s: int) -> pa.Table:
        if self._cache is None or self._cache[0] != s:
            self._cache = (s, pq.read_table(self.root / self.shards[s]))
        return self._cache[1]

    def get(self, id_: str) -> StoredImage:
        try:
            s, r = self.index[id_]
        except KeyError:
            raise KeyError(f"{self.root}: no image with id {id_!r}") from None
        row = self._shard(s).slice(r, 1).to_pylist()[0]
        return _to_image(row)

    def iter_rows(self, columns: list[str] | None = None) -> Iterator[dict]:
        """Stream raw rows (PNG bytes not decoded), shard by shard."""
        for name in self.shards:
            yield from pq.read_table(self.root / name, columns=columns).to_pylist()

    def iter_images(self, ids: Iterable[str] | None = None) -> Iterator[StoredImage]:
        """Decoded images in store order, or in the order of `ids` when given."""
        if ids is None:
            for row in self.iter_rows():
                yield _to_image(row)
        else:
            for i in ids:
                yield self.get(i)


def _to_image(row: dict) -> StoredImage:
    return StoredImage(
        id=row["id"],
        pixels=decode_png(row["png"]),
        orig_height=row["orig_height"],
        orig_width=row["orig_width"],
        scale=row["scale"],
        sha256=row["sha256"],
    )
