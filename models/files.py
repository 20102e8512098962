"""Weight files written whole and read with care: `atomic_write` (temp file beside it, then
rename; the mode follows the umask) and `read_weights` (a safetensors file checked by its
layout first: a truncated, garbled or replaced file is refused in words, never unpickled).

Its own module (importing nothing of plumelink) because the package writer and the training
checkpoints both use it and the checkpoints sit below the package in the import graph.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import safetensors


def _create_temp(path: Path) -> Path:
    """A new, empty temp file beside `path`, created by os.open with mode 0o666 so that the
    kernel applies the user's umask and the folder's default ACL, as for any file the user
    writes (tempfile.mkstemp creates 0600 files: a package in a lab's group folder would be
    unreadable by the group)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: str | os.PathLike[str], write: Any, *, fsync: bool = True) -> None:
    """Call write(tmp_path) on a temp file beside `path`, fsync it, then rename it over
    `path`: a reader sees the old file or the whole new one, never a part. The file's mode
    follows the umask (0644 under umask 022). Every file of plumelink.models is written so."""
    path = Path(path)
    tmp = _create_temp(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what the umask (or a default ACL) gave it
    try:
        write(str(tmp))
        if stat.S_IMODE(tmp.stat().st_mode) != mode:
            # safetensors' save_file writes its own 0600 file over the temp name
            os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class WeightFileError(ValueError):
    """A weight file is not a whole safetensors file (the message names file and problem)."""


# What a file that is not safetensors starts with, to say what was put in its place. Only
# the first bytes are compared: nothing is ever unpickled or unpacked.
_FOREIGN_MAGIC = (
    (b"PK\x03\x04", "a zip archive (torch.save writes its pickle in one)"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
)
_MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself puts on a header


def _what_it_looks_like(head: bytes) -> str:
    for magic, what in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return f"it looks like {what}"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it looks like a Python pickle"
    if head[:1] in (b"(", b"}", b"]", b"c"):
        return "it may be a Python pickle (protocol 0 or 1) or other data"
    return "its first bytes are no safetensors header"


def safetensors_problem(path: Path) -> str | None:
    """Why `path` cannot be a whole safetensors file, from its length field, its JSON header
    and the tensors' data offsets alone, or None when its layout holds together.

    Checked here, before the library reads it, so that a truncated, garbled or replaced
    file is refused in words naming the problem instead of the library's header error."""
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes), not a safetensors file"
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return (f"not a safetensors file: {_what_it_looks_like(head)}; "
                    f"refused unread (plumelink never unpickles model files)")
        n_header = int.from_bytes(head[:8], "little")
        if n_header > _MAX_HEADER:
            return f"not a safetensors file: its header length field says {n_header} bytes"
        if 8 + n_header > size:
            return (f"truncated: the header alone needs {8 + n_header} bytes, the file has "
                    f"{size}")
        f.seek(8)
        raw = f.read(n_header)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"not a safetensors file: its header is not valid JSON ({e})"
    if not isinstance(header, dict):
        return "not a safetensors file: its header is not a JSON object"
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            return f"not a safetensors file: tensor {name!r} has no data offsets"
        ends.append(offsets[1])
    held, needed = size - 8 - n_header, max(ends, default=0)
    if needed > held:
        return (f"truncated: its tensors need {needed} bytes of data, the file holds {held} "
                f"({size} bytes in all)")
    if needed < held:
        return f"not a whole safetensors file: {held - needed} bytes follow the last tensor"
    return None


def read_weights(path: str | os.PathLike[str], load: Any) -> dict[str, Any]:
    """The tensors of one weight file through a safetensors `load_file` (torch or numpy),
    with every way the file can fail said as a WeightFileError naming the file."""
    path = Path(path)
    problem = safetensors_problem(path)
    if problem is None:
        try:
            return dict(load(str(path)))
        except safetensors.SafetensorError as e:
            problem = f"not a readable safetensors file: {e}"
        except (TypeError, ValueError) as e:  # e.g. a dtype the framework does not have
            problem = f"unreadable tensor data: {e}"
    raise WeightFileError(f"weight file {path}: {problem}")
