"""Atomic file writes and pickle-free npz reading shared by every stage.

Every artifact is written to a temporary file beside its destination and renamed into place,
so a killed stage never leaves a truncated npz or JSON that a later stage could mistake for output.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from lvm import LvmError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path in the destination folder; rename it to `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path, compress: bool = False, **arrays) -> None:
    """Write arrays to `path` atomically. Large arrays may be passed as (shape, dtype, chunks)
    generators via `StreamedArray` so they are streamed into the zip without a full copy."""
    with atomic_path(path) as tmp:
        mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=mode, allowZip64=True) as zf:
            for key, value in arrays.items():
                # A fixed timestamp keeps the bytes (and so DVC's hash) identical across reruns.
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = mode
                with zf.open(info, "w", force_zip64=True) as f:
                    if isinstance(value, StreamedArray):
                        value.write(f)
                    else:
                        np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


class StreamedArray:
    """An array described by shape/dtype whose rows arrive in chunks (avoids materialising copies)."""

    def __init__(self, shape, dtype, chunks):
        self.shape, self.dtype, self.chunks = tuple(shape), np.dtype(dtype), chunks

    def write(self, f) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_2_0(f, header)
        written = 0
        for chunk in self.chunks:
            chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
            f.write(chunk.data)
            written += chunk.shape[0]
        if written != self.shape[0]:
            raise RuntimeError(f"streamed {written} rows, header promised {self.shape[0]}")


def _read_npy_header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f, max_header_size=100000)
    return np.lib.format.read_array_header_2_0(f, max_header_size=100000)


class NpzReader:
    """Read arrays from an .npz without ever unpickling, memory-mapping stored (uncompressed) members.

    Memory-mapping keeps a 3 GB vector file out of anonymous memory: pages are read on demand and
    shared with the page cache, which is what lets export run in ~1x the input size.
    """

    def __init__(self, path, trust_pickle: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise LvmError(f"{self.path}: file not found")
        self.trust_pickle = trust_pickle
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile as e:
            raise LvmError(f"{self.path}: not an .npz file ({e})") from None
        self.keys = [n[:-4] for n in self._zip.namelist() if n.endswith(".npy")]

    def __contains__(self, key) -> bool:
        return key in self.keys

    def header(self, key):
        """(shape, dtype) without reading the data."""
        with self._zip.open(f"{key}.npy") as f:
            shape, _, dtype = _read_npy_header(f)
        return shape, dtype

    def load(self, key, mmap: bool = True) -> np.ndarray:
        if key not in self.keys:
            raise LvmError(f"{self.path}: missing key '{key}' (keys present: {', '.join(self.keys) or 'none'})")
        shape, dtype = self.header(key)
        if dtype.hasobject:
            if not self.trust_pickle:
                raise LvmError(
                    f"{self.path}: key '{key}' holds Python objects (pickle); loading it could run code. "
                    "Re-save it as a fixed-width string array, or set data.trust_pickle: true if you "
                    "trust this file.")
            with np.load(self.path, allow_pickle=True) as z:
                return z[key]
        info = self._zip.getinfo(f"{key}.npy")
        if mmap and info.compress_type == zipfile.ZIP_STORED and shape and np.prod(shape) > 0:
            return np.memmap(self.path, dtype=dtype, mode="r", shape=shape,
                             offset=self._data_offset(info))
        with self._zip.open(f"{key}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        with open(self.path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            raw.seek(start)
            _read_npy_header(raw)
            return raw.tell()

    def close(self):
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
