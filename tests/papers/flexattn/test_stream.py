"""The stream strategy: memory O(S x block) with a score_mod, fp32 softmax for bf16."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from minirepro.papers.flexattn import create_block_mask, flex_attention, make_causal, make_softcap
from minirepro.papers.flexattn.masks import offset_mask
from minirepro.papers.flexattn.reference import dense_flex_attention


class LargestAllocation(TorchDispatchMode):
    """Records the largest storage any aten op returns (tracemalloc does not see torch's
    allocator; every tensor an op creates passes through here)."""

    def __init__(self):
        super().__init__()
        self.nbytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.nbytes:
                self.nbytes, self.op = t.untyped_storage().nbytes(), func
        return out


def _tensor_bytes(obj, seen=None) -> int:
    """Bytes of the tensors reachable from obj through dataclass fields, lists and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(x, seen) for x in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(x, seen) for x in obj)
    if hasattr(obj, "__dict__"):
        return _tensor_bytes(vars(obj), seen)
    return 0


@pytest.mark.parametrize("S,block,backward", [(8192, 256, False), (2048, 128, True)])
def test_score_mod_causal_memory_is_o_s_times_block(S, block, backward):
    """score_mod + causal: the largest tensor is O(S x block) (one step of scores), never
    the listed area (S²/2 scores: 128 MB at S = 8192) nor an additive mask that large.
    (Blocks of 256 at S = 8192: fewer steps, as the dispatch mode makes each op slow.)"""
    D = 16
    g = torch.Generator().manual_seed(8192)
    q, k, v = (torch.randn(1, 1, S, D, generator=g).requires_grad_(backward) for _ in range(3))
    bm = create_block_mask(make_causal(), None, None, S, S, BLOCK_SIZE=block)
    softcap = make_softcap(20.0)
    with LargestAllocation() as mem:
        out = flex_attention(q, k, v, softcap, bm)
        if backward:
            grads = torch.autograd.grad(out.sum(), (q, k, v))
    step = S * block * 4  # one fp32 score per (query, key of a block)
    listed = S * S // 2 * 4
    assert mem.nbytes <= 2 * step, (mem.nbytes, mem.op, listed)
    assert 0 < _tensor_bytes(bm._cache) < step / 8  # the plan keeps distinct bool tiles, not masks
    # The last 64 query rows against the dense oracle (a 64 x S slice of the scores).
    tail = q[:, :, -64:].detach()
    expect, _ = dense_flex_attention(
        tail, k.detach(), v.detach(), softcap, offset_mask(make_causal(), S - 64)
    )
    torch.testing.assert_close(out[:, :, -64:].detach(), expect, atol=1e-5, rtol=1e-5)
    if backward:
        assert all(torch.isfinite(x).all() for x in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("plan", ["stream", None])
def test_half_inputs_accumulate_in_fp32(dtype, plan):
    """bf16/fp16 in, out in the same dtype, the softmax accumulated in fp32: the error is
    the output's rounding alone (fp32 LSE within 1e-4 of the fp32 oracle)."""
    S, D = 200, 32
    g = torch.Generator().manual_seed(16)
    q, k, v = (torch.randn(2, 2, S, D, generator=g).to(dtype) for _ in range(3))
    bm = create_block_mask(make_causal(), None, None, S, S, BLOCK_SIZE=64)
    sm = make_softcap(5.0) if plan == "stream" else None
    q.requires_grad_()
    out, lse = flex_attention(q, k, v, sm, bm, return_lse=True, kernel_options={"plan": plan})
    assert out.dtype == dtype and lse.dtype == torch.float32
    qf = q.detach().float().requires_grad_()
    exp_out, exp_lse = dense_flex_attention(qf, k.float(), v.float(), sm, make_causal())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), exp_out, atol=4 * eps, rtol=4 * eps)
    torch.testing.assert_close(lse, exp_lse, atol=1e-4, rtol=1e-5)
    do = torch.randn(out.shape, generator=g)
    (dq,) = torch.autograd.grad(out, q, do.to(dtype))
    (dq_exp,) = torch.autograd.grad(exp_out, qf, do)
    assert dq.dtype == dtype
    torch.testing.assert_close(dq.float(), dq_exp, atol=16 * eps, rtol=16 * eps)
