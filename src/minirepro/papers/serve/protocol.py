"""OpenAI's HTTP protocol: request bodies, their validation, errors, responses and chunks.

Request bodies are pydantic models in strict mode ("5" is not an int, true is not 1) that
ignore unknown fields, as vLLM does. Anything invalid or unsupported raises `APIError`,
which the server answers as ``{"error": {"message", "type", "param", "code"}}``.

Extensions beyond OpenAI's fields (vLLM's names where vLLM has them): ``top_k``,
``ignore_eos``, ``stop_token_ids``, ``return_token_ids`` (each choice gains ``token_ids``)
and ``conversation_id`` (the KV offload's key for multi-turn reuse).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from minirepro.papers.serve.sampling import SamplingParams

# Temperatures below this are greedy, as in vLLM: dividing logits by ~1e-40 overflows to inf.
GREEDY_EPS = 1e-5
MAX_STOP_STRINGS = 16
MAX_PROMPTS_PER_REQUEST = 256
CHAT_ROLES = ("system", "user", "assistant", "tool")
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers  # extra response headers (Retry-After)

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": error | {"code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 invalid_request_error."""
    return APIError(400, message, param=param, code=code)


# ----- request bodies -------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class GenerationBody(_Body):
    """The fields /v1/completions and /v1/chat/completions share."""

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

    def check_supported(self) -> None:
        """Raise for the OpenAI features this server does not implement."""
        if self.n not in (None, 1):
            raise bad_request(f"only n=1 is supported, got n={self.n}", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_request(f"{name} is not supported (must be 0 or absent)", name)
        if self.logit_bias:
            raise bad_request("logit_bias is not supported", "logit_bias")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(GenerationBody):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise bad_request("echo is not supported", "echo")
        if self.best_of not in (None, 1):
            raise bad_request(f"only best_of=1 is supported, got {self.best_of}", "best_of")
        if self.logprobs is not None:
            raise bad_request("logprobs is not supported", "logprobs")
        if self.suffix:
            raise bad_request("suffix is not supported", "suffix")


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatBody(GenerationBody):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs or self.top_logprobs:
            raise bad_request("logprobs is not supported", "logprobs")
        if self.tools:
            raise bad_request("tools are not supported", "tools")
        if self.response_format and self.response_format.get("type") != "text":
            raise bad_request("only response_format type 'text' is supported", "response_format")

    def plain_messages(self) -> list[dict[str, str]]:
        """The messages as ``{"role", "content"}`` dicts with text content."""
        if not self.messages:
            raise bad_request("messages is empty", "messages")
        out = []
        for i, m in enumerate(self.messages):
            if m.role not in CHAT_ROLES:
                raise bad_request(
                    f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {m.role!r}",
                    f"messages.{i}.role",
                )
            content = m.content
            if isinstance(content, list):  # content parts: text only
                texts = []
                for part in content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise bad_request(
                            f"messages[{i}].content: only text parts are supported, "
                            f"got {part!r:.80}",
                            f"messages.{i}.content",
                        )
                    texts.append(part["text"])
                content = "".join(texts)
            out.append({"role": m.role, "content": content or ""})
        return out


def parse_body(raw: bytes, schema: type[_Body]) -> Any:
    """Validate a raw request body against `schema`; APIError (400) if it does not fit."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def validation_error(errors: Sequence[Any]) -> APIError:
    """The first pydantic error as an APIError naming the field."""
    err = errors[0]
    # Union members appear in loc as type names ("str", "list[int]"); keep the field path.
    loc = [str(p) for p in err.get("loc", ()) if isinstance(p, int) or "[" not in str(p)]
    loc = [p for p in loc if p not in ("str", "int", "float", "bool", "body")]
    param = ".".join(loc) or None
    if err.get("type") == "missing":
        return bad_request(f"missing required field '{param}'", param)
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return bad_request(f"invalid value for '{param}': {err.get('msg')} (got {got})", param)


@dataclass
class Limits:
    """What one request may ask for.

    Attributes:
        vocab_size: prompt token ids lie in [0, vocab_size).
        max_model_len: the model's context (prompt + output).
        max_request_len: prompt + output that fits; at most max_model_len and the KV pool.
    """

    vocab_size: int
    max_model_len: int
    max_request_len: int

    def describe(self) -> str:
        text = f"the model's context is {self.max_model_len} tokens"
        if self.max_request_len < self.max_model_len:
            text += f", the KV cache holds {self.max_request_len}"
        return text

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise bad_request(f"{param} is empty (no tokens)", param)
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise bad_request(
                f"token id {bad} in {param} is outside the vocabulary [0, {self.vocab_size})",
                param,
            )
        return ids


def sampling_params(
    body: GenerationBody, max_tokens: int | None, prompt_len: int, limits: Limits, param: str
) -> SamplingParams:
    """The engine's SamplingParams for one prompt of `body`.

    Args:
        body: the validated request.
        max_tokens: the requested output length; None: up to the end of the context.
        prompt_len: tokens in the prompt.
        limits: what fits.
        param: the request field holding the prompt, for error messages.
    """
    room = limits.max_request_len - prompt_len
    if room < 1:
        raise bad_request(
            f"{param} has {prompt_len} tokens, which leaves no room for output "
            f"({limits.describe()})",
            param,
            "context_length_exceeded",
        )
    if max_tokens is None:
        max_tokens = room
    elif max_tokens < 1:
        raise bad_request(f"max_tokens must be >= 1, got {max_tokens}", "max_tokens")
    elif max_tokens > room:
        raise bad_request(
            f"{param} has {prompt_len} tokens and max_tokens asks for {max_tokens} more; "
            f"at most {limits.max_request_len} fit ({limits.describe()})",
            param,
            "context_length_exceeded",
        )
    temperature = 1.0 if body.temperature is None else body.temperature
    if not 0.0 <= temperature <= 2.0:
        raise bad_request(f"temperature must be in [0, 2], got {temperature}", "temperature")
    top_p = 1.0 if body.top_p is None else body.top_p
    if not 0.0 < top_p <= 1.0:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p")
    top_k = body.top_k or 0
    if top_k == -1:  # vLLM's "off"
        top_k = 0
    if top_k < 0:
        raise bad_request(f"top_k must be >= 0 (0 or -1: off), got {top_k}", "top_k")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
        raise bad_request(f"stop takes up to {MAX_STOP_STRINGS} non-empty strings", "stop")
    if body.seed is not None and not -(2**63) <= body.seed < 2**64:  # torch.Generator's range
        raise bad_request(f"seed must fit in 64 bits, got {body.seed}", "seed")
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
        raise bad_request(str(exc)) from None


# ----- responses ------------------------------------------------------------------------------
@dataclass
class Choice:
    """The collected outcome of one prompt."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int


def usage(results: Sequence[Any]) -> dict[str, Any]:
    """OpenAI's usage object over `Choice`s (or final `RequestOutput`s)."""
    prompt = sum(c.prompt_tokens for c in results)
    completion = sum(c.output_tokens for c in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in results)},
    }


class CompletionFormat:
    """The JSON objects of /v1/completions: whole responses and stream chunks."""

    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, request_id: str, model: str, with_token_ids: bool) -> None:
        self.request_id = request_id
        self.model = model
        self.with_token_ids = with_token_ids

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "object": obj,
            "created": int(time.time()),
            "model": self.model,
        }

    def _choice(self, index: int, text: str, finish: str | None, ids: list[int]) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return choice | ({"token_ids": ids} if self.with_token_ids else {})

    def response(self, choices: list[Choice]) -> dict[str, Any]:
        rows = [
            self._choice(i, c.text, c.finish_reason, c.token_ids) for i, c in enumerate(choices)
        ]
        return self._head(self.object) | {"choices": rows, "usage": usage(choices)}

    def role_chunk(self, index: int) -> dict[str, Any] | None:
        return None  # completions stream text only

    def chunk(self, index: int, out: Any) -> dict[str, Any]:
        finish = out.finish_reason if out.finished else None
        choice = self._choice(index, out.new_text, finish, out.new_token_ids)
        return self._head(self.chunk_object) | {"choices": [choice]}

    def usage_chunk(self, finals: Sequence[Any]) -> dict[str, Any]:
        return self._head(self.chunk_object) | {"choices": [], "usage": usage(finals)}


class ChatFormat(CompletionFormat):
    """The JSON objects of /v1/chat/completions."""

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def response(self, choices: list[Choice]) -> dict[str, Any]:
        c = choices[0]
        message = {"role": "assistant", "content": c.text}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": c.finish_reason,
        }
        if self.with_token_ids:
            choice["token_ids"] = c.token_ids
        return self._head(self.object) | {"choices": [choice], "usage": usage(choices)}

    def _delta(self, index: int, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._head(self.chunk_object) | {"choices": [choice]}

    def role_chunk(self, index: int) -> dict[str, Any] | None:
        return self._delta(index, {"role": "assistant", "content": ""}, None)

    def chunk(self, index: int, out: Any) -> dict[str, Any]:
        delta = {"content": out.new_text} if out.new_text else {}
        chunk = self._delta(index, delta, out.finish_reason if out.finished else None)
        if self.with_token_ids:
            chunk["choices"][0]["token_ids"] = out.new_token_ids
        return chunk


__all__ = [
    "APIError",
    "ChatBody",
    "ChatFormat",
    "Choice",
    "CompletionBody",
    "CompletionFormat",
    "GenerationBody",
    "Limits",
    "bad_request",
    "parse_body",
    "sampling_params",
    "usage",
    "validation_error",
]
