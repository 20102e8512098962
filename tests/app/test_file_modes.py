"""Every file plumelink writes follows the user's umask like any other file (a lab shares
maps, packages and reports in a group folder): maps, repacked maps, exports, transferred
maps, evaluation reports and model packages, through the command line, under umask 027."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from _small_map import small_map

from plumelink.app.cli import main

UMASK = 0o027  # not the usual 022, so that a hard-coded 0644 would fail too


@pytest.fixture
def umask() -> Iterator[int]:
    old = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_map_files_and_exports_follow_the_umask(tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    source = small_map(out / "map.h5")
    assert main(["repack", str(source), str(out / "repacked.h5"), "-q"]) == 0
    assert main(["export", str(source), "--format", "hspy", "--out", str(out / "m.hspy")]) == 0
    assert main(["export", str(source), "--format", "csv", "--spot", "0,0",
                 "--out", str(out / "spots.csv")]) == 0
    modes = _modes(out)
    assert set(modes) >= {"map.h5", "repacked.h5", "m.hspy", "spots.csv"}, modes
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_packages_transfers_and_reports_follow_the_umask(tiny_model, tmp_path: Path,
                                                        umask: int) -> None:
    maps, _ = tiny_model
    out = tmp_path / "out"
    assert main(["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--out", str(out / "model"), "--epochs", "1", "--no-baselines", "-q",
                 "--threads", "1"]) == 0
    assert main(["transfer", "--model", str(out / "model"), "--input", str(maps["test"]),
                 "--out", str(out / "t.h5"), "-q"]) == 0
    modes = _modes(out)
    assert {"model/manifest.json", "model/vae.safetensors", "t.h5"} <= set(modes), modes
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
