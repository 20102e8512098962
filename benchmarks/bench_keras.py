"""Training speed against Keras: the package's VAE trained by plumelink (torch) and the same
network in Keras 3 on TensorFlow, with and without XLA, measured alternately in one run.

Targets (issue 18, on the CPU at batch 128, fp32): torch >= 1.2 x Keras without XLA and
>= 1.0 x Keras with XLA; with another process keeping one core busy (``--busy-core``, a
Python spin loop started for the measurement) >= 0.8 x Keras in the same conditions.

TensorFlow is no project dependency: the benchmark makes its own virtual environment
(default ~/.cache/plumelink/bench-keras-venv, ``pip install tensorflow-cpu==2.21.0``; with
``--device cuda`` bench-keras-gpu-venv and ``tensorflow[and-cuda]``) when it is missing, and
measures torch alone, saying why, where it cannot be made. The Keras side is
`keras_worker.py` (the same layers, loss, KL schedule and Adam, restated for TensorFlow);
the torch side is this script's ``--worker torch``, which trains with `fit.train_step`, the
step of `fit`, on the thread count training would choose (`training_threads`) unless
``--threads`` says otherwise; Keras keeps TensorFlow's default thread pools (or
``--threads``). Each framework runs in a long-lived process of its own, started one after
the other (so that torch's thread choice does not see TensorFlow starting up); then every
round runs --warmup untimed and --steps timed steps in each process in turn (torch, keras,
keras-xla, torch, ...). Reported per framework: samples/s as the mean over every timed step
and the best window of --window consecutive steps, and the ratios torch / Keras.

    python benchmarks/bench_keras.py [--busy-core | --conditions idle busy-core]
                                     [--rounds 5] [--steps 30] [--warmup 3] [--window 5]
                                     [--batch 128] [--threads N] [--device cpu|cuda]
                                     [--bf16] [--aten] [--venv DIR] [--no-install] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "plumelink"
TF_VERSION = "2.21.0"
REQUIREMENT = {"cpu": f"tensorflow-cpu=={TF_VERSION}",
               "cuda": f"tensorflow[and-cuda]=={TF_VERSION}"}
DEFAULT_VENV = {"cpu": CACHE / "bench-keras-venv", "cuda": CACHE / "bench-keras-gpu-venv"}
CONDITIONS = ("idle", "busy-core")
# the targets: torch / framework, per condition
TARGETS = {("idle", "keras"): 1.2, ("idle", "keras-xla"): 1.0,
           ("busy-core", "keras"): 0.8, ("busy-core", "keras-xla"): 0.8}
N_PRIMARY = 4062
ENV_SWITCH = "PLUMELINK_ONEDNN_LINEAR"  # plumelink.models.dense.ENV_SWITCH


# -- the Keras environment


def _tail(text: str, n: int = 400) -> str:
    text = (text or "").strip()
    return text[-n:] if text else "(no output)"


def keras_python(venv: Path, requirement: str, base_python: str | os.PathLike[str],
                 install: bool = True, timeout_s: float = 1800) -> tuple[Path | None, str]:
    """The Python of a virtual environment holding TensorFlow and Keras, made at ``venv``
    with ``base_python -m venv`` and ``pip install requirement`` when it is missing.

    Returns (python, what was done) or (None, why not): the reason names the folder and the
    step that failed, for the benchmark's skip message."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import tensorflow, keras"]

    def importable() -> bool:
        try:
            return subprocess.run(check, capture_output=True, timeout=300).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    if python.exists() and importable():
        return python, f"found {venv}"
    if not install:
        return None, f"no TensorFlow environment at {venv} (and --no-install)"
    try:
        made = subprocess.run([str(base_python), "-m", "venv", str(venv)], capture_output=True,
                              text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot create the virtual environment {venv} with {base_python}: {exc}"
    if made.returncode != 0 or not python.exists():
        return None, (f"cannot create the virtual environment {venv} with {base_python}: "
                      f"{_tail(made.stderr or made.stdout)}")
    print(f"installing {requirement} into {venv} (once; several hundred MB)...",
          file=sys.stderr, flush=True)
    try:
        pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", requirement],
                             capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot install {requirement} into {venv}: {exc}"
    if pip.returncode != 0:
        return None, f"cannot install {requirement} into {venv}: {_tail(pip.stderr or pip.stdout)}"
    if not importable():
        return None, f"{requirement} installed into {venv} but `import tensorflow, keras` fails"
    return python, f"made {venv} with {requirement}"


# -- the figures


def summarise(rounds: Sequence[Sequence[float]], batch: int, window: int) -> dict[str, Any]:
    """samples/s from the seconds of each timed step, per round: the mean over every step and
    the best window of ``window`` consecutive steps (within a round; a shorter last window of
    a round counts when the round has no full one)."""
    steps = [s for r in rounds for s in r]
    if not steps or sum(steps) <= 0:
        raise ValueError("no timed step")
    best = 0.0
    for r in rounds:
        chunks = [r[i : i + window] for i in range(0, len(r), window)]
        full = [c for c in chunks if len(c) == window] or chunks
        best = max([best] + [len(c) * batch / sum(c) for c in full if sum(c) > 0])
    per_round = [len(r) * batch / sum(r) for r in rounds if r and sum(r) > 0]
    return {"samples_per_s_mean": len(steps) * batch / sum(steps), "samples_per_s_best": best,
            "samples_per_s_rounds": per_round, "timed_steps": len(steps)}


def ratios(results: dict[str, dict[str, Any]], condition: str) -> dict[str, dict[str, Any]]:
    """torch / each other framework measured in the same condition, of the means and of the
    best windows, with the issue's target where it sets one."""
    torch_result = results.get("torch")
    out: dict[str, dict[str, Any]] = {}
    if torch_result is None:
        return out
    for name, other in results.items():
        if name.startswith("torch"):
            continue
        entry = {
            "mean": torch_result["samples_per_s_mean"] / other["samples_per_s_mean"],
            "best": torch_result["samples_per_s_best"] / other["samples_per_s_best"]}
        target = TARGETS.get((condition, name))
        if target is not None:
            entry["target"] = target
            entry["met"] = entry["mean"] >= target
        out[f"torch/{name}"] = entry
    return out


def format_table(report: dict[str, Any]) -> str:
    """The human summary: one row per condition and framework, then the ratios."""
    lines = [f"{'condition':<10} {'framework':<11} {'mean/s':>8} {'best/s':>8}  threads"]
    for cond, block in report["conditions"].items():
        for name, r in block["results"].items():
            lines.append(f"{cond:<10} {name:<11} {r['samples_per_s_mean']:>8,.0f} "
                         f"{r['samples_per_s_best']:>8,.0f}  {r.get('threads_used', '?')}")
        for name, q in block["ratios"].items():
            target = (f"  target >= {q['target']:.1f}: {'met' if q['met'] else 'NOT met'}"
                      if "target" in q else "")
            lines.append(f"{cond:<10} {name:<17} mean {q['mean']:.2f} x, best {q['best']:.2f} x"
                         f"{target}")
    if report.get("keras_skipped"):
        lines.append(f"Keras skipped: {report['keras_skipped']}")
    return "\n".join(lines)


# -- the workers


@dataclass
class Worker:
    """A measuring process: prints a JSON "ready" line, then one result line per "round"."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    rounds: list[list[float]] = field(default_factory=list)
    process: subprocess.Popen | None = None
    log: IO[str] | None = None

    def start(self, timeout_s: float = 600) -> None:
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env=self.env, bufsize=1)
        self.info = self._reply("ready", timeout_s)

    def _reply(self, key: str, timeout_s: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "error" in reply:
                raise RuntimeError(f"{self.name}: {reply['error']}")
            if key in reply:
                return reply
        raise RuntimeError(f"{self.name} ended without a {key!r} reply: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return _tail(self.log.read(), 1500)

    def round(self, timeout_s: float = 600) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        self.rounds.append(self._reply("step_seconds", timeout_s)["step_seconds"])

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            if self.process.stdin is not None:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        if self.log is not None:
            self.log.close()


def torch_command(args: argparse.Namespace, bf16: bool = False) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "torch",
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--total-steps", str(total_steps(args)), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd + (["--bf16"] if bf16 else [])


def keras_command(python: Path, args: argparse.Namespace, xla: bool) -> list[str]:
    cmd = [str(python), str(HERE / "keras_worker.py"), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--total-steps", str(total_steps(args)),
           "--device", "gpu" if args.device == "cuda" else "cpu"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd + (["--xla"] if xla else [])


def total_steps(args: argparse.Namespace) -> int:
    """Steps of the KL schedule (the same on both sides): every step the run makes."""
    return (args.rounds + 1) * (args.steps + args.warmup)


def start_busy_core() -> subprocess.Popen:
    """A process that keeps one core busy (a Python spin loop) until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(condition: str, args: argparse.Namespace, keras_py: Path | None) -> dict[str, Any]:
    """Every framework in one condition: workers started one by one, then rounds in turn."""
    busy = start_busy_core() if condition == "busy-core" else None
    workers: list[Worker] = []
    try:
        if busy is not None:
            time.sleep(1.0)  # running before torch samples the free cores
        workers.append(Worker("torch", torch_command(args)))
        if keras_py is not None:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
            workers.append(Worker("keras", keras_command(keras_py, args, False), env))
            workers.append(Worker("keras-xla", keras_command(keras_py, args, True), env))
        if args.bf16:
            workers.append(Worker("torch-bf16", torch_command(args, bf16=True)))
        if args.aten:  # the same step on torch's own linear: what oneDNN's Dense gives
            workers.append(Worker("torch-aten", torch_command(args),
                                  dict(os.environ, **{ENV_SWITCH: "0"})))
        for w in workers:
            w.start()
            print(f"{condition}: {w.name} ready ({w.info.get('threads_used', '')})",
                  file=sys.stderr, flush=True)
        for r in range(args.rounds):
            for w in workers:
                w.round()
            print(f"{condition}: round {r + 1}/{args.rounds} done", file=sys.stderr,
                  flush=True)
    finally:
        for w in workers:
            w.stop()
        if busy is not None:
            busy.kill()
            busy.wait()
    results = {}
    for w in workers:
        results[w.name] = {**w.info, **summarise(w.rounds, args.batch, args.window)}
        results[w.name].pop("ready", None)
    return {"results": results, "ratios": ratios(results, condition)}


# -- the torch worker


def torch_worker(args: argparse.Namespace) -> int:
    """This script's ``--worker torch``: the VAE trained with `fit.train_step`."""
    import torch

    from plumelink.models.dense import onednn_linear_available
    from plumelink.models.fit import make_adam, train_step, vae_loss
    from plumelink.models.networks import VAE
    from plumelink.models.training.data import available_cores, training_threads

    threads = args.threads or training_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as stated
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    vae = VAE(N_PRIMARY, (1024, 512), 64).to(device)
    optimiser = make_adam(vae, 1e-4, 1e-5)  # what `fit` trains with
    loss_fn = vae_loss(args.total_steps)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(args.batch, N_PRIMARY, generator=gen).to(device) for _ in range(4)]
    vae.train()
    step = 0

    def train(n: int) -> list[float]:
        nonlocal step
        seconds = []
        for _ in range(n):
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = train_step(vae, loss_fn, (data[step % 4],), step, optimiser)
            float(loss)  # the step has finished (as Keras' train_on_batch returns numbers)
            seconds.append(time.perf_counter() - t)
            step += 1
        return seconds

    train(max(args.warmup, 1))
    how = "explicit" if args.threads else f"training_threads() of {available_cores()} cores"
    print(json.dumps({
        "ready": True, "framework": "torch-bf16" if args.bf16 else "torch",
        "torch": torch.__version__, "threads": threads,
        "threads_used": f"{threads} ({how})", "device": str(device),
        "onednn_linear": onednn_linear_available(),
        "autocast": "bfloat16" if args.bf16 else None}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "round":
            train(args.warmup)
            print(json.dumps({"step_seconds": train(args.steps)}), flush=True)
        elif command == "quit":
            break
    return 0


# -- the command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS),
                        help="idle, and/or with one core kept busy (default both)")
    parser.add_argument("--busy-core", action="store_true",
                        help="only the busy-core condition (--conditions busy-core)")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    parser.add_argument("--window", type=int, default=5, help="steps of the best window")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both frameworks (default: each its own choice)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="also torch with bfloat16 autocast (a separate, opt-in figure)")
    parser.add_argument("--aten", action="store_true",
                        help="also torch on its own linear (PLUMELINK_ONEDNN_LINEAR=0)")
    parser.add_argument("--venv", type=Path, default=None,
                        help="the TensorFlow environment (default ~/.cache/plumelink/...)")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python that makes the environment (default this one)")
    parser.add_argument("--no-install", action="store_true",
                        help="skip Keras when its environment is missing, do not make it")
    parser.add_argument("--torch-only", action="store_true", help="skip Keras")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--worker", choices=["torch"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--total-steps", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.busy_core:
        args.conditions = ["busy-core"]
    for name in ("rounds", "steps", "window", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--warmup must be >= 0 and --threads >= 1")
    if args.venv is None:
        args.venv = DEFAULT_VENV[args.device]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "torch":
        return torch_worker(args)
    keras_py, how = None, "--torch-only"
    if not args.torch_only:
        keras_py, how = keras_python(args.venv, REQUIREMENT[args.device], args.python,
                                     install=not args.no_install)
        if keras_py is None:
            print(f"Keras skipped: {how}", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "device": args.device, "batch": args.batch, "rounds": args.rounds,
        "steps": args.steps, "warmup": args.warmup, "window": args.window,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "keras_environment": how, "keras_skipped": None if keras_py else how,
        "conditions": {}}
    started = time.perf_counter()
    for condition in args.conditions:
        report["conditions"][condition] = measure(condition, args, keras_py)
    report["seconds"] = time.perf_counter() - started
    print(format_table(report))
    text = json.dumps(report, indent=1, default=float)
    if args.json is not None:
        args.json.write_text(text)
    print(text, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
