"""One engine, every side: Python pushes and Rust (the library, or `ostq worker -- CMD`) works;
Rust and `ostq push` push and Python works; named tasks both ways; a bare redis-py LPUSH is a
job; a SIGKILLed Python worker loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import redis

import ostq
from conftest import python_script, running, wait_until


def test_python_pushes_and_the_ostq_command_works(client: ostq.Client, redis_url: str,
                                                  ostq_bin: str, tmp_path) -> None:
    tasks = client.queue("tasks")
    plain = tasks.push("plain payload", track=True)
    named = tasks.enqueue("generate_log_file", {"date": "2026-11-26"}, track=True)
    # The program gets the payload as its argument and the task name in OSTQ_TASK; its stdout
    # becomes the result of tracked jobs.
    script = 'printf "%s|%s" "$OSTQ_TASK" "$1"'
    subprocess.run([ostq_bin, "worker", "--url", redis_url, "--queue", "tasks", "--burst",
                    "--", "sh", "-c", script, "sh", "{}"], check=True, timeout=60,
                   capture_output=True)
    assert tasks.wait_for(plain, 1) == b"|plain payload"
    assert tasks.wait_for(named, 1) == b'generate_log_file|{"date":"2026-11-26"}'


def test_the_ostq_command_pushes_and_python_works(client: ostq.Client, redis_url: str,
                                                  ostq_bin: str) -> None:
    out = subprocess.run([ostq_bin, "push", "--url", redis_url, "tasks", "42", "43", "--track",
                          "--json"], check=True, capture_output=True, text=True, timeout=30).stdout
    ids = json.loads(out)
    tasks = client.queue("tasks")
    with running(tasks.worker(lambda job: f"video {job.text} done")):
        assert [tasks.wait_for(i, 10) for i in ids] == [b"video 42 done", b"video 43 done"]


def test_rust_typed_tasks_and_python_tasks_both_ways(client: ostq.Client, redis_url: str,
                                                      interop_bin: str) -> None:
    media = client.queue("media")
    # Rust enqueues typed `Transcode` tasks; a Python @worker.task serves them.
    out = subprocess.run([interop_bin, "enqueue", redis_url, "media", "3"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    ids = json.loads(out)
    worker = media.worker()

    @worker.task("transcode")
    def transcode(params: dict, job: ostq.Job) -> str:
        return f"{job.name}: video {params['video_id']} at {params['preset']}"

    with running(worker):
        results = [media.wait_for(i, 10) for i in ids]
    assert results == [f"transcode: video {n} at 720p".encode() for n in range(3)]

    # Python enqueues the same task and pushes a plain job; the Rust worker serves both.
    task_id = media.enqueue("transcode", {"video_id": 7, "preset": "1080p"}, track=True)
    plain_id = media.push("hello rust", track=True)
    out = subprocess.run([interop_bin, "work", redis_url, "media", "2"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    ran = {line["id"]: line for line in map(json.loads, out.splitlines())}
    assert ran[task_id] == {"id": task_id, "name": "transcode", "video_id": 7, "preset": "1080p"}
    assert ran[plain_id] == {"id": plain_id, "name": None, "payload": "hello rust"}
    assert media.wait_for(task_id, 1) == b"video 7 ready"
    assert media.wait_for(plain_id, 1) == b"HELLO RUST"


def test_a_bare_redis_py_lpush_is_a_job(client: ostq.Client, r: redis.Redis) -> None:
    r.sadd("ostq:queues", "tasks")
    r.lpush("ostq:{tasks}:pending", "first", "second")  # how the Ost gem pushed jobs
    seen: list[tuple[str, str]] = []
    tasks = client.queue("tasks")
    with running(tasks.worker(lambda job: seen.append((job.id, job.text)))):
        wait_until(lambda: len(seen) == 2, 10, "both bare jobs")
    assert sorted(text for _, text in seen) == ["first", "second"]
    assert all(job_id.startswith("~") for job_id, _ in seen)
    assert tasks.counts().processed_total == 2


KILLABLE_WORKER = """
import sys, time, ostq

url, log = sys.argv[1], sys.argv[2]

def handler(job):
    with open(log, "a") as f:
        f.write(f"{job.id} attempt {job.attempt}\\n")
    time.sleep(60)

ostq.Client(url).queue("tasks").worker(handler, lease=1, concurrency=5).run()
"""


def test_a_sigkilled_python_worker_loses_nothing(client: ostq.Client, redis_url: str,
                                                 tmp_path, ostq_bin: str) -> None:
    tasks = client.queue("tasks")
    ids = tasks.push_bulk(["a", "b", "c"], track=True)
    log = tmp_path / "log"
    worker = python_script(KILLABLE_WORKER, redis_url, str(log))
    try:
        try:
            wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 3, 15,
                       "the doomed worker to start all three jobs")
        except BaseException:  # say what it did start, for the record
            print("started:", log.read_text() if log.exists() else None, tasks.counts(),
                  "exit status:", worker.poll())
            raise
        assert tasks.counts().active == 3
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
    killed_at = time.monotonic()
    # Another Python worker takes the jobs back once their lease (1 s) has run out...
    reruns: list[tuple[str, int]] = []
    with running(tasks.worker(lambda job: reruns.append((job.id, job.attempt)) or job.text)):
        assert [tasks.wait_for(i, 15) for i in ids] == [b"a", b"b", b"c"]
    assert sorted(reruns) == sorted((i, 2) for i in ids)
    assert time.monotonic() - killed_at < 10  # about a lease (1 s) and an idle wait, with room for a busy machine
    counts = tasks.counts()
    assert (counts.recovered_total, counts.active, counts.pending, counts.completed) == (3, 0, 0, 3)

    # ...and so does a Rust worker (`ostq worker -- CMD`).
    more = tasks.push("d", track=True)
    worker = python_script(KILLABLE_WORKER, redis_url, str(log))
    try:
        wait_until(lambda: f"{more} attempt 1" in log.read_text(), 15, "the second doomed worker")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
    subprocess.run([ostq_bin, "worker", "--url", redis_url, "--queue", "tasks", "--burst",
                    "--", "echo", "rust ran {}"], check=True, timeout=60, capture_output=True)
    assert tasks.wait_for(more, 1) == b"rust ran d\n"
