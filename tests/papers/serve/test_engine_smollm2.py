"""The engine on the real SmolLM2-135M-Instruct: greedy tokens equal HF transformers'
`generate` (LlamaForCausalLM, float32) for a mixed-length batch of chat prompts, under
every scheduling mode and with a KV-offloaded second turn."""

import pytest

from minirepro.papers.serve import EngineConfig, LLMEngine, SamplingParams

pytestmark = [pytest.mark.llm, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

N_NEW = 8
QUESTIONS = [
    "What is the capital of France?",
    "Name a colour.",
    "Write one word about the sea, then stop.",
]


@pytest.fixture(scope="module")
def setup(smollm2, hf_greedy):
    from minirepro.core.hf_llama import to_hf

    hf = to_hf(smollm2.model)
    prompts = [smollm2.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == len(prompts)  # mixed lengths
    ref = hf_greedy(hf, prompts, N_NEW)
    return hf, prompts, ref


CONFIGS = {
    "default": {},
    "chunked_async_nano": {
        "max_num_batched_tokens": 16,
        "async_scheduling": True,
        "nano_batches": 2,
        "enable_prefix_caching": False,
    },
    "preemption": {"num_blocks": 20, "block_size": 4, "enable_prefix_caching": False},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_hf(smollm2, setup, name):
    _, prompts, ref = setup
    engine = LLMEngine(smollm2.model, config=EngineConfig(**CONFIGS[name]))
    params = SamplingParams(max_tokens=N_NEW, temperature=0)
    assert engine.generate(prompts, params) == ref
    if name == "default":  # same prompts again: the chat template's shared blocks are hits
        assert engine.generate(prompts, params) == ref
        assert engine.stats().prefix_cache_hits > 0
    if name == "preemption":
        assert engine.stats().num_preemptions > 0
    engine.close()


def test_text_and_offloaded_second_turn(smollm2, setup, hf_greedy, tmp_path):
    hf, prompts, ref = setup
    tok = smollm2.tokenizer
    cfg = EngineConfig(enable_prefix_caching=False, offload_dir=str(tmp_path))
    engine = LLMEngine.from_pretrained(smollm2, cfg)
    params = SamplingParams(max_tokens=N_NEW, temperature=0, ignore_eos=True)
    engine.add_request("t1", prompts[0], params, conversation_id="c")
    text, ids = "", []
    while engine.has_unfinished_requests():
        for o in engine.step():
            text += o.new_text
            ids += o.new_token_ids
    assert ids == ref[0]
    assert text == tok.decode(ids, skip_special_tokens=True)
    engine.wait_offload()
    follow = tok.encode("\nThanks! And of Italy?", add_special_tokens=False)
    second = prompts[0] + ids + follow
    engine.add_request("t2", second, params, conversation_id="c")
    ids2, cached = [], 0
    while engine.has_unfinished_requests():
        for o in engine.step():
            ids2 += o.new_token_ids
            cached = o.cached_tokens
    assert ids2 == hf_greedy(hf, [second], N_NEW)[0]
    assert cached == len(prompts[0]) + len(ids) - 1 and engine.stats().offload_hits == 1
    engine.close()
