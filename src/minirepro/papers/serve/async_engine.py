"""`AsyncEngine`: the synchronous `LLMEngine` driven by one background thread, for asyncio.

The engine's `step()` must be called from one thread only, while an HTTP server receives
requests on an event loop. `AsyncEngine` owns that thread: it steps the engine while any
request is unfinished and sleeps on a condition variable otherwise. Each request gets an
`asyncio.Queue` on the loop that added it; the thread hands outputs over with
`loop.call_soon_threadsafe`, so the loop never blocks on the model.

A consumer that stops early (a client that disconnects, a cancelled task) aborts its
request, which frees its KV blocks. A request the engine finishes with an error (its model
step failed) ends its stream with `EngineError`; an exception raised by `step()` itself
fails every request in flight the same way. The thread carries on serving new ones.

Example:
    >>> aengine = AsyncEngine(LLMEngine(model, tokenizer))  # doctest: +SKIP
    >>> async for out in aengine.generate("r1", [1, 2, 3], SamplingParams(max_tokens=8)):
    ...     print(out.new_text, end="")  # doctest: +SKIP
    >>> aengine.shutdown()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine failed while a request was in flight (or was shut down under it)."""


@dataclass
class _Entry:
    """Where one request's outputs go: its queue on the event loop that added it."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class RequestStream:
    """The outputs of one request, as an async iterator of `RequestOutput` deltas.

    Iteration ends after the output with `finished=True`. Closing the stream before that
    (`close()`, `aclose()`, or leaving an `async with` block) aborts the request in the engine.
    """

    def __init__(self, owner: AsyncEngine, request_id: str, queue: asyncio.Queue) -> None:
        self._owner = owner
        self.request_id = request_id
        self._queue = queue
        self.finished = False
        self._closed = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Any:
        if self.finished or self._closed:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled while waiting: the consumer is gone
            self.close()
            raise
        if isinstance(item, BaseException):
            self.finished = True
            self._owner._forget(self.request_id)
            raise item
        if item.finished:
            self.finished = True
            self._owner._forget(self.request_id)
        return item

    def close(self) -> None:
        """Abort the request unless it has finished; idempotent."""
        if not self._closed:
            self._closed = True
            if not self.finished:
                self._owner.abort(self.request_id)

    async def aclose(self) -> None:
        """`close()`, for use as an async resource."""
        self.close()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncEngine:
    """Runs an `LLMEngine` in a background thread and streams outputs to asyncio tasks.

    Args:
        engine: the `LLMEngine` (anything with add_request / abort_request / step /
            has_unfinished_requests / stats). Only this object's thread calls `step()`.
        start: start the thread now (else call `start()`).
    """

    def __init__(self, engine: Any, *, start: bool = True) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}  # requests whose outputs someone awaits
        self._kicked = False  # an add or abort arrived: step at least once more
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.num_step_errors = 0
        if start:
            self.start()

    # ----- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the stepping thread (no-op if it runs)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
            self._thread.start()

    @property
    def is_running(self) -> bool:
        """Whether the stepping thread is alive."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still in flight fail with `EngineError` and are aborted."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for request_id in list(self._entries):
            with contextlib.suppress(Exception):
                self.engine.abort_request(request_id)
        self._fail_all(EngineError("the engine was shut down"))

    # ----- requests -----------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: Any,
        conversation_id: str | None = None,
    ) -> RequestStream:
        """Submit a request; must be called on the event loop that will read the stream.

        Raises:
            ValueError: the engine rejected the request (empty prompt, too long, duplicate
                id, token ids out of range); nothing was added.
            EngineError: the engine thread is not running.
        """
        if not self.is_running:
            raise EngineError("the engine is not running")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._cond:
            if request_id in self._entries:
                raise ValueError(f"duplicate request id {request_id!r}")
            # Registered before the engine sees the request, so no output can come too soon.
            self._entries[request_id] = _Entry(loop, queue)
        try:
            self.engine.add_request(
                request_id, list(prompt_token_ids), params, conversation_id=conversation_id
            )
        except BaseException:
            self._forget(request_id)
            raise
        self._kick()
        return RequestStream(self, request_id, queue)

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: Any,
        conversation_id: str | None = None,
    ) -> AsyncIterator[Any]:
        """Yield the request's `RequestOutput` deltas until it finishes.

        If the consumer stops early or is cancelled, the request is aborted (blocks freed).
        """
        stream = self.add_request(request_id, prompt_token_ids, params, conversation_id)
        async with stream:
            async for out in stream:
                yield out

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe); its stream receives nothing more."""
        self._forget(request_id)
        try:
            self.engine.abort_request(request_id)
        except (KeyError, ValueError):
            pass  # already finished inside the engine
        self._kick()

    def stats(self) -> Any:
        """The engine's `EngineStats`."""
        return self.engine.stats()

    @property
    def num_open_streams(self) -> int:
        """Requests whose outputs are awaited (not finished, not aborted)."""
        return len(self._entries)

    # ----- the thread ---------------------------------------------------------------------
    def _kick(self) -> None:
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def _forget(self, request_id: str) -> None:
        with self._cond:
            self._entries.pop(request_id, None)

    def _deliver(self, request_id: str, item: Any) -> None:
        with self._cond:
            entry = self._entries.get(request_id)
            if entry is not None and (isinstance(item, BaseException) or item.finished):
                del self._entries[request_id]
        if entry is None:
            return  # aborted or never ours: dropped
        try:
            entry.loop.call_soon_threadsafe(entry.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is left to read it
            pass

    def _fail_all(self, exc: BaseException) -> None:
        for request_id in list(self._entries):
            self._deliver(request_id, exc)

    def _run(self) -> None:
        engine = self.engine
        while True:
            with self._cond:
                while not (self._stopping or self._kicked or engine.has_unfinished_requests()):
                    self._cond.wait()
                if self._stopping:
                    return
                self._kicked = False
            try:
                outputs = engine.step()
            except Exception as exc:  # the loop survives; the requests in flight do not
                self.num_step_errors += 1
                log.exception("engine step failed")
                failed = list(self._entries)
                error = EngineError(f"engine step failed: {type(exc).__name__}: {exc}")
                for request_id in failed:
                    with contextlib.suppress(Exception):
                        engine.abort_request(request_id)
                    self._deliver(request_id, error)
                with self._cond:
                    self._cond.wait(0.05)  # no hot loop if the engine keeps failing
                continue
            for out in outputs:
                error = getattr(out, "error", None)
                self._deliver(out.request_id, out if error is None else EngineError(error))


__all__ = ["AsyncEngine", "EngineError", "RequestStream"]
