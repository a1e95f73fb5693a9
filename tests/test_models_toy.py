"""Tests for the toy-dataset visualisation script (tiny runs, files only)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from offline_mbrl.scripts import (
    train_probabilistic_model_ensemble_on_toy_dataset as toy,
)


def test_toy_data_has_a_gap_and_varying_noise() -> None:
    x, y = toy.make_toy_data(300, seed=1)
    assert x.shape == y.shape == (600,)
    assert ((x < -math.pi) | (x > math.pi)).all()
    assert x.min() >= -2 * math.pi and x.max() <= 2 * math.pi
    residual = y - np.sin(x)
    assert residual[x > 0].std() > 3 * residual[x < 0].std()
    x_filled, _ = toy.make_toy_data(300, add_points_between=True, seed=1)
    assert len(x_filled) == 900 and ((x_filled > -math.pi) & (x_filled < math.pi)).sum() == 300


def test_toy_ensemble_shapes() -> None:
    model = toy.ToyEnsemble(n_networks=3, hidden=(8,))
    mean, logvar = model(torch.linspace(-1, 1, 5))
    assert mean.shape == logvar.shape == (3, 5)
    loss = model.loss(torch.linspace(-1, 1, 5), torch.zeros(5))
    loss.backward()
    assert model.max_logvar.grad is not None


@pytest.mark.parametrize("between", [False, True])
def test_script_writes_gif_and_png_without_display(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    between: bool,
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    threads = torch.get_num_threads()
    argv = ["--steps", "6", "--steps_per_plot", "3", "--n_networks", "3", "--n_points", "30",
            "--out", str(tmp_path)]
    assert toy.main([*argv, "--add_points_between"] if between else argv) == 0
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    suffix = "-with-points-between" if between else ""
    gif, png = tmp_path / f"toy-ensemble{suffix}.gif", tmp_path / f"toy-ensemble{suffix}.png"
    assert str(gif) in out and str(png) in out
    with Image.open(gif) as image:
        assert image.n_frames == 2
    with Image.open(png) as image:
        assert image.size[0] > 300


def test_bad_arguments_are_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert toy.main(["--steps", "0", "--no-show"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_display_without_interactive_backend_falls_back_to_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DISPLAY", ":99")  # the backend stays Agg (set above): no live window
    assert toy.main(["--steps", "2", "--steps_per_plot", "5", "--n_networks", "2",
                     "--n_points", "10", "--out", str(tmp_path)]) == 0
    assert "animation:" in capsys.readouterr().out
    with Image.open(tmp_path / "toy-ensemble.gif") as image:
        assert image.n_frames == 1
