"""BullMQ's Python port (PyPI ``bullmq``) as a peer of the shared benchmark harness: bulk enqueue
with ``addBulk`` (1,000 per call), one asyncio worker with concurrency 50."""

import asyncio
import os
import signal
import sys

from bullmq import Queue, Worker
from record import record

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/0")


async def _enqueue(n):
    queue = Queue("bench", {"connection": URL})
    for start in range(0, n, 1000):
        await queue.addBulk([{"name": "noop", "data": {"i": i}}
                             for i in range(start, min(n, start + 1000))])
    await queue.close()


def enqueue(n):
    asyncio.run(_enqueue(n))


def worker_cmd(variant):
    return [sys.executable, os.path.abspath(__file__), "worker", variant]


BURST = False


async def _work(concurrency):
    async def process(job, token):
        record(job.data["i"])

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    worker = Worker("bench", process, {"connection": URL, "concurrency": concurrency})
    await stop.wait()
    await worker.close()


if __name__ == "__main__" and sys.argv[1] == "worker":
    asyncio.run(_work(int(sys.argv[2].lstrip("c"))))
