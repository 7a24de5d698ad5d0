"""Our DPO loss against TRL's (the sigmoid loss of `trl.DPOTrainer`) on the same
log-probs, for single-token and whole-response pairs; the trainer with precomputed and
live reference log-probs; the policy's batched sampling."""

from __future__ import annotations

import copy
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.pivotal import (
    DPOConfig,
    LMPolicy,
    PreferencePair,
    completion_logps,
    dpo_loss,
    pad_pairs,
    reference_logps,
    train_dpo,
)

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer", reason="trl (the pivotal extra)")

V, PAD = 23, 0


def tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=V, n_layer=1, n_head=2, d_model=16, max_seq_len=64))


def random_pairs(seed: int, n: int, single: bool) -> list[PreferencePair]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        k = int(torch.randint(lo, hi, (1,), generator=g))
        return tuple(int(t) for t in torch.randint(1, V, (k,), generator=g))

    out = []
    while len(out) < n:
        c, r = (ids(1, 2), ids(1, 2)) if single else (ids(1, 9), ids(1, 9))
        if c != r:
            out.append(PreferencePair(ids(2, 12), c, r))
    return out


def per_token_logps(model, ids, mask):
    """(B, S-1) log-probs of each next token, 0 outside the completion: what TRL's fused
    head returns as ``outputs.log_probs`` for labels masked to the completion."""
    logits = model(ids[:, :-1]).float()
    logp = torch.gather(logits.log_softmax(-1), -1, ids[:, 1:, None])[..., 0]
    return logp * mask[:, 1:]


def trl_loss(beta, ids, mask, logps, ref_logps=None, ref_model_logps=None):
    """TRL's own `DPOTrainer._compute_loss` (trl 1.16), on a stand-in trainer whose model
    returns ``logps`` as its per-token log-probs."""
    n = logps.shape[0]

    def outputs(lp):
        zeros = torch.zeros_like(lp)
        return SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    acc = SimpleNamespace(
        device=torch.device("cpu"), gather_for_metrics=lambda t: t, gather=lambda t: t
    )
    live = ref_logps is None
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True, is_gradient_checkpointing=False), accelerator=acc,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=not live, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
        ref_model=(lambda **kw: outputs(ref_model_logps)) if live else None,
    )  # fmt: skip
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": mask}
    if not live:
        inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref_logps.chunk(2)
    assert n == ids.shape[0]
    return trl_dpo.DPOTrainer._compute_loss(trainer, lambda **kw: outputs(logps), inputs, False)


@pytest.mark.parametrize("single", [True, False], ids=["single-token", "full-response"])
@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
def test_dpo_loss_equals_trl_outputs_and_gradients(single, beta):
    policy, ref = tiny(0), tiny(1)
    pairs = random_pairs(int(beta * 100) + single, 6, single)
    cid, cm, rid, rm = pad_pairs(pairs, PAD)
    ids, mask = torch.cat([cid, rid]), torch.cat([cm, rm])  # TRL's batch: chosen then rejected

    with torch.no_grad():
        ref_c, ref_r = reference_logps(ref, pairs, PAD)
        ref_tok = per_token_logps(ref, ids, mask)
    torch.testing.assert_close(torch.cat([ref_c, ref_r]), ref_tok.sum(1))

    ours, _ = dpo_loss(*completion_logps(policy, ids, mask).chunk(2), ref_c, ref_r, beta)
    ours.backward()
    g_ours = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()

    theirs = trl_loss(
        beta, ids, mask, per_token_logps(policy, ids, mask), torch.cat([ref_c, ref_r])
    )
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    for a, p in zip(g_ours, policy.parameters()):
        torch.testing.assert_close(a, p.grad)

    with torch.no_grad():  # TRL's live reference forward gives the same loss
        live = trl_loss(beta, ids, mask, per_token_logps(policy, ids, mask), None, ref_tok)
    torch.testing.assert_close(ours.detach(), live)


def test_dpo_loss_closed_form():
    # one pair: -log sigmoid(beta * ((c - rc) - (r - rr)))
    c, r, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5))
    loss, margin = dpo_loss(c, r, rc, rr, 0.5)
    m = 0.5 * ((-1.0 + 2.0) - (-3.0 + 2.5))
    assert margin.item() == pytest.approx(m)
    assert loss.item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(-m)).item())


def test_dpo_loss_refuses_bad_input():
    a = torch.zeros(3)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(a, a, a, a, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(a, a, a, torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="no context"):
        completion_logps(
            tiny(), torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="no preference pairs"):
        pad_pairs([], PAD)
    with pytest.raises(ValueError, match="same continuation"):
        PreferencePair((1,), (2,), (2,))


@pytest.mark.parametrize("single", [True, False])
def test_train_dpo_precomputed_equals_live_reference_and_learns(single):
    pairs = random_pairs(3, 8, single)
    cfg = DPOConfig(beta=0.5, steps=25, batch_size=4, lr=3e-3, warmup_steps=0)
    runs = []
    for precompute in (True, False):
        model, ref = tiny(0), tiny(0)
        c = DPOConfig(**{**cfg.__dict__, "precompute_ref": precompute})
        losses = train_dpo(model, ref, pairs, c, PAD)
        runs.append((model, losses))
    torch.testing.assert_close(runs[0][1], runs[1][1])
    model, losses = runs[0]
    assert losses[-1] < 0.5 < losses[0] < 0.75  # ln 2 = 0.693 where policy = reference
    ref = tiny(0)
    # the chosen side gained on the rejected side for every pair
    cid, cm, rid, rm = pad_pairs(pairs, PAD)
    with torch.no_grad():
        gain = (completion_logps(model, cid, cm) - completion_logps(ref, cid, cm)) - (
            completion_logps(model, rid, rm) - completion_logps(ref, rid, rm)
        )
    assert bool((gain > 0).all())


def test_policy_batched_sampling_equals_one_prefix_at_a_time():
    model = tiny(0)
    prefixes = [[1, 5, 7], [1, 2], [1, 9, 9, 4, 3]]
    greedy = LMPolicy(model, eos_id=22, max_new_tokens=6, temperature=0.0)
    batched = greedy.sample_batch(prefixes, 2)
    for p, comps in zip(prefixes, batched):
        assert comps == greedy.sample(p, 2)
    pol = LMPolicy(copy.deepcopy(model), eos_id=22, max_new_tokens=6, temperature=1.0, seed=3)
    again = LMPolicy(copy.deepcopy(model), eos_id=22, max_new_tokens=6, temperature=1.0, seed=3)
    assert pol.sample([1, 2], 5) == again.sample([1, 2], 5)  # same seed, same samples
    top = greedy.top_tokens([1, 2], 3)
    assert len(top) == 3 and top[0] == greedy.sample([1, 2], 1)[0][0]
    with pytest.raises(ValueError):
        greedy.sample([], 2)
