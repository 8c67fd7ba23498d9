"""A cache file of named numpy arrays derived from a source file, built once per node.

:func:`cached_arrays` returns the arrays that ``build()`` makes of ``source``, read from a cache
file when one matches. The cache lies next to the source (``<source>.<variant>.dekrcache``) or,
when that folder is not writable, in dekr's cache folder (``$DEKR_HOME``, default
``<torch.hub.get_dir()>/dekr``), under ``cache/``. It is
keyed by the source's size, mtime and SHA-256 and by ``variant``, and carries a SHA-256 of its own
payload: a stale or corrupt file is rebuilt, never trusted. One process builds (it holds
``<cache>.lock``, created with ``O_EXCL``), writes a temporary file and renames it into place
(``os.replace``); the others wait for the lock to go and read the file. A lock left by a dead
process on this host is removed; past ``timeout`` seconds a waiting process warns and builds the
arrays for itself without writing. Arrays read from the cache are read-only memory maps, so the
processes of a node share one copy in the page cache.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import socket
import struct
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["cache_paths", "cached_arrays", "dekr_home", "source_key"]

MAGIC = b"DEKRCACHE1\n"
_ALIGN = 64


def dekr_home() -> Path:
    """``$DEKR_HOME``, or ``dekr`` under torch's hub folder."""
    env = os.environ.get("DEKR_HOME")
    if env:
        return Path(env)
    import torch.hub

    return Path(torch.hub.get_dir()) / "dekr"


def source_key(path: str) -> dict[str, object]:
    """Size, mtime (ns) and SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


def cache_paths(source: str, variant: str) -> list[Path]:
    """Where the cache of ``source`` may lie: next to it, then in dekr's cache folder."""
    src = Path(source).resolve()
    name = f"{src.name}.{variant}.dekrcache"
    tag = hashlib.sha256(str(src).encode()).hexdigest()[:16]
    return [src.parent / name, dekr_home() / "cache" / f"{tag}-{name}"]


def _write(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    entries, offset = {}, 0
    for name, arr in arrays.items():
        arr = np.asarray(arr, order="C")
        offset = -(-offset // _ALIGN) * _ALIGN
        entries[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        offset += arr.nbytes
    payload = bytearray(offset)
    for name, arr in arrays.items():
        start = entries[name]["offset"]
        payload[start : start + arr.nbytes] = np.asarray(arr, order="C").tobytes()
    header = json.dumps({**meta, "arrays": entries,
                         "payload_sha256": hashlib.sha256(payload).hexdigest()}).encode()  # fmt: skip
    head = MAGIC + struct.pack("<Q", len(header)) + header
    pad = -len(head) % _ALIGN
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head + b"\0" * pad)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _quiet():
            os.unlink(tmp)
        raise


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def _read(path: Path, meta: dict) -> dict[str, np.ndarray] | None:
    """The arrays of ``path`` when its header matches ``meta`` and its payload its hash."""
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    try:
        if mm[: len(MAGIC)] != MAGIC:
            return None
        (size,) = struct.unpack("<Q", mm[len(MAGIC) : len(MAGIC) + 8])
        start = len(MAGIC) + 8
        header = json.loads(mm[start : start + size].decode())
        if any(header.get(k) != v for k, v in meta.items()):
            return None
        base = start + size + (-(start + size) % _ALIGN)
        payload = memoryview(mm)[base:]
        if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
            payload.release()
            return None
        arrays = {}
        for name, e in header["arrays"].items():
            dtype = np.dtype(e["dtype"])
            count = int(np.prod(e["shape"], dtype=np.int64))
            arr = np.frombuffer(mm, dtype=dtype, count=count, offset=base + e["offset"])
            arrays[name] = arr.reshape(e["shape"])
        payload.release()
        return arrays
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError):
        return None


def _stale_lock(lock: Path) -> bool:
    """Whether ``lock`` was left by a process of this host that is gone."""
    try:
        host, pid = lock.read_text().split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def cached_arrays(
    source: str,
    variant: str,
    build: Callable[[], dict[str, np.ndarray]],
    *,
    timeout: float = 600.0,
    poll: float = 0.1,
) -> tuple[dict[str, np.ndarray], str]:
    """``build()``'s arrays for ``source``, from the cache when valid; (arrays, how) with how one
    of ``"read"`` (a valid cache), ``"built"`` (built and written) or ``"uncached"``."""
    meta = {"variant": variant, "source": source_key(source)}
    paths = cache_paths(source, variant)
    for path in paths:
        arrays = _read(path, meta)
        if arrays is not None:
            return arrays, "read"
    deadline = time.monotonic() + timeout
    for path in paths:
        lock = path.with_name(path.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _stale_lock(lock):
                    with _quiet():
                        lock.unlink()
                    continue
                if time.monotonic() > deadline:
                    warnings.warn(
                        f"{lock}: another process has been building this cache for more than "
                        f"{timeout:.0f} s; building without the cache (remove the lock file if no "
                        "process is building it)", stacklevel=3,
                    )  # fmt: skip
                    return build(), "uncached"
                time.sleep(poll)
                if not lock.exists():
                    arrays = _read(path, meta)
                    if arrays is not None:
                        return arrays, "read"
                continue
            except OSError:  # not writable here: the next place
                break
            try:
                os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
                os.close(fd)
                arrays = _read(path, meta)  # finished while we waited for the lock
                if arrays is not None:
                    return arrays, "read"
                built = build()
                try:
                    _write(path, meta, built)
                except OSError:
                    return built, "uncached"
                arrays = _read(path, meta)
                return (arrays, "built") if arrays is not None else (built, "uncached")
            finally:
                with _quiet():
                    lock.unlink()
    return build(), "uncached"
