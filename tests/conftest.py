"""Shared fixtures: the data tests' (prefixed ``data_``), ``host_reads``, ``listening_sockets``."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _write_raw_d4rl(
    path: Path,
    rows: int = 40,
    obs_dim: int = 11,
    act_dim: int = 3,
    next_observations: bool = True,
    seed: int = 0,
    episode_length: int = 15,
) -> dict[str, np.ndarray]:
    """Write a D4RL-layout file with h5py alone; episodes of ``episode_length`` rows, the first
    ending by termination, the others by timeout, the last one cut off without a flag."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    # Rows chain (next_obs[i] == obs[i + 1]) inside an episode, like a real recording.
    states = rng.normal(size=(rows + 1, obs_dim)).astype(np.float32)
    arrays["observations"] = states[:-1].copy()
    arrays["next_observations"] = states[1:].copy()
    arrays["actions"] = rng.uniform(-1, 1, size=(rows, act_dim)).astype(np.float32)
    arrays["rewards"] = rng.normal(size=rows).astype(np.float32)
    terminals = np.zeros(rows, dtype=bool)
    timeouts = np.zeros(rows, dtype=bool)
    ends = list(range(episode_length - 1, rows - 1, episode_length))
    for k, end in enumerate(ends):
        (terminals if k == 0 else timeouts)[end] = True
        # A new episode starts from a fresh state, not from the previous next_obs.
        arrays["next_observations"][end] = rng.normal(size=obs_dim).astype(np.float32)
    arrays["terminals"] = terminals
    arrays["timeouts"] = timeouts
    arrays["infos/qpos"] = rng.normal(size=(rows, 6))
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key == "next_observations" and not next_observations:
                continue
            f.create_dataset(key, data=value)
        f.create_dataset("metadata/algorithm", data=b"SAC")
        f.create_dataset("metadata/iteration", data=np.int64(7))
        f.create_dataset("metadata/policy/fc0/weight", data=np.ones((2, 3), dtype=np.float32))
    return arrays


@pytest.fixture
def data_make_file() -> Callable[..., dict[str, np.ndarray]]:
    """``make(path, rows=40, obs_dim=11, act_dim=3, next_observations=True, seed=0)``."""
    return _write_raw_d4rl


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every dataset directory at a fresh temporary one; downloads go nowhere useful."""
    dirs = {
        "ombrl": tmp_path / "ombrl-datasets",
        "d4rl": tmp_path / "d4rl-cache",
        "minari": tmp_path / "minari-root",
    }
    monkeypatch.setenv("OMBRL_DATASETS_DIR", str(dirs["ombrl"]))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(dirs["d4rl"]))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dirs["minari"]))
    # Port 9 on the loopback: nothing listens, so an unexpected download fails fast.
    monkeypatch.setenv("OMBRL_D4RL_URL", "http://127.0.0.1:9/offline_rl")
    monkeypatch.delenv("OMBRL_OFFLINE", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    return dirs


@dataclass
class DataServer:
    """A loopback HTTP server for the download tests."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    cuts: int = 0  # how many of the next responses stop after half their body
    ignore_range: bool = False


def _handler(state: DataServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404, "not found")
                return
            start = 0
            if range_header and not state.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_error(416, "range not satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if state.cuts > 0:
                state.cuts -= 1
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def data_http_server() -> Iterator[DataServer]:
    """A threaded HTTP server on 127.0.0.1 (random port) that supports ``Range``."""
    state = DataServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class HostReads(TorchDispatchMode):
    """Counts the operators that copy a tensor's value to the host while it is active
    (``.item()``, ``bool(t)``, ``int(t)``, ``nonzero``): each one stalls a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads() -> type[HostReads]:
    """``with host_reads() as reads: ...`` then ``reads.count``."""
    return HostReads


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, stack = {pid}, [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses (``host:port``) of the TCP sockets in LISTEN state that ``pids`` hold."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(int(link[8:-1]))
    addresses = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or int(fields[9]) not in inodes:  # 0A: LISTEN
                    continue
                hex_ip, hex_port = fields[1].split(":")
                # /proc prints each 32-bit word of the address in host (little-endian) order.
                raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1]
                               for i in range(0, len(hex_ip), 8))
                addresses.append(f"{socket.inet_ntop(family, raw)}:{int(hex_port, 16)}")
    return addresses


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` (a minute or so each) run first, so that the suite's workers
    (``make test``: ``pytest -n $(TEST_WORKERS)``) stay busy until all end, instead of one
    of them starting a long test when the others are nearly done. The order is otherwise
    kept."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def listening_sockets() -> Callable[[int], list[str]]:
    """``listening(pid)``: the TCP addresses that ``pid`` and its descendants listen on."""
    return lambda pid: _listening_addresses(_descendants(pid))
