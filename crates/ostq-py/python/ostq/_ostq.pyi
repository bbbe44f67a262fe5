"""Type stubs of the extension module ``ostq._ostq`` (import these names from ``ostq``)."""

from __future__ import annotations

import asyncio
import datetime
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Literal,
    Optional,
    TypeVar,
    Union,
    overload,
)

__version__: str

Payload = Union[bytes, bytearray, str]
"""A job's payload: bytes as they are, text as UTF-8."""
Seconds = Union[int, float, datetime.timedelta]
"""A duration: seconds, or a timedelta."""
Time = Union[int, float, datetime.datetime]
"""A point in time: Unix seconds, or a datetime (naive ones are local time)."""
JobStateName = Literal["scheduled", "pending", "active", "completed", "retry", "dead"]
EventSink = Literal["off", "pubsub", "stream", "both"]
Result = Union[None, bytes, bytearray, str, Any]
"""What a handler returns: None (no result), bytes or str as they are, anything else as JSON."""

Handler = Callable[["Job"], Union[Result, Awaitable[Result]]]
"""A default handler: ``handler(job)``, a plain function or an ``async def``."""
TaskHandler = Callable[..., Union[Result, Awaitable[Result]]]
"""A task handler: ``handler(params)`` or ``handler(params, job)``, plain or ``async def``."""
ErrorHook = Callable[["Job", "Failure"], object]
MonitorHook = Callable[[dict[str, Any]], object]
F = TypeVar("F", bound=TaskHandler)

class Client:
    """A connection to Redis for producing, inspecting and working (sync API).

    ``url``: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS),
    ``redis+sentinel://host:port[,host:port]/service``, ``redis+cluster://host:port[,…]``.
    Connects at once (``ostq.ConnectionError`` when Redis cannot be reached) unless ``lazy``.
    ``durable="1"`` (``"1:500ms"``, ``"aof:1"``): every push waits for that many replicas
    (``WAIT``); fewer in time raises :class:`ostq.NotDurable` (the job is on the primary).

    >>> client = Client("redis://127.0.0.1:6379")        # doctest: +SKIP
    >>> client.queue("tasks").push("42")                  # doctest: +SKIP
    '01J...'
    """

    def __new__(
        cls,
        url: str = "redis://127.0.0.1:6379",
        *,
        ca_file: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        lazy: bool = False,
        durable: Optional[str] = None,
    ) -> Client: ...
    def queue(self, name: str) -> Queue:
        """A handle on the queue ``name``."""
    def queues(self) -> list[str]:
        """The names of the queues ostq knows on this Redis."""

class AsyncClient:
    """The asyncio twin of :class:`Client`; connects on first use.

    >>> tasks = AsyncClient().queue("tasks")              # doctest: +SKIP
    >>> await tasks.push("42")                            # doctest: +SKIP
    """

    def __new__(
        cls,
        url: str = "redis://127.0.0.1:6379",
        *,
        ca_file: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        durable: Optional[str] = None,
    ) -> AsyncClient: ...
    def queue(self, name: str) -> AsyncQueue:
        """A handle on the queue ``name`` whose methods are coroutines."""
    async def queues(self) -> list[str]:
        """The names of the queues ostq knows on this Redis."""

class Queue:
    """A named queue: push, wait for results, inspect, and work it.

    >>> tasks.push("43", delay=30, priority=5, max_attempts=3, track=True)  # doctest: +SKIP
    """

    @property
    def name(self) -> str: ...
    def push(
        self,
        data: Payload,
        *,
        id: Optional[str] = None,
        name: Optional[str] = None,
        delay: Optional[Seconds] = None,
        at: Optional[Time] = None,
        priority: int = 0,
        max_attempts: int = 0,
        track: bool = False,
        unique: Optional[str] = None,
        unique_for: Optional[Seconds] = None,
        key: Optional[str] = None,
    ) -> str:
        """Pushes one job; returns its id."""
    def push_bulk(
        self,
        items: Iterable[Payload],
        *,
        name: Optional[str] = None,
        delay: Optional[Seconds] = None,
        at: Optional[Time] = None,
        priority: int = 0,
        max_attempts: int = 0,
        track: bool = False,
        key: Optional[str] = None,
    ) -> list[str]:
        """Pushes many jobs sharing options; returns their ids in order. All or nothing (per shard on a sharded queue)."""
    def enqueue(
        self,
        name: str,
        params: Any,
        *,
        id: Optional[str] = None,
        delay: Optional[Seconds] = None,
        at: Optional[Time] = None,
        priority: int = 0,
        max_attempts: int = 0,
        track: bool = False,
        unique: Optional[str] = None,
        unique_for: Optional[Seconds] = None,
        key: Optional[str] = None,
    ) -> str:
        """Enqueues a task for ``@worker.task(name)``: ``params`` as JSON."""
    def job(self, id: str) -> Optional[JobInfo]:
        """What is known about job ``id``, or None."""
    def jobs(self, state: JobStateName, offset: int = 0, limit: int = 100) -> list[JobInfo]:
        """The jobs in ``state``."""
    def wait_for(self, id: str, timeout: Seconds) -> Optional[bytes]:
        """Waits for tracked job ``id``: its result; raises JobFailed, Timeout or NotFound."""
    def push_and_wait(
        self,
        data: Payload,
        timeout: Seconds,
        *,
        id: Optional[str] = None,
        name: Optional[str] = None,
        delay: Optional[Seconds] = None,
        at: Optional[Time] = None,
        priority: int = 0,
        max_attempts: int = 0,
        unique: Optional[str] = None,
        unique_for: Optional[Seconds] = None,
        key: Optional[str] = None,
    ) -> Optional[bytes]:
        """Pushes a tracked job and waits for its result."""
    def counts(self) -> QueueCounts:
        """How many jobs the queue holds in each state, and its totals."""
    def set_events(self, sink: EventSink) -> None:
        """Turns the queue's events on ("pubsub", "stream", "both") or off."""
    def events(self, start: str = "now") -> Events:
        """The queue's events (needs the "stream" or "both" sink); start: "now", "beginning"
        or a stream id."""
    def cancel(self, id: str) -> Literal["removed", "signalled", "not_found"]:
        """Cancels job ``id``."""
    def retry_all_dead(self) -> int:
        """Moves every dead job back to pending; returns how many."""
    def purge(self, state: Optional[JobStateName] = None) -> int:
        """Removes the jobs in ``state`` (every state but active when None)."""
    def worker(
        self,
        handler: Optional[Handler] = None,
        on_error: Optional[ErrorHook] = None,
        on_monitor: Optional[MonitorHook] = None,
        *,
        concurrency: int = 10,
        lease: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
        shutdown_timeout: Optional[Seconds] = None,
        monitor_interval: Optional[Seconds] = None,
        max_attempts: Optional[int] = None,
        backoff: Union[Seconds, tuple[Seconds, Seconds], None] = None,
    ) -> Worker:
        """A worker for this queue (defaults: lease 30 s, timeout 30 min, ``math.inf`` for
        none, shutdown timeout 25 s, monitor every 10 s, 25 attempts, backoff (1 s, 1 h))."""

class AsyncQueue:
    """The asyncio twin of :class:`Queue`."""

    @property
    def name(self) -> str: ...
    async def push(
        self,
        data: Payload,
        *,
        id: Optional[str] = None,
        name: Optional[str] = None,
        delay: Optional[Seconds] = None,
        at: Optional[Time] = None,
        priority: int = 0,
        max_attempts: int = 0,
        track: bool = False,
        unique: Optional[str] = None,
        unique_for: Optional[Seconds] = None,
        key: Optional[str] = None,
    ) -> str: ...
    async def push_bulk(
        self,
        items: Iterable[Payload],
        *,
        name: Optional[str] = None,
        delay: Optional[Seconds] = None,
        at: Optional[Time] = None,
        priority: int = 0,
        max_attempts: int = 0,
        track: bool = False,
        key: Optional[str] = None,
    ) -> list[str]: ...
    async def enqueue(
        self,
        name: str,
        params: Any,
        *,
        id: Optional[str] = None,
        delay: Optional[Seconds] = None,
        at: Optional[Time] = None,
        priority: int = 0,
        max_attempts: int = 0,
        track: bool = False,
        unique: Optional[str] = None,
        unique_for: Optional[Seconds] = None,
        key: Optional[str] = None,
    ) -> str: ...
    async def job(self, id: str) -> Optional[JobInfo]: ...
    async def jobs(
        self, state: JobStateName, offset: int = 0, limit: int = 100
    ) -> list[JobInfo]: ...
    async def wait_for(self, id: str, timeout: Seconds) -> Optional[bytes]: ...
    async def push_and_wait(
        self,
        data: Payload,
        timeout: Seconds,
        *,
        id: Optional[str] = None,
        name: Optional[str] = None,
        delay: Optional[Seconds] = None,
        at: Optional[Time] = None,
        priority: int = 0,
        max_attempts: int = 0,
        unique: Optional[str] = None,
        unique_for: Optional[Seconds] = None,
        key: Optional[str] = None,
    ) -> Optional[bytes]: ...
    async def counts(self) -> QueueCounts: ...
    async def set_events(self, sink: EventSink) -> None: ...
    def events(self, start: str = "now") -> AsyncEvents: ...
    async def cancel(self, id: str) -> Literal["removed", "signalled", "not_found"]: ...
    async def retry_all_dead(self) -> int: ...
    async def purge(self, state: Optional[JobStateName] = None) -> int: ...
    def worker(
        self,
        handler: Optional[Handler] = None,
        on_error: Optional[ErrorHook] = None,
        on_monitor: Optional[MonitorHook] = None,
        *,
        concurrency: int = 10,
        lease: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
        shutdown_timeout: Optional[Seconds] = None,
        monitor_interval: Optional[Seconds] = None,
        max_attempts: Optional[int] = None,
        backoff: Union[Seconds, tuple[Seconds, Seconds], None] = None,
    ) -> Worker: ...

class Job:
    """A job as a handler sees it."""

    @property
    def id(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def name(self) -> Optional[str]: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def text(self) -> str:
        """The payload as UTF-8 text; PayloadError when it is not."""
    def json(self) -> Any:
        """The payload decoded from JSON."""
    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1."""
    @property
    def max_attempts(self) -> int: ...
    @property
    def is_last_attempt(self) -> bool: ...
    @property
    def priority(self) -> int: ...
    @property
    def enqueued_at(self) -> float:
        """Unix seconds."""
    @property
    def last_error(self) -> Optional[str]: ...
    @property
    def tracked(self) -> bool: ...
    @property
    def cancelled(self) -> bool:
        """Whether someone asked for this job to be cancelled."""
    def progress(self, value: Any) -> None:
        """Reports progress (any JSON value); blocks until Redis has it."""
    def progress_async(self, value: Any) -> Awaitable[None]:
        """``progress`` for coroutine handlers."""
    def wait_cancelled(self) -> Awaitable[None]:
        """Completes when someone asks for this job to be cancelled."""

class JobInfo:
    """What inspection knows about one job."""

    id: str
    queue: str
    state: JobStateName
    name: Optional[str]
    payload: Optional[bytes]
    attempts: int
    max_attempts: int
    priority: int
    enqueued_at: Optional[float]
    started_at: Optional[float]
    finished_at: Optional[float]
    due_at: Optional[float]
    last_error: Optional[str]
    result: Optional[bytes]
    progress: Optional[str]
    """The latest progress, as JSON text."""
    tracked: bool

class QueueCounts:
    """How many jobs a queue holds in each state, and its totals."""

    queue: str
    pending: int
    active: int
    scheduled: int
    retry: int
    dead: int
    completed: int
    processed_total: int
    failed_total: int
    recovered_total: int
    paused: bool
    @property
    def failure_rate(self) -> Optional[float]: ...

class Failure:
    """Why an attempt failed and what happens next (``on_error(job, failure)``)."""

    error: str
    dead: bool
    retry_in: Optional[float]

class Event:
    """One job event."""

    event: Literal[
        "pushed", "started", "completed", "failed", "retried", "dead", "recovered", "progress"
    ]
    queue: str
    id: str
    ts: int
    attempt: Optional[int]
    error: Optional[str]
    state: Optional[str]
    retry_in_ms: Optional[int]
    from_: Optional[str]
    stream_id: str
    @property
    def progress(self) -> Any: ...

class Events(Iterator[Event]):
    """A queue's events, one at a time (never ends by itself)."""

    def __iter__(self) -> Events: ...
    def __next__(self) -> Event: ...

class AsyncEvents(AsyncIterator[Event]):
    """A queue's events for ``async for``."""

    def __aiter__(self) -> AsyncEvents: ...
    def __anext__(self) -> Awaitable[Event]: ...

class Worker:
    """A worker serving one queue with Python handlers (``queue.worker(...)``)."""

    @overload
    def task(self, name: str) -> TaskDecorator:
        """A decorator registering the function it decorates for jobs named ``name`` (before
        ``run()``: a run dispatches on the tasks it started with)."""
    @overload
    def task(self, name: str, handler: F) -> F:
        """Registers ``handler`` for jobs named ``name``."""
    @property
    def tasks(self) -> list[str]: ...
    @property
    def running(self) -> bool: ...
    def stop(self) -> None:
        """Asks a running worker to shut down gracefully."""
    def run(self) -> None:
        """Runs until ctrl-c, SIGTERM or ``stop()``, then shuts down gracefully."""
    def run_async(self) -> Coroutine[Any, Any, None]:
        """Runs on the running loop until cancelled, SIGTERM or ``stop()``."""
    def _start_async(self, event_loop: asyncio.AbstractEventLoop) -> Awaitable[None]: ...

class TaskDecorator:
    """What ``worker.task(name)`` returns: registers the function it decorates."""

    def __call__(self, handler: F) -> F: ...
