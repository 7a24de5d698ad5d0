"""Serving a hybrid: the engine runs Mamba / Mamba-2 layers from per-sequence states.

The reference is `minirepro.core.generate` on the same weights (the model's own forward with
its conv + SSM state cache, one prompt at a time), which shares no code with the engine's
flat ragged batch. The model is a tiny random hybrid saved with `save_hybrid` and loaded
the way `minirepro serve --model <dir>` loads it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minirepro.core.generate import generate
from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.tokenizer import CharTokenizer
from minirepro.papers.hybrid import save_hybrid
from minirepro.papers.serve.engine import EngineConfig, LLMEngine
from minirepro.papers.serve.sampling import SamplingParams
from minirepro.papers.serve.served_model import CHAR_ALPHABET, load_served_model

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
LENGTHS = (3, 17, 30, 9, 1, 22)


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory) -> Path:
    """A random 4-layer hybrid (attention, mamba, attention, mamba2) with a char tokenizer."""
    tokenizer = CharTokenizer.from_text(CHAR_ALPHABET)
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        n_layer=4,
        n_head=4,
        n_kv_head=2,
        d_model=32,
        max_seq_len=256,
        init_std=0.3,  # greedy continuations differ between prompts (see random_char_model)
        mixer=("attention", "mamba", "attention", "mamba2"),
        mixer_kwargs={"chunk_size": 4, "d_state": 8},  # prefill chunks cross scan chunks
    )
    model = Transformer(cfg)
    with torch.no_grad():  # keep the recurrences from forgetting everything in one step
        for block in model.layers:
            if hasattr(block.mixer, "A_log"):
                block.mixer.A_log.mul_(0.3)
    path = save_hybrid(model, tmp_path_factory.mktemp("hybrid") / "tiny-hybrid")
    tokenizer.save(path / "tokenizer.json")
    return path


@pytest.fixture(scope="module")
def served(hybrid_dir):
    return load_served_model(str(hybrid_dir))


@pytest.fixture(scope="module")
def prompts(served):
    g = torch.Generator().manual_seed(21)
    V = served.model.cfg.vocab_size
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def reference(served, prompts):
    return [generate(served.model, p, max_new_tokens=GREEDY.max_tokens)[0] for p in prompts]


def test_reference_outputs_differ(reference):
    """Outputs mixed up between requests would show (and the model is not degenerate)."""
    assert len({tuple(r) for r in reference}) == len(reference)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"async_scheduling": True},
        {"nano_batches": 2},
        {"enable_chunked_prefill": False, "max_num_batched_tokens": 64},
        {"enable_prefix_caching": False, "attention": "torch", "gemm": "torch"},
    ],
    ids=["chunked", "async", "nano2", "no_chunking", "torch_paths"],
)
@pytest.mark.parametrize("stack_decodes", [True, False], ids=["stacked", "per_seq"])
def test_engine_matches_core_generate(served, prompts, reference, options, stack_decodes):
    config = EngineConfig(**({"block_size": 4, "max_num_batched_tokens": 16} | options))
    engine = LLMEngine(served.model, config=config)
    engine.runner.batch_recurrent_decode = stack_decodes
    assert engine.runner.stateful and not engine.blocks.enable_prefix_caching
    assert engine.generate(prompts, GREEDY) == reference
    assert engine.stats().kv_blocks_used == 0
    engine.close()


def test_preempted_requests_recompute_their_state(served, prompts, reference):
    # 14 blocks of 4 cannot hold six sequences of up to 40 positions: the newest are
    # preempted, their states dropped and rebuilt from their first token
    config = EngineConfig(block_size=4, num_blocks=14, max_num_batched_tokens=16)
    engine = LLMEngine(served.model, config=config)
    assert engine.generate(prompts, GREEDY) == reference
    assert engine.stats().num_preemptions > 0
    engine.close()


def test_abort_does_not_touch_other_states(served, prompts, reference):
    engine = LLMEngine(served.model, config=EngineConfig(block_size=4, max_num_batched_tokens=16))
    long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    engine.add_request("victim", prompts[1], long)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, GREEDY)
    out: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    steps = 0
    while engine.has_unfinished_requests():
        steps += 1
        if steps == 6:
            engine.abort_request("victim")
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                reasons[o.request_id] = o.finish_reason
    assert reasons["victim"] == "abort" and 0 < len(out["victim"]) < 200
    assert [out[f"r{i}"] for i in range(len(prompts))] == reference
    assert engine.stats().kv_blocks_used == 0


def test_score_matches_the_model(served, prompts):
    ids = prompts[2] + prompts[5]
    engine = LLMEngine(served.model, config=EngineConfig(max_num_batched_tokens=16))
    with torch.no_grad():
        logp = torch.log_softmax(served.model(torch.tensor([ids]))[0, :-1].float(), dim=-1)
    want = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(engine.score(ids), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"enable_prefix_caching": True}, "enable_prefix_caching=True shares KV blocks"),
        ({"offload_dir": "unused"}, "offload_dir: the KV offload"),
        ({"nano_batches": "auto"}, "nano_batches='auto'"),
    ],
)
def test_features_without_a_place_for_the_state_are_refused(served, options, message):
    with pytest.raises(ValueError, match=message) as info:
        LLMEngine(served.model, config=EngineConfig(**options))
    assert "mamba/mamba2 layers" in str(info.value)


def test_cli_refuses_prefix_caching_for_a_hybrid(hybrid_dir):
    from typer.testing import CliRunner

    from minirepro import cli

    args = ["serve", "--model", str(hybrid_dir), "--port", "0", "--prefix-caching"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2
    assert "enable_prefix_caching=True shares KV blocks" in " ".join(result.output.split())


def test_http_server_answers_from_the_hybrid_checkpoint(hybrid_dir, served):
    """What `minirepro serve --model <dir>` builds, driven by the official openai client."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from minirepro.papers.serve.async_engine import AsyncEngine
    from minirepro.papers.serve.loadtest import serve_in_thread
    from minirepro.papers.serve.server import create_app

    s = load_served_model(str(hybrid_dir))  # fresh, as the CLI loads it
    engine = LLMEngine(s.model, s.tokenizer, EngineConfig(), eos_token_ids=s.eos_token_ids)
    async_engine = AsyncEngine(engine)
    app = create_app(async_engine, model_name=s.name, tokenizer=s.tokenizer)
    prompt = "the mamba in the llama"
    want = generate(served.model, s.tokenizer.encode(prompt), max_new_tokens=8)[0]
    try:
        with serve_in_thread(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            r = client.completions.create(
                model=s.name,
                prompt=prompt,
                max_tokens=8,
                temperature=0,
                extra_body={"ignore_eos": True, "return_token_ids": True},
            )
    finally:
        async_engine.shutdown()
        engine.close()
    assert s.name == "tiny-hybrid"
    assert r.choices[0].model_extra["token_ids"] == want
    assert r.choices[0].text == s.tokenizer.decode(want)
