"""An OpenAI-compatible HTTP server over `AsyncEngine` (FastAPI).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with SSE streaming:
``data: {chunk}`` events ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``
and ``GET /metrics`` (Prometheus text, see `metrics.py`).

Every invalid request is answered with a 4xx and OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}``: bad JSON, missing fields, wrong types,
out-of-range sampling values, unknown model names, prompts too long for the model, and
features we do not implement (``n`` > 1, ``echo``, ``logprobs``, penalties, ``logit_bias``,
tools). Unknown fields are ignored, as vLLM does.

Extensions beyond OpenAI's fields (vLLM's names where vLLM has them): ``top_k``,
``ignore_eos``, ``stop_token_ids``, ``return_token_ids`` (each choice gains ``token_ids``)
and ``conversation_id`` (the KV offload's key for multi-turn reuse).

A client that disconnects, mid-stream or while waiting for a non-streamed answer, has its
request aborted, which frees its KV blocks.

Example:
    >>> served = load_served_model("smollm2")  # doctest: +SKIP
    >>> aengine = AsyncEngine(LLMEngine(served.model, served.tokenizer,
    ...                                 eos_token_ids=served.eos_token_ids))  # doctest: +SKIP
    >>> app = create_app(aengine, model_name=served.name, tokenizer=served.tokenizer,
    ...                  chat_encoder=served.chat_encoder)  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from minirepro.papers.serve.async_engine import AsyncEngine, EngineError, RequestStream
from minirepro.papers.serve.metrics import RequestTracker, ServerMetrics
from minirepro.papers.serve.sampling import SamplingParams

# Temperatures below this are greedy, as in vLLM: dividing logits by ~1e-40 overflows to inf.
GREEDY_EPS = 1e-5
MAX_STOP_STRINGS = 16
MAX_PROMPTS_PER_REQUEST = 256
CHAT_ROLES = ("system", "user", "assistant", "tool")


# ----- errors ---------------------------------------------------------------------------------
class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# ----- request bodies -------------------------------------------------------------------------
class _Body(BaseModel):
    # strict: "5" is not an int and true is not 1; unknown fields are ignored.
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _GenerationBody(_Body):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extensions
    top_k: int | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    return_token_ids: bool = False
    conversation_id: str | None = None


class CompletionBody(_GenerationBody):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatBody(_GenerationBody):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


async def _parse(request: Request, schema: type[_Body]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _bad(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


def _validation_error(errors: Sequence[Any]) -> APIError:
    """The first pydantic error as an APIError naming the field."""
    err = errors[0]
    # Union members appear in loc as type names ("str", "list[int]"); keep the field path.
    loc = [str(p) for p in err.get("loc", ()) if isinstance(p, int) or "[" not in str(p)]
    loc = [p for p in loc if p not in ("str", "int", "float", "bool", "body")]
    param = ".".join(loc) or None
    if err.get("type") == "missing":
        return _bad(f"missing required field '{param}'", param)
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return _bad(f"invalid value for '{param}': {err.get('msg')} (got {got})", param)


# ----- tokenizers and chat templates ----------------------------------------------------------
class CoreTokenizerAdapter:
    """A core char/word `Tokenizer` behind the HF-style calls the engine and server make.

    `decode(ids, skip_special_tokens=...)` is what the engine's detokeniser calls; ids the
    tokenizer does not know (a model vocabulary larger than the tokenizer's) decode to "".
    """

    def __init__(self, tokenizer: Any) -> None:
        self.core = tokenizer

    @property
    def eos_token_id(self) -> int:
        return self.core.eos_id

    @property
    def vocab_size(self) -> int:
        return self.core.vocab_size

    def __len__(self) -> int:
        return self.core.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.core.encode(text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        n = self.core.vocab_size
        return self.core.decode([int(i) for i in ids if 0 <= int(i) < n], skip_special_tokens)


def make_plain_chat_encoder(encode: Callable[[str], list[int]]) -> Callable[..., list[int]]:
    """A chat template for models without one: ``role: content`` lines, then ``assistant:``."""

    def plain_chat(messages: list[dict[str, str]]) -> list[int]:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return encode(text + "assistant:")

    plain_chat.__name__ = "plain_chat"
    return plain_chat


# ----- the app --------------------------------------------------------------------------------
@dataclass
class _Choice:
    """The collected outcome of one prompt."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int


class _Requests:
    """The engine requests behind one HTTP request, with their metric trackers."""

    def __init__(self, streams: list[RequestStream], trackers: list[RequestTracker]) -> None:
        self.streams, self.trackers = streams, trackers

    def close(self, reason: str = "abort") -> None:
        """Abort what has not finished, counting it under finish reason `reason`."""
        for stream, tracker in zip(self.streams, self.trackers):
            if not tracker.done:
                tracker.finish(reason, tracker.prompt_tokens)
            stream.close()


class _EventStream(StreamingResponse):
    """SSE response that closes (aborts) its requests however it ends."""

    def __init__(self, events: AsyncIterator[str], requests: _Requests) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self._requests = requests

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:  # also on cancellation, when starlette sees the client disconnect
            self._requests.close()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(choices: Sequence[Any]) -> dict[str, Any]:
    prompt = sum(c.prompt_tokens for c in choices)
    completion = sum(c.output_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in choices)},
    }


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Any]]:
    """(index, output) pairs of several request streams, as they come."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
        except Exception as exc:
            queue.put_nowait((i, exc))
        else:
            queue.put_nowait((i, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.close()


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Await `work`; if the client disconnects first, cancel it and raise `_Disconnected`."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise _Disconnected
    return task.result()


class _Disconnected(Exception):
    pass


def create_app(
    async_engine: AsyncEngine,
    *,
    model_name: str,
    tokenizer: Any = None,
    chat_encoder: Callable[[list[dict[str, str]]], list[int]] | None = None,
    max_model_len: int | None = None,
    vocab_size: int | None = None,
) -> FastAPI:
    """The FastAPI app serving `async_engine` under the name `model_name`.

    Args:
        async_engine: the running engine.
        model_name: the id clients pass as ``model`` (other names get 404).
        tokenizer: has ``encode(text) -> list[int]``; None accepts token-id prompts only.
        chat_encoder: messages -> prompt ids in the model's chat template (e.g.
            `Pretrained.encode_chat`); None disables /v1/chat/completions (400).
        max_model_len: longest prompt + output; default the model's ``max_seq_len``.
        vocab_size: token ids must be below it; default the model's.
    """
    model_cfg = getattr(getattr(async_engine.engine, "model", None), "cfg", None)
    max_len = max_model_len or getattr(model_cfg, "max_seq_len", None)
    vocab = vocab_size or getattr(model_cfg, "vocab_size", None)
    if max_len is None or vocab is None:
        raise ValueError("pass max_model_len and vocab_size: the engine has no model.cfg")
    engine_cfg = getattr(async_engine.engine, "config", None)
    if hasattr(engine_cfg, "num_blocks") and hasattr(engine_cfg, "block_size"):
        # one request's prompt + output must also fit in the whole KV pool
        limit = min(max_len, engine_cfg.num_blocks * engine_cfg.block_size)
    else:
        limit = max_len
    where = f"the model's context is {max_len} tokens" + (
        f", the KV cache holds {limit}" if limit < max_len else ""
    )
    metrics = ServerMetrics(async_engine.stats)
    created = int(time.time())
    app = FastAPI(title="minirepro serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.state.async_engine = async_engine

    # ----- error handlers -----
    def _error_response(exc: APIError) -> JSONResponse:
        metrics.http_errors.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(exc.errors()))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="internal_error")
        return _error_response(error)

    # ----- request → engine -----
    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server serves '{model_name}'",
                param="model",
                code="model_not_found",
            )

    def check_unsupported(body: _GenerationBody) -> None:
        if body.n not in (None, 1):
            raise _bad(f"only n=1 is supported, got n={body.n}", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name):
                raise _bad(f"{name} is not supported (must be 0 or absent)", name)
        if body.logit_bias:
            raise _bad("logit_bias is not supported", "logit_bias")

    def encode(text: str, param: str) -> list[int]:
        if tokenizer is None:
            raise _bad(f"model '{model_name}' has no tokenizer: send token ids", param)
        try:
            return list(tokenizer.encode(text))
        except (ValueError, TypeError) as exc:  # HF: TypeError on a lone surrogate
            raise _bad(f"cannot tokenise {param}: {exc}", param) from None

    def check_ids(ids: list[int], param: str) -> list[int]:
        if not ids:
            raise _bad(f"{param} is empty (no tokens)", param)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise _bad(f"token id {bad} in {param} is outside the vocabulary [0, {vocab})", param)
        return ids

    def sampling_params(
        body: _GenerationBody, max_tokens: int | None, prompt_len: int, param: str
    ) -> SamplingParams:
        room = limit - prompt_len
        if room < 1:
            raise _bad(
                f"{param} has {prompt_len} tokens, which leaves no room for output ({where})",
                param,
                "context_length_exceeded",
            )
        if max_tokens is None:
            max_tokens = room
        elif max_tokens < 1:
            raise _bad(f"max_tokens must be >= 1, got {max_tokens}", "max_tokens")
        elif prompt_len + max_tokens > limit:
            raise _bad(
                f"{param} has {prompt_len} tokens and max_tokens asks for {max_tokens} more; "
                f"at most {limit} fit ({where})",
                param,
                "context_length_exceeded",
            )
        temperature = 1.0 if body.temperature is None else body.temperature
        if not 0.0 <= temperature <= 2.0:
            raise _bad(f"temperature must be in [0, 2], got {temperature}", "temperature")
        top_p = 1.0 if body.top_p is None else body.top_p
        if not 0.0 < top_p <= 1.0:
            raise _bad(f"top_p must be in (0, 1], got {top_p}", "top_p")
        top_k = body.top_k or 0
        if top_k == -1:  # vLLM's "off"
            top_k = 0
        if top_k < 0:
            raise _bad(f"top_k must be >= 0 (0 or -1: off), got {top_k}", "top_k")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
            raise _bad(f"stop takes up to {MAX_STOP_STRINGS} non-empty strings", "stop")
        if body.seed is not None and not -(2**63) <= body.seed < 2**64:
            raise _bad(f"seed must fit in 64 bits, got {body.seed}", "seed")
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=0.0 if temperature < GREEDY_EPS else temperature,
                top_p=top_p,
                top_k=top_k,
                seed=body.seed,
                stop=stop,
                stop_token_ids=list(body.stop_token_ids or []),
                ignore_eos=body.ignore_eos,
            )
        except ValueError as exc:
            raise _bad(str(exc)) from None

    def start(
        request_id: str,
        prompts: list[list[int]],
        params: list[SamplingParams],
        conversation_id: str | None,
        param: str,
    ) -> list[RequestStream]:
        if not async_engine.is_running:
            raise APIError(503, "the engine is not running", type="service_unavailable")
        streams: list[RequestStream] = []
        try:
            for i, (ids, p) in enumerate(zip(prompts, params)):
                rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                conv = conversation_id if len(prompts) == 1 else None
                streams.append(async_engine.add_request(rid, ids, p, conv))
        except (ValueError, EngineError) as exc:
            for s in streams:
                s.close()
            if isinstance(exc, EngineError):
                raise APIError(503, str(exc), type="service_unavailable") from None
            raise _bad(f"request rejected by the engine: {exc}", param) from None
        return streams

    async def collect(stream: RequestStream, tracker: RequestTracker) -> _Choice:
        text: list[str] = []
        ids: list[int] = []
        last = None
        async for out in stream:
            tracker.on_output(out)
            text.append(out.new_text)
            ids.extend(out.new_token_ids)
            last = out
        assert last is not None and last.finished
        return _Choice(
            "".join(text),
            ids,
            last.finish_reason,
            last.prompt_tokens,
            last.output_tokens,
            last.cached_tokens,
        )

    async def collect_all(request: Request, job: _Requests) -> list[_Choice]:
        work = asyncio.gather(*(collect(s, t) for s, t in zip(job.streams, job.trackers)))
        try:
            return await _until_disconnect(request, work)
        except EngineError as exc:
            job.close("error")
            raise APIError(500, str(exc), type="internal_error") from None
        finally:
            job.close()

    async def run(
        request: Request,
        body: _GenerationBody,
        prompts: list[list[int]],
        max_tokens: int | None,
        param: str,
        endpoint: str,
        render: Callable[..., dict[str, Any]],
    ) -> Response:
        """Start the prompts; answer with one JSON response or an SSE stream of chunks."""
        params = [sampling_params(body, max_tokens, len(p), param) for p in prompts]
        prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        streams = start(request_id, prompts, params, body.conversation_id, param)
        job = _Requests(streams, [metrics.track(endpoint) for _ in streams])
        if not body.stream:
            try:
                choices = await collect_all(request, job)
            except _Disconnected:
                return Response(status_code=499)  # nobody reads it
            return JSONResponse(render(request_id, choices, body))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _EventStream(stream_events(request_id, job, body, render, include_usage), job)

    async def stream_events(
        request_id: str,
        job: _Requests,
        body: _GenerationBody,
        render: Callable[..., dict[str, Any]],
        include_usage: bool,
    ) -> AsyncIterator[str]:
        finals: dict[int, Any] = {}
        try:
            for i in range(len(job.streams)):
                first = render(request_id, None, body, index=i, first=True)
                if first is not None:
                    yield _sse(first)
            async for i, out in _merge(job.streams):
                job.trackers[i].on_output(out)
                if out.finished:
                    finals[i] = out
                if out.new_text or out.finished or (body.return_token_ids and out.new_token_ids):
                    chunk = render(request_id, out, body, index=i)
                    if include_usage:
                        chunk["usage"] = None
                    yield _sse(chunk)
            if include_usage:
                usage = {"choices": [], "usage": _usage(list(finals.values()))}
                yield _sse(render(request_id, None, body, index=0, first=False) | usage)
        except EngineError as exc:
            job.close("error")
            yield _sse(APIError(500, str(exc), type="internal_error").body())
        finally:
            job.close()
        yield "data: [DONE]\n\n"

    # ----- completions -----
    def render_completion(
        request_id: str, result: Any, body: Any, *, index: int = 0, first: bool = False
    ) -> Any:
        head = {"id": request_id, "object": "text_completion", "created": int(time.time())}
        head["model"] = model_name
        if first:
            return None  # completions have no role chunk
        if result is None:  # the usage chunk
            return head
        if isinstance(result, list):  # the whole answer
            choices = []
            for i, c in enumerate(result):
                choice = {"index": i, "text": c.text, "logprobs": None}
                choice["finish_reason"] = c.finish_reason
                if body.return_token_ids:
                    choice["token_ids"] = c.token_ids
                choices.append(choice)
            return head | {"choices": choices, "usage": _usage(result)}
        choice = {"index": index, "text": result.new_text, "logprobs": None}
        choice["finish_reason"] = result.finish_reason if result.finished else None
        if body.return_token_ids:
            choice["token_ids"] = result.new_token_ids
        return head | {"choices": [choice]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body: CompletionBody = await _parse(request, CompletionBody)
        check_model(body.model)
        check_unsupported(body)
        if body.echo:
            raise _bad("echo is not supported", "echo")
        if body.best_of not in (None, 1):
            raise _bad(f"only best_of=1 is supported, got {body.best_of}", "best_of")
        if body.logprobs is not None:
            raise _bad("logprobs is not supported", "logprobs")
        if body.suffix:
            raise _bad("suffix is not supported", "suffix")
        p = body.prompt
        if isinstance(p, str):
            prompts = [encode(p, "prompt")]
        elif not p:
            raise _bad("prompt is empty", "prompt")
        elif isinstance(p[0], int):
            prompts = [list(p)]
        elif isinstance(p[0], str):
            prompts = [encode(s, "prompt") for s in p]
        else:
            prompts = [list(x) for x in p]
        if len(prompts) > MAX_PROMPTS_PER_REQUEST:
            raise _bad(f"at most {MAX_PROMPTS_PER_REQUEST} prompts per request", "prompt")
        prompts = [check_ids(ids, "prompt") for ids in prompts]
        max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
        return await run(
            request, body, prompts, max_tokens, "prompt", "completions", render_completion
        )

    # ----- chat -----
    def render_chat(
        request_id: str, result: Any, body: Any, *, index: int = 0, first: bool = False
    ) -> Any:
        head = {"id": request_id, "created": int(time.time()), "model": model_name}
        if first:
            delta = {"role": "assistant", "content": ""}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            return head | {"object": "chat.completion.chunk", "choices": [choice]}
        if result is None:
            return head | {"object": "chat.completion.chunk"}
        if isinstance(result, list):
            c = result[0]
            message = {"role": "assistant", "content": c.text}
            choice = {"index": 0, "message": message, "logprobs": None}
            choice["finish_reason"] = c.finish_reason
            if body.return_token_ids:
                choice["token_ids"] = c.token_ids
            return head | {
                "object": "chat.completion",
                "choices": [choice],
                "usage": _usage(result),
            }
        delta = {"content": result.new_text} if result.new_text else {}
        choice = {"index": index, "delta": delta, "logprobs": None}
        choice["finish_reason"] = result.finish_reason if result.finished else None
        if body.return_token_ids:
            choice["token_ids"] = result.new_token_ids
        return head | {"object": "chat.completion.chunk", "choices": [choice]}

    def chat_messages(body: ChatBody) -> list[dict[str, str]]:
        if not body.messages:
            raise _bad("messages is empty", "messages")
        out = []
        for i, m in enumerate(body.messages):
            if m.role not in CHAT_ROLES:
                raise _bad(
                    f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {m.role!r}",
                    f"messages.{i}.role",
                )
            content = m.content
            if isinstance(content, list):  # content parts: text only
                texts = []
                for part in content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise _bad(
                            f"messages[{i}].content: only text parts are supported, got {part!r:.80}",
                            f"messages.{i}.content",
                        )
                    texts.append(part["text"])
                content = "".join(texts)
            out.append({"role": m.role, "content": content or ""})
        return out

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body: ChatBody = await _parse(request, ChatBody)
        check_model(body.model)
        check_unsupported(body)
        if body.logprobs or body.top_logprobs:
            raise _bad("logprobs is not supported", "logprobs")
        if body.tools:
            raise _bad("tools are not supported", "tools")
        if body.response_format and body.response_format.get("type") != "text":
            raise _bad("only response_format type 'text' is supported", "response_format")
        if chat_encoder is None:
            raise _bad(
                f"model '{model_name}' has no chat template: use /v1/completions", "messages"
            )
        messages = chat_messages(body)
        try:
            ids = list(chat_encoder(messages))
        except Exception as exc:  # template or tokeniser rejected this conversation
            raise _bad(f"cannot apply the chat template: {exc}", "messages") from None
        ids = check_ids(ids, "messages")
        max_tokens = body.max_completion_tokens
        if max_tokens is None:
            max_tokens = body.max_tokens  # None: up to the end of the context
        return await run(request, body, [ids], max_tokens, "messages", "chat", render_chat)

    # ----- the rest -----
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "minirepro"}
        return {"object": "list", "data": [card | {"max_model_len": max_len}]}

    @app.get("/health")
    async def health() -> Response:
        if not async_engine.is_running:
            raise APIError(503, "the engine is not running", type="service_unavailable")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


# ----- models to serve ------------------------------------------------------------------------
@dataclass
class ServedModel:
    """A model with what the server needs around it.

    Attributes:
        name: the id clients pass as ``model``.
        model: the core Transformer, in eval mode.
        tokenizer: HF-style (``encode``, ``decode(ids, skip_special_tokens=...)``), or None.
        chat_encoder: messages -> prompt ids, or None (no chat endpoint).
        eos_token_ids: ids that end a generation.
    """

    name: str
    model: Any
    tokenizer: Any
    chat_encoder: Callable[[list[dict[str, str]]], list[int]] | None
    eos_token_ids: tuple[int, ...]


def load_served_model(spec: str) -> ServedModel:
    """``"smollm2"`` (the real SmolLM2-135M-Instruct) or a core checkpoint path.

    Raises:
        FileNotFoundError: no such model or checkpoint (the message says what was looked for).
        ValueError: the checkpoint is incomplete or does not fit its config.
    """
    if spec == "smollm2":
        from minirepro.core.pretrained import load_smollm2

        p = load_smollm2()
        return ServedModel("smollm2", p.model, p.tokenizer, p.encode_chat, tuple(p.stop_tokens))
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"no model {spec!r}: it is neither 'smollm2' nor an existing checkpoint folder "
            "or .safetensors file"
        )
    return load_checkpoint_model(path)


_MODEL_CONFIG_FILES = ("model_config.json", "config.json")


def _weights_file(path: Path) -> Path:
    """The safetensors file of a checkpoint given as a file, a checkpoint or a run folder."""
    from minirepro.core.checkpoint import latest_checkpoint

    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file")
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    latest = latest_checkpoint(path)
    if latest is not None and (latest / "model.safetensors").is_file():
        return latest / "model.safetensors"
    raise FileNotFoundError(
        f"no model.safetensors in {path} (nor in a checkpoints/step_* folder under it)"
    )


def _as_model_config(data: Any) -> dict[str, Any] | None:
    """`data` (or its "model" entry) if it holds ModelConfig fields, else None."""
    from dataclasses import fields

    from minirepro.core.model import ModelConfig

    names = {f.name for f in fields(ModelConfig)}
    for candidate in (data, data.get("model") if isinstance(data, dict) else None):
        if isinstance(candidate, dict) and "d_model" in candidate and set(candidate) <= names:
            return candidate
    return None


def _find_model_config(folders: list[Path]) -> dict[str, Any]:
    import torch

    for folder in folders:
        for name in _MODEL_CONFIG_FILES:
            f = folder / name
            if f.is_file():
                try:
                    found = _as_model_config(json.loads(f.read_text()))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{f} is not valid JSON: {exc}") from None
                if found is not None:
                    return found
        state = folder / "state.pt"  # core.checkpoint's: the cfg passed to save_checkpoint
        if state.is_file():
            found = _as_model_config(
                torch.load(state, map_location="cpu", weights_only=True).get("config")
            )
            if found is not None:
                return found
    raise FileNotFoundError(
        "no model config for the checkpoint: looked for "
        f"{' or '.join(_MODEL_CONFIG_FILES)} holding ModelConfig fields, or a state.pt "
        f"saved with cfg=ModelConfig, in {', '.join(str(f) for f in folders)}"
    )


def _find_tokenizer(folders: list[Path]) -> Any:
    """A tokenizer saved beside the checkpoint, HF-style, or None."""
    from minirepro.core.tokenizer import load_tokenizer

    for folder in folders:
        if (folder / "tokenizer").is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        f = folder / "tokenizer.json"
        if f.is_file():
            kind = json.loads(f.read_text()).get("type")
            if kind in ("char", "word"):
                return CoreTokenizerAdapter(load_tokenizer(f))
            if (folder / "tokenizer_config.json").is_file():
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(str(folder))
    return None


def load_checkpoint_model(path: str | Path) -> ServedModel:
    """A core model from a checkpoint, with the tokenizer saved beside it if any.

    Accepts a ``.safetensors`` file, a folder holding ``model.safetensors`` (a
    `core.checkpoint` step folder, or a converted-model folder like the SmolLM2 cache), or a
    training run folder (its latest ``checkpoints/step_*``). The model config is read from
    ``model_config.json`` / ``config.json`` or from ``state.pt`` (when ``save_checkpoint`` got
    ``cfg=model.cfg``), in that folder or up to two folders above. The tokenizer is a core
    ``tokenizer.json`` (`Tokenizer.save`) or an HF ``tokenizer/`` folder, found the same way;
    without one the server takes token-id prompts only.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from minirepro.core.model import ModelConfig, Transformer

    weights = _weights_file(Path(path))
    folders = [weights.parent, *list(weights.parent.parents)[:2]]
    cfg = ModelConfig(**_find_model_config(folders))
    model = Transformer(cfg)
    try:
        load_model(model, str(weights))
    except (RuntimeError, SafetensorError, OSError) as exc:
        raise ValueError(f"{weights} does not fit its config {cfg}: {exc}") from None
    tokenizer = _find_tokenizer(folders)
    eos: tuple[int, ...] = ()
    chat = None
    if tokenizer is not None:
        tok_vocab = getattr(tokenizer, "vocab_size", None)
        if isinstance(tokenizer, CoreTokenizerAdapter) and tok_vocab > cfg.vocab_size:
            raise ValueError(
                f"the tokenizer has {tok_vocab} tokens but the model only {cfg.vocab_size}"
            )
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos = (int(tokenizer.eos_token_id),)
        if getattr(tokenizer, "chat_template", None):
            chat = _hf_chat_encoder(tokenizer)
        else:
            chat = make_plain_chat_encoder(tokenizer.encode)
    return ServedModel(weights.parent.name, model.eval(), tokenizer, chat, eos)


def _hf_chat_encoder(tokenizer: Any) -> Callable[[list[dict[str, str]]], list[int]]:
    def hf_chat(messages: list[dict[str, str]]) -> list[int]:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    return hf_chat


__all__ = [
    "APIError",
    "CoreTokenizerAdapter",
    "ServedModel",
    "create_app",
    "load_checkpoint_model",
    "load_served_model",
    "make_plain_chat_encoder",
]
