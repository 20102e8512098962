"""Writing a file whole: temp file beside it, then rename; the mode follows the umask.

Its own module (importing nothing of plumelink) because the package writer and the training
checkpoints both use it and the checkpoints sit below the package in the import graph.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Any


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
