from __future__ import annotations

import socket
from pathlib import Path

import h5py
import pytest

from offline_mbrl.data import load_d4rl_hdf5
from offline_mbrl.data.download import download_file
from offline_mbrl.errors import UserError


@pytest.fixture
def data_served_file(tmp_path: Path, data_make_file, data_http_server):
    """A real D4RL-layout file (a few hundred KiB) served at /gym_mujoco_v2/f.hdf5."""
    source = tmp_path / "source.hdf5"
    data_make_file(source, rows=3000)
    body = source.read_bytes()
    data_http_server.files["/gym_mujoco_v2/f.hdf5"] = body
    return data_http_server, f"{data_http_server.base_url}/gym_mujoco_v2/f.hdf5", body


def test_plain_download(tmp_path: Path, data_served_file) -> None:
    server, url, body = data_served_file
    dest = tmp_path / "out" / "f.hdf5"
    assert download_file(url, dest, progress=False) == dest
    assert dest.read_bytes() == body
    assert not dest.with_name("f.hdf5.part").exists()
    assert server.requests == [("/gym_mujoco_v2/f.hdf5", None)]
    assert len(load_d4rl_hdf5(dest)) == 3000


def test_cut_transfer_is_resumed_with_range(tmp_path: Path, data_served_file) -> None:
    server, url, body = data_served_file
    server.cuts = 1
    dest = tmp_path / "f.hdf5"
    download_file(url, dest, progress=False)
    assert dest.read_bytes() == body
    half = len(body) // 2
    assert server.requests == [("/gym_mujoco_v2/f.hdf5", None),
                               ("/gym_mujoco_v2/f.hdf5", f"bytes={half}-")]


def test_partial_file_from_earlier_call_is_resumed(tmp_path: Path, data_served_file) -> None:
    server, url, body = data_served_file
    dest = tmp_path / "f.hdf5"
    dest.with_name("f.hdf5.part").write_bytes(body[:1000])
    download_file(url, dest, progress=True)
    assert dest.read_bytes() == body
    assert server.requests == [("/gym_mujoco_v2/f.hdf5", "bytes=1000-")]


def test_server_ignoring_range_restarts(tmp_path: Path, data_served_file) -> None:
    server, url, body = data_served_file
    server.ignore_range = True
    dest = tmp_path / "f.hdf5"
    # Wrong bytes in the partial file: only a restart from zero gives the right result.
    dest.with_name("f.hdf5.part").write_bytes(b"x" * 5000)
    download_file(url, dest, progress=False)
    assert dest.read_bytes() == body
    assert server.requests[0][1] == "bytes=5000-"


def test_partial_longer_than_file_restarts(tmp_path: Path, data_served_file) -> None:
    server, url, body = data_served_file
    dest = tmp_path / "f.hdf5"
    dest.with_name("f.hdf5.part").write_bytes(b"x" * (len(body) + 10))
    download_file(url, dest, progress=False)
    assert dest.read_bytes() == body
    assert [r[1] for r in server.requests] == [f"bytes={len(body) + 10}-", None]


def test_repeated_cuts_keep_the_partial_file(tmp_path: Path, data_served_file) -> None:
    server, url, body = data_served_file
    server.cuts = 10
    dest = tmp_path / "f.hdf5"
    with pytest.raises(UserError, match=r"interrupted 2 times .* is kept") as err:
        download_file(url, dest, progress=False, retries=1)
    assert "\n" not in str(err.value)
    part = dest.with_name("f.hdf5.part")
    assert 0 < part.stat().st_size < len(body) and not dest.exists()
    server.cuts = 0
    download_file(url, dest, progress=False)
    assert dest.read_bytes() == body


def test_not_hdf5_is_deleted(tmp_path: Path, data_http_server) -> None:
    data_http_server.files["/junk.hdf5"] = b"<html>mirror error page</html>" * 100
    url = f"{data_http_server.base_url}/junk.hdf5"
    dest = tmp_path / "junk.hdf5"
    with pytest.raises(UserError, match=rf"downloaded from {url} is not a D4RL dataset: it is "
                                        r"not HDF5"):
        download_file(url, dest, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_hdf5_without_d4rl_keys_is_deleted(tmp_path: Path, data_http_server,
                                           data_make_file) -> None:
    source = tmp_path / "src.hdf5"
    data_make_file(source)
    with h5py.File(source, "a") as f:
        del f["actions"]
    data_http_server.files["/x.hdf5"] = source.read_bytes()
    dest = tmp_path / "dl" / "x.hdf5"
    with pytest.raises(UserError, match="it has no 'actions'"):
        download_file(f"{data_http_server.base_url}/x.hdf5", dest, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_http_error(tmp_path: Path, data_http_server) -> None:
    url = f"{data_http_server.base_url}/missing.hdf5"
    with pytest.raises(UserError, match=rf"could not download {url}: HTTP 404 .*OMBRL_D4RL_URL"):
        download_file(url, tmp_path / "m.hdf5", progress=False)


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f.hdf5"
    with pytest.raises(UserError, match=rf"could not download {url}: .*collect") as err:
        download_file(url, tmp_path / "f.hdf5", progress=False, hint="run `ombrl datasets "
                      "collect hopper-random-v2`")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("defect", ["nan", "dims", "lengths", "empty"])
def test_invalid_download_never_takes_the_final_name(defect, tmp_path: Path, data_env,
                                                    data_make_file, data_http_server,
                                                    monkeypatch, capsys) -> None:
    from offline_mbrl.cli import main

    source = tmp_path / "bad.hdf5"
    data_make_file(source, rows=0 if defect == "empty" else 60,
                   obs_dim=5 if defect == "dims" else 11)
    if defect in ("nan", "lengths"):
        with h5py.File(source, "r+") as f:
            if defect == "nan":
                f["rewards"][3] = float("nan")
            else:
                del f["rewards"]
                f.create_dataset("rewards", data=[0.0] * 10)
    data_http_server.files["/gym_mujoco_v2/hopper_medium-v2.hdf5"] = source.read_bytes()
    monkeypatch.setenv("OMBRL_D4RL_URL", data_http_server.base_url)
    final = data_env["ombrl"] / "hopper-medium-v2.hdf5"
    assert main(["datasets", "download", "hopper-medium-v2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unusable" in err, err
    assert not final.exists() and not final.with_name(final.name + ".part").exists()
    # The next call downloads again instead of reporting the bad file as already there.
    assert main(["datasets", "download", "hopper-medium-v2", "--quiet"]) == 2
    assert "already" not in capsys.readouterr().out
