"""Working from Python: plain and coroutine handlers, dispatch by task name, retries with
backoff then the dead set with the traceback, permanent failures, timeouts, progress and
cancellation, the hooks, and graceful shutdown on SIGTERM, ctrl-c and cancellation."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time

import pytest

import ostq
from conftest import python_script, running, wait_until


def test_plain_and_coroutine_handlers_return_results(client: ostq.Client) -> None:
    tasks = client.queue("tasks")
    threads: set[str] = set()

    def plain(job: ostq.Job) -> str:
        threads.add(threading.current_thread().name)
        return job.text.upper()

    worker = tasks.worker(plain, concurrency=4)

    @worker.task("double")
    async def double(params: dict) -> dict:
        await asyncio.sleep(0.01)
        return {"n": params["n"] * 2}

    @worker.task("describe")
    def describe(params: dict, job: ostq.Job) -> bytes:
        return f"{job.name} attempt {job.attempt}/{job.max_attempts}: {params}".encode()

    assert sorted(worker.tasks) == ["describe", "double"]
    with running(worker):
        assert tasks.push_and_wait("abc", timeout=10) == b"ABC"
        doubled = [tasks.enqueue("double", {"n": n}, track=True) for n in range(20)]
        assert [tasks.wait_for(i, 10) for i in doubled] == [f'{{"n":{2 * n}}}'.encode() for n in range(20)]
        described = tasks.enqueue("describe", [1, 2], track=True, max_attempts=4)
        assert tasks.wait_for(described, 10) == b"describe attempt 1/4: [1, 2]"
    assert threading.current_thread().name not in threads


def test_a_job_no_handler_claims_retries_then_dies_with_the_reason(client: ostq.Client) -> None:
    # No handler for a name is an ordinary failure that retries (in a rolling deploy the next
    # worker may know it); a payload that cannot be decoded, or a job without a name on a worker
    # without a default handler, dies at once.
    tasks = client.queue("tasks")
    worker = tasks.worker(backoff=0.01)
    worker.task("known", lambda params: None)
    with running(worker):
        unknown = tasks.enqueue("unknown", {}, track=True, max_attempts=3)
        with pytest.raises(ostq.JobFailed) as failed:
            tasks.wait_for(unknown, 10)
        assert failed.value.error == "no handler for task 'unknown' (this worker handles: known)"
        assert tasks.job(unknown).attempts == 3
        garbled = tasks.push("{not json", name="known", track=True)
        with pytest.raises(ostq.JobFailed) as failed:
            tasks.wait_for(garbled, 10)
        assert failed.value.error.startswith("cannot decode payload of task 'known'")
        plain = tasks.push("no name", track=True)  # only a default handler could run it
        with pytest.raises(ostq.JobFailed, match="no task name and this worker has no default handler"):
            tasks.wait_for(plain, 10)
    assert tasks.counts().dead == 3 and tasks.counts().retry == 0


def test_an_exception_retries_with_backoff_then_the_dead_set_keeps_the_traceback(
    client: ostq.Client,
) -> None:
    tasks = client.queue("tasks")
    failures: list[tuple[str, int, ostq.Failure]] = []

    def transcode(job: ostq.Job) -> None:
        raise ValueError(f"cannot transcode {job.text}")

    def on_error(job: ostq.Job, failure: ostq.Failure) -> None:
        failures.append((job.id, job.attempt, failure))
        client.queue("failures").push(job.id)  # the sync API works inside a hook

    worker = tasks.worker(transcode, on_error)
    with running(worker):
        job_id = tasks.push("video-42", max_attempts=2, track=True)
        with pytest.raises(ostq.JobFailed):
            tasks.wait_for(job_id, 15)
    assert [(i, a, f.dead) for i, a, f in failures] == [(job_id, 1, False), (job_id, 2, True)]
    assert 0.4 < failures[0][2].retry_in <= 1.0  # the default backoff: about 1 s, jittered down
    assert failures[1][2].retry_in is None
    dead = tasks.jobs("dead")
    assert [d.id for d in dead] == [job_id] and dead[0].attempts == 2
    error = dead[0].last_error
    assert error.startswith("Traceback (most recent call last):")
    assert 'in transcode\n    raise ValueError(f"cannot transcode {job.text}")' in error
    assert error.endswith("ValueError: cannot transcode video-42")
    assert failures[0][2].error == error
    assert client.queue("failures").counts().pending == 2


def test_permanent_failures_and_timeouts(client: ostq.Client) -> None:
    tasks = client.queue("tasks")
    calls: list[str] = []

    def handler(job: ostq.Job) -> None:
        calls.append(job.text)
        if job.text == "bad input":
            raise ostq.Permanent("this will never work")
        time.sleep(2)

    with running(tasks.worker(handler, timeout=0.3, max_attempts=5, backoff=0.05)):
        permanent = tasks.push("bad input", track=True)
        slow = tasks.push("slow", track=True, max_attempts=2)
        with pytest.raises(ostq.JobFailed, match="this will never work"):
            tasks.wait_for(permanent, 10)
        with pytest.raises(ostq.JobFailed, match="timed out after 300ms"):
            tasks.wait_for(slow, 10)
    assert calls.count("bad input") == 1 and calls.count("slow") == 2


def test_a_coroutine_that_times_out_is_cancelled(client: ostq.Client) -> None:
    tasks = client.queue("tasks")
    cancelled = threading.Event()

    async def slow(job: ostq.Job) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with running(tasks.worker(slow, timeout=0.3)):
        job_id = tasks.push("x", track=True, max_attempts=1)
        with pytest.raises(ostq.JobFailed, match="timed out after 300ms"):
            tasks.wait_for(job_id, 10)
        assert cancelled.wait(5), "the coroutine kept running after its attempt timed out"


def test_progress_and_cancellation(client: ostq.Client) -> None:
    tasks = client.queue("tasks")

    def long_job(job: ostq.Job) -> None:
        step = 0
        while not job.cancelled:
            step += 1
            job.progress({"step": step})
            time.sleep(0.05)
        raise RuntimeError("stopped on request")

    async def long_coroutine(params: dict, job: ostq.Job) -> None:
        await job.progress_async(params)
        await job.wait_cancelled()
        raise RuntimeError("coroutine stopped on request")

    worker = tasks.worker(long_job)
    worker.task("long", long_coroutine)
    with running(worker):
        for job_id, reason in [
            (tasks.push("x", track=True), "stopped on request"),
            (tasks.enqueue("long", {"half": True}, track=True), "coroutine stopped on request"),
        ]:
            wait_until(lambda: tasks.job(job_id).progress, 10, "progress")
            assert tasks.cancel(job_id) == "signalled"
            with pytest.raises(ostq.JobFailed) as failed:
                tasks.wait_for(job_id, 10)
            assert failed.value.error.startswith("cancelled: Traceback")
            assert failed.value.error.endswith(f"RuntimeError: {reason}")
        assert tasks.job(job_id).progress == '{"half":true}'
        assert tasks.cancel(tasks.push("never started", delay=60)) == "removed"
        assert tasks.cancel("nobody") == "not_found"


def test_the_monitor_hook_gets_the_report_as_a_dict(client: ostq.Client) -> None:
    tasks = client.queue("tasks")
    reports: list[dict] = []

    def on_monitor(report: dict) -> None:
        reports.append(report)
        assert tasks.counts().queue == "tasks"  # the sync API works inside a hook

    worker = tasks.worker(lambda job: None, on_monitor=on_monitor, monitor_interval=0.2,
                          concurrency=3)
    tasks.push_bulk(["a", "b", "c"])
    with running(worker):
        wait_until(lambda: reports and reports[-1]["worker"]["completed"] == 3, 10, "a report")
    report = reports[-1]
    assert set(report) == {"snapshot", "alerts", "worker"}
    assert report["worker"]["concurrency"] == 3
    queue = report["snapshot"]["queues"]["tasks"]
    assert (queue["queue"], queue["processed_total"]) == ("tasks", 3)


def test_run_async_serves_coroutines_on_the_running_loop_and_stops_on_cancel(redis_url: str) -> None:
    async def main() -> None:
        tasks = ostq.AsyncClient(redis_url).queue("tasks")
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, bool]] = []

        async def handler(job: ostq.Job) -> str:
            seen.append((job.text, asyncio.get_running_loop() is loop))
            if job.text == "slow":
                await asyncio.sleep(0.5)
            return job.text

        worker = tasks.worker(handler, concurrency=50)
        running_worker = asyncio.ensure_future(worker.run_async())
        ids = await tasks.push_bulk([str(n) for n in range(200)], track=True)
        assert [await tasks.wait_for(i, 10) for i in ids] == [str(n).encode() for n in range(200)]
        slow = await tasks.push("slow", track=True)
        while ("slow", True) not in seen:
            await asyncio.sleep(0.01)
        running_worker.cancel()  # graceful: the running job finishes first
        with pytest.raises(asyncio.CancelledError):
            await running_worker
        assert not worker.running
        assert await tasks.wait_for(slow, 0.1) == b"slow"
        assert all(on_loop for _, on_loop in seen)

    asyncio.run(main())


SLOW_WORKER = """
import sys, time, ostq

url, log = sys.argv[1], sys.argv[2]

def handler(job):
    with open(log, "a") as f:
        f.write(f"start {job.text}\\n")
    time.sleep(float(job.text))
    with open(log, "a") as f:
        f.write(f"end {job.text}\\n")

worker = ostq.Client(url).queue("slow").worker(handler, concurrency=1, shutdown_timeout=10)
worker.run()
print("stopped gracefully", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_shut_down_gracefully(
    client: ostq.Client, redis_url: str, tmp_path, signum: int
) -> None:
    slow = client.queue("slow")
    log = tmp_path / "log"
    slow.push("1.0")
    slow.push_bulk(["0.1", "0.1"])
    worker = python_script(SLOW_WORKER, redis_url, str(log), stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: log.exists() and "start 1.0" in log.read_text(), 15, "the first job")
        worker.send_signal(signum)
        out, _ = worker.communicate(timeout=15)
    finally:
        worker.kill()
    assert worker.returncode == 0
    assert out == "stopped gracefully\n"
    assert log.read_text() == "start 1.0\nend 1.0\n"  # finished, and nothing else started
    counts = slow.counts()
    assert (counts.active, counts.pending, counts.processed_total) == (0, 2, 1)
