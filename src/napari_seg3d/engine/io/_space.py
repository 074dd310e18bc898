"""Free space before a write, and one sentence for a write that fails on a full disk.

Every writer of napari-seg3d (volumes of every format, model files, the training report, the
TensorBoard log) first checks that the file system of its target has room for what it is about
to write (:func:`check_free_space`, sizes from :func:`expected_bytes`), and turns the
``OSError`` of a full disk, an exceeded quota or a failing device, at any point of the write,
into an :class:`.OutputError` with one sentence (:func:`writing`, :func:`write_error`). The
writer then removes its temporary; a file already under the final name is never touched.

The size of a compressed output is only known once it is written: the check asks for a part of
its uncompressed size (:data:`COMPRESSED_FRACTION`), so it refuses only what clearly cannot fit,
and a disk that fills during the write still ends in the sentence, with nothing left behind.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError

log = logging.getLogger(__name__)

#: what each errno of a failed write means, in the user's words
SPACE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "your disk quota is exceeded",
    errno.EFBIG: "the file is larger than this file system allows",
    errno.EIO: "the disk reported an input/output error (it may be failing or disconnected)",
}
# kept free beyond the expected size (file system metadata, other writers): 64 KiB and 1 %
MARGIN_BYTES = 64 << 10
MARGIN_FRACTION = 0.01
# A part of the uncompressed size that a compressed output needs at least: floats (probabilities,
# uncertainty) compress little (1.1-1.2x measured on the nuclei sample), label images much more
# (6x there after 2 iterations, far more for a trained model).
COMPRESSED_FRACTION = {"float": 0.5, "integer": 1 / 16}
FIX = "Free some space or choose another folder"
NOTHING_WRITTEN = f"{FIX}; nothing was written."


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 kB"``: decimal units, as ``df -H`` and file managers show them."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def existing_folder(path: str | os.PathLike) -> Path:
    """The nearest existing folder at or above ``path`` (where a new file would take space)."""
    folder = Path(path).expanduser().absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged user may still write on the file system of ``path`` (None when it
    cannot be told)."""
    try:
        return int(shutil.disk_usage(existing_folder(path)).free)
    except OSError:
        return None


def cannot_write(what: str, target: str | os.PathLike) -> str:
    """The start of the sentence of a failed write: ``"Cannot write the labels out/x.npy"``."""
    return f"Cannot write {what} {os.fspath(target)}"


def check_free_space(target: str | os.PathLike, needed: int, lead: str, *,
                     tail: str = NOTHING_WRITTEN) -> None:
    """Raise an :class:`.OutputError` unless the file system of ``target`` has ``needed`` bytes
    free, and a margin (:data:`MARGIN_BYTES` plus :data:`MARGIN_FRACTION` of ``needed``).

    Args:
        target: the file (or folder) to be written.
        needed: the bytes it will take.
        lead: the start of the sentence, e.g. ``cannot_write("the labels", path)``.
        tail: what to do, and what became of the file, ending the sentence.
    """
    free = free_bytes(target)
    needed = int(needed * (1 + MARGIN_FRACTION)) + MARGIN_BYTES
    if free is None or needed <= free:
        return
    raise OutputError(f"{lead}: it needs about {format_bytes(needed)} and "
                      f"{existing_folder(target)} has {format_bytes(free)} free. {tail}")


def expected_bytes(shape: Sequence[int], dtype: Any, suffix: str = ".npy", *,
                   compressed: bool = True) -> int:
    """The bytes a volume of ``shape`` and ``dtype`` takes at least in a file of ``suffix``:
    its size for ``.npy`` and uncompressed TIFF, a part of it (:data:`COMPRESSED_FRACTION`) for
    compressed TIFF, HDF5 and zarr, plus a header."""
    dtype = np.dtype(dtype)
    raw = math.prod(int(n) for n in shape) * dtype.itemsize
    if suffix.lower() == ".npy" or not compressed:
        return raw + 4096
    kind = "float" if dtype.kind in "fc" else "integer"
    return int(raw * COMPRESSED_FRACTION[kind]) + 4096


def space_error(exc: BaseException) -> str | None:
    """What a full disk, an exceeded quota or a failing device means, if ``exc`` is one."""
    code = getattr(exc, "errno", None)
    if code in SPACE_ERRNOS:
        return SPACE_ERRNOS[code]
    text = str(exc)  # h5py and zarr sometimes keep only the text of the C library's error
    for code, words in SPACE_ERRNOS.items():
        if f"errno = {code}," in text or os.strerror(code) in text:
            return words
    return None


def write_error(exc: BaseException, lead: str, *, tail: str = NOTHING_WRITTEN) -> OutputError:
    """The :class:`.OutputError` for ``exc``, raised by the write that ``lead`` names (``tail``
    ends the sentence of a full disk)."""
    if isinstance(exc, OutputError):
        return exc
    meaning = space_error(exc)
    if meaning is not None:
        return OutputError(f"{lead}: {meaning}. {tail}")
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0] or type(exc).__name__
    return OutputError(f"{lead} ({reason}). Choose a folder you can write to.")


@contextmanager
def writing(lead: str) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block (and the ``RuntimeError`` of a C library that
    reports a full disk) into the :class:`.OutputError` of :func:`write_error`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise write_error(exc, lead) from exc
    except RuntimeError as exc:
        if space_error(exc) is None:
            raise
        raise write_error(exc, lead) from exc
