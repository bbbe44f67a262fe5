"""The examples of docs/python.md (the seeds' four, rewritten against the package), run as they
stand: each `<!-- example DIR/FILE -->` block is written to a file and run with OSTQ_URL set to
the test's private redis-server."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

import ostq
from conftest import REPO, wait_until

DOC = REPO / "docs" / "python.md"
BLOCK = re.compile(r"<!-- example (\S+) -->\n```python\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    found = dict(BLOCK.findall(DOC.read_text()))
    assert found, f"no examples in {DOC}"
    return found


def write_example(example: str, tmp_path: pathlib.Path) -> pathlib.Path:
    for name, code in examples().items():
        if name.startswith(example + "/"):
            (tmp_path / pathlib.Path(name).name).write_text(code)
    return tmp_path


def run(script: pathlib.Path, redis_url: str) -> str:
    done = subprocess.run([sys.executable, str(script)], env={**os.environ, "OSTQ_URL": redis_url},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_example_is_tested() -> None:
    assert {name.split("/")[0] for name in examples()} == {
        "producer_consumer", "dispatch", "status", "listener"}


def test_example_producer_and_consumer(redis_url: str, tmp_path: pathlib.Path) -> None:
    folder = write_example("producer_consumer", tmp_path)
    assert run(folder / "producer.py", redis_url) == "pushed 2 tasks\n"
    log = tmp_path / "consumer.log"
    with open(log, "w") as out:
        consumer = subprocess.Popen([sys.executable, str(folder / "consumer.py")],
                                    env={**os.environ, "OSTQ_URL": redis_url}, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "gave up" in log.read_text() and "1 dead" in log.read_text(), 20,
                       "the consumer to run both tasks and report")
            consumer.send_signal(signal.SIGTERM)
            assert consumer.wait(20) == 0
        finally:
            consumer.kill()
    lines = log.read_text().splitlines()
    assert "executing 'generate the monthly report' (attempt 1)" in lines
    assert "executing 'resize image 42' (attempt 2)" in lines
    assert any(line.startswith("task 'resize image 42' failed, will retry in") for line in lines)
    assert ("task 'resize image 42' failed, gave up: RuntimeError: no image library here"
            in lines)
    assert any(line.startswith("monitor: 0 pending, 1 dead, 1 completed by this worker")
               for line in lines)
    assert lines[-1] == "consumer stopped"


def test_example_dispatch(redis_url: str, tmp_path: pathlib.Path) -> None:
    out = run(write_example("dispatch", tmp_path) / "dispatch.py", redis_url)
    lines = out.splitlines()
    assert sorted(lines[:2]) == ["log file for 2026-11-26 at level error",
                                 "mail to ops@example.com (job send_email)"]
    assert lines[2:] == ["dead: defragment_disk: no handler for task 'defragment_disk' "
                         "(this worker handles: generate_log_file, send_email)"]


def test_example_status(redis_url: str, tmp_path: pathlib.Path) -> None:
    out = run(write_example("status", tmp_path) / "status.py", redis_url)
    first, second = out.splitlines()
    task_id = first.split(":")[0]
    assert first == f"{task_id}: pending"
    assert second == (f'{task_id}: completed, progress {{"pages":3,"of":3}}, '
                      'result {"pdf":"invoice-1042.pdf"}')
    assert ostq.Client(redis_url).queue("tasks").job(task_id).state == "completed"


def test_example_listener(redis_url: str, tmp_path: pathlib.Path) -> None:
    out = run(write_example("listener", tmp_path) / "listener.py", redis_url)
    lines = out.splitlines()
    job_id = lines[0].split()[-1]
    kinds = ["pushed", "started", "completed"]
    assert [line for line in lines if line.startswith("pubsub:")] == [
        f"pubsub: {kind} {job_id}" for kind in kinds]
    assert [line for line in lines if line.startswith("stream:")] == [
        f"stream: {kind} {job_id}" for kind in kinds]
