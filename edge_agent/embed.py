"""Running the agent on a thread of another process (benchmarks and tests embed it this way)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar


class Servable(Protocol):
    """What `serving_in_thread` runs: a coroutine to serve and a thread-safe stop request."""

    def run(self) -> Coroutine[Any, Any, None]: ...

    def request_stop(self) -> None: ...


D = TypeVar("D", bound=Servable)


@contextlib.contextmanager
def serving_in_thread(
    daemon: D,
    *,
    until: Callable[[D], object],
    timeout: float = 30.0,
    runner: Callable[[Coroutine[Any, Any, None]], object] = asyncio.run,
) -> Iterator[D]:
    """Run `daemon` on a thread of this process.

    Yields once `until(daemon)` is true; stops the daemon cleanly on exit. A failure of
    the daemon, or `until` not being met within `timeout`, raises RuntimeError.
    """
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            runner(daemon.run())
        except BaseException as err:  # reported to the caller
            failure.append(err)

    thread = threading.Thread(target=serve, name="daemon")
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not failure and not until(daemon):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon was not ready within {timeout:g} s")
            time.sleep(0.002)
        if failure:
            raise RuntimeError(f"daemon failed: {failure[0]!r}") from failure[0]
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(60)
    if failure:
        raise RuntimeError(f"daemon failed: {failure[0]!r}") from failure[0]
