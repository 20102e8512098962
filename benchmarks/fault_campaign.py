"""Fault campaign: fly scans on the simulated bench under dense random per-shot faults.

Every campaign injects missed, duplicated, late and corrupt frames on either spectrometer (or
both), consecutive faults and faults on a pass's first and last shot, and a clock wrap of one
unit mid-scan, then checks the map against the bench's ground truth:

- mis-paired spectra: a stored spectrum whose device time label belongs to another shot than
  the map's ``shot_id`` of its spot (must be 0);
- spots lost that could have been saved: a spot invalid for a system although that shot's
  frame reached the driver intact and in time, and the pass could be anchored with
  certainty (its own first and last frame intact, or the other system's and the clock offset
  already known from an earlier pass); must be 0;
- spots lost for a reason: everything else invalid (missed, corrupt or late frames, passes
  whose first or last shot both systems lost, a duplicate claim that cannot be resolved).

    python benchmarks/fault_campaign.py [--campaigns 3] [--lines 6] [--nx 40] [--rate 0.1]
                                        [--no-clock-wrap]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from bench_acquisition import fly_scan

from plumelink.drivers.bench import open_bench
from plumelink.drivers.sim.bench_bus import FaultKind, ShotFault
from plumelink.pipeline.engine import acquire
from plumelink.pipeline.map_reader import MapReader

SYSTEMS = ("primary", "secondary")
LATE_S = 0.8  # real seconds: beyond the read-out's margin, so the frame misses its pass


def random_faults(rng: np.random.Generator, n_shots: int, nx: int, rate: float
                  ) -> dict[int, list[ShotFault]]:
    """Shot index (0-based in the scan) -> faults: about ``rate`` faults per shot, with extra
    faults on passes' first and last shots and runs of consecutive faults."""
    kinds = [ShotFault.missed, ShotFault.duplicate, ShotFault.garbage]
    targets = ["primary", "secondary", "spectrometers"]
    faults: dict[int, list[ShotFault]] = {}

    def add(k: int) -> None:
        target = targets[rng.integers(3)]
        if rng.random() < 0.1:
            fault = ShotFault.late(target if target != "spectrometers" else "primary", LATE_S)
        else:
            kind = kinds[rng.integers(len(kinds))]
            if kind is not ShotFault.missed and target == "spectrometers":
                target = SYSTEMS[rng.integers(2)]
            fault = kind(target)
        faults.setdefault(k, []).append(fault)

    for k in np.flatnonzero(rng.random(n_shots) < rate):
        add(int(k))
        if rng.random() < 0.3 and k + 1 < n_shots:  # consecutive
            add(int(k) + 1)
    for line in range(n_shots // nx):  # ends of passes
        if rng.random() < 0.3:
            add(line * nx + (0 if rng.random() < 0.5 else nx - 1))
    faults.pop(0, None)  # shot 0 carries the clock wrap below
    return faults


def _hits(record, system: str, *kinds: FaultKind) -> bool:
    return any(f.target in (system, "spectrometers") and f.kind in kinds for f in record.faults)


def _intact(records: list, system: str) -> list[bool]:
    """Per shot of a pass: its frame reached this system's driver in time and not corrupt (a
    late frame holds the unit's queue behind it, so the rest of the pass is late too)."""
    out, late = [], False
    for record in records:
        late = late or _hits(record, system, FaultKind.LATE_FRAME)
        out.append(system in record.frames and not late
                   and not _hits(record, system, FaultKind.GARBAGE, FaultKind.MISSED_TRIGGER))
    return out


def campaign(seed: int, folder: Path, lines: int, nx: int, rate: float,
             clock_wrap: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    scan = fly_scan(folder, lines, nx, speedup=100.0)  # the acquisition benchmark's fly scan
    bench_path, out = scan.bench, scan.output_path()
    faults = random_faults(rng, lines * nx, nx, rate)
    wrapped = SYSTEMS[seed % 2]
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        n0 = sim.next_shot_number
        plan = {n0 + k: f for k, f in faults.items()}
        # the unit's u32 clock wraps in the middle of the scan (~ lines * nx ms of device time)
        if clock_wrap:
            plan[n0] = [ShotFault.clock_wrap(wrapped, after_s=0.5 * lines * nx / 1000.0)]
        sim.inject(plan)
        try:
            status = acquire(scan, bench=bench).status
        except Exception as exc:  # an older plumelink ended the scan at a corrupt frame
            status = f"ended: {type(exc).__name__}"
        log = {r.number: r for r in sim.shot_log}
        bus = sim.bus
        mispaired = savable = explained = valid = 0
        offsets_known = False  # a pass whose ends both systems saw: the clock offset is learnt
        with MapReader(out) as m:
            lines_written = m.lines_done.sum()
            for iy in np.flatnonzero(m.lines_done):
                line = m.read_line(int(iy))
                order = np.argsort(line.shot_id)  # shot order of the pass
                records = [log[n0 + int(line.shot_id[ix])] for ix in order]
                intact = {s: _intact(records, s) for s in SYSTEMS}
                ends = {s: intact[s][0] and intact[s][-1] for s in SYSTEMS}
                for system in SYSTEMS:
                    s = getattr(line, system)
                    other = "secondary" if system == "primary" else "primary"
                    anchored = ends[system] or (offsets_known and ends[other])
                    for j, ix in enumerate(order):
                        if s.valid[ix]:
                            valid += 1
                            if bus.shot_for(system, s.timestamp_s[ix]) != n0 + line.shot_id[ix]:
                                mispaired += 1
                        elif intact[system][j] and anchored:
                            savable += 1
                        else:
                            explained += 1
                offsets_known = offsets_known or all(ends.values())
    counts = Counter(f.kind.value for fs in faults.values() for f in fs)
    return {"seed": seed, "status": status, "faults": sum(counts.values()),
            "by_kind": dict(counts), "clock_wrap": wrapped if clock_wrap else None,
            "lines_written": int(lines_written), "valid_spectra": valid,
            "mispaired": mispaired, "lost_savable": savable, "lost_explained": explained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campaigns", type=int, default=3)
    parser.add_argument("--lines", type=int, default=6)
    parser.add_argument("--nx", type=int, default=40)
    parser.add_argument("--rate", type=float, default=0.1, help="faults per shot")
    parser.add_argument("--no-clock-wrap", action="store_true",
                        help="no clock wrap (for a plumelink without that fault kind)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.campaigns):
            folder = Path(tmp) / str(seed)
            folder.mkdir()
            rows.append(campaign(seed, folder, args.lines, args.nx, args.rate,
                                 not args.no_clock_wrap))
            print(json.dumps(rows[-1]))
    total = {k: sum(r[k] for r in rows) for k in ("faults", "valid_spectra", "mispaired",
                                                  "lost_savable", "lost_explained")}
    print("total:", json.dumps(total))


if __name__ == "__main__":
    main()
