"""Where captured tensors go while the model generates: memory stays bounded by a chunk.

Two sinks with the same ``append(layer, target, positions, array)``:

- ``NpzSink`` writes ``layer_XX.npz`` per layer. Every ``chunk`` positions it appends the
  buffered rows to the zip as new members (``keys_00000``, ``positions_00000``, ...), so the
  file grows while generating and is a plain ``.npz`` that ``numpy.load`` opens.
- ``DBSink`` inserts one ``novelty_kv`` row per (layer, target, position): the float32 bytes of
  the ``[heads, dim]`` array.

``load_series`` reads either back as one ``[positions, heads, dim]`` array in position order.
"""

from __future__ import annotations

import sqlite3
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

CHUNK = 64


def layer_file(folder: Path, layer: int) -> Path:
    return Path(folder) / f"layer_{layer:02d}.npz"


class _Buffered:
    """Rows per (layer, target), flushed every ``chunk`` positions."""

    def __init__(self, chunk: int = CHUNK):
        self.chunk = chunk
        self._rows: dict[tuple[int, str], list[tuple[int, np.ndarray]]] = defaultdict(list)

    def append(self, layer: int, target: str, positions: np.ndarray, array: np.ndarray) -> None:
        """``array`` is ``[len(positions), heads, dim]``; copied, so the caller may reuse it."""
        rows = self._rows[(layer, target)]
        for pos, row in zip(np.asarray(positions).tolist(), np.asarray(array, np.float32)):
            rows.append((int(pos), row.copy()))
        if len(rows) >= self.chunk:
            self._flush(layer, target, rows)
            self._rows[(layer, target)] = []

    def buffered(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def close(self) -> None:
        for (layer, target), rows in list(self._rows.items()):
            if rows:
                self._flush(layer, target, rows)
        self._rows.clear()

    def _flush(self, layer: int, target: str, rows: list[tuple[int, np.ndarray]]) -> None:
        raise NotImplementedError


class NpzSink(_Buffered):
    def __init__(self, folder: Path, chunk: int = CHUNK):
        super().__init__(chunk)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("layer_*.npz"):  # a rerun starts from empty files
            old.unlink()
        self._count: dict[tuple[int, str], int] = defaultdict(int)

    def _flush(self, layer: int, target: str, rows: list[tuple[int, np.ndarray]]) -> None:
        n = self._count[(layer, target)]
        self._count[(layer, target)] += 1
        members = {f"{target}_{n:05d}": np.stack([r for _, r in rows]),
                   f"positions_{target}_{n:05d}": np.array([p for p, _ in rows], dtype=np.int64)}
        with zipfile.ZipFile(layer_file(self.folder, layer), mode="a") as zf:
            for name, arr in members.items():
                with zf.open(name + ".npy", mode="w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)


class DBSink(_Buffered):
    def __init__(self, conn: sqlite3.Connection, novelty_run_id: int, chunk: int = CHUNK):
        super().__init__(chunk)
        self.conn = conn
        self.run_id = novelty_run_id

    def _flush(self, layer: int, target: str, rows: list[tuple[int, np.ndarray]]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO novelty_kv(novelty_run_id, layer, target, position, vector) "
            "VALUES (?,?,?,?,?)",
            [(self.run_id, layer, target, pos, row.astype(np.float32).tobytes())
             for pos, row in rows])


def load_npz(folder: Path, layer: int, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions, ``[positions, heads, dim]``) of one layer and target, in position order."""
    with np.load(layer_file(folder, layer)) as data:
        names = sorted(k for k in data.files if k.startswith(f"{target}_"))
        if not names:
            raise KeyError(f"{layer_file(folder, layer)} holds no {target!r}")
        arrays = np.concatenate([data[k] for k in names])
        positions = np.concatenate([data[f"positions_{k}"] for k in names])
    order = np.argsort(positions, kind="stable")
    return positions[order], arrays[order]


def load_db(conn: sqlite3.Connection, novelty_run_id: int, layer: int, target: str,
            shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows = conn.execute(
        "SELECT position, vector FROM novelty_kv WHERE novelty_run_id=? AND layer=? AND "
        "target=? ORDER BY position", (novelty_run_id, layer, target)).fetchall()
    if not rows:
        raise KeyError(f"novelty_kv holds no {target!r} for run {novelty_run_id}, layer {layer}")
    positions = np.array([r[0] for r in rows], dtype=np.int64)
    arrays = np.stack([np.frombuffer(r[1], dtype=np.float32).reshape(shape) for r in rows])
    return positions, arrays


class MemorySink:
    """Keeps everything in memory: for one forward pass whose size is already bounded."""

    def __init__(self):
        self._rows: dict[tuple[int, str], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)

    def append(self, layer: int, target: str, positions: np.ndarray, array: np.ndarray) -> None:
        self._rows[(layer, target)].append((np.asarray(positions), np.array(array, np.float32)))

    def get(self, layer: int, target: str) -> tuple[np.ndarray, np.ndarray]:
        parts = self._rows[(layer, target)]
        return (np.concatenate([p for p, _ in parts]), np.concatenate([a for _, a in parts]))
