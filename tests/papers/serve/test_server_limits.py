"""The server under pressure: admission limits (413, prompt count, 429), tokenisation off the
event loop, a failed model step, the OpenAPI schema, a property-based fuzz over the request
models, and 128 concurrent clients sending a mix of valid, malformed and over-limit requests.

One server with async scheduling (where a failed step used to poison every later one), a
small context (so no request runs long) and small admission limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from minirepro.papers.serve.admission import AdmissionLimits  # noqa: E402
from minirepro.papers.serve.async_engine import AsyncEngine  # noqa: E402
from minirepro.papers.serve.engine import EngineConfig, LLMEngine  # noqa: E402
from minirepro.papers.serve.loadtest import (  # noqa: E402
    EXPECTED,
    FaultInjector,
    StressPlan,
    serve_in_thread,
    stress,
)
from minirepro.papers.serve.protocol import CHAT_ROLES, ChatBody, CompletionBody  # noqa: E402
from minirepro.papers.serve.served_model import (  # noqa: E402
    CHAR_ALPHABET,
    make_plain_chat_encoder,
    random_char_model,
)
from minirepro.papers.serve.server import create_app  # noqa: E402

MODEL = "tiny"
CONTEXT = 96
ADMISSION = AdmissionLimits(max_body_bytes=16 << 10, max_prompts=4, max_waiting=24)
ERROR_FIELDS = {"message", "type", "param", "code"}


class RecordingTokenizer:
    """The char tokenizer, noting for each encode call whether an event loop ran there."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[bool] = []  # True: called on an event loop thread

    def encode(self, text: str, **kw: Any) -> list[int]:
        try:
            asyncio.get_running_loop()
            self.calls.append(True)
        except RuntimeError:
            self.calls.append(False)
        return self.inner.encode(text, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclasses.dataclass
class Srv:
    url: str
    engine: LLMEngine
    async_engine: AsyncEngine
    tokenizer: RecordingTokenizer


@pytest.fixture(scope="module")
def srv() -> Iterator[Srv]:
    served = random_char_model(CONTEXT)
    tokenizer = RecordingTokenizer(served.tokenizer)
    config = EngineConfig(
        block_size=8,
        num_blocks=256,
        max_num_seqs=16,
        max_num_batched_tokens=128,
        async_scheduling=True,
    )
    engine = LLMEngine(served.model, tokenizer, config, eos_token_ids=served.eos_token_ids)
    aengine = AsyncEngine(engine)
    chat = make_plain_chat_encoder(tokenizer.encode)
    app = create_app(
        aengine, model_name=MODEL, tokenizer=tokenizer, chat_encoder=chat, admission=ADMISSION
    )
    try:
        with serve_in_thread(app) as url:
            yield Srv(url, engine, aengine, tokenizer)
    finally:
        aengine.shutdown()
        engine.close()


def assert_openai_error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == ERROR_FIELDS and isinstance(error["message"], str)
    return error


def wait_idle_and_healthy(s: Srv, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stats = s.engine.stats()
        if stats.kv_blocks_used == 0 and stats.num_running == 0 and stats.num_waiting == 0:
            break
        assert time.monotonic() < deadline, f"the engine did not go idle: {stats}"
        time.sleep(0.02)
    s.engine.blocks.check()
    assert httpx.get(f"{s.url}/health").status_code == 200
    body = {"model": MODEL, "prompt": "still alive", "max_tokens": 4, "ignore_eos": True}
    r = httpx.post(f"{s.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


# ----- admission ------------------------------------------------------------------------------
def test_body_over_the_cap_is_413(srv: Srv) -> None:
    big = {"model": MODEL, "prompt": "a" * (20 << 10), "max_tokens": 2}
    r = httpx.post(f"{srv.url}/v1/completions", json=big, timeout=30)
    assert assert_openai_error(r, 413)["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"a" * 1024
        yield b'"}'

    r = httpx.post(f"{srv.url}/v1/chat/completions", content=chunks(), timeout=30)
    assert_openai_error(r, 413)
    assert srv.engine.stats().num_waiting == 0


def test_prompt_count_is_checked_before_tokenising(srv: Srv) -> None:
    srv.tokenizer.calls.clear()
    body = {"model": MODEL, "prompt": ["some text"] * 5, "max_tokens": 2}
    r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=30)
    assert "at most 4" in assert_openai_error(r, 400)["message"]
    assert srv.tokenizer.calls == []  # rejected before any prompt was tokenised


def test_tokenising_and_templating_run_off_the_event_loop(srv: Srv) -> None:
    srv.tokenizer.calls.clear()
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    client.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=2)
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert len(srv.tokenizer.calls) == 3 and not any(srv.tokenizer.calls)


def test_full_queue_is_429_with_retry_after(srv: Srv, monkeypatch) -> None:
    real = srv.async_engine.stats
    monkeypatch.setattr(
        srv.async_engine, "stats", lambda: dataclasses.replace(real(), num_waiting=24)
    )
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 2}
    r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=30)
    assert assert_openai_error(r, 429)["code"] == "rate_limit_exceeded"
    assert r.headers["retry-after"] == "1"
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL, prompt="hello", max_tokens=2)
    monkeypatch.setattr(srv.async_engine, "stats", real)
    assert httpx.post(f"{srv.url}/v1/completions", json=body, timeout=30).status_code == 200


def test_bad_admission_limits() -> None:
    with pytest.raises(ValueError, match="max_waiting must be a positive int"):
        AdmissionLimits(max_waiting=0)


# ----- a failed model step ---------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_failed_model_step_is_a_500_and_the_next_request_is_served(srv: Srv, stream: bool) -> None:
    wait_idle_and_healthy(srv)
    with FaultInjector(srv.engine, lambda n: n == 2):
        body = {"model": MODEL, "prompt": "doomed", "max_tokens": 20, "ignore_eos": True}
        r = httpx.post(f"{srv.url}/v1/completions", json=body | {"stream": stream}, timeout=30)
        if stream:  # the status line went out with the first chunk: the error is an event
            events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: ")]
            assert events[-1] == "[DONE]"
            error = json.loads(events[-2])["error"]
            assert set(error) == ERROR_FIELDS
        else:
            error = assert_openai_error(r, 500)
        assert error["type"] == "internal_error" and "injected fault" in error["message"]
    wait_idle_and_healthy(srv)  # blocks freed, and the next request gets its tokens


# ----- the schema -------------------------------------------------------------------------------
def test_openapi_schema_and_docs(srv: Srv) -> None:
    schema = httpx.get(f"{srv.url}/openapi.json").json()
    post = schema["paths"]["/v1/completions"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/CompletionBody"
    fields = schema["components"]["schemas"]["CompletionBody"]["properties"]
    assert {"prompt", "max_tokens", "temperature", "stream"} <= set(fields)
    assert "messages" in schema["components"]["schemas"]["ChatBody"]["properties"]
    error = post["responses"]["429"]["content"]["application/json"]["schema"]
    assert set(error["properties"]["error"]["required"]) == ERROR_FIELDS
    for page in ("/docs", "/redoc"):
        assert httpx.get(f"{srv.url}{page}").status_code == 200


# ----- property-based fuzz over the request models ----------------------------------------------
ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
TEXT = st.text(alphabet=CHAR_ALPHABET + "é\u2603", min_size=1, max_size=24)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(CHAT_ROLES), "content": TEXT | st.none()},
    optional={"name": TEXT},
)
# values that the server accepts for each field (or that it rejects by range, not by type)
VALID = {
    "model": st.sampled_from([MODEL, None]),
    "prompt": TEXT
    | st.lists(st.integers(0, 30), min_size=1, max_size=8)
    | st.lists(TEXT, min_size=1, max_size=3),
    "messages": st.lists(MESSAGE, min_size=1, max_size=3),
    "max_tokens": st.none() | st.integers(0, 8),
    "max_completion_tokens": st.none() | st.integers(1, 8),
    "temperature": st.none() | st.floats(0, 2.2),
    "top_p": st.none() | st.floats(0, 1),
    "top_k": st.none() | st.integers(-2, 20),
    "n": st.none() | st.integers(1, 2),
    "stop": st.none() | TEXT | st.lists(TEXT, max_size=3),
    "seed": st.none() | st.integers(-5, 2**64),
    "stream": st.none() | st.booleans(),
    "stream_options": st.none() | st.fixed_dictionaries({"include_usage": st.booleans()}),
    "presence_penalty": st.none() | st.just(0.0),
    "frequency_penalty": st.none() | st.just(0.0),
    "logit_bias": st.none(),
    "user": st.none() | TEXT,
    "ignore_eos": st.booleans(),
    "stop_token_ids": st.none() | st.lists(st.integers(0, 40), max_size=3),
    "return_token_ids": st.booleans(),
    "conversation_id": st.none() | TEXT,
    "echo": st.none() | st.just(False),
    "best_of": st.none() | st.just(1),
    "logprobs": st.none(),
    "suffix": st.none(),
    "top_logprobs": st.none(),
    "tools": st.none(),
    "response_format": st.none() | st.just({"type": "text"}),
}


def _body(model: type[BaseModel]) -> st.SearchStrategy:
    """A JSON object for `model`: its required fields and any subset of the others, with
    values the server takes (or rejects by range); two times in three, one field (required
    or not) is then replaced by any JSON value or dropped."""
    fields = model.model_fields
    assert set(fields) <= set(VALID), f"no strategy for {set(fields) - set(VALID)}"
    required = {n: VALID[n] for n, f in fields.items() if f.is_required()}
    optional = {n: VALID[n] for n, f in fields.items() if not f.is_required()}
    valid = st.fixed_dictionaries(required, optional=optional)

    def mutate(body: dict[str, Any]) -> st.SearchStrategy:
        name = st.sampled_from(sorted(fields))
        replaced = st.tuples(name, ANY_JSON).map(lambda kv: body | {kv[0]: kv[1]})
        dropped = name.map(lambda k: {n: v for n, v in body.items() if n != k})
        return replaced | dropped

    return st.one_of(valid, valid.flatmap(mutate), valid.flatmap(mutate))


def _check_answer(r: Any) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == ERROR_FIELDS
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "[DONE]" and not any('"error"' in e[:10] for e in events[:-1])


@pytest.mark.parametrize(
    "path,model", [("/v1/completions", CompletionBody), ("/v1/chat/completions", ChatBody)]
)
def test_fuzzed_requests_never_get_a_5xx(srv: Srv, path: str, model: type[BaseModel]) -> None:
    with httpx.Client(base_url=srv.url, timeout=30) as client:

        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(body=_body(model))
        def run(body: dict[str, Any]) -> None:
            _check_answer(client.post(path, content=json.dumps(body)))

        run()
    wait_idle_and_healthy(srv)


# ----- 128 concurrent clients ---------------------------------------------------------------------
def test_128_clients_mixed_requests_right_statuses_no_leaks(srv: Srv) -> None:
    wait_idle_and_healthy(srv)
    plan = StressPlan(MODEL, CONTEXT, ADMISSION.max_body_bytes, ADMISSION.max_prompts)
    report = asyncio.run(stress(srv.url, plan, clients=128, requests_per_client=2, seed=1))
    assert report.wrong == []
    assert report.requests == 256
    kinds = {kind for kind, _ in report.statuses}
    assert kinds == set(EXPECTED)  # every kind was sent
    ok = sum(n for (kind, status), n in report.statuses.items() if status == 200)
    assert report.completed == ok - report.statuses["abandon_stream", 200] > 0
    wait_idle_and_healthy(srv)  # every KV block back in the pool, the server healthy
