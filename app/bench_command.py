"""`plumelink bench check PROFILE`: open every device of a bench profile, print what each one
is and run harmless checks (`plumelink.drivers.bench_check`); exit 1 when there is a problem."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="bench profiles: check a bench",
                                  description="Work with bench profiles.")
    commands = bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check", help="open every device of a profile, print identities, run harmless checks",
        description="Open every device of a bench profile, print its identity and firmware, "
                    "check the delay generator (error queue, outputs disabled), the stage "
                    "(limits, referencing, microstep size) and each spectrometer (pixels, "
                    "wavelength range, a dark frame). Nothing fires. Exit status 1 when a "
                    "problem was found, with one line per problem.")
    check.add_argument("profile", metavar="PROFILE",
                       help="shipped profile name (e.g. simulated) or path to a TOML file")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from plumelink.drivers.bench import BenchProfile
    from plumelink.drivers.bench_check import check_bench

    # a profile that cannot be read or is invalid is bad input (one line, exit 2), not a
    # problem of the bench: nothing was opened
    result = check_bench(BenchProfile.load(args.profile))
    print(f"bench check: {result.profile}")
    for line in result.lines:
        print(f"  {line}")
    if result.ok:
        print("no problems found")
        return 0
    print(f"{len(result.problems)} problem(s):")
    for problem in result.problems:
        print(f"  PROBLEM {problem}")
    return 1
