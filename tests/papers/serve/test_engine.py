"""The engine against HF transformers' `generate` on a random core model exported as Llama,
under every scheduling mode; aborts, bad inputs, seeds, stop conditions."""

import threading

import pytest

from minirepro.papers.serve import EngineConfig, LLMEngine, SamplingParams
from minirepro.papers.serve.engine import split_nano_batches
from minirepro.papers.serve.runner import bucket_lengths

LENGTHS = [5, 17, 33, 3, 40, 16, 9]
N_NEW = 16
GREEDY = SamplingParams(max_tokens=N_NEW, temperature=0)
pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "default": {},
    "no_prefix_cache": {"enable_prefix_caching": False},
    "chunked_prefill": {"max_num_batched_tokens": 8},
    "preemption": {"num_blocks": 16, "block_size": 4},
    "async": {"async_scheduling": True},
    "nano2": {"nano_batches": 2},
    "nano3_async_chunked": {
        "nano_batches": 3,
        "async_scheduling": True,
        "max_num_batched_tokens": 16,
    },
    "async_preemption": {"num_blocks": 16, "block_size": 4, "async_scheduling": True},
    "max_seqs_2": {"max_num_seqs": 2, "enable_chunked_prefill": False},
    # the torch formulations the C++ attention kernel and the oneDNN GEMMs replace
    "torch_attention_and_gemm": {"attention": "torch", "gemm": "torch"},
    "onednn_gemm": {"gemm": "onednn"},
}


@pytest.fixture(scope="module")
def prompts(random_prompts):
    return random_prompts(LENGTHS, 64, seed=0)


@pytest.fixture(scope="module")
def reference(tiny_hf, prompts, hf_greedy):
    return hf_greedy(tiny_hf, prompts, N_NEW)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_hf_generate(name, tiny_model, prompts, reference):
    engine = LLMEngine(tiny_model, config=EngineConfig(**CONFIGS[name]))
    assert engine.generate(prompts, GREEDY) == reference
    # a second round: the prefix cache (where on and not evicted) serves the prompts
    assert engine.generate(prompts, GREEDY) == reference
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.num_running == stats.num_waiting == 0
    engine.blocks.check()
    if name == "preemption":
        assert stats.num_preemptions > 0
    if name in ("default", "async", "chunked_prefill"):
        assert stats.prefix_cache_hits > 0
    if name == "no_prefix_cache":
        assert stats.prefix_cache_hits == 0
    engine.close()


def test_decode_groups_by_length_match_hf(tiny_model, tiny_hf, hf_greedy, random_prompts):
    prompts = random_prompts([2, 90, 4, 60, 31, 1, 75], 64, seed=8)
    config = EngineConfig(block_size=8, async_scheduling=True, attention="torch")
    engine = LLMEngine(tiny_model, config=config)
    assert engine.runner.max_decode_groups > 1  # length groups exist without the kernel
    engine.runner.decode_group_overhead = 0  # as many length groups as allowed
    assert engine.generate(prompts, GREEDY) == hf_greedy(tiny_hf, prompts, N_NEW)


def test_bucket_lengths_partition():
    lengths = [10, 500, 20, 30, 480, 490, 15]
    groups = bucket_lengths(lengths, max_groups=4, overhead=100)
    assert sorted(i for g in groups for i in g) == list(range(7))
    assert [sorted(g) for g in groups] == [[0, 2, 3, 6], [1, 4, 5]]
    assert bucket_lengths([100] * 5) == [[0, 1, 2, 3, 4]]
    assert len(bucket_lengths(lengths, max_groups=4, overhead=0)) == 4


def test_shared_prefix_hits_cache_and_matches_hf(tiny_model, tiny_hf, hf_greedy, random_prompts):
    (system,) = random_prompts([24], 64, seed=3)
    tails = random_prompts([3, 7, 1, 12], 64, seed=4)
    prompts = [system + t for t in tails]
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4))
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)
    assert first + rest == hf_greedy(tiny_hf, prompts, N_NEW)
    assert engine.stats().prefix_cache_hits == 3 * 24  # six full blocks each


def test_streaming_deltas_and_counts(tiny_model, prompts, reference):
    engine = LLMEngine(tiny_model, config=EngineConfig(async_scheduling=True))
    for i, p in enumerate(prompts[:3]):
        engine.add_request(f"r{i}", p, GREEDY)
    got = {f"r{i}": [] for i in range(3)}
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert not finished.get(out.request_id), "output after finishing"
            got[out.request_id] += out.new_token_ids
            assert out.output_tokens == len(got[out.request_id])
            assert out.prompt_tokens == len(prompts[int(out.request_id[1:])])
            if out.finished:
                finished[out.request_id] = out.finish_reason
    assert [got[f"r{i}"] for i in range(3)] == reference[:3]
    assert finished == {"r0": "length", "r1": "length", "r2": "length"}


def test_abort_frees_blocks(tiny_model, prompts):
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4))
    params = SamplingParams(max_tokens=100, temperature=0)
    engine.add_request("a", prompts[2], params)
    engine.add_request("b", prompts[4], params)
    for _ in range(3):
        engine.step()
    assert engine.stats().kv_blocks_used > 0
    engine.abort_request("a")
    outs = engine.step()
    aborted = [o for o in outs if o.request_id == "a"]
    assert len(aborted) == 1 and aborted[0].finished and aborted[0].finish_reason == "abort"
    engine.abort_request("b")
    engine.abort_request("never-added")  # ignored
    engine.step()
    assert not engine.has_unfinished_requests()
    assert engine.stats().kv_blocks_used == 0 and engine.stats().num_running == 0
    engine.blocks.check()
    # the id can be reused once finished
    engine.add_request("a", prompts[0], GREEDY)
    while engine.has_unfinished_requests():
        engine.step()


def test_add_and_abort_from_another_thread(tiny_model, prompts, reference):
    engine = LLMEngine(tiny_model, config=EngineConfig(async_scheduling=True))
    results: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    stop = threading.Event()

    def loop():
        while not stop.is_set() or engine.has_unfinished_requests():
            for o in engine.step():
                results.setdefault(o.request_id, []).extend(o.new_token_ids)
                if o.finished:
                    reasons[o.request_id] = o.finish_reason

    t = threading.Thread(target=loop)
    t.start()
    long = SamplingParams(max_tokens=200, temperature=0)
    engine.add_request("victim", prompts[1], long)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, GREEDY)
    engine.abort_request("victim")
    stop.set()
    t.join(timeout=60)
    assert not t.is_alive()
    assert [results[f"r{i}"] for i in range(len(prompts))] == reference
    assert reasons["victim"] == "abort" and len(results.get("victim", [])) < 200
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": []}, "prompt is empty"),
        ({"prompt": [1, 64]}, r"token ids must lie in \[0, 64\)"),
        ({"prompt": [1, -1]}, "token ids must lie"),
        ({"prompt": [1, 2.5]}, "must be ints"),
        ({"prompt": [1] * 250, "max_tokens": 10}, "exceeds the model's max_seq_len 256"),
        ({"stop": ["x"]}, "stop strings need an engine with a tokenizer"),
        ({"request_id": ""}, "request_id must be a non-empty string"),
    ],
)
def test_bad_requests_raise_value_error(tiny_model, kwargs, message):
    engine = LLMEngine(tiny_model)
    prompt = kwargs.pop("prompt", [1, 2, 3])
    rid = kwargs.pop("request_id", "x")
    params = SamplingParams(**({"max_tokens": 4} | kwargs))
    with pytest.raises(ValueError, match=message):
        engine.add_request(rid, prompt, params)


def test_duplicate_id_and_too_few_blocks(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=2, block_size=4))
    engine.add_request("x", [1, 2], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("x", [1, 2], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="need more than the 2 KV blocks"):
        engine.add_request("y", [1, 2, 3, 4, 5], SamplingParams(max_tokens=4))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"seed": "7"}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ],
)
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"block_size": 0}, "block_size"),
        ({"num_blocks": -1}, "num_blocks"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"nano_batches": 0}, "nano_batches"),
        ({"nano_batches": "many"}, "nano_batches"),
        ({"offload_max_bytes": 0}, "offload_max_bytes"),
        ({"attention": "flash"}, "attention"),
        ({"gemm": "blas"}, "gemm"),
    ],
)
def test_bad_engine_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**kwargs)


def test_tiny_temperature_samples_the_argmax(tiny_model, prompts):
    """1e-40 overflows logits / T to inf; the sampler must still draw (the argmax)."""
    greedy = LLMEngine(tiny_model).generate(
        prompts[:2], SamplingParams(max_tokens=8, temperature=0)
    )
    tiny = SamplingParams(max_tokens=8, temperature=1e-40, seed=0)
    assert LLMEngine(tiny_model).generate(prompts[:2], tiny) == greedy


def test_seeded_sampling_reproducible_across_batches_and_modes(tiny_model, prompts):
    p = SamplingParams(max_tokens=20, temperature=1.0, top_k=20, top_p=0.9, seed=123)
    alone = LLMEngine(tiny_model).generate([prompts[0]], p)[0]
    crowd = [SamplingParams(max_tokens=20, temperature=0.7, seed=i) for i in range(len(prompts))]
    for cfg in ({}, {"async_scheduling": True, "nano_batches": 2}):
        engine = LLMEngine(tiny_model, config=EngineConfig(**cfg))
        out = engine.generate([prompts[0]] + prompts[1:], [p] + crowd[1:])
        assert out[0] == alone
    other = LLMEngine(tiny_model).generate(
        [prompts[0]], SamplingParams(max_tokens=20, temperature=1.0, seed=124)
    )[0]
    assert other != alone
    # top_k=1 is greedy whatever the temperature
    greedy = LLMEngine(tiny_model).generate(
        [prompts[0]], SamplingParams(max_tokens=20, temperature=0)
    )
    assert (
        LLMEngine(tiny_model).generate(
            [prompts[0]], SamplingParams(max_tokens=20, temperature=2.0, top_k=1, seed=5)
        )
        == greedy
    )


def test_stop_token_ids_and_eos(tiny_model, tiny_hf, prompts, reference, hf_greedy):
    ref = reference[1]
    stop = ref[5]
    cut = ref[: ref.index(stop) + 1]
    engine = LLMEngine(tiny_model)
    engine.add_request(
        "s", prompts[1], SamplingParams(max_tokens=N_NEW, temperature=0, stop_token_ids=[stop])
    )
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert [t for o in outs for t in o.new_token_ids] == cut
    assert outs[-1].finish_reason == "stop"
    # eos given to the engine: HF stops there too; with async scheduling the finished
    # sequence already rides in the next iteration, whose token must be dropped
    ref_eos = hf_greedy(tiny_hf, prompts[:3], N_NEW, eos_token_id=stop)
    for cfg in ({}, {"async_scheduling": True}, {"async_scheduling": True, "nano_batches": 2}):
        e = LLMEngine(tiny_model, config=EngineConfig(**cfg), eos_token_ids=[stop])
        assert e.generate(prompts[:3], GREEDY) == ref_eos
        assert e.stats().kv_blocks_used == 0
    eos_engine = LLMEngine(tiny_model, eos_token_ids=[stop])
    # ignore_eos keeps going to max_tokens
    ignoring = SamplingParams(max_tokens=N_NEW, temperature=0, ignore_eos=True)
    assert eos_engine.generate([prompts[1]], ignoring) == [ref]


def test_split_nano_batches_keeps_order_and_covers():
    class S:
        def __init__(self, n):
            self.num_tokens = n

    work = [S(n) for n in (1, 1, 30, 1, 1, 1, 5)]
    groups = split_nano_batches(work, [20, 20])
    assert [x for g in groups for x in g] == work and len(groups) == 2
