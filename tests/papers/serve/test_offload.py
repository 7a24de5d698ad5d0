"""KV offload: the second turn of a conversation restores the first turn's K/V from disk,
gives HF's tokens, and falls back to recomputation on missing, corrupt or stale files."""

import pytest
import torch

from minirepro.papers.serve import EngineConfig, LLMEngine, SamplingParams
from minirepro.papers.serve.offload import OffloadStore

pytestmark = pytest.mark.usefixtures("one_thread")
N_NEW = 12
GREEDY = SamplingParams(max_tokens=N_NEW, temperature=0)


def _run(engine, rid, prompt, conversation_id):
    engine.add_request(rid, prompt, GREEDY, conversation_id=conversation_id)
    tokens, outs = [], []
    while engine.has_unfinished_requests():
        for o in engine.step():
            tokens += o.new_token_ids
            outs.append(o)
    engine.wait_offload()
    return tokens, outs[-1]


@pytest.fixture(scope="module")
def conversation(tiny_hf, hf_greedy, random_prompts):
    first, follow = random_prompts([37, 6], 64, seed=11)
    (reply,) = hf_greedy(tiny_hf, [first], N_NEW)
    second = first + reply + follow
    (reply2,) = hf_greedy(tiny_hf, [second], N_NEW)
    return first, reply, second, reply2


def _engine(model, tmp_path, **kw):
    # prefix caching off: the restored tokens can only come from the offload files
    cfg = EngineConfig(block_size=4, enable_prefix_caching=False, offload_dir=str(tmp_path), **kw)
    return LLMEngine(model, config=cfg)


@pytest.mark.parametrize("mode", [{}, {"async_scheduling": True, "nano_batches": 2}])
def test_second_turn_restored_equals_hf(tiny_model, tmp_path, conversation, mode):
    first, reply, second, reply2 = conversation
    engine = _engine(tiny_model, tmp_path, **mode)
    tokens, _ = _run(engine, "t1", first, "conv")
    assert tokens == reply
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    tokens2, last = _run(engine, "t2", second, "conv")
    assert tokens2 == reply2
    # the turn's prompt and all output tokens but the last (never fed back) were saved
    assert last.cached_tokens == len(first) + len(reply) - 1
    s = engine.stats()
    assert s.offload_hits == 1 and s.offload_misses == 1  # turn 1 found nothing
    assert s.kv_blocks_used == 0
    # a fresh engine (a restart) finds the files on disk
    fresh = _engine(tiny_model, tmp_path, **mode)
    tokens3, last3 = _run(fresh, "t2", second, "conv")
    assert tokens3 == reply2 and last3.cached_tokens > len(first)
    engine.close()
    fresh.close()


def _corrupt_data(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 200, len(data) - 100):
        data[i] ^= 0x5A  # flip bytes inside the tensor data
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1000])


def _garbage(path):
    path.write_bytes(b"not a safetensors file")


@pytest.mark.parametrize(
    "damage",
    [_corrupt_data, _truncate, _garbage, lambda p: p.unlink()],
    ids=["bits", "truncated", "garbage", "missing"],
)
def test_damaged_file_falls_back_to_recompute(tiny_model, tmp_path, conversation, damage):
    first, reply, second, reply2 = conversation
    engine = _engine(tiny_model, tmp_path)
    assert _run(engine, "t1", first, "conv")[0] == reply
    (path,) = tmp_path.glob("*.safetensors")
    damage(path)
    tokens, last = _run(engine, "t2", second, "conv")
    assert tokens == reply2 and last.cached_tokens == 0
    assert engine.stats().offload_hits == 0 and engine.stats().offload_misses == 2
    # the damaged file was dropped; the file there now is the second turn's
    assert engine.offload.index["conv"].token_ids == second + reply2[:-1]


def test_other_prompt_or_model_does_not_restore(
    tiny_model, tmp_path, conversation, tiny_hf, hf_greedy
):
    first, reply, second, reply2 = conversation
    engine = _engine(tiny_model, tmp_path)
    _run(engine, "t1", first, "conv")
    changed = [(second[0] + 1) % 64] + second[1:]  # the saved tokens are no prefix of it
    tokens, last = _run(engine, "t2", changed, "conv")
    assert tokens == hf_greedy(tiny_hf, [changed], N_NEW)[0] and last.cached_tokens == 0
    # another model's engine ignores the files (fingerprint)
    other = type(tiny_model)(tiny_model.cfg).eval()
    stranger = _engine(other, tmp_path)
    assert stranger.offload.lookup("conv", second) == 0


def test_retemplated_chat_restores_the_common_prefix(tiny_model, tmp_path, tiny_hf, hf_greedy):
    """The second turn's prompt is the chat template over the first turn's messages and its
    reply, cut short (as at a stop string) and re-tokenised: the saved tokens are no longer
    a prefix of it, but their longest common prefix is restored."""
    from minirepro.core.tokenizer import CharTokenizer
    from minirepro.papers.serve.served_model import CoreTokenizerAdapter, make_plain_chat_encoder

    tokenizer = CoreTokenizerAdapter(CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz :\n"))
    chat = make_plain_chat_encoder(tokenizer.encode)
    engine = LLMEngine(
        tiny_model,
        tokenizer,
        EngineConfig(block_size=4, enable_prefix_caching=False, offload_dir=str(tmp_path)),
    )
    turn1 = [{"role": "user", "content": "tell me a story"}]
    first = chat(turn1)
    reply, _ = _run(engine, "t1", first, "conv")
    cut = tokenizer.decode(reply)[:5]  # the client keeps the reply up to a stop string
    second = chat(
        turn1 + [{"role": "assistant", "content": cut}, {"role": "user", "content": "go on"}]
    )
    saved = engine.offload.index["conv"].token_ids
    common = next(i for i, (a, b) in enumerate(zip(saved + [-1], second)) if a != b)
    assert second[: len(saved)] != saved and common >= len(first) >= 4
    tokens, last = _run(engine, "t2", second, "conv")
    assert last.cached_tokens == common and engine.stats().offload_hits == 1
    assert tokens == hf_greedy(tiny_hf, [second], N_NEW)[0]
    assert engine.stats().kv_blocks_used == 0
    engine.close()


def test_lru_bound_evicts_oldest(tmp_path):
    k = torch.randn(2, 10, 2, 4)
    probe = OffloadStore(tmp_path / "probe", max_bytes=1 << 20, fingerprint="f")
    probe.save("a", list(range(10)), k, k.clone())
    size_one = probe.total_bytes()  # tensors + header + metadata
    store = OffloadStore(tmp_path / "lru", max_bytes=int(2.5 * size_one), fingerprint="f")
    for name in ("a", "b"):
        assert store.save(name, list(range(10)), k, k.clone())
    store.load("a", list(range(10)), 5)  # a is now the most recently used
    store.save("c", list(range(10)), k, k.clone())
    assert set(store.index) == {"a", "c"} and store.evictions == 1
    assert len(list((tmp_path / "lru").glob("*.safetensors"))) == 2
    assert store.total_bytes() <= store.max_bytes
    loaded = store.load("a", list(range(10)), 5)
    torch.testing.assert_close(loaded[0], k[:, :5], rtol=0, atol=0)
    # the longest common prefix, rounded down to the alignment
    assert store.lookup("a", [0, 1, 2, 9]) == 3 and store.lookup("a", list(range(4))) == 4
    assert store.lookup("a", [0, 1, 2, 9], align=2) == 2 and store.lookup("a", [5]) == 0
    assert not store.save(
        "huge", list(range(1000)), torch.randn(2, 1000, 2, 64), torch.randn(2, 1000, 2, 64)
    )
    with pytest.raises(ValueError, match="offload_max_bytes must be positive"):
        OffloadStore(tmp_path / "lru", 0, "f")
