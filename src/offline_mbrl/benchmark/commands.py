"""``ombrl benchmark SPEC``: train a spec's grid on Ray, then write its results.

    ombrl benchmark benchmarks/specs/smoke.toml                # embedded Ray on 127.0.0.1
    ombrl benchmark benchmarks/specs/seed-figure.toml --plan   # the grid and its cost
    ombrl benchmark SPEC --address auto --root /shared/runs    # a cluster; shared paths

Rerunning the same command resumes: finished units are skipped, interrupted ones continue
from their checkpoints. Needs Ray: ``pip install 'offline_mbrl[tune]'``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from offline_mbrl.benchmark.cost import format_plan
from offline_mbrl.benchmark.report import write_report
from offline_mbrl.benchmark.runner import RunOptions, run_units
from offline_mbrl.benchmark.spec import expand, load_spec
from offline_mbrl.benchmark.units import apply_environ, directories
from offline_mbrl.cli import DefaultsHelpFormatter, OneLineParser, run_main
from offline_mbrl.errors import UserError
from offline_mbrl.tuning.tune import add_ray_arguments

DEFAULT_ROOT = Path("benchmark-runs")


def build_parser(prog: str = "ombrl benchmark") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog, formatter_class=DefaultsHelpFormatter,
        description="Expand a TOML or YAML spec (envs, dataset kinds, modes, seeds, budgets, "
        "devices) to its grid, resolve every dataset, train every dataset's environment "
        "model once and every (dataset, mode) as one population, as Ray tasks (an embedded "
        "Ray on 127.0.0.1 unless --address joins a cluster); then write the results table "
        "and the seed's 3 × 5 figure. A rerun skips finished units and resumes interrupted "
        "ones.")
    parser.add_argument("spec", type=Path, help="the spec, e.g. benchmarks/specs/smoke.toml")
    parser.add_argument("--root", type=Path, default=None,
                        help="datasets, models, runs, logs and results go under it "
                        "(default benchmark-runs/<spec name>)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the table and figure go (default <root>/results)")
    add_ray_arguments(parser, "units")
    parser.add_argument("--plan", "--dry-run", dest="plan", action="store_true",
                        help="print the expanded grid, its unit count and estimated cost, and "
                        "stop")
    parser.add_argument("--report_only", action="store_true",
                        help="only write the table and figure from the finished units")
    parser.add_argument("--report_seconds", type=float, default=60.0,
                        help="a progress line at least this often (besides one per change)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        spec = load_spec(args.spec)
        grid = expand(spec)
        if args.plan:
            print(format_plan(spec, grid), flush=True)
            return 0
        if args.num_cpus is not None and args.num_cpus < 1:
            raise UserError(f"--num_cpus must be at least 1, got {args.num_cpus}")
        root = (args.root or DEFAULT_ROOT / spec.name).expanduser().resolve()
        out = (args.out or root / "results").expanduser().resolve()
        apply_environ(directories(root))
        failed: dict[str, str] = {}
        if not args.report_only:
            outcome = run_units(spec, grid, RunOptions(
                root=root, address=args.address, num_cpus=args.num_cpus,
                report_seconds=args.report_seconds))
            failed = outcome.failed
        written = write_report(spec, grid, out)
        print((out / "results.md").read_text(), flush=True)
        print("wrote " + ", ".join(str(p) for p in written), flush=True)
        if failed:
            print(f"{len(failed)} units failed ({', '.join(failed)}): see their logs in "
                  f"{root / 'logs'}, fix the cause and rerun to resume", flush=True)
            return 1
        return 0

    return run_main(body, "interrupted: finished units are kept and interrupted ones resume "
                          "from their checkpoints: rerun the same command")
