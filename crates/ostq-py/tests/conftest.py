"""Fixtures for the Python package's tests: a private redis-server per test (a free port, a
temporary directory, no persistence; never 6379, never shared), clients, the `ostq` command
and the Rust interop example, and helpers to run workers and wait for effects."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import pytest
import redis

import ostq

REPO = pathlib.Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Polls `condition` until it is truthy; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


@pytest.fixture
def redis_url(tmp_path: pathlib.Path) -> Iterator[str]:
    """A private redis-server for this test, stopped afterwards."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    probe = redis.Redis(port=port)
    try:
        wait_until(lambda: _answers(probe), 10, "redis-server to start")
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _answers(probe: redis.Redis) -> bool:
    try:
        return bool(probe.ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    """redis-py on the test's server (for what other programs would do by hand)."""
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def client(redis_url: str) -> ostq.Client:
    return ostq.Client(redis_url)


def _binary(env: str, relative: str) -> str:
    path = os.environ.get(env)
    if not path:
        target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        path = str(target / "debug" / relative)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build it (scripts/test-python does) or set {env}")
    return path


@pytest.fixture(scope="session")
def ostq_bin() -> str:
    """The `ostq` command (`cargo build -p ostq-cli`)."""
    return _binary("OSTQ_BIN", "ostq")


@pytest.fixture(scope="session")
def interop_bin() -> str:
    """The Rust interop example (`cargo build -p ostq --example interop`)."""
    return _binary("OSTQ_INTEROP_BIN", "examples/interop")


@contextlib.contextmanager
def running(worker: ostq.Worker) -> Iterator[ostq.Worker]:
    """Runs `worker` on a thread for the duration of the block, then stops it gracefully."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as e:  # noqa: BLE001 (reported below)
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: worker.running or failure, 10, "the worker to start")
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop"
        if failure:
            raise failure[0]


def python_script(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Starts `python -c code args…` with this interpreter (for workers to kill or signal)."""
    return subprocess.Popen([sys.executable, "-c", code, *args], **kwargs)
