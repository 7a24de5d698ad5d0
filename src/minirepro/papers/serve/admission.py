"""What the server lets in: request body size, prompts per request, the engine's queue.

Each check answers before the expensive step it guards, with OpenAI's status codes:
- a body over `max_body_bytes` is a 413, kept nowhere (known by its Content-Length, or
  counted while it streams in when the client sends none);
- more than `max_prompts` prompts in one /v1/completions request is a 400, before any of
  them is tokenised;
- a new request while `max_waiting` requests already wait for the engine is a 429 with a
  Retry-After header, as OpenAI answers when it is over capacity (the client's library
  retries it); requests arriving to an empty queue are always taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minirepro.papers.serve.protocol import MAX_PROMPTS_PER_REQUEST, APIError, bad_request


@dataclass
class AdmissionLimits:
    """Caps on what one request may send and on the queue in front of the engine.

    Attributes:
        max_body_bytes: largest request body (4 MiB: ~1M prompt tokens of text).
        max_prompts: prompts in one /v1/completions request (a list of strings or of
            token-id lists).
        max_waiting: engine requests waiting to be scheduled before new ones get 429.
        retry_after_s: the Retry-After a 429 carries.
    """

    max_body_bytes: int = 4 << 20
    max_prompts: int = MAX_PROMPTS_PER_REQUEST
    max_waiting: int = 1024
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_prompts", "max_waiting", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    async def read_body(self, request: Any) -> bytes:
        """The request body, or APIError 413 once it is known to be too large.

        The rest of a too-large body is read and dropped (up to 8x the cap) before the 413
        goes out: a server that answers and closes with unread bytes in its socket makes the
        kernel reset the connection, and the client sees a broken pipe, not the 413.
        """
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise bad_request(f"invalid Content-Length header {declared[:40]!r}")
            if int(declared) > limit:
                if int(declared) <= 8 * limit:
                    async for _ in request.stream():
                        pass
                raise self._too_large(int(declared))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > 8 * limit:
                break
            if size <= limit:
                chunks.append(chunk)
        if size > limit:
            raise self._too_large(size)
        return b"".join(chunks)

    def _too_large(self, size: int) -> APIError:
        return APIError(
            413,
            f"the request body has {size} bytes or more; at most {self.max_body_bytes} "
            "are accepted",
            code="request_too_large",
        )

    def check_prompts(self, n: int) -> None:
        """APIError 400 if one request carries more than `max_prompts` prompts."""
        if n > self.max_prompts:
            raise bad_request(
                f"{n} prompts in one request; at most {self.max_prompts} are accepted", "prompt"
            )

    def check_queue(self, num_waiting: int, num_new: int) -> None:
        """APIError 429 (with Retry-After) if `num_new` more requests would overfill the
        waiting queue; an empty queue always takes a request."""
        if num_waiting and num_waiting + num_new > self.max_waiting:
            raise APIError(
                429,
                f"the server is at capacity ({num_waiting} requests waiting, at most "
                f"{self.max_waiting}); retry after {self.retry_after_s} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(self.retry_after_s)},
            )


__all__ = ["AdmissionLimits"]
