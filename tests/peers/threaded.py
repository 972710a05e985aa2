"""Run an asyncio protocol peer on its own event loop in a thread, and drive it from
another loop (or from plain code).

The shared runtime tree is started by a blocking session fixture: peers the adapter
actors talk to while starting must keep answering then, so they cannot live on the
test's event loop. ``Threaded(factory)`` builds the peer inside the thread's loop;
``await peer.call("method", ...)`` runs one of its methods (plain or async) there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["Threaded"]

P = TypeVar("P")


class Threaded(Generic[P]):
    def __init__(self, factory: Callable[[], Awaitable[P]], name: str = "peer") -> None:
        self._factory = factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._peer: P | None = None

    def start(self, within: float = 30.0) -> Threaded[P]:
        self._thread.start()
        self._peer = asyncio.run_coroutine_threadsafe(self._factory(), self._loop).result(within)
        return self

    @property
    def peer(self) -> P:
        """The peer itself: read plain attributes only; call methods through ``call``."""
        assert self._peer is not None, "not started"
        return self._peer

    def call_sync(self, method: str, *args: Any, within: float = 60.0, **kwargs: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(self._run(method, args, kwargs), self._loop).result(
            within
        )

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``peer.method(*args, **kwargs)`` on the peer's loop and return its result."""
        future = asyncio.run_coroutine_threadsafe(self._run(method, args, kwargs), self._loop)
        return await asyncio.wrap_future(future)

    async def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = getattr(self.peer, method)(*args, **kwargs)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    def stop(self, method: str = "stop", within: float = 30.0) -> None:
        """Call the peer's own ``method`` to shut it down, cancel what is left on its
        loop, and close the loop."""
        if self._peer is None:
            return
        try:
            self.call_sync(method, within=within)
        finally:
            asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self._loop).result(within)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(within)
            self._loop.close()


async def _cancel_the_rest() -> None:
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
