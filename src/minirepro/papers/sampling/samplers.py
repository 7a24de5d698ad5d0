"""Samplers: anything with ``sample(prompts, n, temperature) -> list[list[str]]``.

The budget and dataset code (`minirepro.papers.sampling.budget`, ``.dataset``) needs only
that method and two attributes: ``n_params`` (the generator's parameter count, for the
2 · params · tokens cost) and ``generated_tokens`` (a running count of the tokens the
sampler has generated, stop tokens included). Two samplers ship:

- `DecoderSampler`: a `minirepro.core.model.Transformer` (or any decoder that
  `minirepro.core.generate` drives) with the KV cache, batched, left-padded;
- `OpenAISampler`: any OpenAI-compatible ``/v1/completions`` endpoint — our own
  ``minirepro serve``, vLLM, llama.cpp's server — counting tokens from the responses'
  ``usage``. Servers that refuse ``n > 1`` (ours does) are sent each prompt ``n`` times in
  one prompt list instead.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from minirepro.core.documents import left_pad_document_ids
from minirepro.core.generate import SamplingParams, generate

__all__ = ["DecoderSampler", "EndpointError", "OpenAISampler", "Sampler"]


@runtime_checkable
class Sampler(Protocol):
    """What the budget and dataset code needs from a generator.

    Attributes:
        n_params: Parameters of the generating model (the cost is 2 · n_params per token).
        generated_tokens: Tokens generated so far by this sampler (running total).
    """

    n_params: int
    generated_tokens: int

    def sample(self, prompts: Sequence[str], n: int, temperature: float) -> list[list[str]]:
        """``n`` completions of each prompt: a list (one per prompt) of ``n`` strings."""
        ...


def _check_request(prompts: Sequence[str], n: int, temperature: float) -> None:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a sequence of strings")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")


class DecoderSampler:
    """Samples from a local decoder with the KV cache.

    Args:
        model: A decoder `minirepro.core.generate.generate` can drive (the core
            `Transformer`); its parameters give ``n_params``.
        encode: Prompt text -> token ids (e.g. ``<bos> text <sep>``).
        decode: Generated ids (stop token excluded) -> completion text.
        stop_tokens: Ids that end a completion (e.g. ``<eos>``); counted as generated.
        max_new_tokens: Longest completion.
        batch_size: Sequences decoded at once (prompts × n are flattened, then chunked).
        pad_id: Left-padding id.
        documents: Pass document ids so that the padding is neither attended to nor counted
            in positions (for models trained with `minirepro.core.documents`).
        seed: Seeds the sampling generator; each call draws from the next seed, so calls with
            the same prompts give fresh samples, and a sampler rebuilt with the same seed
            repeats them.
    """

    def __init__(
        self,
        model: nn.Module,
        encode: Callable[[str], list[int]],
        decode: Callable[[list[int]], str],
        stop_tokens: Sequence[int],
        max_new_tokens: int,
        batch_size: int = 256,
        pad_id: int = 0,
        documents: bool = False,
        seed: int = 0,
    ) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        self.model, self.encode, self.decode = model, encode, decode
        self.stop_tokens = tuple(int(t) for t in stop_tokens)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.pad_id, self.documents, self.seed = pad_id, documents, seed
        self.n_params = sum(p.numel() for p in model.parameters())
        self.generated_tokens = 0
        self._calls = 0

    @torch.inference_mode()
    def sample(self, prompts: Sequence[str], n: int, temperature: float) -> list[list[str]]:
        """``n`` completions of each prompt (temperature 0: greedy, so ``n`` equal copies).

        Args:
            prompts: P prompt texts.
            n: Completions per prompt.
            temperature: Sampling temperature.

        Returns:
            P lists of ``n`` completion texts.
        """
        _check_request(prompts, n, temperature)
        self.model.eval()
        ids = [self.encode(p) for p in prompts for _ in range(n)]  # prompt-major, n each
        texts: list[str] = []
        for i in range(0, len(ids), self.batch_size):
            chunk = ids[i : i + self.batch_size]
            width = max(len(p) for p in chunk)
            x = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in chunk])  # (B, S)
            docs = left_pad_document_ids([len(p) for p in chunk], width) if self.documents else None
            params = SamplingParams(
                temperature=temperature,
                max_new_tokens=self.max_new_tokens,
                stop_tokens=self.stop_tokens,
                seed=self.seed * 1_000_003 + self._calls,
            )
            self._calls += 1
            for row in generate(self.model, x, params, document_ids=docs):
                # a completion shorter than the limit ended on a stop token, which was generated
                self.generated_tokens += len(row) + (len(row) < self.max_new_tokens)
                texts.append(self.decode(row))
        return [texts[k * n : (k + 1) * n] for k in range(len(prompts))]


class EndpointError(RuntimeError):
    """The endpoint answered with an error (the status and its message are in the text), or
    could not be reached."""


class OpenAISampler:
    """Samples from an OpenAI-compatible ``/v1/completions`` endpoint.

    Args:
        base_url: The API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: The served model's name.
        n_params: Its parameter count (the server does not say; needed for the cost).
        max_tokens: Longest completion.
        stop: Stop strings, if any.
        api_key: Sent as a bearer token.
        prompts_per_request: Prompts sent in one request (prompt lists); ``n`` copies of a
            prompt count as ``n`` when the server lacks ``n``.
        timeout: Seconds per request.
        extra_body: More JSON fields for every request (e.g. ``{"top_k": 50}``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        n_params: int,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        api_key: str = "none",
        prompts_per_request: int = 32,
        timeout: float = 120.0,
        extra_body: dict | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if n_params < 1 or max_tokens < 1 or prompts_per_request < 1:
            raise ValueError("n_params, max_tokens and prompts_per_request must be >= 1")
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.n_params, self.max_tokens = model, n_params, max_tokens
        self.stop = list(stop) if stop else None
        self.api_key, self.timeout = api_key, timeout
        self.prompts_per_request = prompts_per_request
        self.extra_body = dict(extra_body or {})
        self.generated_tokens = 0
        self.native_n: bool | None = None  # unknown until a request with n > 1 was answered

    def sample(self, prompts: Sequence[str], n: int, temperature: float) -> list[list[str]]:
        """``n`` completions of each prompt, in the prompts' order.

        Raises:
            EndpointError: The server answered with an error status, an unreadable body, or
                the wrong number of choices; or it could not be reached.
        """
        _check_request(prompts, n, temperature)
        out: list[list[str]] = []
        for i in range(0, len(prompts), self.prompts_per_request):
            out += self._sample_chunk(
                list(prompts[i : i + self.prompts_per_request]), n, temperature
            )
        return out

    def _sample_chunk(self, prompts: list[str], n: int, temperature: float) -> list[list[str]]:
        if n > 1 and self.native_n is not False:
            try:
                texts = self._complete(prompts, n, temperature)
                self.native_n = True
                return [texts[k * n : (k + 1) * n] for k in range(len(prompts))]
            except EndpointError as exc:
                if self.native_n or not getattr(exc, "param_n", False):
                    raise
                self.native_n = False  # the server refuses n > 1: send copies of the prompts
        copies = [p for p in prompts for _ in range(n)]
        step = self.prompts_per_request
        texts = [
            t
            for i in range(0, len(copies), step)
            for t in self._complete(copies[i : i + step], 1, temperature)
        ]
        return [texts[k * n : (k + 1) * n] for k in range(len(prompts))]

    def _complete(self, prompts: list[str], n: int, temperature: float) -> list[str]:
        """One request; the choices' texts ordered prompt-major (``index = prompt * n + j``)."""
        body = {
            "model": self.model,
            "prompt": prompts,
            "n": n,
            "temperature": temperature,
            "max_tokens": self.max_tokens,
            **({"stop": self.stop} if self.stop else {}),
            **self.extra_body,
        }
        req = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise _http_error(self.url, exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise EndpointError(f"cannot reach {self.url}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise EndpointError(
                f"{self.url} answered with a body that is not JSON: {exc}"
            ) from None
        choices = payload.get("choices") if isinstance(payload, dict) else None
        want = len(prompts) * n
        if not isinstance(choices, list) or len(choices) != want:
            got = len(choices) if isinstance(choices, list) else "no"
            raise EndpointError(f"{self.url} returned {got} choices for {want} completions")
        try:
            texts = [c["text"] for c in sorted(choices, key=lambda c: c["index"])]
            usage = payload["usage"]["completion_tokens"]
        except (KeyError, TypeError) as exc:
            raise EndpointError(
                f"{self.url}: malformed completion response ({exc!r} missing)"
            ) from None
        self.generated_tokens += int(usage)
        return texts


def _http_error(url: str, exc: urllib.error.HTTPError) -> EndpointError:
    """An `EndpointError` with the server's status and message; ``param_n`` is set when the
    server names ``n`` as the offending parameter (it lacks ``n > 1``)."""
    raw = exc.read()
    message, param = raw.decode(errors="replace")[:500], None
    try:
        err = json.loads(raw).get("error", {})
        message, param = err.get("message", message), err.get("param")
    except (json.JSONDecodeError, AttributeError):
        pass
    out = EndpointError(f"{url} answered {exc.code}: {message}")
    out.param_n = param == "n"
    return out
