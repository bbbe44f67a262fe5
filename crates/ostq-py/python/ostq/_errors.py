"""The exceptions of ostq: one class per thing a caller may branch on, all under :class:`Error`.

>>> import ostq
>>> issubclass(ostq.JobFailed, ostq.Error)
True
"""

from __future__ import annotations

__all__ = [
    "Error",
    "ConnectionError",
    "AuthError",
    "RedisError",
    "OutOfMemory",
    "ConfigError",
    "NotFound",
    "PayloadError",
    "ProtocolError",
    "Timeout",
    "Duplicate",
    "IdTaken",
    "JobFailed",
    "NotDurable",
    "Permanent",
]


class Error(Exception):
    """Anything ostq reports: ``except ostq.Error`` catches every error below.

    >>> try:
    ...     raise ConfigError("invalid configuration: bad url")
    ... except Error as e:
    ...     print(e)
    invalid configuration: bad url
    """


class ConnectionError(Error):  # noqa: A001 (the name users expect; builtins' is still there)
    """Redis could not be reached or did not answer in time (refused, dropped, timed out,
    loading, failing over). Worth retrying later."""


class AuthError(Error):
    """Redis refused the credentials (wrong password, unknown or disabled user)."""


class RedisError(Error):
    """Redis refused a command for a reason retrying does not fix (an ACL, a script error, a key
    of the wrong type)."""


class OutOfMemory(Error):
    """Redis is out of memory (``maxmemory`` with ``noeviction``): nothing was written."""


class ConfigError(Error, ValueError):
    """A URL, option or argument is invalid (also a :class:`ValueError`); nothing was written.

    >>> issubclass(ConfigError, ValueError)
    True
    """


class NotFound(Error):
    """What was asked for does not exist, e.g. waiting for a job pushed without ``track=True``."""


class PayloadError(Error, ValueError):
    """A payload could not be encoded or decoded (not bytes or text, not JSON, too large);
    nothing was written."""


class ProtocolError(Error):
    """Redis answered something ostq's scripts never return."""


class Timeout(Error, TimeoutError):
    """Waiting took longer than allowed (also a builtin :class:`TimeoutError`)."""


class Duplicate(Error):
    """A job with the same unique key is already queued or running.

    >>> e = Duplicate("a job with unique key 'k' already exists: 01J", "k", "01J")
    >>> (e.key, e.existing_id)
    ('k', '01J')
    """

    def __init__(self, message: str, key: str = "", existing_id: str = "") -> None:
        super().__init__(message)
        self.key = key
        """The unique key."""
        self.existing_id = existing_id
        """The id of the job that holds it."""


class IdTaken(Error):
    """A job with the id given to a push is still waiting (scheduled, retry, or tracked and
    pending or running): an id names one job at a time.

    >>> IdTaken("job id 'a' is taken by a job that is scheduled", "a", "scheduled").state
    'scheduled'
    """

    def __init__(self, message: str, id: str = "", state: str = "") -> None:  # noqa: A002
        super().__init__(message)
        self.id = id
        """The id."""
        self.state = state
        """The state of the job that has it."""


class NotDurable(Error):
    """A durable push (``Client(url, durable="1")``) is on the primary, but fewer replicas than
    asked confirmed it in time: it may be lost in a failover. ``ids`` are the jobs written;
    pushing again with the same ``id=`` is refused (``IdTaken``) for tracked or delayed jobs whose
    first push survived, while an untracked immediate job may then exist twice.

    >>> e = NotDurable("not durable", ["j1"], 0, 1)
    >>> (e.ids, e.acked, e.wanted)
    (['j1'], 0, 1)
    """

    def __init__(
        self, message: str, ids: list[str] | None = None, acked: int = 0, wanted: int = 0
    ) -> None:
        super().__init__(message)
        self.ids = list(ids or [])
        """The ids of the jobs written (on the primary)."""
        self.acked = acked
        """Replicas that confirmed the write."""
        self.wanted = wanted
        """Replicas asked for."""


class JobFailed(Error):
    """The job a wait was for went to the dead set; ``error`` is its last error (for a Python
    handler, the traceback).

    >>> JobFailed("job 7 failed: boom", "7", "boom").error
    'boom'
    """

    def __init__(self, message: str, id: str = "", error: str = "") -> None:  # noqa: A002
        super().__init__(message)
        self.id = id
        """The job."""
        self.error = error
        """Its last error."""


class Permanent(Exception):
    """Raise this from a handler for input that can never succeed: the job goes straight to the
    dead set with this reason, without the remaining retries.

    >>> def handler(job):
    ...     if not job.payload:
    ...         raise Permanent("empty payload")
    """
