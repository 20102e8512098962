"""Driver benchmark: commands/s through each emulator and transport with the real drivers, and
shots/s of the whole simulated chain (DDG -> physics -> both spectrometers -> paired frames).

Measures, in one run on this machine:
  1. DG645 `identify` / `get_delay` round trips via pyvisa-py TCP socket and pyserial URL;
  2. Zaber `position()` calls via localhost TCP and a pty (zaber-motion), PI GCS via pyserial
     URL and a pty (real pyserial);
  3. AvaSpec fake through the real driver: frames/s and library calls/s (software trigger);
  4. 500-shot bursts at a simulated 1 kHz laser rate through `open_bench` (real drivers, the
     trigger bus, the physics, both spectrometers), frames paired by the shot log, and the
     physics alone on the same 500-shot blocks in the same run (the reference ratio).
Target: chain >= 3,000 pairs/s (2 cores) where the physics alone allows it.

    python benchmarks/bench_drivers.py [--seconds 1.0] [--bursts 4] [--speedup 100]
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import numpy as np

from plumelink.drivers.avantes import AvaSpec
from plumelink.drivers.bench import BenchProfile, open_bench
from plumelink.drivers.dg645 import DG645
from plumelink.drivers.pi_gcs import PIStage
from plumelink.drivers.sim import dg645_emulator, pi_gcs_emulator, zaber_emulator
from plumelink.drivers.sim.avaspec_fake import AvaSpecFake
from plumelink.drivers.zaber import ZaberStage


def rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``call`` over about ``seconds`` (after one warm-up call)."""
    call()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        n += 1
    return n / elapsed


# ---------------------------------------------------------------------------- transports
def _dg645_calls(ddg: DG645) -> Callable[[], object]:
    flip = [False]

    def call() -> object:
        flip[0] = not flip[0]
        return ddg.identify() if flip[0] else ddg.get_delay("A")

    return call


def bench_dg645_tcp(seconds: float) -> float:
    with dg645_emulator.DG645TcpServer() as server, DG645(server.resource_name) as ddg:
        return rate(_dg645_calls(ddg), seconds)


def bench_dg645_url(seconds: float) -> float:
    url = dg645_emulator.register_emulator("benchmark", dg645_emulator.DG645Emulator())
    try:
        with DG645(f"ASRL{url}::INSTR") as ddg:
            return rate(_dg645_calls(ddg), seconds)
    finally:
        dg645_emulator.unregister_emulator("benchmark")


@contextmanager
def _stage_url(module: Any, emulator: Any) -> Iterator[str]:
    url = module.register_peer("benchmark", emulator)
    try:
        yield url
    finally:
        module.unregister_peer("benchmark")


def _zaber() -> zaber_emulator.ZaberEmulator:
    config = zaber_emulator.AxisConfig(referenced=True)
    return zaber_emulator.ZaberEmulator({1: [config], 2: [config]})


def bench_zaber_tcp(seconds: float) -> float:
    """zaber-motion opens TCP and serial ports only (no pyserial URLs): localhost TCP."""
    with zaber_emulator.ZaberTcpServer(_zaber()) as server, ZaberStage(
            f"tcp://{server.host}:{server.port}", device_db="offline") as stage:
        return rate(stage.position, seconds)


def bench_zaber_pty(seconds: float) -> float:
    with zaber_emulator.ZaberPtyServer(_zaber()) as server, ZaberStage(
            server.url, device_db="offline") as stage:
        return rate(stage.position, seconds)


def bench_pi_url(seconds: float) -> float:
    with _stage_url(pi_gcs_emulator, pi_gcs_emulator.PIEmulator()) as url, PIStage(url) as stage:
        return rate(stage.position, seconds)


def bench_pi_pty(seconds: float) -> float:
    with pi_gcs_emulator.PIPtyServer(pi_gcs_emulator.PIEmulator()) as server, PIStage(
            server.url) as stage:
        return rate(stage.position, seconds)


def bench_avaspec(frames: int = 2000) -> tuple[float, float]:
    """(frames/s, library calls/s) of software-triggered frames read by the real driver."""
    fake = AvaSpecFake()
    with AvaSpec(library=fake, start_pixel=17, stop_pixel=4078) as spec:
        spec.configure(1e-3)
        spec.arm(frames, "software")
        calls = len(fake.calls)
        start = time.perf_counter()
        spec.wait_frames(30.0)
        got = len(spec.read_frames())
        elapsed = time.perf_counter() - start
        assert got == frames
        return got / elapsed, (len(fake.calls) - calls) / elapsed


# ---------------------------------------------------------------------------- the chain
def _chain_profile(speedup: float) -> BenchProfile:
    path = resources.files("plumelink.resources").joinpath("benches", "simulated.toml")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data["laser"]["rate_hz"] = 1000.0
    data["simulation"]["speedup"] = speedup
    return BenchProfile.from_dict(data, source="benchmark")


def bench_chain(bursts: int, shots: int, speedup: float) -> dict[str, float]:
    """Pairs/s of whole bursts through the chain, and physics-alone pairs/s in the same run."""
    period = 1e-3  # 1 kHz laser
    with open_bench(_chain_profile(speedup)) as bench:
        sim = bench.simulation
        ddg = bench.delay_generator
        ddg.configure_burst(shots, period)
        ddg.enable_outputs()
        roles = list(bench.spectrometers)
        for spectrometer in bench.spectrometers.values():
            spectrometer.configure(1e-4)

        def burst() -> None:
            first = sim.next_shot_number
            for spectrometer in bench.spectrometers.values():
                spectrometer.arm(shots)
            ddg.fire()
            ddg.wait_end_of_burst(10.0)
            frames = {}
            for role in roles:
                bench.spectrometers[role].wait_frames(30.0)
                frames[role] = bench.spectrometers[role].read_frames()
            paired = [[sim.bus.shot_for(r, t) for t in frames[r].timestamps_s] for r in roles]
            assert paired[0] == paired[1] == list(range(first, first + shots))

        burst()  # warm-up: builds the physics
        chain = []
        for _ in range(bursts):
            start = time.perf_counter()
            burst()
            chain.append(shots / (time.perf_counter() - start))
        x = np.full(shots, 50_000.0)
        physics = []
        for _ in range(bursts):
            start = time.perf_counter()
            sim.physics.shoot(x, x)
            physics.append(shots / (time.perf_counter() - start))
    return {"chain_pairs_per_s": float(np.median(chain)),
            "physics_pairs_per_s": float(np.median(physics)),
            "ratio": float(np.median(chain) / np.median(physics))}


def run(seconds: float = 1.0, bursts: int = 4, speedup: float = 100.0) -> dict[str, Any]:
    frames_s, calls_s = bench_avaspec()
    return {
        "dg645 pyvisa-py TCP (cmd/s)": bench_dg645_tcp(seconds),
        "dg645 pyserial URL (cmd/s)": bench_dg645_url(seconds),
        "zaber TCP (position()/s)": bench_zaber_tcp(seconds),
        "zaber pty (position()/s)": bench_zaber_pty(seconds),
        "pi_gcs URL (position()/s)": bench_pi_url(seconds),
        "pi_gcs pty (position()/s)": bench_pi_pty(seconds),
        "avaspec fake (frames/s)": frames_s,
        "avaspec fake (library calls/s)": calls_s,
        **{f"chain 500-shot bursts, 1 kHz ({k})": v
           for k, v in bench_chain(bursts, 500, speedup).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per transport figure")
    parser.add_argument("--bursts", type=int, default=4)
    parser.add_argument("--speedup", type=float, default=100.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = run(args.seconds, args.bursts, args.speedup)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:>12,.2f}" if key.endswith("(ratio)")
              else f"{key:<{width}}  {value:>12,.0f}")


if __name__ == "__main__":
    main()
