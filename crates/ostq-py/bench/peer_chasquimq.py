"""ChasquiMQ's Python binding (PyPI ``chasquimq``, Rust underneath, Redis 8.6+) as a peer of the
shared benchmark harness: bulk enqueue with ``add_bulk`` (1,000 per call), one asyncio worker.

Variants: ``default_c<N>`` (its defaults: events stream and scheduler on) and ``lean_c<N>``
(events and scheduler off, like ostq's defaults), with concurrency N.
"""

import asyncio
import os
import signal
import sys

from chasquimq import Queue, Worker
from record import record

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/0")


async def _enqueue(n):
    queue = Queue("bench", redis_url=URL)
    for start in range(0, n, 1000):
        await queue.add_bulk([{"name": "noop", "data": i}
                              for i in range(start, min(n, start + 1000))])
    await queue.close()


def enqueue(n):
    asyncio.run(_enqueue(n))


def worker_cmd(variant):
    return [sys.executable, os.path.abspath(__file__), "worker", variant]


BURST = False


async def _work(variant):
    settings, concurrency = variant.split("_c")
    lean = {"events_enabled": False, "run_scheduler": False} if settings == "lean" else {}

    async def handler(job):
        record(job.data)

    worker = Worker("bench", handler, redis_url=URL, concurrency=int(concurrency), **lean)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.close()))
    await worker.run()


if __name__ == "__main__" and sys.argv[1] == "worker":
    asyncio.run(_work(sys.argv[2]))
