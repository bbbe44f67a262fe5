"""ostq (this package) as a peer of the shared Python benchmark harness (../shared/peers/py/
harness.py): the same workload and job body as RQ, arq, Celery and Dramatiq there.

Variants: ``sync_c<N>`` (a plain function) and ``async_c<N>`` (a coroutine, ``run_async``), with
concurrency N.
"""

import asyncio
import os
import sys

import ostq
from record import record

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/0")
QUEUE = "bench"


def enqueue(n):
    ostq.Client(URL).queue(QUEUE).push_bulk([b"%d" % i for i in range(n)])


def worker_cmd(variant):
    return [sys.executable, os.path.abspath(__file__), "worker", variant]


BURST = False  # runs until SIGTERM, then shuts down gracefully


def _worker(variant):
    kind, concurrency = variant.split("_c")
    queue = ostq.Client(URL).queue(QUEUE)
    if kind == "sync":
        def noop(job):
            record(job.text)

        queue.worker(noop, concurrency=int(concurrency)).run()
    else:
        async def noop(job):
            record(job.text)

        asyncio.run(queue.worker(noop, concurrency=int(concurrency)).run_async())


if __name__ == "__main__" and sys.argv[1] == "worker":
    _worker(sys.argv[2])
