"""Ways a model package's weight file gets damaged or replaced in the field, each followed by
the sha256 update in the manifest that lets it past the checksum (someone "repaired" the
package, or the damage happened before the manifest was written), for the tests of
models/package.py and of the CLI commands that load packages.

`Payload` is a pickle whose unpickling creates a marker file: a loader that ever unpickled
a weight file would leave the marker behind."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


class Payload:
    """Unpickled, it creates the file `marker` (the pickle calls builtins.open)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _data_start(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def truncated(data: bytes, marker: Path) -> bytes:
    """The last quarter of the tensor data cut off (a copy that stopped early)."""
    start = _data_start(data)
    return data[:start + (len(data) - start) * 3 // 4]


def truncated_header(data: bytes, marker: Path) -> bytes:
    return data[:20]


def garbled_header(data: bytes, marker: Path) -> bytes:
    """The JSON header overwritten after its opening brace."""
    return data[:9] + b"\xab" * 24 + data[33:]


def garbled_data(data: bytes, marker: Path) -> bytes:
    """Every byte of the tensor data set to 0xff (float32 NaN)."""
    start = _data_start(data)
    return data[:start] + b"\xff" * (len(data) - start)


def random_bytes(data: bytes, marker: Path) -> bytes:
    return np.random.default_rng(7).bytes(len(data))


def empty(data: bytes, marker: Path) -> bytes:
    return b""


def pickled(data: bytes, marker: Path) -> bytes:
    return pickle.dumps({"net.0.weight": Payload(marker)}, protocol=4)


def pickled_protocol0(data: bytes, marker: Path) -> bytes:
    return pickle.dumps(Payload(marker), protocol=0)


def torch_saved(data: bytes, marker: Path) -> bytes:
    """What torch.save writes: a zip archive with a pickle inside."""
    buffer = io.BytesIO()
    torch.save({"net.0.weight": Payload(marker)}, buffer)
    return buffer.getvalue()


# damage -> the words the refusal must contain
DAMAGES: dict[str, tuple[Callable[[bytes, Path], bytes], str]] = {
    "truncated": (truncated, "truncated"),
    "truncated_header": (truncated_header, "truncated"),
    "garbled_header": (garbled_header, "not a safetensors file"),
    "garbled_data": (garbled_data, "NaN or inf"),
    "random_bytes": (random_bytes, "not a safetensors file"),
    "empty": (empty, "empty file"),
    "pickle": (pickled, "not a safetensors file: it looks like a Python pickle"),
    "pickle_protocol0": (pickled_protocol0, "not a safetensors file"),
    "torch_save": (torch_saved, "not a safetensors file: it looks like a zip archive"),
}
PICKLES = ("pickle", "pickle_protocol0", "torch_save")


def damage(folder: Path, name: str, how: str, marker: Path) -> str:
    """Damage the package's weight file `name` the way `how` names, record its new sha256 in
    the manifest, and return the words its refusal must contain."""
    path = folder / name
    make, words = DAMAGES[how]
    path.write_bytes(make(path.read_bytes(), marker))
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                               "bytes": path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest))
    return words


def unpickling_would_run(marker: Path) -> None:
    """The payloads are real: unpickling one does create its marker (then removed), so a
    test that finds no marker proves that the loader did not unpickle."""
    pickle.loads(pickled(b"", marker))
    assert marker.exists()
    marker.unlink()
