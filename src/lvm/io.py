"""Atomic file writes and pickle-free npz reading shared by every stage.

Every artifact is written to a temporary file beside its destination and renamed into place,
so a killed stage never leaves a truncated npz or JSON that a later stage could mistake for output.
Inside `atomic_outputs()` the renames wait until the whole block succeeded, so a stage's files change
together or not at all.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lvm import LvmError

# Temp files waiting for the end of the enclosing atomic_outputs() block (None: rename at once).
_PENDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("lvm_pending_outputs", default=None)


@contextlib.contextmanager
def atomic_outputs():
    """Group writes: every atomic_path (save_npz, write_json, write_text) inside the block writes to a
    temp file, and all of them are renamed into place only after the block succeeded; none if it fails.

    A rename that fails half-way (all temps sit beside their destinations, so it would take a dying
    disk) can still leave a mixture; the export's split id (lvm.data.check_same_export) catches that.
    Nested blocks join the outermost one.
    """
    if _PENDING.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield
        _PENDING.reset(token)
        token = None
        total = len(pending)
        # SIGTERM/SIGINT wait until every rename is done (then act as usual): a signal between two
        # renames would leave new and old outputs mixed
        with no_signals():
            while pending:
                tmp, dest = pending[0]
                try:
                    os.replace(tmp, dest)
                except OSError as e:
                    raise LvmError(f"{dest}: could not move the new file into place ({e.strerror or e}) after "
                                   f"{total - len(pending)} of {total} outputs were replaced; rerun the stage "
                                   "(later stages refuse the mixture)") from None
                pending.pop(0)
    finally:
        if token is not None:
            _PENDING.reset(token)
        for tmp, _ in pending:  # failed: the old outputs stay, no temp is left behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def no_signals():
    """Hold SIGINT/SIGTERM until the block is done, then deliver the first one to the handler that was
    in place. A Python-level handler, not pthread_sigmask: the kernel hands a process's signal to any
    thread that does not block it (torch's OpenMP workers do not), and Python then runs the handler in
    the main thread wherever it is, so masking the main thread alone held nothing (a stranded
    models/<exp>/.last.pt.*.tmp in 2 of 2 interrupted runs; a SIGTERM between evaluate's renames left
    new and old outputs mixed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():  # (None: a handler set outside Python; the default then)
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if held:
            signal.raise_signal(held[0])


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temp files and folders (`.<name>.*.tmp`) that a killed run left beside `path`.
    A run killed by SIGKILL cannot clean up after itself, so the next write of the same output does."""
    path = Path(path)
    own = {tmp for tmp, _ in _PENDING.get() or ()}  # this run's own temps, waiting for their group's end
    for stale in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else ():
        if stale in own:
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path in the destination folder; rename it to `path` only on success (inside
    atomic_outputs(): at the end of that block)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise LvmError(f"{path}: cannot create a file in {path.parent} ({e.strerror or e})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        pending = _PENDING.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((Path(tmp), path))
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # disk full, quota, read-only: the user's to fix, so one clear line
            kept = "no output of this stage was changed" if _PENDING.get() is not None else "the old file is kept"
            raise LvmError(f"{path}: could not write it ({e.strerror or e}); {kept}") from None
        raise


def replace_dir(src, dest) -> None:
    """Move the finished directory `src` to `dest`, replacing what was there: the old one is moved
    aside first and removed only once the new one is in place (a folder cannot be os.replace()d
    over a non-empty one), so `dest` always holds one complete run's files."""
    src, dest = Path(src), Path(dest)
    old = dest.with_name(f".{dest.name}.old.{os.getpid()}.tmp") if dest.exists() else None
    try:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        try:
            os.replace(src, dest)
        except OSError:
            if old is not None:
                os.replace(old, dest)  # put the old one back
                old = None
            raise
    except OSError as e:
        raise LvmError(f"{dest}: could not move the new files into place ({e.strerror or e}); "
                       "the old ones are kept") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _json_safe(obj, where: str, bad: list):
    """A copy of `obj` with numpy scalars made plain and NaN/Inf replaced by None (listed in `bad`)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v, f"{where}.{k}" if where else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", bad) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append((where or "(top level)", obj))
        return None
    return obj


def write_json(path, obj) -> None:
    """Write JSON that every tool can read: NaN/Infinity are not JSON (`dvc metrics diff` and others
    choke on them), so each is written as null with a WARNING line naming the file and key."""
    bad: list = []
    obj = _json_safe(obj, "", bad)
    for where, value in bad:
        print(f"WARNING: {path}: {where} is {value}; written as null (JSON has no NaN/Infinity)")
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)  # last guard
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


LOG_DIR = "logs"  # untracked (gitignored): $LVM_LOG_DIR moves it


def log_run(stage: str, record: dict) -> None:
    """Timings and other facts of one run that change on every rerun (seconds, rates, host): never in
    a stage's outputs, which must stay byte-identical when inputs and params are unchanged. One line on
    stderr and one JSON line appended to logs/<stage>.jsonl, with the UTC time and host. A log that
    cannot be written costs a WARNING, never the run."""
    print(f"{stage}: " + ", ".join(f"{k} {v}" for k, v in record.items()), file=sys.stderr)
    entry = {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
             "stage": stage, **_json_safe(record, "", [])}
    path = Path(os.environ.get("LVM_LOG_DIR") or LOG_DIR) / f"{stage}.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as e:
        print(f"WARNING: {path}: run log not written ({e.strerror or e})", file=sys.stderr)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_exp_show(path) -> list:
    """A recorded `dvc exp show --json` (the input of lvm.sweep and lvm.crossval): its list of
    workspace/branch entries, or an LvmError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path}: not found; record it with `dvc exp show --json -A > {path}`")
    try:
        show = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LvmError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(show, list):
        raise LvmError(f"{path}: expected the list that `dvc exp show --json` prints")
    return show


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
            with np.errstate(over="ignore"):  # callers check range first; no stray warning line
                chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
            f.write(chunk.data)
            written += chunk.shape[0]
        if written != self.shape[0]:
            raise RuntimeError(f"streamed {written} rows, header promised {self.shape[0]}")


MAX_HEADER = 100000  # npy header bytes we accept (numpy's default, 10000, refuses some valid wide shapes)
# Errors a damaged member raises while being read: bad CRC, broken deflate stream, short data, bad header.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, RuntimeError)


def _read_npy_header(f):
    """(shape, fortran_order, dtype) via numpy's own npy format functions (so order, byte order and
    dtype are numpy's reading, not ours). Raises (ValueError, SyntaxError, ...) for anything else."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
    if version in ((2, 0), (3, 0)):  # 3.0 only differs in utf-8 field names of structured dtypes
        return np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


class NpzReader:
    """Read arrays from an .npz without ever unpickling, memory-mapping stored (uncompressed) members.

    Memory-mapping keeps a 3 GB vector file out of anonymous memory: pages are read on demand and
    shared with the page cache, which is what lets export run in ~1x the input size. Any layout numpy
    writes (C or Fortran order, either byte order) loads with its values intact; a damaged member or
    one that is not an npy array is refused naming the file and member.
    """

    def __init__(self, path, trust_pickle: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise LvmError(f"{self.path}: file not found")
        self.trust_pickle = trust_pickle
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise LvmError(f"{self.path}: not an .npz file ({e})") from None
        names = self._zip.namelist()
        self.keys = [n[:-4] for n in names if n.endswith(".npy")]
        # np.savez writes only .npy members; others (a README added by hand) are no array: ignored,
        # but named when a key is missing in case that is where it went.
        self.other_members = [n for n in names if not n.endswith(".npy") and not n.endswith("/")]
        self._headers: dict = {}

    def __contains__(self, key) -> bool:
        return key in self.keys

    def _member(self, key) -> str:
        return f"member '{key}.npy'"

    def _info(self, key) -> tuple:
        """(shape, fortran_order, dtype) of a member, read once; LvmError if it is no npy array."""
        if key not in self._headers:
            info = self._zip.getinfo(f"{key}.npy")
            if info.flag_bits & 0x1:
                raise LvmError(f"{self.path}: {self._member(key)} is encrypted; store it unencrypted")
            try:
                with self._zip.open(info) as f:
                    header = _read_npy_header(f)
            except Exception as e:  # noqa: BLE001 - numpy's header parser can raise SyntaxError, TokenError, ...
                raise LvmError(f"{self.path}: {self._member(key)} is not a readable .npy array ({e})") from None
            self._headers[key] = header
        return self._headers[key]

    def header(self, key):
        """(shape, dtype) without reading the data."""
        shape, _, dtype = self._info(key)
        return shape, dtype

    def missing_error(self, key) -> LvmError:
        """The error for an absent key, listing what the file holds instead."""
        others = f"; other members: {', '.join(self.other_members)}" if self.other_members else ""
        return LvmError(f"{self.path}: missing key '{key}' (keys present: {', '.join(self.keys) or 'none'}"
                        f"{others})")

    def load(self, key, mmap: bool = True) -> np.ndarray:
        if key not in self.keys:
            raise self.missing_error(key)
        shape, fortran, dtype = self._info(key)
        if dtype.hasobject:
            if not self.trust_pickle:
                raise LvmError(
                    f"{self.path}: key '{key}' holds Python objects (pickle); loading it could run code. "
                    "Re-save it as a fixed-width string array, or set data.trust_pickle: true if you "
                    "trust this file.")
            with np.load(self.path, allow_pickle=True) as z:
                return z[key]
        info = self._zip.getinfo(f"{key}.npy")
        if mmap and info.compress_type == zipfile.ZIP_STORED and shape and math.prod(shape) > 0:
            offset, header_len = self._data_offset(info)
            nbytes = math.prod(shape) * dtype.itemsize
            if header_len + nbytes != info.file_size:  # a map past the member would read its neighbours
                raise LvmError(
                    f"{self.path}: {self._member(key)} is damaged: its header promises shape {shape} "
                    f"{dtype} ({nbytes} bytes) but the member holds {info.file_size - header_len} data bytes")
            # order='F' maps a Fortran-ordered array as what it is (rows are strided, values right)
            return np.memmap(self.path, dtype=dtype, mode="r", shape=shape, offset=offset,
                             order="F" if fortran else "C")
        try:
            with self._zip.open(f"{key}.npy") as f:
                arr = np.lib.format.read_array(f, allow_pickle=False, max_header_size=MAX_HEADER)
                f.read(1)  # reach the member's end so zipfile checks its CRC even after a short read
        except _READ_ERRORS as e:
            raise self.damaged_error(key, str(e)) from None
        return arr

    def verify(self, key) -> None:
        """Check a member's CRC by streaming it through zipfile (a memory map skips that check)."""
        try:
            with self._zip.open(f"{key}.npy") as f:
                while f.read(1 << 24):
                    pass
        except _READ_ERRORS as e:
            raise self.damaged_error(key, str(e)) from None

    def crc_of_header(self, key) -> tuple[int, int]:
        """(CRC-32 of a stored member's npy header bytes, the CRC-32 the zip records for the whole
        member): continuing the first with the data bytes, in file order, must give the second. Lets a
        caller that reads the data anyway check the CRC in the same pass instead of a second read."""
        info = self._zip.getinfo(f"{key}.npy")
        offset, header_len = self._data_offset(info)
        with open(self.path, "rb") as raw:
            raw.seek(offset - header_len)
            return zlib.crc32(raw.read(header_len)), info.CRC

    def damaged_error(self, key, why: str) -> LvmError:
        return LvmError(f"{self.path}: {self._member(key)} is damaged ({why}); re-create the file")

    def _data_offset(self, info: zipfile.ZipInfo) -> tuple[int, int]:
        """(file offset of a stored member's array data, length of its npy header)."""
        with open(self.path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise LvmError(f"{self.path}: {self._member(info.filename[:-4])} has a damaged zip header")
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            raw.seek(start)
            try:
                _read_npy_header(raw)
            except Exception as e:  # noqa: BLE001 - as in _info: any parser error means no npy header
                raise LvmError(f"{self.path}: {self._member(info.filename[:-4])} is not a readable .npy "
                               f"array ({e})") from None
            return raw.tell(), raw.tell() - start

    def close(self):
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable, enabled: bool = True, **tqdm_kwargs):
    """A tqdm bar over `iterable` on a terminal; the bare iterable when stderr is not one.

    In dvc's stage log, CI or a file, a bar is thousands of `\\r` frames; there the stages print
    their own summary lines instead (one per training epoch, the parse/encode totals)."""
    if not (enabled and sys.stderr.isatty()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, **tqdm_kwargs)
