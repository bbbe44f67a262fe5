"""What the extension module asks of Python: reading a handler's signature, formatting a
traceback, and running a worker under asyncio (shielded, so that cancelling it shuts it down
gracefully instead of dropping it). Not public API."""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
import traceback
from typing import Any, Callable


def is_coroutine_function(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` gives a coroutine (``async def``, also through a partial or a
    callable object's ``async def __call__``)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


def takes_job(func: Callable[..., Any]) -> bool:
    """Whether a task handler takes the job after its params: ``def f(params, job)`` (or
    ``*args``) rather than ``def f(params)``."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it the params only
        return False
    positional = 0
    for parameter in parameters:
        if parameter.kind == parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def format_exception(error: BaseException, trace: Any = None) -> str:
    """The traceback of ``error`` (``trace``, else its own) as Python prints it: what a failed
    job keeps as its error."""
    lines = traceback.format_exception(type(error), error, trace or error.__traceback__)
    return "".join(lines).rstrip()


async def run_async(worker: Any) -> None:
    """Runs ``worker`` on the running event loop until ``worker.stop()``, SIGTERM (when on the
    main thread) or cancellation of the awaiting task, each of which shuts it down gracefully:
    running jobs get the shutdown timeout to finish, the rest go back to the queue."""
    loop = asyncio.get_running_loop()
    finished = worker._start_async(loop)
    sigterm = threading.current_thread() is threading.main_thread()
    if sigterm:
        try:
            loop.add_signal_handler(signal.SIGTERM, worker.stop)
        except (NotImplementedError, RuntimeError):  # not on this platform or loop
            sigterm = False
    try:
        await asyncio.shield(finished)
    except asyncio.CancelledError:
        worker.stop()
        await finished
        raise
    finally:
        if sigterm:
            loop.remove_signal_handler(signal.SIGTERM)
