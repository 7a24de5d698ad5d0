"""The engine under faults: a failed model step, prompts over the token budget, prefix-cache
hash collisions. Each mode is checked against HF transformers' greedy continuation."""

import pytest

from minirepro.papers.serve import EngineConfig, LLMEngine, SamplingParams
from minirepro.papers.serve import engine as engine_module
from minirepro.papers.serve import kv_cache as kv_cache_module
from minirepro.papers.serve import scheduler as scheduler_module
from minirepro.papers.serve.loadtest import FaultInjector

N_NEW = 6
GREEDY = SamplingParams(max_tokens=N_NEW, temperature=0)
pytestmark = pytest.mark.usefixtures("one_thread")

MODES = {
    "sync": {},
    "async": {"async_scheduling": True},
    "nano2": {"nano_batches": 2},
    "nano2_async": {"nano_batches": 2, "async_scheduling": True},
}


@pytest.fixture(scope="module")
def prompts(random_prompts):
    return random_prompts([7, 12, 5, 9], 64, seed=3)


@pytest.fixture(scope="module")
def reference(tiny_hf, prompts, hf_greedy):
    return hf_greedy(tiny_hf, prompts, N_NEW)


def _drain(engine, max_steps=200):
    """Step to the end; every output by request id, and the number of steps taken."""
    outs: dict[str, list] = {}
    for steps in range(1, max_steps + 1):
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
        if not engine.has_unfinished_requests():
            return outs, steps
    raise AssertionError(f"the engine did not finish in {max_steps} steps")


@pytest.mark.parametrize("mode", list(MODES))
def test_failed_step_fails_its_requests_only(tiny_model, prompts, reference, mode):
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4, **MODES[mode]))
    faults = FaultInjector(engine, lambda n: n == 3)  # a decode step of the first two requests
    for i in range(2):
        engine.add_request(f"a{i}", prompts[i], GREEDY)
    outs, _ = _drain(engine)
    finals = {rid: o[-1] for rid, o in outs.items()}
    failed = [rid for rid, o in finals.items() if o.finish_reason == "error"]
    assert faults.count == 1 and failed, "the injected fault failed no request"
    for rid in failed:
        assert finals[rid].finished and "injected fault" in finals[rid].error
    for rid in finals:  # the others (another nano-batch) finish normally, with HF's tokens
        if rid not in failed:
            assert [t for x in outs[rid] for t in x.new_token_ids] == reference[int(rid[1:])]
    assert engine.stats().kv_blocks_used == 0 and engine.stats().num_running == 0
    engine.blocks.check()
    # the engine is not poisoned: the next requests get HF's tokens
    assert engine.generate(prompts[2:], GREEDY) == reference[2:]
    assert engine.stats().kv_blocks_used == 0
    engine.close()


def test_generate_raises_when_a_request_fails(tiny_model, prompts):
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4))
    FaultInjector(engine, lambda n: True, message="broken kernel")
    with pytest.raises(RuntimeError, match="2 of 2 requests failed.*broken kernel"):
        engine.generate(prompts[:2], GREEDY)
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize("mode", list(MODES))
def test_over_budget_prompts_run_alone_without_chunking(
    tiny_model, prompts, reference, tiny_hf, hf_greedy, random_prompts, mode
):
    """Without chunked prefill, a prompt longer than the token budget used to wait forever
    (and the queue behind it) while the engine spun; now it runs in an iteration of its own."""
    (long,) = random_prompts([21], 64, seed=5)
    (long_ref,) = hf_greedy(tiny_hf, [long], N_NEW)
    cfg = EngineConfig(
        block_size=4, max_num_batched_tokens=10, enable_chunked_prefill=False, **MODES[mode]
    )
    engine = LLMEngine(tiny_model, config=cfg)
    batch = [prompts[0], long, prompts[1], prompts[2]]  # short, over budget, short, short
    for i, p in enumerate(batch):
        engine.add_request(f"r{i}", p, GREEDY)
    outs, steps = _drain(engine, max_steps=60)
    got = [[t for o in outs[f"r{i}"] for t in o.new_token_ids] for i in range(len(batch))]
    assert got == [reference[0], long_ref, reference[1], reference[2]]
    assert all(outs[f"r{i}"][-1].finish_reason == "length" for i in range(len(batch)))
    assert engine.stats().kv_blocks_used == 0
    engine.close()


def test_colliding_python_hashes_do_not_share_blocks(tiny_model, tiny_hf, hf_greedy, monkeypatch):
    """The old chain named block b by (hash(name of block b-1), tokens): two prefixes whose
    names hash alike gave an equal next block the same name, so a third prompt could be
    served another prompt's K/V (vLLM's CVE-2025-25183). Every Python hash() collides here,
    as a crafted prompt would make it; the sha256 chain does not use hash()."""
    for module in (engine_module, scheduler_module, kv_cache_module):
        monkeypatch.setattr(module, "hash", lambda _: 0, raising=False)
    a0, b0, x = [1, 2, 3, 4], [11, 12, 13, 14], [5, 6, 7, 8]
    first, other, probe = a0 + x + [9], b0 + [20, 21], b0 + x + [9]
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4))
    engine.generate([first], GREEDY)  # caches blocks a0, (a0)x
    engine.generate([other], GREEDY)  # caches block b0
    hits = engine.stats().prefix_cache_hits
    (out,) = engine.generate([probe], GREEDY)
    assert engine.stats().prefix_cache_hits - hits == 4  # b0 only, not first's x block
    assert out == hf_greedy(tiny_hf, [probe], N_NEW)[0]
    engine.close()
    # the chain's root is the model's identity (with the cache salt: an adapter, a tenant)
    salted = LLMEngine(tiny_model, config=EngineConfig(block_size=4, cache_salt="adapter-a"))
    assert salted.blocks.root != engine.blocks.root
    assert (
        LLMEngine(tiny_model, config=EngineConfig(block_size=4)).blocks.root == engine.blocks.root
    )


def test_a_request_that_can_never_start_fails_instead_of_looping():
    """The scheduler's safety net: nothing runs and the queue's head cannot get its blocks
    (the engine's admission checks make this unreachable through `add_request`)."""
    from minirepro.papers.serve.kv_cache import BlockManager
    from minirepro.papers.serve.sampling import Detokenizer
    from minirepro.papers.serve.scheduler import Scheduler, SchedulerConfig, Sequence

    sched = Scheduler(SchedulerConfig(4, 64, True), BlockManager(2, block_size=4))
    seq = Sequence("big", list(range(20)), GREEDY, None, Detokenizer(None, []), frozenset(), 0)
    sched.add(seq)
    assert sched.schedule() == []
    assert seq.finished and seq.finish_reason == "error" and "cannot be scheduled" in seq.error
    assert not sched.waiting and sched.blocks.num_available() == 2
