"""Speculative decoding with a hybrid target equals greedy decoding of the target alone."""

import copy

import pytest
import torch
from torch import nn

from minirepro.core.generate import generate
from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.hybrid import speculative_generate


class FlipDraft(nn.Module):
    """The target's own predictions, except at chosen positions where its best token is
    removed: a draft that is rejected exactly there."""

    def __init__(self, model: Transformer, flip: set[int]) -> None:
        super().__init__()
        self.model, self.flip = model, flip

    def new_cache(self, batch_size, max_len=None):
        return self.model.new_cache(batch_size, max_len)

    def forward(self, idx, cache):
        start = cache.pos
        logits = self.model(idx, cache).clone()
        for i in range(idx.shape[1]):
            if start + i + 1 in self.flip:  # the position of the token this row predicts
                logits[:, i, logits[:, i].argmax(-1)] = float("-inf")
        return logits


def _target(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=32, n_layer=3, d_model=32, n_head=4, n_kv_head=2, init_std=0.3,
        mixer=("mamba2", "attention", "mamba"), mixer_kwargs={"chunk_size": 4},
    )  # fmt: skip
    return Transformer(cfg).eval()


def _flips(start: int, n: int, k: int) -> set[int]:
    """Positions to flip so that round r rejects draft r mod (K+1) (K: all accepted).

    Round r begins with the verified token at `base`; its drafts sit at base+1..base+K, so
    flipping base+1+o makes the target accept exactly o drafts, and the next round begins
    at base+1+o.
    """
    flips, base, r = set(), start, 0
    while base < start + n:
        o = r % (k + 1)
        if o < k:
            flips.add(base + 1 + o)
        base, r = base + 1 + o, r + 1
    return flips


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_equals_greedy_with_rejections_at_every_offset(k):
    target = _target()
    prompt = torch.randint(0, 32, (7,), generator=torch.Generator().manual_seed(k)).tolist()
    n = 60
    greedy = generate(target, prompt, max_new_tokens=n)[0]
    draft = FlipDraft(copy.deepcopy(target), _flips(len(prompt), n, k))
    out, stats = speculative_generate(target, draft, prompt, n, k=k)
    assert out == greedy
    assert all(c > 0 for c in stats.accepted), stats.accepted  # every offset rejected, and none
    assert stats.tokens == n
    assert stats.target_passes == 1 + sum(stats.accepted)


def test_perfect_draft_needs_one_pass_per_round_and_stop_tokens_end_it():
    target = _target(1)
    prompt = [3, 1, 4, 1, 5]
    out, stats = speculative_generate(target, copy.deepcopy(target), prompt, 41, k=4)
    assert out == generate(target, prompt, max_new_tokens=41)[0]
    assert stats.accepted[:4] == [0, 0, 0, 0] and stats.target_passes == 1 + 8
    stop = out[10]
    first = out.index(stop)
    out2, _ = speculative_generate(
        target, copy.deepcopy(target), prompt, 41, k=4, stop_tokens=[stop]
    )
    assert out2 == out[:first]


def test_unrelated_draft_and_bad_arguments():
    target, draft = _target(2), _target(3)
    prompt = [1, 2, 3]
    out, stats = speculative_generate(target, draft, prompt, 30, k=3)
    assert out == generate(target, prompt, max_new_tokens=30)[0]
    with pytest.raises(ValueError, match="k must be"):
        speculative_generate(target, draft, prompt, 5, k=0)
    with pytest.raises(ValueError, match="prompt"):
        speculative_generate(target, draft, [], 5)
    with pytest.raises(ValueError, match="prompt"):
        speculative_generate(target, draft, [[1, 2], [3, 4]], 5)  # one sequence at a time
    other = Transformer(ModelConfig(vocab_size=40, n_layer=1, d_model=32, n_head=4))
    with pytest.raises(ValueError, match="vocabularies differ"):
        speculative_generate(target, other, prompt, 5)


def test_int8_and_layer_skip_drafts_keep_the_output_greedy():
    from minirepro.papers.hybrid import int8_draft, layer_skip_draft

    target = _target(4)
    prompt = [5, 6, 7, 8]
    greedy = generate(target, prompt, max_new_tokens=25)[0]
    q = int8_draft(target)
    assert q.layers[0].mixer.in_proj is not target.layers[0].mixer.in_proj  # a copy
    assert "quantized" in type(q.layers[1].mlp.w_up).__module__
    for draft in (q, layer_skip_draft(target, [0, 2])):
        out, stats = speculative_generate(target, draft, prompt, 25, k=4)
        assert out == greedy
    assert layer_skip_draft(target, [0, 2]).layers[1] is target.layers[2]  # shared, not copied
    with pytest.raises(ValueError, match="increasing"):
        layer_skip_draft(target, [2, 0])
    with pytest.raises(ValueError, match="skip at least one"):
        layer_skip_draft(target, [0, 1, 2])
