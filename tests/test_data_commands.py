from __future__ import annotations

import argparse

import numpy as np
import pytest

from offline_mbrl.data import load_d4rl_hdf5
from offline_mbrl.data.commands import main, register

NAME = "hopper-random-v2"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_register_adds_datasets_command() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["datasets", "collect", NAME, "--size", "5"])
    assert args.size == 5 and args.seed == 0 and callable(args.func)
    assert main(["datasets", "export", NAME]) == 2  # --format is required


def test_collect_info_list(data_env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "collect", NAME, "--size", "200", "--seed", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    path = data_env["ombrl"] / f"{NAME}.hdf5"
    assert f"wrote 200 transitions to {path}" in out
    ds = load_d4rl_hdf5(path, env_name=NAME)
    assert len(ds) == 200 and ds.metadata["seed"] == 1

    # Refuses to overwrite, then does with --overwrite.
    assert main(["datasets", "collect", NAME, "--size", "50", "--quiet"]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert main(["datasets", "collect", NAME, "--size", "50", "--quiet", "--overwrite"]) == 0
    assert len(load_d4rl_hdf5(path)) == 50
    capsys.readouterr()

    assert main(["datasets", "info", NAME, "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "transitions" in out and "50" in out and "normalized score" in out
    assert "d4rl-random" in out and "per-dimension ranges" in out

    assert main(["datasets", "info", str(path)]) == 0
    assert "Hopper-v4" in capsys.readouterr().out

    cached = data_env["d4rl"] / "hopper_medium-v2.hdf5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "ombrl" in out and "hopper-medium-v2" in out and "d4rl" in out


def test_collect_rejects_sac_flags_for_random(data_env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "collect", "hopper-random-v2", "--size", "10", "--quiet",
                 "--target_score", "10"]) == 2
    _one_line_error(capsys)
    assert not (data_env["ombrl"] / "hopper-random-v2.hdf5").exists()


def test_collect_with_progress_and_out(data_env, tmp_path, capsys) -> None:
    out = tmp_path / "custom.hdf5"
    assert main(["datasets", "collect", "halfcheetah-random-v2", "--size", "30",
                 "--out", str(out)]) == 0
    assert len(load_d4rl_hdf5(out, env_name="halfcheetah-random-v2")) == 30


def test_info_errors(data_env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "info", "hopper-medium-v2", "--no-download"]) == 2
    err = _one_line_error(capsys)
    assert "downloads are disabled" in err and "ombrl datasets collect hopper-medium-v2" in err
    assert main(["datasets", "info", "hopper-fast-v2"]) == 2
    assert "is not a D4RL dataset" in _one_line_error(capsys)
    assert main(["datasets", "info", "missing.hdf5"]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_list_empty(data_env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "list"]) == 0
    assert "no local datasets" in capsys.readouterr().out


def test_download(data_env, data_make_file, data_http_server, monkeypatch, capsys) -> None:
    source = data_env["ombrl"].parent / "published.hdf5"
    raw = data_make_file(source, rows=30)
    data_http_server.files["/d4rl/gym_mujoco_v2/hopper_expert-v2.hdf5"] = source.read_bytes()
    monkeypatch.setenv("OMBRL_D4RL_URL", f"{data_http_server.base_url}/d4rl")

    assert main(["datasets", "download", "hopper-expert-v2", "--quiet"]) == 0
    dest = data_env["ombrl"] / "hopper-expert-v2.hdf5"
    assert f"downloaded hopper-expert-v2 to {dest} (30 transitions)" in capsys.readouterr().out
    np.testing.assert_array_equal(load_d4rl_hdf5(dest).rewards, raw["rewards"])
    assert len(data_http_server.requests) == 1

    assert main(["datasets", "download", "hopper-expert-v2"]) == 0
    assert "already at" in capsys.readouterr().out
    assert len(data_http_server.requests) == 1
    assert main(["datasets", "download", "hopper-expert-v2", "--force", "--quiet"]) == 0
    assert len(data_http_server.requests) == 2

    monkeypatch.setenv("OMBRL_OFFLINE", "1")
    assert main(["datasets", "download", "hopper-random-v2"]) == 2
    assert "OMBRL_OFFLINE is set" in _one_line_error(capsys)
    assert main(["datasets", "download", "Hopper-v5"]) == 2
    assert "names an environment" in _one_line_error(capsys)


def test_export_minari(data_env, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("minari")
    assert main(["datasets", "collect", NAME, "--size", "60", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["datasets", "export", NAME, "--format", "minari"]) == 0
    assert "to minari:ombrl/hopper/random-v2" in capsys.readouterr().out

    assert main(["datasets", "info", "minari:ombrl/hopper/random-v2"]) == 0
    out = capsys.readouterr().out
    assert "60" in out and "d4rl-random" in out
    assert main(["datasets", "list"]) == 0
    assert "minari:ombrl/hopper/random-v2" in capsys.readouterr().out

    assert main(["datasets", "export", NAME, "--format", "minari"]) == 2
    assert "already exists" in _one_line_error(capsys)
    assert main(["datasets", "export", NAME, "--format", "minari", "--minari-id",
                 "mine/copy-v0", "--dataset", str(data_env["ombrl"] / f"{NAME}.hdf5")]) == 0
    assert (data_env["minari"] / "mine" / "copy-v0" / "data").is_dir()
