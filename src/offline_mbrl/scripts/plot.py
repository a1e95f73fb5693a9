"""Plot training runs (seed README, "Plot the results").

    python src/offline_mbrl/scripts/plot.py data/experiments/
    python src/offline_mbrl/scripts/plot.py data/experiments/ --final_eval true

Without ``--final_eval``: learning curves of every experiment found under the directory
(mean ± 1 std over seeds), written to ``curves.png`` and ``curves.pdf``.

With ``--final_eval true``: the 3 × 5 grid of normalised scores on the D4RL datasets
(``final_eval.png``/``.pdf``), the final scores per dataset and mode
(``final_scores.md``, ``final_scores.csv``) and their interquartile mean across datasets
per mode with stratified-bootstrap confidence intervals (``final_scores_aggregate.csv``,
also in the Markdown). See :mod:`offline_mbrl.plotting` for the definitions.

A window opens only when a display exists (``DISPLAY`` or ``WAYLAND_DISPLAY`` set and an
interactive matplotlib backend); otherwise the Agg backend is used and files are written only.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import offline_mbrl  # noqa: F401
except ImportError:  # run as a file from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib

from offline_mbrl import plotting
from offline_mbrl.errors import UserError
from offline_mbrl.fields import parse_bool
from offline_mbrl.modes import pessimistic_modes

_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="plot.py",
        description="Plot learning curves, or the final-evaluation figure and score tables, "
        "from run directories (any directory holding progress.txt, searched recursively).",
    )
    # The helpers add the arguments in the order --help lists them.
    _add_curve_arguments(parser)
    _add_filter_arguments(parser)
    _add_output_arguments(parser)
    _add_final_eval_arguments(parser)
    parser.add_argument(
        "--no_show", action="store_true", help="never open a window, even with a display"
    )
    return parser


def _add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the runs are and which columns are drawn, smoothed how."""
    parser.add_argument(
        "logdir",
        nargs="?",
        default=os.environ.get("OMBRL_DATA_DIR", "./data/experiments"),
        help="directory searched for runs (default: $OMBRL_DATA_DIR or ./data/experiments)",
    )
    parser.add_argument(
        "--value",
        "-y",
        nargs="+",
        default=None,
        help="progress column(s) to plot, one panel each "
        "(default: NormalizedTestScore if logged, else AverageTestEpRet)",
    )
    parser.add_argument(
        "--xaxis",
        "-x",
        default=None,
        help="progress column on the x axis (default: TotalUpdates if logged, else Epoch)",
    )
    parser.add_argument(
        "--smooth",
        "-s",
        type=_positive_int,
        default=1,
        help="centred moving-average window in points (default 1: no smoothing)",
    )


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """Which experiments are kept, by substrings of their names."""
    parser.add_argument(
        "--select",
        nargs="+",
        default=None,
        help="keep experiments whose name contains all of these substrings",
    )
    parser.add_argument(
        "--exclude",
        nargs="+",
        default=None,
        help="drop experiments whose name contains any of these substrings",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Legend labels and where the figures and tables go."""
    parser.add_argument(
        "--legend",
        "-l",
        nargs="+",
        default=None,
        help="legend labels: one per experiment in sorted order; with --final_eval, one per "
        "pessimistic mode (4), optionally a fifth for behavioral cloning",
    )
    parser.add_argument(
        "--out", default=None, help="directory for the figures and tables (default: logdir)"
    )


def _add_final_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The final-evaluation grid, the final score of a seed and the aggregate's bootstrap."""
    parser.add_argument(
        "--final_eval",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="{true,false}",
        help="draw the 3 × 5 D4RL grid and write final-score tables (default false)",
    )
    parser.add_argument(
        "--last_k",
        type=_positive_int,
        default=1,
        help="final score of a seed = mean of its last K evaluations (default 1)",
    )
    parser.add_argument(
        "--bootstrap_reps",
        type=_positive_int,
        default=2000,
        help="bootstrap replicates for the aggregate confidence intervals (default 2000)",
    )
    parser.add_argument(
        "--bootstrap_seed",
        type=int,
        default=0,
        help="seed of the bootstrap's random generator (default 0)",
    )


def _use_display(no_show: bool) -> bool:
    """Pick the backend before pyplot is imported; True when figures should be shown."""
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if not no_show and has_display:
        backend = matplotlib.get_backend().lower()
        if backend not in _NON_INTERACTIVE and not backend.startswith("module://"):
            return True
    matplotlib.use("Agg")
    return False


def _new_figure(show: bool) -> Any:
    if not show:
        return None
    # pyplot is imported only after _use_display has chosen the backend, and only to show.
    import matplotlib.pyplot as plt

    return plt.figure()


def _run(args: argparse.Namespace, show: bool) -> list[Path]:
    logdir = Path(args.logdir)
    out = Path(args.out) if args.out is not None else logdir
    groups = plotting.group_runs(plotting.load_runs(logdir))
    groups = plotting.filter_groups(groups, args.select, args.exclude)
    written: list[Path] = []

    if not args.final_eval:
        fig = plotting.plot_curves(
            groups, args.value, args.xaxis, args.smooth, args.legend, fig=_new_figure(show)
        )
        return plotting.save_figure(fig, out, "curves")

    if args.value is not None and len(args.value) > 1:
        raise UserError("--final_eval draws one column: pass a single --value")
    value = args.value[0] if args.value else plotting.SCORE_COLUMN
    drawn = [*pessimistic_modes(), plotting.BASELINE_MODE]
    labels: dict[str, str] = {}
    if args.legend is not None:
        if len(args.legend) not in (len(drawn) - 1, len(drawn)):
            raise UserError(
                f"--legend with --final_eval takes {len(drawn) - 1} or {len(drawn)} labels "
                f"(for {', '.join(drawn)}), got {len(args.legend)}: fix the label count"
            )
        labels = dict(zip(drawn, args.legend, strict=False))
    runs = [r for members in groups.values() for r in members]
    fig = plotting.plot_final_eval(
        runs,
        value,
        args.xaxis,
        args.smooth,
        args.last_k,
        labels=labels,
        fig=_new_figure(show),
    )
    written += plotting.save_figure(fig, out, "final_eval")
    scores = plotting.final_scores(runs, value, args.last_k)
    aggregates = plotting.aggregate_iqm(scores, reps=args.bootstrap_reps, rng=args.bootstrap_seed)
    tables = plotting.summary_tables(scores, aggregates, value=value, last_k=args.last_k)
    for name, text in (
        ("final_scores.md", tables.markdown),
        ("final_scores.csv", tables.csv),
        ("final_scores_aggregate.csv", tables.aggregate_csv),
    ):
        written.append(plotting.write_atomic(out / name, text.encode("utf-8")))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a :class:`UserError`)."""
    args = build_parser().parse_args(argv)
    show = _use_display(args.no_show)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            written = _run(args, show)
        except UserError as err:
            status = 2
            written = []
            message = f"plot.py: error: {err}"
        else:
            status, message = 0, ""
    for warning in caught:
        print(f"plot.py: warning: {warning.message}", file=sys.stderr)
    if message:
        print(message, file=sys.stderr)
        return status
    for path in written:
        print(f"wrote {path}")
    if show:
        # Deferred like in _new_figure: the backend is chosen first.
        import matplotlib.pyplot as plt

        plt.show()
    return 0


if __name__ == "__main__":
    sys.exit(main())
