"""Producing from Python: options land in Redis as the Rust library writes them, bad input is
refused before anything is written, results come back, and the asyncio API does the same."""

from __future__ import annotations

import asyncio
import datetime
import signal
import subprocess
import sys
import time

import pytest
import redis

import ostq
from conftest import free_port, running, wait_until


def test_push_options_land_as_the_rust_library_writes_them(client: ostq.Client) -> None:
    tasks = client.queue("tasks")
    job_id = tasks.push(b"42", id="job-7", name="transcode", delay=30, priority=5,
                        max_attempts=3, track=True)
    assert job_id == "job-7"
    info = tasks.job("job-7")
    assert info is not None
    assert (info.state, info.name, info.payload, info.priority, info.max_attempts, info.tracked) == (
        "scheduled", "transcode", b"42", 5, 3, True)
    assert info.due_at == pytest.approx(time.time() + 30, abs=5)

    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    later = tasks.push("later", at=at)
    assert tasks.job(later).due_at == pytest.approx(at.timestamp(), abs=1)
    plain = tasks.push("plain")
    assert tasks.job(plain).state == "pending"
    counts = tasks.counts()
    assert (counts.pending, counts.scheduled) == (1, 2)
    assert client.queues() == ["tasks"]


def test_bulk_push_and_typed_tasks(client: ostq.Client, r: redis.Redis) -> None:
    tasks = client.queue("tasks")
    ids = tasks.push_bulk(str(n) for n in range(2500))
    assert len(ids) == len(set(ids)) == 2500
    assert tasks.counts().pending == 2500
    task_id = tasks.enqueue("generate_log_file", {"date": "2026-11-26", "lines": [1, 2]}, track=True)
    info = tasks.job(task_id)
    assert info.name == "generate_log_file"
    assert info.payload == b'{"date":"2026-11-26","lines":[1,2]}'
    assert r.sismember("ostq:queues", "tasks")


def test_bad_input_is_refused_and_nothing_is_written(client: ostq.Client, r: redis.Redis) -> None:
    tasks = client.queue("tasks")
    payload_errors = [
        lambda: tasks.push(5),
        lambda: tasks.push({"a": 1}),
        lambda: tasks.push_bulk(["fine", b"fine", 3.5]),
        lambda: tasks.enqueue("t", {1, 2}),
        lambda: tasks.enqueue("t", object()),
        lambda: tasks.push(b"x" * (8 * 1024 * 1024 + 1)),
    ]
    for attempt in payload_errors:
        with pytest.raises(ostq.PayloadError):
            attempt()
    config_errors = [
        lambda: tasks.push("x", id="~mine"),
        lambda: tasks.push("x", id="x" * 201),
        lambda: tasks.push("x", priority=1001),
        lambda: tasks.push("x", delay=-1),
        lambda: tasks.push("x", delay=float("nan")),
        lambda: tasks.push("x", delay="soon"),
        lambda: tasks.push("x", delay=1, at=time.time()),
        lambda: tasks.push("x", unique_for=60),
        lambda: tasks.push("x", unique=""),
        lambda: tasks.push_bulk(["a"], delay=float("inf")),
        lambda: tasks.enqueue("", {}),
        lambda: client.queue("bad name").push("x"),
        lambda: client.queue("{braces}").push("x"),
        lambda: tasks.jobs("finished"),
    ]
    for attempt in config_errors:
        with pytest.raises(ostq.ConfigError):
            attempt()
    with pytest.raises(TypeError):
        tasks.push_bulk(7)  # not iterable
    assert r.dbsize() == 0, r.keys("*")
    # ConfigError and PayloadError are ValueErrors too, and every error is an ostq.Error.
    assert issubclass(ostq.ConfigError, ValueError) and issubclass(ostq.PayloadError, ostq.Error)


def test_unique_keys_and_taken_ids(client: ostq.Client) -> None:
    tasks = client.queue("tasks")
    first = tasks.push("a", unique="report:42")
    with pytest.raises(ostq.Duplicate) as duplicate:
        tasks.push("b", unique="report:42")
    assert (duplicate.value.key, duplicate.value.existing_id) == ("report:42", first)
    tasks.push("c", id="nightly", delay=60)
    with pytest.raises(ostq.IdTaken) as taken:
        tasks.push("d", id="nightly")
    assert (taken.value.id, taken.value.state) == ("nightly", "scheduled")
    assert tasks.counts().pending + tasks.counts().scheduled == 2


def test_an_ordering_key_sends_its_jobs_to_one_shard_in_push_order(
        client: ostq.Client, r: redis.Redis, redis_url: str, ostq_bin: str) -> None:
    subprocess.run([ostq_bin, "shards", "--url", redis_url, "orders", "3"], check=True,
                   capture_output=True, timeout=30)
    orders = client.queue("orders")
    orders.push("probe")
    orders.push("probe")
    orders.push("probe")
    pending = sorted(r.scan_iter(match="ostq:{orders*}:pending"))
    assert len(pending) == 3, pending  # round-robin reached every shard

    def lengths() -> list[int]:
        return [r.llen(key) - 1 for key in pending]

    keyed = [orders.push(f"k-{i}", key="customer-1") for i in range(10)]
    keyed += orders.push_bulk([f"k-{i}" for i in range(10, 20)], key="customer-1")
    assert sorted(lengths()) == [0, 0, 20]
    for i in range(30):
        orders.push(f"plain-{i}")
    assert sorted(lengths()) == [10, 10, 30]  # 20 keyed + 10 on one shard
    with pytest.raises(ostq.ConfigError):
        orders.push("x", key="")

    seen: list[str] = []
    with running(orders.worker(lambda job: seen.append(job.text), concurrency=1)):
        wait_until(lambda: len(seen) == 53, 20, "every job")
    assert [p for p in seen if p.startswith("k-")] == [f"k-{i}" for i in range(20)]
    assert len(keyed) == 20


def test_wait_for_results_failures_and_timeouts(client: ostq.Client) -> None:
    tasks = client.queue("tasks")

    def handler(job: ostq.Job) -> object:
        if job.text == "fail":
            raise ostq.Permanent("cannot do it")
        return {"echo": job.text}

    with running(tasks.worker(handler)):
        assert tasks.push_and_wait("hello", timeout=10) == b'{"echo":"hello"}'
        failing = tasks.push("fail", track=True)
        with pytest.raises(ostq.JobFailed) as failed:
            tasks.wait_for(failing, timeout=10)
        assert failed.value.id == failing
        assert "ostq._errors.Permanent: cannot do it" in failed.value.error
        untracked = tasks.push("untracked")
        with pytest.raises(ostq.NotFound):
            tasks.wait_for(untracked, timeout=1)
    waiting = tasks.push("nobody works", track=True)
    started = time.monotonic()
    with pytest.raises(ostq.Timeout):
        tasks.wait_for(waiting, datetime.timedelta(milliseconds=300))
    assert 0.25 < time.monotonic() - started < 3


def test_unreachable_redis_is_a_connection_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    with pytest.raises(ostq.ConnectionError):
        ostq.Client(url)
    lazy = ostq.Client(url, lazy=True)  # no Redis needed until it is used
    with pytest.raises(ostq.ConnectionError):
        lazy.queue("tasks").push("x")
    with pytest.raises(ostq.ConfigError):
        ostq.Client("http://127.0.0.1:6379")


def test_events_iterator(client: ostq.Client) -> None:
    tasks = client.queue("tasks")
    tasks.set_events("stream")
    job_id = tasks.push("x")
    events = tasks.events(start="beginning")
    first = next(events)
    assert (first.event, first.id, first.state, first.queue) == ("pushed", job_id, "pending", "tasks")
    with running(tasks.worker(lambda job: None)):
        kinds = [next(events).event for _ in range(2)]
    assert kinds == ["started", "completed"]
    resumed = next(tasks.events(start=first.stream_id))
    assert resumed.event == "started"
    with pytest.raises(ostq.ConfigError):
        tasks.set_events("sometimes")


def test_asyncio_api(redis_url: str) -> None:
    async def main() -> None:
        client = ostq.AsyncClient(redis_url)
        tasks = client.queue("tasks")
        assert tasks.name == "tasks"
        await tasks.set_events("stream")
        events = tasks.events(start="beginning")
        job_id = await tasks.push("one", track=True, priority=3)
        ids = await tasks.push_bulk(["two", "three"])
        task_id = await tasks.enqueue("t", {"n": 1})
        assert len(ids) == 2 and task_id
        counts = await tasks.counts()
        assert counts.pending == 4
        info = await tasks.job(job_id)
        assert (info.priority, info.tracked) == (3, True)
        assert [i.id for i in await tasks.jobs("pending", limit=10)] != []
        event = await events.__anext__()
        assert (event.event, event.id) == ("pushed", job_id)
        with pytest.raises(ostq.PayloadError):
            await tasks.push(1)
        with pytest.raises(ostq.Timeout):
            await tasks.wait_for(job_id, 0.2)
        assert await client.queues() == ["tasks"]
        assert await tasks.purge() == 4

    asyncio.run(main())


BLOCKED_WAIT = """
import sys, ostq
tasks = ostq.Client(sys.argv[1]).queue("tasks")
job_id = tasks.push("nobody works", track=True)
print("waiting", flush=True)
try:
    tasks.wait_for(job_id, 60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_interrupts_a_blocking_call(redis_url: str) -> None:
    waiter = subprocess.Popen([sys.executable, "-c", BLOCKED_WAIT, redis_url],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout.readline() == "waiting\n"
        time.sleep(0.3)
        started = time.monotonic()
        waiter.send_signal(signal.SIGINT)
        out, _ = waiter.communicate(timeout=10)
        assert time.monotonic() - started < 2  # not the 60 s of the wait
    finally:
        waiter.kill()
    assert out == "interrupted\n" and waiter.returncode == 0


def test_a_durable_push_that_no_replica_confirms_raises_not_durable(
    redis_url: str, r: redis.Redis
) -> None:
    # The test server has no replica: WAIT 1 answers 0 after its timeout.
    client = ostq.Client(redis_url, durable="1:100ms")
    with pytest.raises(ostq.NotDurable) as short:
        client.queue("durable").push("x")
    assert (short.value.acked, short.value.wanted, len(short.value.ids)) == (0, 1, 1)
    # The job is on the primary all the same.
    assert r.llen("ostq:{durable}:pending") == 1
    with pytest.raises(ostq.ConfigError):
        ostq.Client(redis_url, durable="1:forever")
