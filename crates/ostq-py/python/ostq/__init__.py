"""ostq: a Redis-backed job queue, the Rust library bound to Python.

Producers push jobs onto named queues; workers lease them, run a handler with bounded
concurrency and record each outcome. Delivery is at least once: a job a worker took is leased,
and if the worker dies, any other worker (Python, Rust or ``ostq worker -- CMD``) runs it again
once the lease runs out. Python and Rust share one engine and one data layout, so each side
works the other's jobs.

>>> import ostq                                                    # doctest: +SKIP
>>> client = ostq.Client("redis://127.0.0.1:6379")                 # doctest: +SKIP
>>> tasks = client.queue("tasks")                                  # doctest: +SKIP
>>> job_id = tasks.push("generate the report", track=True)         # doctest: +SKIP
>>> worker = tasks.worker(lambda job: job.text.upper())            # doctest: +SKIP
>>> worker.run()                                                   # doctest: +SKIP

The asyncio API has the same methods as coroutines: :class:`AsyncClient`, :class:`AsyncQueue`,
and ``await worker.run_async()``.
"""

from ostq._errors import (
    AuthError,
    ConfigError,
    ConnectionError,
    Duplicate,
    Error,
    IdTaken,
    NotDurable,
    JobFailed,
    NotFound,
    OutOfMemory,
    PayloadError,
    Permanent,
    ProtocolError,
    RedisError,
    Timeout,
)
from ostq._ostq import (
    AsyncClient,
    AsyncEvents,
    AsyncQueue,
    Client,
    Event,
    Events,
    Failure,
    Job,
    JobInfo,
    Queue,
    QueueCounts,
    TaskDecorator,
    Worker,
    __version__,
)

__all__ = [
    "AsyncClient",
    "AsyncEvents",
    "AsyncQueue",
    "AuthError",
    "Client",
    "ConfigError",
    "ConnectionError",
    "Duplicate",
    "Error",
    "Event",
    "Events",
    "Failure",
    "IdTaken",
    "NotDurable",
    "Job",
    "JobFailed",
    "JobInfo",
    "NotFound",
    "OutOfMemory",
    "PayloadError",
    "Permanent",
    "ProtocolError",
    "Queue",
    "QueueCounts",
    "RedisError",
    "TaskDecorator",
    "Timeout",
    "Worker",
    "__version__",
]
