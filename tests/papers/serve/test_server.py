"""The OpenAI-compatible server, driven over HTTP on 127.0.0.1 by the official `openai` client.

Most tests share one server on a small random core model with a character tokenizer (fast);
its greedy answers are checked against `minirepro.core.generate` on the same weights, which
does not share code with the engine. Two tests use the real SmolLM2 (marker `llm`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from minirepro.core.generate import generate, generate_many  # noqa: E402
from minirepro.core.model import Transformer  # noqa: E402
from minirepro.papers.serve.async_engine import AsyncEngine, EngineError  # noqa: E402
from minirepro.papers.serve.engine import EngineConfig, LLMEngine  # noqa: E402
from minirepro.papers.serve.loadtest import serve_in_thread  # noqa: E402
from minirepro.papers.serve.sampling import SamplingParams  # noqa: E402
from minirepro.papers.serve.served_model import (  # noqa: E402
    CHAR_ALPHABET,
    CoreTokenizerAdapter,
    load_checkpoint_model,
    make_plain_chat_encoder,
    random_char_model,
)
from minirepro.papers.serve.server import create_app  # noqa: E402

ALPHABET = CHAR_ALPHABET
MODEL = "tiny"


@dataclass
class Server:
    url: str
    engine: LLMEngine
    async_engine: AsyncEngine
    model: Transformer
    tokenizer: Any

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, **kwargs)

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, **({"timeout": 30} | kwargs))


@contextmanager
def running_server(
    model: Transformer,
    tokenizer: Any,
    chat_encoder: Any,
    eos: tuple[int, ...],
    name: str,
    config: EngineConfig,
) -> Iterator[Server]:
    """uvicorn in a background thread on 127.0.0.1, on a port the OS picked."""
    engine = LLMEngine(model, tokenizer, config, eos_token_ids=eos)
    async_engine = AsyncEngine(engine)
    app = create_app(async_engine, model_name=name, tokenizer=tokenizer, chat_encoder=chat_encoder)
    try:
        with serve_in_thread(app) as url:
            yield Server(url, engine, async_engine, model, tokenizer)
    finally:
        async_engine.shutdown()
        engine.close()


def tiny_model(max_seq_len: int = 2048) -> tuple[Transformer, CoreTokenizerAdapter]:
    served = random_char_model(max_seq_len)
    return served.model, served.tokenizer


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    model, tokenizer = tiny_model()
    config = EngineConfig(
        block_size=8, num_blocks=1024, max_num_seqs=64, max_num_batched_tokens=256
    )
    chat = make_plain_chat_encoder(tokenizer.encode)
    with running_server(model, tokenizer, chat, (tokenizer.eos_token_id,), MODEL, config) as s:
        yield s


def reference(srv: Server, prompt: str | list[int], n: int) -> list[int]:
    """Greedy ids from core `generate` (no eos stop: the server requests say ignore_eos)."""
    ids = srv.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    return generate(srv.model, ids, max_new_tokens=n)[0]


def complete(client: openai.OpenAI, prompt: Any, n: int = 12, **extra: Any) -> Any:
    body = {"ignore_eos": True, "return_token_ids": True} | extra.pop("extra_body", {})
    return client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=n, temperature=0, extra_body=body, **extra
    )


def wait_idle(srv: Server, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        stats = srv.engine.stats()
        if stats.kv_blocks_used == 0 and stats.num_running == 0 and stats.num_waiting == 0:
            return stats
        assert time.monotonic() < deadline, f"the engine did not go idle: {stats}"
        time.sleep(0.02)


def scrape(srv: Server) -> dict[str, Any]:
    """/metrics parsed by prometheus_client: family name -> family."""
    text = httpx.get(f"{srv.url}/metrics").text
    return {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}


def sample_value(families: dict[str, Any], name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in families.values()
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# ----- basic endpoints ----------------------------------------------------------------------------
def test_models_and_health(srv: Server) -> None:
    models = srv.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    r = httpx.get(f"{srv.url}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_completion_matches_core_generate(srv: Server) -> None:
    prompt = "the quick brown fox jumps over the lazy dog"
    r = complete(srv.client(), prompt, n=16)
    choice = r.choices[0]
    want = reference(srv, prompt, 16)
    assert choice.model_extra["token_ids"] == want
    assert choice.text == srv.tokenizer.decode(want)
    assert choice.finish_reason == "length"
    assert r.model == MODEL and r.object == "text_completion"
    n_prompt = len(srv.tokenizer.encode(prompt))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, 16)
    assert r.usage.total_tokens == n_prompt + 16


def test_token_prompts_and_prompt_lists(srv: Server) -> None:
    client = srv.client()
    ids = srv.tokenizer.encode("hello there, general")
    r = complete(client, ids, n=10)
    assert r.choices[0].model_extra["token_ids"] == reference(srv, ids, 10)
    prompts = ["first prompt", "a second, longer prompt"]
    r = complete(client, prompts, n=10)
    assert [c.index for c in r.choices] == [0, 1]
    for c, p in zip(r.choices, prompts):
        assert c.model_extra["token_ids"] == reference(srv, p, 10)
    assert r.usage.completion_tokens == 20


def test_streaming_equals_non_streaming(srv: Server) -> None:
    client = srv.client()
    prompt = "streaming, one chunk at a time"
    whole = complete(client, prompt, n=24)
    chunks = list(
        complete(client, prompt, n=24, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    ids = [t for c in chunks if c.choices for t in c.choices[0].model_extra["token_ids"]]
    assert text == whole.choices[0].text and ids == whole.choices[0].model_extra["token_ids"]
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length" and set(finals[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24

    messages = [{"role": "user", "content": "tell me a story"}]
    kw = {"model": MODEL, "messages": messages, "max_tokens": 20, "temperature": 0}
    kw["extra_body"] = {"ignore_eos": True, "return_token_ids": True}
    whole = client.chat.completions.create(**kw)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    # the plain chat template: the same tokens as a completion of the templated prompt
    templated = srv.tokenizer.encode("user: tell me a story\nassistant:")
    assert whole.choices[0].model_extra["token_ids"] == reference(srv, templated, 20)
    assert whole.usage.prompt_tokens == len(templated)


def test_raw_sse_format(srv: Server) -> None:
    body = {"model": MODEL, "prompt": "raw events", "max_tokens": 5, "temperature": 0}
    with srv.http() as h, h.stream("POST", "/v1/completions", json=body | {"stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"text_completion"}
    assert len({e["id"] for e in events}) == 1


def test_stop_strings_and_seeds(srv: Server) -> None:
    client = srv.client()
    prompt = "where do the stop strings go"
    full = complete(client, prompt, n=30).choices[0].text
    stop = full[12:14]
    cut = full[: full.index(stop)]
    r = complete(client, prompt, n=30, stop=[stop])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"

    def sampled(seed: int) -> str:
        return (
            client.completions.create(
                model=MODEL,
                prompt=prompt,
                max_tokens=20,
                temperature=1.0,
                seed=seed,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .text
        )

    assert sampled(7) == sampled(7)
    assert len({sampled(s) for s in range(4)}) > 1


def test_64_concurrent_clients_get_their_own_answers(srv: Server) -> None:
    prompts = [f"client {i}: {ALPHABET[i % 26] * (1 + i % 5)} says {i * 37}" for i in range(64)]
    encoded = [srv.tokenizer.encode(p) for p in prompts]
    n = 8
    want = generate_many(srv.model, encoded, max_new_tokens=n)
    assert len({tuple(w) for w in want}) > 32, "the reference answers barely differ"
    wait_idle(srv)
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, srv.engine.stats().num_running)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    client = srv.client()
    barrier = threading.Barrier(64)

    def one(i: int) -> list[int]:
        barrier.wait(30)
        return complete(client, prompts[i], n=n).choices[0].model_extra["token_ids"]

    try:
        with ThreadPoolExecutor(64) as pool:
            got = list(pool.map(one, range(64)))
    finally:
        done.set()
        watcher.join()
    assert got == want
    assert peak > 1, "the requests never shared a batch"
    wait_idle(srv)


# ----- invalid requests ---------------------------------------------------------------------------
BAD = [
    ("/v1/completions", b"{not json", None),
    ("/v1/completions", b"[1, 2]", None),
    ("/v1/completions", {"model": MODEL}, "prompt"),
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "3"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": 2.5}, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
    ("/v1/completions", {"prompt": "x", "echo": True}, "echo"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, "stop"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": [99999]}, "prompt"),
    ("/v1/completions", {"prompt": "ab" * 1100}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 5000}, "prompt"),
    ("/v1/completions", {"prompt": "x", "seed": 2**70}, "seed"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages.0.content",
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD, ids=range(len(BAD)))
def test_malformed_requests_get_4xx_json(srv: Server, path: str, body: Any, param: str) -> None:
    with srv.http() as h:
        if isinstance(body, bytes):
            r = h.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = h.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_errors_through_the_official_client(srv: Server) -> None:
    client = srv.client()
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], n=3
        )
    assert info.value.body["param"] == "n"
    with srv.http() as h:
        assert h.get("/v1/nothing").status_code == 404
        assert h.get("/v1/completions").status_code == 405
        assert set(h.get("/v1/nothing").json()["error"]) == {"message", "type", "param", "code"}
    assert complete(client, "still serving", n=3).choices[0].finish_reason == "length"


# ----- disconnects, engine failures, metrics --------------------------------------------------
def test_stream_disconnect_frees_blocks(srv: Server) -> None:
    wait_idle(srv)
    before = scrape(srv)
    n = 1500  # several seconds of decoding: the disconnect comes long before the end
    body = {
        "model": MODEL,
        "prompt": "a long story that nobody reads",
        "max_tokens": n,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with srv.http() as h, h.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        got = [line for _, line in zip(range(6), lines)]
        assert any(line.startswith("data: {") for line in got)
        stats = srv.engine.stats()
        assert stats.num_running == 1 and stats.kv_blocks_used > 0
    # leaving the block closed the connection mid-stream
    wait_idle(srv)
    after = scrape(srv)
    aborted = "minirepro_requests_total"
    assert sample_value(after, aborted, finish_reason="abort") == (
        sample_value(before, aborted, finish_reason="abort") + 1
    )
    generated = sample_value(after, "minirepro_generation_tokens_total") - sample_value(
        before, "minirepro_generation_tokens_total"
    )
    assert 0 < generated < n
    assert complete(srv.client(), "next one", n=4).choices[0].finish_reason == "length"


def test_non_streaming_disconnect_frees_blocks(srv: Server) -> None:
    wait_idle(srv)
    before = scrape(srv)
    n = 1500
    body = {
        "model": MODEL,
        "prompt": "an answer nobody waits for",
        "max_tokens": n,
        "temperature": 0,
        "ignore_eos": True,
    }
    with srv.http(timeout=0.5) as h, pytest.raises(httpx.ReadTimeout):
        h.post("/v1/completions", json=body)
    wait_idle(srv)
    after = scrape(srv)
    aborted = "minirepro_requests_total"
    assert sample_value(after, aborted, finish_reason="abort") == (
        sample_value(before, aborted, finish_reason="abort") + 1
    )
    assert sample_value(after, aborted, finish_reason="length") == sample_value(
        before, aborted, finish_reason="length"
    )
    assert complete(srv.client(), "and the next", n=4).choices[0].finish_reason == "length"


def test_engine_failure_fails_requests_not_the_server(srv: Server, monkeypatch) -> None:
    real_step = srv.engine.step
    calls = 0

    def failing_step():
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("injected fault")
        return real_step()

    wait_idle(srv)
    monkeypatch.setattr(srv.engine, "step", failing_step)
    with srv.http() as h:
        r = h.post(
            "/v1/completions", json={"prompt": "doomed", "max_tokens": 50, "ignore_eos": True}
        )
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "internal_error" and "injected fault" in error["message"]
    wait_idle(srv)
    monkeypatch.setattr(srv.engine, "step", real_step)
    assert complete(srv.client(), "alive", n=4).choices[0].model_extra["token_ids"] == reference(
        srv, "alive", 4
    )


def test_metrics(srv: Server) -> None:
    wait_idle(srv)
    before = scrape(srv)
    long_prompt = "a prompt long enough to fill several kv blocks of eight tokens each"
    r1 = complete(srv.client(), long_prompt, n=6)
    r2 = complete(srv.client(), long_prompt, n=6)  # its full prompt blocks are cached now
    after = scrape(srv)
    for name in [
        "minirepro_num_requests_running",
        "minirepro_num_requests_waiting",
        "minirepro_kv_cache_usage_ratio",
        "minirepro_kv_cache_blocks_used",
        "minirepro_prefix_cache_queries_tokens",
        "minirepro_prefix_cache_hits_tokens",
        "minirepro_time_to_first_token_seconds",
        "minirepro_inter_token_latency_seconds",
        "minirepro_e2e_request_latency_seconds",
        "minirepro_requests",
        "minirepro_prompt_tokens",
        "minirepro_generation_tokens",
    ]:
        assert name in after, name
    assert after["minirepro_time_to_first_token_seconds"].type == "histogram"
    assert after["minirepro_prefix_cache_hits_tokens"].type == "counter"

    def delta(name: str, **labels: str) -> float:
        return sample_value(after, name, **labels) - sample_value(before, name, **labels)

    assert delta("minirepro_generation_tokens_total") == 12
    assert delta("minirepro_prompt_tokens_total") == r1.usage.prompt_tokens * 2
    assert delta("minirepro_requests_total", endpoint="completions", finish_reason="length") == 2
    assert delta("minirepro_time_to_first_token_seconds_count") == 2
    assert delta("minirepro_inter_token_latency_seconds_count") == 10
    hits = delta("minirepro_prefix_cache_hits_tokens_total")
    assert hits >= 8 * (r1.usage.prompt_tokens // 8 - 1)
    assert r2.usage.prompt_tokens_details.cached_tokens == hits
    assert sample_value(after, "minirepro_num_requests_running") == 0
    assert 0 <= sample_value(after, "minirepro_kv_cache_usage_ratio") <= 1


def test_conversation_id_reaches_the_kv_offload(tmp_path: Path) -> None:
    model, tokenizer = tiny_model(512)
    config = EngineConfig(
        block_size=8, num_blocks=48, enable_prefix_caching=False, offload_dir=str(tmp_path)
    )
    with running_server(model, tokenizer, None, (), MODEL, config) as s:
        client = s.client()
        first = tokenizer.encode("turn one of a conversation")
        r1 = complete(client, first, n=10, extra_body={"conversation_id": "conv-1"})
        answer = r1.choices[0].model_extra["token_ids"]
        second = first + answer + tokenizer.encode(" and turn two")
        r2 = complete(client, second, n=10, extra_body={"conversation_id": "conv-1"})
        assert r2.choices[0].model_extra["token_ids"] == reference(s, second, 10)
        assert s.engine.stats().offload_hits == 1
        assert r2.usage.prompt_tokens_details.cached_tokens >= len(first) + len(answer) - 1
        # the chat endpoint is off without a chat template
        with s.http() as h:
            r = h.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
            )
            assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
            # 48 blocks of 8 hold 384 positions, fewer than the model's 512
            r = h.post("/v1/completions", json={"prompt": [5] * 300, "max_tokens": 100})
        assert r.status_code == 400 and "the KV cache holds 384" in r.json()["error"]["message"]


def test_async_scheduling_and_nano_batches_behind_the_server() -> None:
    model, tokenizer = tiny_model(512)
    config = EngineConfig(block_size=8, num_blocks=256, async_scheduling=True, nano_batches=2)
    with running_server(model, tokenizer, None, (), MODEL, config) as s:
        prompts = [f"prompt number {i} of eight" for i in range(8)]
        want = generate_many(model, [tokenizer.encode(p) for p in prompts], max_new_tokens=8)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda p: complete(s.client(), p, n=8), prompts))
        assert [r.choices[0].model_extra["token_ids"] for r in got] == want
        body = {"prompt": "long", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with s.http() as h, h.stream("POST", "/v1/completions", json=body) as r:
            next(r.iter_lines())
        wait_idle(s)
        assert sample_value(scrape(s), "minirepro_requests_total", finish_reason="abort") == 1


# ----- AsyncEngine on its own -----------------------------------------------------------------
def test_async_engine_early_stop_and_shutdown() -> None:
    import asyncio

    model, tokenizer = tiny_model(512)
    engine = LLMEngine(model, tokenizer, EngineConfig(block_size=8, num_blocks=128))
    aengine = AsyncEngine(engine)
    params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def main() -> None:
        outs = []
        async for out in aengine.generate("a", [5, 6, 7], params):
            outs.append(out)
            if len(outs) == 3:
                break  # the consumer walks away
        await asyncio.sleep(0)
        deadline = time.monotonic() + 10
        while engine.stats().kv_blocks_used or engine.has_unfinished_requests():
            assert time.monotonic() < deadline, engine.stats()
            await asyncio.sleep(0.01)
        # a task cancelled while waiting aborts its request too
        task = asyncio.create_task(_drain(aengine.generate("b", [8, 9], params)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while engine.stats().kv_blocks_used or engine.has_unfinished_requests():
            assert time.monotonic() < deadline, engine.stats()
            await asyncio.sleep(0.01)
        # the engine rejects a bad request synchronously, and nothing stays registered
        with pytest.raises(ValueError):
            aengine.add_request("c", [], params)
        assert aengine.num_open_streams == 0
        # shutdown fails what is in flight
        stream = aengine.add_request("d", [1, 2, 3], params)
        await stream.__anext__()
        aengine.shutdown()
        with pytest.raises(EngineError):
            async for _ in stream:
                pass

    try:
        asyncio.run(main())
    finally:
        aengine.shutdown()
        engine.close()


async def _drain(gen: Any) -> None:
    async for _ in gen:
        pass


# ----- checkpoints and the command line -------------------------------------------------------------
def save_tiny_checkpoint(root: Path) -> tuple[Transformer, CoreTokenizerAdapter]:
    from minirepro.core.checkpoint import save_checkpoint

    model, tokenizer = tiny_model(256)
    save_checkpoint(root, 5, model, cfg=model.cfg)
    tokenizer.core.save(root / "tokenizer.json")
    return model, tokenizer


def test_load_checkpoint_model(tmp_path: Path) -> None:
    model, tokenizer = save_tiny_checkpoint(tmp_path / "run")
    for path in [
        tmp_path / "run",
        tmp_path / "run/checkpoints/step_00000005",
        tmp_path / "run/checkpoints/step_00000005/model.safetensors",
    ]:
        served = load_checkpoint_model(path)
        assert served.model.cfg == model.cfg
        theirs = served.model.state_dict()
        assert all(torch.equal(theirs[k], v) for k, v in model.state_dict().items())
        assert served.tokenizer.core == tokenizer.core
        assert served.eos_token_ids == (tokenizer.eos_token_id,)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint_model(tmp_path)
    (tmp_path / "lone").mkdir()
    from safetensors.torch import save_model

    save_model(model, str(tmp_path / "lone/model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no model config"):
        load_checkpoint_model(tmp_path / "lone")


def test_cli_serve_missing_model() -> None:
    from typer.testing import CliRunner

    from minirepro import cli

    result = CliRunner().invoke(cli.app, ["serve", "--model", "/no/such/checkpoint"])
    assert result.exit_code == 2
    assert "no model '/no/such/checkpoint'" in result.output


@pytest.mark.slow
def test_cli_serve_checkpoint_end_to_end(tmp_path: Path) -> None:
    model, tokenizer = save_tiny_checkpoint(tmp_path / "run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "minirepro.cli",
        "serve",
        "--model",
        str(tmp_path / "run"),
        "--port",
        str(port),
        "--served-model-name",
        "ckpt",
        "--num-blocks",
        "64",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        r = client.completions.create(
            model="ckpt",
            prompt="from the command line",
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True, "return_token_ids": True},
        )
        want = generate(model, tokenizer.encode("from the command line"), max_new_tokens=8)[0]
        assert r.choices[0].model_extra["token_ids"] == want
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert f"127.0.0.1:{port}/v1" in out


# ----- the real SmolLM2 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_srv(smollm2) -> Iterator[Server]:
    config = EngineConfig(block_size=16, num_blocks=256, max_num_seqs=8, max_num_batched_tokens=256)
    with running_server(
        smollm2.model,
        smollm2.tokenizer,
        smollm2.encode_chat,
        smollm2.stop_tokens,
        "smollm2",
        config,
    ) as s:
        yield s


@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_chat_knows_paris(smol_srv: Server, smollm2) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r = smol_srv.client().chat.completions.create(
        model="smollm2", messages=messages, max_tokens=24, temperature=0
    )
    text = r.choices[0].message.content
    assert "Paris" in text
    assert text == smollm2.chat(messages, max_new_tokens=24)  # core generate, same weights
    assert r.usage.prompt_tokens == len(smollm2.encode_chat(messages))


@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_chat_streaming_and_stop(smol_srv: Server) -> None:
    client = smol_srv.client()
    messages = [{"role": "user", "content": "Name three colours."}]
    kw = {"model": "smollm2", "messages": messages, "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
    )
    assert streamed == whole and len(whole) > 5
