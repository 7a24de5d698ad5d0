"""Load on a running server: many concurrent clients sending a mix of valid, malformed and
over-limit requests, each answer checked against the status it must get.

`serve_in_thread(app)` runs an app on a loopback port; `stress(url, ...)` drives it. The
tests run a few seconds of it; `benchmarks/serve_soak.py` runs it for a minute.
`FaultInjector` makes chosen model steps of an engine raise, to test failure recovery.

Example:
    >>> with serve_in_thread(app) as url:  # doctest: +SKIP
    ...     report = asyncio.run(stress(url, StressPlan(model="tiny"), clients=128))
    >>> report.wrong  # doctest: +SKIP
    []
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

ERROR_FIELDS = {"message", "type", "param", "code"}


class FaultInjector:
    """Makes the model steps of `engine` numbered n (from 1) with `fails(n)` raise
    RuntimeError(f"{message} #k"); the others run the real forward.

    Installed on construction; `remove()` (or leaving a `with` block) puts the real forward
    back. `calls` counts the steps, `count` the faults raised.

    Args:
        engine: An `LLMEngine` (its `runner.forward` is wrapped).
        fails: Which steps fail, e.g. ``lambda n: n == 3`` or ``lambda n: n % 40 == 0``.
        message: The start of each fault's message.
    """

    def __init__(
        self, engine: Any, fails: Callable[[int], bool], message: str = "injected fault"
    ) -> None:
        self.runner, self.fails, self.message = engine.runner, fails, message
        self.calls = self.count = 0
        self.forward = self.runner.forward
        self.runner.forward = self

    def __call__(self, batch: Any) -> Any:
        self.calls += 1
        if self.fails(self.calls):
            self.count += 1
            raise RuntimeError(f"{self.message} #{self.count}")
        return self.forward(batch)

    def remove(self) -> None:
        self.runner.forward = self.forward

    def __enter__(self) -> FaultInjector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@contextmanager
def serve_in_thread(app: Any, timeout: float = 30.0) -> Iterator[str]:
    """uvicorn serving `app` on 127.0.0.1 (a port the OS picks) in a daemon thread; yields
    its base URL and stops it on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class StressPlan:
    """What the server accepts, so each request's right answer is known in advance.

    Attributes:
        model: the served model's name.
        max_model_len: prompt + output tokens the server takes (a character tokenizer is
            assumed: one token per character of a prompt).
        max_body_bytes, max_prompts: the server's `AdmissionLimits`.
        max_tokens: output tokens of a valid request.
        engine_faults: model steps are made to fail on purpose: a valid request may get a
            500 (or, streamed, an error event), never anything else.
    """

    model: str
    max_model_len: int
    max_body_bytes: int
    max_prompts: int
    max_tokens: int = 8
    engine_faults: bool = False

    def expected(self, kind: str) -> set[int]:
        """The statuses a request of `kind` may get."""
        valid = 200 in EXPECTED[kind]
        return EXPECTED[kind] | ({500} if valid and self.engine_faults else set())


# kind -> the statuses it may get (valid requests may be turned away while the queue is full)
EXPECTED: dict[str, set[int]] = {
    "complete": {200, 429},
    "stream": {200, 429},
    "chat": {200, 429},
    "abandon_stream": {200, 429},  # the client reads one chunk and hangs up
    "bad_json": {400},
    "bad_type": {400},
    "unknown_model": {404},
    "too_long": {400},
    "too_many_prompts": {400},
    "too_large_body": {413},
}


@dataclass
class StressReport:
    """What the clients saw.

    Attributes:
        statuses: (kind, status) -> count.
        completed: valid requests answered 200 with every token they asked for.
        wrong: one line per answer that broke a rule (status, error shape, lost tokens).
        seconds: wall time.
    """

    statuses: Counter = field(default_factory=Counter)
    completed: int = 0
    wrong: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "wrong": self.wrong[:20],
            "num_wrong": len(self.wrong),
            "seconds": round(self.seconds, 2),
            "statuses": {f"{k}:{s}": n for (k, s), n in sorted(self.statuses.items())},
        }


def _request(kind: str, plan: StressPlan, rng: random.Random) -> tuple[str, Any]:
    """(path, body) of one request of `kind`; body is bytes for raw bodies."""
    words = "".join(rng.choice("abcdefghij ") for _ in range(rng.randint(3, 40)))
    base = {"model": plan.model, "max_tokens": plan.max_tokens, "temperature": 0}
    base |= {"ignore_eos": True, "return_token_ids": True}
    chat = {"messages": [{"role": "user", "content": words}]}
    if kind in ("complete", "stream", "abandon_stream"):
        return "/v1/completions", base | {"prompt": words, "stream": kind != "complete"}
    if kind == "chat":
        return "/v1/chat/completions", base | chat
    if kind == "bad_json":
        return "/v1/completions", b'{"prompt": "unterminated'
    if kind == "bad_type":
        return "/v1/chat/completions", base | chat | {"temperature": "hot"}
    if kind == "unknown_model":
        return "/v1/completions", base | {"prompt": words, "model": "no-such-model"}
    if kind == "too_long":
        return "/v1/completions", base | {"prompt": "a" * plan.max_model_len}
    if kind == "too_many_prompts":
        return "/v1/completions", base | {"prompt": [words] * (plan.max_prompts + 1)}
    if kind == "too_large_body":
        return "/v1/completions", base | {"prompt": "b" * plan.max_body_bytes}
    raise ValueError(f"unknown request kind {kind!r}")


def _check_error(kind: str, status: int, headers: Any, raw: bytes) -> str | None:
    """Why an error answer is malformed, or None."""
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{kind}: {status} without an OpenAI error body: {raw[:80]!r}"
    if not isinstance(error, dict) or set(error) != ERROR_FIELDS:
        return f"{kind}: {status} error body has fields {sorted(error)}"
    if status == 429 and not headers.get("retry-after"):
        return f"{kind}: 429 without Retry-After"
    return None


async def _one(client: Any, kind: str, plan: StressPlan, rng: random.Random, report: StressReport):
    path, body = _request(kind, plan, rng)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    async with client.stream("POST", path, content=content, headers=headers) as r:
        if kind == "abandon_stream" and r.status_code == 200:
            async for _ in r.aiter_raw():
                break  # hang up after the first bytes
            report.statuses[kind, r.status_code] += 1
            return
        raw = await r.aread()
    status = r.status_code
    if status == 200 and plan.engine_faults and b'"internal_error"' in raw:
        status = 500  # streamed: the status line went out before the step failed
    report.statuses[kind, status] += 1
    if status not in plan.expected(kind):
        expected = sorted(plan.expected(kind))
        report.wrong.append(f"{kind}: got {status}, expected {expected}: {raw[:120]!r}")
        return
    if status == 500 and r.status_code == 200:
        return  # an error event in a stream
    if status != 200:
        problem = _check_error(kind, status, r.headers, raw)
        if problem:
            report.wrong.append(problem)
        return
    tokens = _tokens_of(kind, raw)
    if tokens != plan.max_tokens:
        report.wrong.append(
            f"{kind}: 200 with {tokens} of {plan.max_tokens} tokens: {raw[-120:]!r}"
        )
    else:
        report.completed += 1


def _tokens_of(kind: str, raw: bytes) -> int | None:
    """Output tokens in a 200 answer (None if it did not finish properly)."""
    if kind in ("complete", "chat"):
        data = json.loads(raw)
        choice = data["choices"][0]
        if choice["finish_reason"] != "length":
            return None
        return len(choice["token_ids"])
    events = [e[len("data: ") :] for e in raw.decode().split("\n\n") if e.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return None
    chunks = [json.loads(e) for e in events[:-1]]
    if any("error" in c for c in chunks) or chunks[-1]["choices"][0]["finish_reason"] != "length":
        return None
    return sum(len(c["choices"][0].get("token_ids", [])) for c in chunks)


async def stress(
    url: str,
    plan: StressPlan,
    *,
    clients: int = 128,
    requests_per_client: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    timeout_s: float = 60.0,
) -> StressReport:
    """`clients` concurrent clients, each sending requests of random kinds one after another,
    `requests_per_client` each or until `duration_s` has passed.

    Args:
        url: the server's base URL.
        plan: what the server accepts.
        clients: concurrent connections.
        requests_per_client: requests per client (one of this and duration_s).
        duration_s: how long to keep sending.
        seed: the clients' random choices.
        timeout_s: per request (an answer slower than this is counted as wrong).
    """
    import httpx

    if (requests_per_client is None) == (duration_s is None):
        raise ValueError("give exactly one of requests_per_client and duration_s")
    report = StressReport()
    kinds = list(EXPECTED)
    start = time.monotonic()
    # idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout: at
    # equal timeouts a request sent on a connection the server is closing reads nothing
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0
    )

    async def client_loop(client: Any, i: int) -> None:
        rng = random.Random(seed * 100_003 + i)
        n = 0
        while True:
            if requests_per_client is not None and n >= requests_per_client:
                return
            if duration_s is not None and time.monotonic() - start >= duration_s:
                return
            kind = rng.choice(kinds)
            try:
                await _one(client, kind, plan, rng, report)
            except httpx.HTTPError as exc:
                report.wrong.append(f"{kind}: {type(exc).__name__}: {exc}")
            n += 1

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(client_loop(client, i) for i in range(clients)))
    report.seconds = time.monotonic() - start
    return report


__all__ = ["EXPECTED", "FaultInjector", "StressPlan", "StressReport", "serve_in_thread", "stress"]
