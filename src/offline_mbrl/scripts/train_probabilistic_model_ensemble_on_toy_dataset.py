"""Watch an ensemble of probabilistic networks learn a 1-D function with a gap in the data.

    python -m offline_mbrl.scripts.train_probabilistic_model_ensemble_on_toy_dataset

The data are ``y = sin(x) + ε`` for ``x`` in ``[-2π, -π] ∪ [π, 2π]``, with noise whose scale
grows from left to right. Each member predicts a mean and a variance: the variance learns
the noise (aleatoric uncertainty), while the members' means agree on the data and drift
apart in the gap, where nothing constrains them (epistemic uncertainty).
``--add_points_between`` fills the gap, and the disagreement there disappears.

With a display (``DISPLAY``/``WAYLAND_DISPLAY`` and an interactive matplotlib backend) the
training is animated live; otherwise an animated GIF and a final PNG are written to
``--out`` and their paths printed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import offline_mbrl.errors  # noqa: F401
except ModuleNotFoundError:  # run as a file from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import nn

from offline_mbrl.cli import run_main
from offline_mbrl.errors import UserError
from offline_mbrl.models.ensemble import (
    INITIAL_MAX_LOGVAR,
    INITIAL_MIN_LOGVAR,
    LOGVAR_BOUND_REGULARIZER,
    gaussian_nll,
    soft_clamp_logvar,
)
from offline_mbrl.models.layers import BatchedMLP, member_generators

X_SCALE = 2 * math.pi
_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "cairo", "pgf", "template"}


def noise_scale(x: np.ndarray) -> np.ndarray:
    """Standard deviation of the noise at ``x``: 0.02 at ``-2π`` rising to 0.3 at ``2π``."""
    return 0.02 + 0.28 * (x + 2 * math.pi) / (4 * math.pi)


def make_toy_data(
    n_per_side: int = 200, add_points_between: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` ``[N]`` float32: ``n_per_side`` points in each of ``[-2π, -π]`` and
    ``[π, 2π]``, plus ``n_per_side`` points in ``[-π, π]`` with ``add_points_between``."""
    rng = np.random.default_rng(seed)
    parts = [rng.uniform(-2 * math.pi, -math.pi, n_per_side),
             rng.uniform(math.pi, 2 * math.pi, n_per_side)]
    if add_points_between:
        parts.append(rng.uniform(-math.pi, math.pi, n_per_side))
    x = np.sort(np.concatenate(parts))
    y = np.sin(x) + noise_scale(x) * rng.standard_normal(x.shape)
    return x.astype(np.float32), y.astype(np.float32)


class ToyEnsemble(nn.Module):
    """The environment model's recipe on 1-D regression: ``E`` Gaussian networks in one
    batched MLP, log-variance soft-clamped between learned bounds.

    ``forward(x [B]) -> (mean [E, B], logvar [E, B])``.
    """

    def __init__(self, n_networks: int = 7, hidden: Sequence[int] = (64, 64, 64),
                 seed: int = 0) -> None:
        super().__init__()
        self.net = BatchedMLP(n_networks, 1, 2, hidden)
        self.net.reset_parameters(member_generators([seed * 1000 + e for e in range(n_networks)],
                                                    salt=7))
        self.max_logvar = nn.Parameter(torch.full((n_networks, 1), INITIAL_MAX_LOGVAR))
        self.min_logvar = nn.Parameter(torch.full((n_networks, 1), INITIAL_MIN_LOGVAR))
        self.n_networks = n_networks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp = (x / X_SCALE).reshape(1, -1, 1).expand(self.n_networks, -1, 1)
        out = self.net(inp)
        logvar = soft_clamp_logvar(out[..., 1], self.max_logvar, self.min_logvar)
        return out[..., 0], logvar

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mean, logvar = self(x)
        nll = gaussian_nll(mean, logvar, y).mean(dim=1).sum()
        return nll + LOGVAR_BOUND_REGULARIZER * (self.max_logvar.sum() - self.min_logvar.sum())


def has_display() -> bool:
    """A display server is reachable (X11 or Wayland) according to the environment."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _Figure:
    """The plot: data, every member's mean, the aleatoric band, and both uncertainties."""

    def __init__(self, plt: Any, x: np.ndarray, y: np.ndarray, n_networks: int) -> None:
        self.plt = plt
        self.grid = np.linspace(-3 * math.pi, 3 * math.pi, 400).astype(np.float32)
        self.fig, (self.ax, self.ax_u) = plt.subplots(
            2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
        for axis in (self.ax, self.ax_u):
            axis.axvspan(-math.pi, math.pi, color="0.93", zorder=0)
        self.ax.scatter(x, y, s=4, color="0.3", alpha=0.6, label="data", zorder=2)
        self.ax.plot(self.grid, np.sin(self.grid), color="k", lw=1, ls="--", label="sin x")
        colors = plt.get_cmap("tab10")
        self.member_lines = [
            self.ax.plot([], [], lw=1.2, color=colors(e % 10), alpha=0.9)[0]
            for e in range(n_networks)
        ]
        self.member_lines[0].set_label("member means")
        self.band = None
        self.ax.set_ylim(-2.5, 2.5)
        self.ax.set_ylabel("y")
        (self.aleatoric_line,) = self.ax_u.plot([], [], color="tab:orange",
                                                label="aleatoric: max predicted std")
        (self.epistemic_line,) = self.ax_u.plot([], [], color="tab:blue",
                                                label="epistemic: max distance of means")
        self.ax_u.plot(self.grid, noise_scale(self.grid), color="tab:orange", ls=":", lw=1,
                       label="true noise std")
        self.ax_u.set_xlabel("x (shaded: gap without data)")
        self.ax_u.set_ylim(0, 1.5)
        self.ax_u.legend(loc="upper left", fontsize=8)
        self.ax.set_title(f"probabilistic ensemble of {n_networks}: step 0")
        self.fig.tight_layout()

    def update(self, model: ToyEnsemble, step: int, loss: float) -> None:
        with torch.no_grad():
            mean, logvar = model(torch.from_numpy(self.grid))
        mean_np, std_np = mean.numpy(), torch.exp(0.5 * logvar).numpy()
        for line, m in zip(self.member_lines, mean_np, strict=True):
            line.set_data(self.grid, m)
        if self.band is not None:
            self.band.remove()
        center = mean_np.mean(0)
        aleatoric_std = np.sqrt((std_np ** 2).mean(0))
        self.band = self.ax.fill_between(self.grid, center - 2 * aleatoric_std,
                                         center + 2 * aleatoric_std, color="tab:orange",
                                         alpha=0.25, label="±2 predicted std", zorder=1)
        self.aleatoric_line.set_data(self.grid, std_np.max(0))
        spread = np.abs(mean_np[:, None, :] - mean_np[None, :, :]).max(axis=(0, 1))
        self.epistemic_line.set_data(self.grid, spread)
        self.ax.set_title(f"probabilistic ensemble of {model.n_networks}: step {step}, "
                          f"loss {loss:.3f}")
        self.ax.legend(loc="upper left", fontsize=8)

    def frame(self) -> np.ndarray:
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="train_probabilistic_model_ensemble_on_toy_dataset",
        description="Train an ensemble of probabilistic networks on 1-D data with a gap and "
                    "show aleatoric and epistemic uncertainty.",
    )
    parser.add_argument("--add_points_between", action="store_true",
                        help="also put data points into the gap [-π, π]")
    parser.add_argument("--steps", type=int, default=6000,
                        help="training steps (default: about a minute on a 2-core CPU)")
    parser.add_argument("--steps_per_plot", type=int, default=150,
                        help="training steps between two frames")
    parser.add_argument("--n_networks", type=int, default=7, help="ensemble members")
    parser.add_argument("--n_points", type=int, default=200, help="data points per interval")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where the GIF and PNG go without a display "
                             "(default $OMBRL_DATA_DIR/toy-ensemble)")
    parser.add_argument("--no-show", dest="no_show", action="store_true",
                        help="write files even when a display is available")
    return parser


def _check(args: argparse.Namespace) -> None:
    for flag in ("steps", "steps_per_plot", "n_networks", "n_points"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be a positive integer, got {getattr(args, flag)}: "
                            "pass a value of at least 1")
    if not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}: pass e.g. --lr 2e-3")


def _pyplot(live_wanted: bool) -> tuple[Any, bool]:
    """``(pyplot, live)``: an interactive backend when wanted and available, else Agg."""
    if not live_wanted:
        matplotlib.use("Agg")
    # Imported here, after matplotlib.use: the backend is chosen before pyplot is loaded.
    import matplotlib.pyplot as plt

    backend = plt.get_backend().lower()
    live = live_wanted and backend not in _NON_INTERACTIVE and "inline" not in backend
    if live_wanted and not live:
        plt.switch_backend("Agg")
    return plt, live


def run(args: argparse.Namespace) -> int:
    # The tensors are tiny: thread hand-offs would cost more than the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    _check(args)
    out_dir = Path(args.out).expanduser() if args.out else (
        Path(os.environ.get("OMBRL_DATA_DIR") or "data/experiments") / "toy-ensemble")
    plt, live = _pyplot(has_display() and not args.no_show)
    if not live:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output directory {out_dir} ({exc.strerror}): "
                            "choose another --out") from None

    torch.manual_seed(args.seed)
    x_np, y_np = make_toy_data(args.n_points, args.add_points_between, args.seed)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = ToyEnsemble(args.n_networks, seed=args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    figure = _Figure(plt, x_np, y_np, args.n_networks)
    if live:
        plt.ion()
        plt.show(block=False)
    frames: list[np.ndarray] = []
    loss_value = float("nan")
    for step in range(1, args.steps + 1):
        loss = model.loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.steps_per_plot == 0 or step == args.steps:
            loss_value = float(loss.detach())
            figure.update(model, step, loss_value)
            if live:
                if not plt.fignum_exists(figure.fig.number):
                    break  # the user closed the window
                plt.pause(0.001)
            else:
                frames.append(figure.frame())
    if live:
        plt.ioff()
        print(f"final loss {loss_value:.4f}; close the window to exit")
        plt.show()
        return 0

    suffix = "-with-points-between" if args.add_points_between else ""
    gif_path = out_dir / f"toy-ensemble{suffix}.gif"
    png_path = out_dir / f"toy-ensemble{suffix}.png"
    figure.fig.savefig(png_path, dpi=110)
    _write_gif(frames, gif_path)
    plt.close(figure.fig)
    print(f"final loss {loss_value:.4f}")
    print(f"animation: {gif_path}")
    print(f"final plot: {png_path}")
    return 0


def _write_gif(frames: list[np.ndarray], path: Path, frame_ms: int = 120) -> None:
    images = [Image.fromarray(f) for f in frames]
    tmp = path.with_name(f".{path.name}.tmp")
    # Hold the final frame so the result can be looked at before the loop restarts.
    durations = [frame_ms] * (len(images) - 1) + [2000]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations, loop=0)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
