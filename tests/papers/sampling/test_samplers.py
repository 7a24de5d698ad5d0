"""The samplers: the core decoder and an OpenAI-compatible endpoint (our own `minirepro serve`
on 127.0.0.1, and a stub server that speaks `n` natively or fails)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from minirepro.core.generate import generate
from minirepro.papers.sampling import (
    DecoderSampler,
    EndpointError,
    OpenAISampler,
    Sampler,
    sample_at_budget,
)

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from minirepro.papers.serve.async_engine import AsyncEngine  # noqa: E402
from minirepro.papers.serve.engine import EngineConfig, LLMEngine  # noqa: E402
from minirepro.papers.serve.loadtest import serve_in_thread  # noqa: E402
from minirepro.papers.serve.served_model import random_char_model  # noqa: E402
from minirepro.papers.serve.server import create_app  # noqa: E402

MODEL = "tiny"


@pytest.fixture(scope="module")
def served():
    """`minirepro serve`'s app on the random character model, on 127.0.0.1."""
    sm = random_char_model(512)
    engine = LLMEngine(sm.model, sm.tokenizer, EngineConfig(block_size=8, num_blocks=512),
                       eos_token_ids=sm.eos_token_ids)  # fmt: skip
    async_engine = AsyncEngine(engine)
    app = create_app(async_engine, model_name=MODEL, tokenizer=sm.tokenizer)
    try:
        with serve_in_thread(app) as url:
            yield url, sm
    finally:
        async_engine.shutdown()
        engine.close()


def test_endpoint_greedy_matches_core_generate(served) -> None:
    url, sm = served
    s = OpenAISampler(f"{url}/v1", MODEL, n_params=1000, max_tokens=7,
                      extra_body={"ignore_eos": True})  # fmt: skip
    prompts = ["hello", "abc def", "x"]
    out = s.sample(prompts, 1, 0.0)
    want = [sm.tokenizer.decode(generate(sm.model, sm.tokenizer.encode(p), max_new_tokens=7)[0])
            for p in prompts]  # fmt: skip
    assert [o[0] for o in out] == want
    assert s.generated_tokens == 3 * 7  # usage: 7 tokens each (eos ignored)
    assert isinstance(s, Sampler)


def test_endpoint_n_above_one_falls_back_to_prompt_copies(served) -> None:
    url, _ = served
    s = OpenAISampler(f"{url}/v1", MODEL, n_params=1000, max_tokens=6, prompts_per_request=4,
                      extra_body={"ignore_eos": True})  # fmt: skip
    out = s.sample(["The cat", "A dog"], 5, 1.0)
    assert s.native_n is False  # our server answers 400 on n > 1, naming n
    assert [len(o) for o in out] == [5, 5]
    assert all(len(t) >= 1 for o in out for t in o)
    assert len(set(out[0])) > 1  # temperature 1: the copies are sampled independently
    assert s.generated_tokens == 2 * 5 * 6
    # the budget loop on an endpoint: measured FLOPs are 2 * params * usage tokens
    before = s.generated_tokens
    got = sample_at_budget(s, ["q"], 1.0, flops=2 * 1000 * 6 * 4)
    assert got.k == 4 and got.tokens == s.generated_tokens - before == 24
    assert got.flops == pytest.approx(2 * 1000 * 24)


def test_endpoint_errors_are_clear(served) -> None:
    url, _ = served
    with pytest.raises(EndpointError, match=r"answered 404.*nope"):
        OpenAISampler(f"{url}/v1", "nope", n_params=10).sample(["a"], 1, 0.0)
    with pytest.raises(EndpointError, match="max_tokens"):
        OpenAISampler(f"{url}/v1", MODEL, n_params=10, max_tokens=10**6).sample(["a"], 1, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        OpenAISampler(f"{url}/v1", MODEL, n_params=10).sample(["a"], 1, -1.0)
    with pytest.raises(ValueError, match="n must be"):
        OpenAISampler(f"{url}/v1", MODEL, n_params=10).sample(["a"], 0, 1.0)
    with pytest.raises(ValueError, match="base_url"):
        OpenAISampler("127.0.0.1:1/v1", MODEL, n_params=10)


@contextmanager
def stub_server(reply) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering POSTs with ``reply(body) -> (status, bytes)``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, data = reply(body)
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_native_n_and_broken_servers() -> None:
    seen = []

    def native(body):  # choices out of order, as a server may send them
        seen.append(body["n"])
        n, ps = body["n"], body["prompt"]
        choices = [
            {"index": i * n + j, "text": f"{p}-{j}"} for i, p in enumerate(ps) for j in range(n)
        ]
        usage = {"completion_tokens": 3 * len(choices)}
        return 200, json.dumps({"choices": choices[::-1], "usage": usage}).encode()

    with stub_server(native) as url:
        s = OpenAISampler(url, "m", n_params=5)
        assert s.sample(["a", "b"], 3, 0.7) == [["a-0", "a-1", "a-2"], ["b-0", "b-1", "b-2"]]
        assert s.native_n is True and seen == [3] and s.generated_tokens == 18
    with stub_server(lambda body: (500, b"<html>boom</html>")) as url:
        with pytest.raises(EndpointError, match="answered 500: <html>boom"):
            OpenAISampler(url, "m", n_params=5).sample(["a"], 2, 1.0)
    with stub_server(lambda body: (200, b'{"choices": []}')) as url:
        with pytest.raises(EndpointError, match="returned 0 choices for 1"):
            OpenAISampler(url, "m", n_params=5).sample(["a"], 1, 1.0)
    with stub_server(lambda body: (200, b"not json")) as url:
        with pytest.raises(EndpointError, match="not JSON"):
            OpenAISampler(url, "m", n_params=5).sample(["a"], 1, 1.0)
    with stub_server(lambda b: (200, b"")) as url:
        pass  # closed: nothing listens on its port any more
    with pytest.raises(EndpointError, match="cannot reach"):
        OpenAISampler(url, "m", n_params=5, timeout=5).sample(["a"], 1, 1.0)


def test_decoder_sampler_counts_tokens_and_repeats_with_its_seed(served) -> None:
    _, sm = served
    tok = sm.tokenizer
    eos = sm.eos_token_ids[0]

    def make(seed):
        return DecoderSampler(sm.model, tok.encode, tok.decode, [eos], max_new_tokens=9,
                              batch_size=4, seed=seed)  # fmt: skip

    a, b = make(3), make(3)
    out = a.sample(["ab", "hello world", "q"], 3, 1.0)
    assert out == b.sample(["ab", "hello world", "q"], 3, 1.0)  # same seed, same samples
    assert [len(o) for o in out] == [3, 3, 3]
    assert a.sample(["ab"], 3, 1.0) != out[:1]  # the next call draws fresh samples
    # greedy equals core generate; tokens are the generated ids plus the stop token if any
    g = make(0)
    (text,) = g.sample(["ab"], 1, 0.0)[0]
    ids = generate(sm.model, tok.encode("ab"), max_new_tokens=9, stop_tokens=(eos,))[0]
    assert text == tok.decode(ids)
    assert g.generated_tokens == len(ids) + (len(ids) < 9)
    assert g.n_params == sum(p.numel() for p in sm.model.parameters())
    with pytest.raises(TypeError, match="prompts"):
        g.sample("ab", 1, 1.0)
    torch.manual_seed(0)
