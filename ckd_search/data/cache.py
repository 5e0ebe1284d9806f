"""Frame cache: one Arrow IPC file per (data set, split, build parameters), memory-mapped on load.

Layout: ``<cache_dir>/data/<dataset>/<split>-T<T>-S<S>-I<I>-<key>.arrow`` where ``key`` is a hash
of every build parameter (:func:`cache_key`). Each column (see :data:`~ckd_search.data.built.COLUMNS`)
is one row holding the flattened array; its shape and dtype are in the field metadata. The schema
metadata holds the parameters, a SHA-256 content hash, the class names and the build facts.

Writes go to a temporary file in the same directory followed by ``os.replace``, so a reader never
sees a partial file. A cache whose parameters differ, whose hash does not match or that does not
parse is reported as :class:`CacheInvalid`; :func:`ckd_search.data.paired.load_paired` rebuilds it.
Arrays are mapped copy-on-write: no copy at load, and writing to them never touches the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import IO
from typing import Any

import numpy as np
import pyarrow as pa

from ckd_search.data.built import COLUMNS
from ckd_search.data.built import SplitArrays
from ckd_search.errors import DataError
from ckd_search.storage import atomic_write
from ckd_search.storage import remove_stale_temp_files

log = logging.getLogger(__name__)

# Bump when the file layout changes; part of every key.
FORMAT_VERSION = 1
_META_PARAMS = b"ckd_search.params"
_META_HASH = b"ckd_search.sha256"
_META_INFO = b"ckd_search.info"
_META_FORMAT = b"ckd_search.format"


class CacheInvalid(Exception):
    """A cache file exists but cannot be used (truncated, corrupt, or built with other params)."""


def cache_key(params: Mapping[str, Any]) -> str:
    """Short stable hash of JSON-serialisable build parameters."""
    blob = json.dumps({"format": FORMAT_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def split_path(cache_dir: str | Path, params: Mapping[str, Any], split: str) -> Path:
    """Path of one split's cache file (params must hold dataset, timesteps, size, image_size)."""
    name = (
        f"{split}-T{params['timesteps']}-S{params['size']}-I{params['image_size']}-{cache_key(params)}.arrow"
    )
    return Path(cache_dir).expanduser() / "data" / str(params["dataset"]) / name


def content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every column's name, dtype, shape and bytes, in :data:`COLUMNS` order."""
    digest = hashlib.sha256()
    for name in COLUMNS:
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        digest.update(arr.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def write_split(path: Path, data: SplitArrays, params: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """Atomically write one split with its parameters, content hash and info in the metadata."""
    arrays = {name: np.ascontiguousarray(a) for name, a in data.arrays().items()}
    fields, columns = [], []
    for name in COLUMNS:
        arr = arrays[name]
        flat = pa.array(arr.reshape(-1))
        columns.append(pa.LargeListArray.from_arrays(pa.array([0, arr.size], pa.int64()), flat))
        meta = {"shape": json.dumps(list(arr.shape)), "dtype": arr.dtype.str}
        fields.append(pa.field(name, columns[-1].type, nullable=False, metadata=meta))
    schema = pa.schema(
        fields,
        metadata={
            _META_FORMAT: str(FORMAT_VERSION),
            _META_PARAMS: json.dumps(dict(params), sort_keys=True, default=str),
            _META_HASH: content_hash(arrays),
            _META_INFO: json.dumps(dict(info), sort_keys=True, default=str),
        },
    )
    make_cache_folder(path.parent)

    def write(fh: IO[bytes]) -> None:
        with pa.ipc.new_file(fh, schema) as writer:
            writer.write_batch(pa.record_batch(columns, schema=schema))

    try:
        atomic_write(path, write)
    except OSError as err:
        raise DataError(f"{path.parent}: cannot write the data cache ({err.strerror or err})") from None


def read_split(
    path: Path, params: Mapping[str, Any], *, verify: bool = True
) -> tuple[SplitArrays, dict[str, Any]]:
    """Memory-map one split.

    Args:
        path: the cache file.
        params: the parameters it must have been built with.
        verify: check the content hash (reads every page once).

    Returns:
        (arrays backed by a copy-on-write map of the file, info dict).

    Raises:
        FileNotFoundError: no such file.
        CacheInvalid: unreadable, truncated, hash mismatch or other parameters.
    """
    try:
        with open(path, "rb") as fh:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:  # an empty file cannot be mapped
        raise CacheInvalid(f"cannot map: {err}") from None
    try:
        root = pa.py_buffer(buf)
        reader = pa.ipc.open_file(pa.BufferReader(root))
        meta = reader.schema.metadata or {}
        stored = json.loads(meta[_META_PARAMS])
        if stored != json.loads(json.dumps(dict(params), sort_keys=True, default=str)):
            raise CacheInvalid("built with other parameters")
        batch = reader.get_batch(0)
        arrays = {name: _column(batch, name, root, buf) for name in COLUMNS}
        info = json.loads(meta[_META_INFO])
        expected_hash = meta[_META_HASH].decode()
    except CacheInvalid:
        raise
    except (pa.ArrowException, KeyError, ValueError, IndexError, TypeError) as err:
        raise CacheInvalid(f"cannot parse: {err}") from None
    if verify and content_hash(arrays) != expected_hash:
        raise CacheInvalid("content hash mismatch")
    try:
        return SplitArrays(**arrays), info
    except ValueError as err:
        raise CacheInvalid(f"inconsistent columns: {err}") from None


def _column(batch: pa.RecordBatch, name: str, root: pa.Buffer, buf: mmap.mmap) -> np.ndarray:
    """Zero-copy NumPy view of one column, taken straight from the writable private map."""
    field = batch.schema.field(name)
    shape = tuple(json.loads(field.metadata[b"shape"]))
    dtype = np.dtype(field.metadata[b"dtype"].decode())
    values = batch.column(name).values
    count = int(np.prod(shape))
    if len(values) != count or values.null_count:
        raise ValueError(f"column {name}: {len(values)} values for shape {shape}")
    if count == 0:
        return np.empty(shape, dtype=dtype)
    data = values.buffers()[1]
    offset = data.address - root.address + values.offset * dtype.itemsize
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[bool]:
    """Advisory inter-process lock next to ``path`` so concurrent trials build a cache once.

    Yields whether the lock is really held (False where ``fcntl`` is missing: nothing is locked).
    """
    make_cache_folder(path.parent)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: atomic writes still keep files whole
        yield False
        return
    lock = path.with_name(path.name + ".lock")
    try:
        handle = open(lock, "a")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        raise DataError(f"{lock}: cannot create the cache lock ({err.strerror or err})") from None
    with handle as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale_temps(paths: Iterable[Path]) -> list[Path]:
    """Delete the temp files that a build killed mid-write (SIGKILL, OOM) left beside ``paths``.

    Call only while holding the :func:`build_lock` that every writer of ``paths`` holds
    (:func:`ckd_search.data.paired.load_paired` writes both splits under the train file's
    lock): then no live process can be writing them, so any such temp file is an orphan.
    """
    return [tmp for path in paths for tmp in remove_stale_temp_files(path)]


def make_cache_folder(folder: Path) -> None:
    """``mkdir -p folder``, or a one-line DataError naming it (data.cache_dir is a file, read-only, ...)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{folder}: cannot create the data cache folder ({err.strerror or err})") from None
