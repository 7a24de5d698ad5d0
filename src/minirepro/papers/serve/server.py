"""An OpenAI-compatible HTTP server over `AsyncEngine` (FastAPI).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with SSE streaming:
``data: {chunk}`` events ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``,
``GET /metrics`` (Prometheus text, see `metrics.py`), and the OpenAPI schema at
``GET /openapi.json`` with its pages at ``/docs`` and ``/redoc``.

Every invalid request is answered with a 4xx and OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}`` (see `protocol.py`): bad JSON, missing
fields, wrong types, out-of-range sampling values, unknown model names, prompts too long for
the model, and the features we do not implement (``n`` > 1, ``echo``, ``logprobs``,
penalties, ``logit_bias``, tools). A failure inside the engine is a 500 for the requests it
hit; the server keeps serving. `admission.py` caps the body size (413), the prompts per
request (400, before tokenising) and the engine's waiting queue (429 with Retry-After).
Tokenisation and chat templating run on a worker thread, off the event loop.

A client that disconnects, mid-stream or while it waits for a non-streamed answer, has its
requests aborted, which frees their KV blocks.

Example:
    >>> served = load_served_model("smollm2")  # doctest: +SKIP
    >>> engine = LLMEngine(served.model, served.tokenizer,
    ...                    eos_token_ids=served.eos_token_ids)  # doctest: +SKIP
    >>> app = create_app(AsyncEngine(engine), model_name=served.name,
    ...                  tokenizer=served.tokenizer,
    ...                  chat_encoder=served.chat_encoder)  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from minirepro.papers.serve.admission import AdmissionLimits
from minirepro.papers.serve.async_engine import AsyncEngine, EngineError, RequestStream
from minirepro.papers.serve.metrics import RequestTracker, ServerMetrics
from minirepro.papers.serve.openapi import ERROR_RESPONSES, openapi_schema
from minirepro.papers.serve.protocol import (
    DEFAULT_COMPLETION_TOKENS,
    APIError,
    ChatBody,
    ChatFormat,
    Choice,
    CompletionBody,
    CompletionFormat,
    GenerationBody,
    Limits,
    bad_request,
    parse_body,
    sampling_params,
    validation_error,
)
from minirepro.papers.serve.served_model import (
    CoreTokenizerAdapter,
    ServedModel,
    load_checkpoint_model,
    load_served_model,
    make_plain_chat_encoder,
)

ChatEncoder = Callable[[list[dict[str, str]]], list[int]]


class _Disconnected(Exception):
    """The client went away before its answer was ready."""


class _Requests:
    """The engine requests behind one HTTP request, with their metric trackers."""

    def __init__(self, streams: list[RequestStream], trackers: list[RequestTracker]) -> None:
        self.streams = streams
        self.trackers = trackers

    def close(self, reason: str = "abort") -> None:
        """Abort what has not finished, counting it under finish reason `reason`."""
        for stream, tracker in zip(self.streams, self.trackers):
            if not tracker.done:
                tracker.finish(reason, tracker.prompt_tokens)
            stream.close()


class _EventStream(StreamingResponse):
    """An SSE response that closes (aborts) its requests however it ends."""

    def __init__(self, events: AsyncIterator[str], requests: _Requests) -> None:
        headers = {"Cache-Control": "no-cache"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._requests = requests

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:  # also on cancellation, when starlette sees the client disconnect
            self._requests.close()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Any]]:
    """(index, output) pairs of several request streams, in the order they arrive."""
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


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, Any]) -> Any:
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


class OpenAIServer:
    """The endpoints' logic; `create_app` routes HTTP requests to its methods.

    Args: see `create_app`.
    """

    def __init__(
        self,
        async_engine: AsyncEngine,
        model_name: str,
        tokenizer: Any,
        chat_encoder: ChatEncoder | None,
        limits: Limits,
        admission: AdmissionLimits | None = None,
    ) -> None:
        self.async_engine = async_engine
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.chat_encoder = chat_encoder
        self.limits = limits
        self.admission = admission or AdmissionLimits()
        self.metrics = ServerMetrics(async_engine.stats)
        self.created = int(time.time())

    # ----- endpoints -----
    async def _parse(self, request: Request, schema: type[Any]) -> Any:
        raw = await self.admission.read_body(request)
        if len(raw) < 1 << 16:
            return parse_body(raw, schema)
        return await run_in_threadpool(parse_body, raw, schema)  # large: off the event loop

    async def completions(self, request: Request) -> Response:
        body: CompletionBody = await self._parse(request, CompletionBody)
        self._check_model(body.model)
        body.check_supported()
        p = body.prompt
        if isinstance(p, list) and not p:
            raise bad_request("prompt is empty", "prompt")
        single = isinstance(p, str) or isinstance(p[0], int)
        self.admission.check_prompts(1 if single else len(p))  # before any tokenisation
        if isinstance(p, str):
            prompts = await run_in_threadpool(self._encode, [p], "prompt")
        elif isinstance(p[0], int):
            prompts = [list(p)]
        elif isinstance(p[0], str):
            prompts = await run_in_threadpool(self._encode, p, "prompt")
        else:
            prompts = [list(x) for x in p]
        prompts = [self.limits.check_ids(ids, "prompt") for ids in prompts]
        max_tokens = DEFAULT_COMPLETION_TOKENS if body.max_tokens is None else body.max_tokens
        return await self._generate(request, body, prompts, max_tokens, "prompt", CompletionFormat)

    async def chat_completions(self, request: Request) -> Response:
        body: ChatBody = await self._parse(request, ChatBody)
        self._check_model(body.model)
        body.check_supported()
        if self.chat_encoder is None:
            raise bad_request(
                f"model '{self.model_name}' has no chat template: use /v1/completions", "messages"
            )
        messages = body.plain_messages()
        ids = await run_in_threadpool(self._template, messages)
        ids = self.limits.check_ids(ids, "messages")
        max_tokens = body.max_completion_tokens
        if max_tokens is None:
            max_tokens = body.max_tokens  # None: up to the end of the context
        return await self._generate(request, body, [ids], max_tokens, "messages", ChatFormat)

    async def models(self) -> dict[str, Any]:
        card = {"id": self.model_name, "object": "model", "created": self.created}
        card |= {"owned_by": "minirepro", "max_model_len": self.limits.max_model_len}
        return {"object": "list", "data": [card]}

    async def health(self) -> Response:
        if not self.async_engine.is_running:
            raise APIError(503, "the engine is not running", type="service_unavailable")
        return JSONResponse({"status": "ok"})

    async def prometheus(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def error_response(self, exc: APIError) -> JSONResponse:
        self.metrics.http_errors.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    # ----- request → engine → response -----
    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server serves '{self.model_name}'",
                param="model",
                code="model_not_found",
            )

    def _encode(self, texts: list[str], param: str) -> list[list[int]]:
        """Token ids of each text (runs on a worker thread)."""
        if self.tokenizer is None:
            raise bad_request(f"model '{self.model_name}' has no tokenizer: send token ids", param)
        try:
            return [list(self.tokenizer.encode(text)) for text in texts]
        except (ValueError, TypeError) as exc:  # HF: TypeError on a lone surrogate
            raise bad_request(f"cannot tokenise {param}: {exc}", param) from None

    def _template(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids of a conversation in the chat template (runs on a worker thread)."""
        try:
            return list(self.chat_encoder(messages))
        except Exception as exc:  # the template or tokenizer rejected this conversation
            raise bad_request(f"cannot apply the chat template: {exc}", "messages") from None

    def _start(
        self,
        request_id: str,
        prompts: list[list[int]],
        body: GenerationBody,
        max_tokens: int | None,
        param: str,
        endpoint: str,
    ) -> _Requests:
        """Validate every prompt's parameters, then add them all to the engine."""
        params = [sampling_params(body, max_tokens, len(p), self.limits, param) for p in prompts]
        if not self.async_engine.is_running:
            raise APIError(503, "the engine is not running", type="service_unavailable")
        # no await between this check and the adds below: no other request slips in between
        self.admission.check_queue(self.async_engine.stats().num_waiting, len(prompts))
        streams: list[RequestStream] = []
        try:
            for i, (ids, p) in enumerate(zip(prompts, params)):
                single = len(prompts) == 1
                rid = request_id if single else f"{request_id}-{i}"
                conversation = body.conversation_id if single else None
                streams.append(self.async_engine.add_request(rid, ids, p, conversation))
        except (ValueError, EngineError) as exc:
            for s in streams:
                s.close()
            if isinstance(exc, EngineError):
                raise APIError(503, str(exc), type="service_unavailable") from None
            raise bad_request(f"request rejected by the engine: {exc}", param) from None
        return _Requests(streams, [self.metrics.track(endpoint) for _ in streams])

    async def _generate(
        self,
        request: Request,
        body: GenerationBody,
        prompts: list[list[int]],
        max_tokens: int | None,
        param: str,
        fmt_cls: type[CompletionFormat],
    ) -> Response:
        """Run the prompts; answer with one JSON response or an SSE stream of chunks."""
        request_id = f"{fmt_cls.id_prefix}-{uuid.uuid4().hex}"
        fmt = fmt_cls(request_id, self.model_name, body.return_token_ids)
        endpoint = "chat" if fmt_cls is ChatFormat else "completions"
        job = self._start(request_id, prompts, body, max_tokens, param, endpoint)
        if body.stream:
            return _EventStream(self._events(job, fmt, body.include_usage), job)
        work = asyncio.gather(*(self._collect(s, t) for s, t in zip(job.streams, job.trackers)))
        try:
            choices = await _unless_disconnected(request, work)
        except _Disconnected:
            return Response(status_code=499)  # nobody is left to read it
        except EngineError as exc:
            job.close("error")
            raise APIError(500, str(exc), type="internal_error") from None
        finally:
            job.close()
        return JSONResponse(fmt.response(choices))

    @staticmethod
    async def _collect(stream: RequestStream, tracker: RequestTracker) -> Choice:
        text: list[str] = []
        ids: list[int] = []
        last = None
        async for out in stream:
            tracker.on_output(out)
            text.append(out.new_text)
            ids.extend(out.new_token_ids)
            last = out
        if last is None or not last.finished:
            raise EngineError("the request ended without a final output")
        return Choice(
            "".join(text),
            ids,
            last.finish_reason,
            last.prompt_tokens,
            last.output_tokens,
            last.cached_tokens,
        )

    async def _events(
        self, job: _Requests, fmt: CompletionFormat, include_usage: bool
    ) -> AsyncIterator[str]:
        finals: dict[int, Any] = {}
        try:
            for i in range(len(job.streams)):
                first = fmt.role_chunk(i)
                if first is not None:
                    yield _sse(first)
            async for i, out in _merge(job.streams):
                job.trackers[i].on_output(out)
                if out.finished:
                    finals[i] = out
                if out.new_text or out.finished or (fmt.with_token_ids and out.new_token_ids):
                    chunk = fmt.chunk(i, out)
                    if include_usage:
                        chunk["usage"] = None  # as OpenAI: only the last chunk carries usage
                    yield _sse(chunk)
            if include_usage:
                yield _sse(fmt.usage_chunk([finals[i] for i in sorted(finals)]))
        except EngineError as exc:
            job.close("error")
            yield _sse(APIError(500, str(exc), type="internal_error").body())
        finally:
            job.close()
        yield "data: [DONE]\n\n"


def create_app(
    async_engine: AsyncEngine,
    *,
    model_name: str,
    tokenizer: Any = None,
    chat_encoder: ChatEncoder | None = None,
    max_model_len: int | None = None,
    vocab_size: int | None = None,
    admission: AdmissionLimits | None = None,
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
        admission: caps on body size, prompts per request and the waiting queue.
    """
    model_cfg = getattr(getattr(async_engine.engine, "model", None), "cfg", None)
    max_len = max_model_len or getattr(model_cfg, "max_seq_len", None)
    vocab = vocab_size or getattr(model_cfg, "vocab_size", None)
    if max_len is None or vocab is None:
        raise ValueError("pass max_model_len and vocab_size: the engine has no model.cfg")
    request_len = max_len
    engine_cfg = getattr(async_engine.engine, "config", None)
    if hasattr(engine_cfg, "num_blocks") and hasattr(engine_cfg, "block_size"):
        # one request's prompt + output must also fit in the whole KV pool
        request_len = min(max_len, engine_cfg.num_blocks * engine_cfg.block_size)
    limits = Limits(vocab, max_len, request_len)
    server = OpenAIServer(async_engine, model_name, tokenizer, chat_encoder, limits, admission)
    app = FastAPI(title="minirepro serve", version="1", description=__doc__.split("\n\n")[0])
    app.state.server = server
    app.state.metrics = server.metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return server.error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return server.error_response(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return server.error_response(validation_error(exc.errors()))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        message = f"internal error: {type(exc).__name__}: {exc}"
        return server.error_response(APIError(500, message, type="internal_error"))

    app.post("/v1/completions", responses=ERROR_RESPONSES)(server.completions)
    app.post("/v1/chat/completions", responses=ERROR_RESPONSES)(server.chat_completions)
    app.get("/v1/models")(server.models)
    app.get("/health")(server.health)
    app.get("/metrics")(server.prometheus)
    app.openapi = lambda: openapi_schema(app)
    return app


__all__ = [
    "APIError",
    "CoreTokenizerAdapter",
    "OpenAIServer",
    "ServedModel",
    "create_app",
    "load_checkpoint_model",
    "load_served_model",
    "make_plain_chat_encoder",
]
