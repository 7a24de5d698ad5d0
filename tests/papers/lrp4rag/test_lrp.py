"""AttnLRP / CP-LRP on the core decoder: equal to lxt's on HF Llama, and conservative."""

import importlib
import sys
import types

import pytest
import torch

from minirepro.core.hf_llama import to_hf
from minirepro.core.model import ModelConfig, Transformer, register_mixer
from minirepro.papers.lrp4rag import lrp_mode, relevance_matrix


def _lxt_patches():
    """lxt's efficient AttnLRP patches, or skip.

    `import lxt.efficient` imports every model lxt knows, and its BERT module needs a
    transformers 4 helper; the Llama patches themselves do not. So the package's __init__ is
    bypassed with an empty package module (only for this import; sys.modules is restored).
    """
    try:
        import lxt  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"lxt does not import ({exc}); install it with `pip install --no-deps lxt`")
    saved = {k: v for k, v in sys.modules.items() if k.startswith("lxt.efficient")}
    try:
        return importlib.import_module("lxt.efficient.patches")
    except ImportError:
        pkg = types.ModuleType("lxt.efficient")
        pkg.__path__ = [str(__import__("pathlib").Path(lxt.__file__).parent / "efficient")]
        sys.modules["lxt.efficient"] = pkg
        try:
            return importlib.import_module("lxt.efficient.patches")
        except ImportError as exc:
            pytest.skip(f"lxt.efficient.patches does not import: {exc}")
        finally:
            for k in [k for k in sys.modules if k.startswith("lxt.efficient")]:
                sys.modules.pop(k) if k not in saved else None
            sys.modules.update(saved)


def _lxt_relevance(hf, ids, n_prompt, variant, monkeypatch):
    """Rows of relevance by lxt's rules on HF Llama, one backward per response token."""
    patches = _lxt_patches()
    from transformers.models.llama import modeling_llama as ml

    attnlrp = variant == "attnlrp"
    monkeypatch.setattr(
        ml.LlamaMLP,
        "forward",
        patches.gated_mlp_forward if attnlrp else patches.cp_gated_mlp_forward,
    )
    monkeypatch.setattr(ml.LlamaRMSNorm, "forward", patches.rms_norm_forward)
    wrap = patches.wrap_attention_forward if attnlrp else patches.cp_wrap_attention_forward
    monkeypatch.setattr(ml, "eager_attention_forward", wrap(ml.eager_attention_forward))
    hf.config._attn_implementation = "eager"
    rows, logits = [], []
    for pos in range(n_prompt, ids.shape[1]):
        emb = hf.get_input_embeddings()(ids[:, :pos]).detach().requires_grad_(True)
        out = hf(inputs_embeds=emb, use_cache=False).logits[0, -1, ids[0, pos]]
        out.backward()
        rel = (emb * emb.grad).sum(-1)[0]
        rows.append(torch.cat([rel, rel.new_zeros(ids.shape[1] - pos)]))
        logits.append(out.item())
    return torch.stack(rows).detach(), torch.tensor(logits)


def _tiny(seed=0, n_kv_head=2):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=96, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=64, tie_embeddings=False
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():  # larger logits, so the explained values are not tiny
        model.lm_head.weight.mul_(20)
    return model


@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
@pytest.mark.parametrize("n_kv_head", [2, 4])
def test_relevance_equals_lxt_on_hf_llama(variant, n_kv_head, monkeypatch):
    model = _tiny(1, n_kv_head)
    hf = to_hf(model)
    g = torch.Generator().manual_seed(7)
    prompt, response = (
        torch.randint(0, 96, (11,), generator=g),
        torch.randint(0, 96, (5,), generator=g),
    )
    ref, ref_logits = _lxt_relevance(
        hf, torch.cat([prompt, response])[None], 11, variant, monkeypatch
    )
    ours = relevance_matrix(model, prompt, response, variant, chunk_size=3)
    torch.testing.assert_close(ours.logits, ref_logits, rtol=1e-5, atol=1e-5)
    # Rows hold positions 0..n_p+i-1; lxt's row i is padded the same way.
    torch.testing.assert_close(ours.matrix, ref[:, :-1], rtol=1e-4, atol=1e-5)


def test_batched_backward_equals_one_backward_per_token():
    model = _tiny(2)
    g = torch.Generator().manual_seed(3)
    p, r = torch.randint(0, 96, (9,), generator=g), torch.randint(0, 96, (7,), generator=g)
    a = relevance_matrix(model, p, r, chunk_size=4).matrix
    b = relevance_matrix(model, p, r, chunk_size=None).matrix
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (a[0, 9:] == 0).all() and (a[3, 12:] == 0).all()  # causal: later tokens get none


def test_conservation_on_core_decoder():
    model = _tiny(3)
    g = torch.Generator().manual_seed(4)
    p, r = torch.randint(0, 96, (14,), generator=g), torch.randint(0, 96, (8,), generator=g)
    cp = relevance_matrix(model, p, r, "cp")
    # CP-LRP makes the network linear in its input: conservation is exact.
    torch.testing.assert_close(cp.matrix.sum(1), cp.logits, rtol=1e-4, atol=1e-4)
    # AttnLRP loses the share the softmax's linearisation gives its bias: close, not exact
    # (on this random model the median error is ~0.2 of the logit; on SmolLM2, NOTES.md).
    at = relevance_matrix(model, p, r, "attnlrp")
    err = (at.matrix.sum(1) - at.logits).abs() / at.logits.abs().clamp_min(1e-3)
    assert err.median() < 0.35, err
    assert torch.corrcoef(torch.stack([at.matrix.sum(1), at.logits]))[0, 1] > 0.95
    # A plain gradient x input is far from conservative on the same model.
    assert (at.matrix - cp.matrix).abs().max() > 1e-3


def test_lrp_mode_restores_model_and_keeps_forward_values():
    model = _tiny(4)
    ids = torch.randint(0, 96, (2, 10))
    before = model(ids)
    attn_fn = model.layers[0].mixer.attn_fn
    with lrp_mode(model, "attnlrp"):
        torch.testing.assert_close(model(ids), before)
        assert "forward" in model.layers[0].mlp.__dict__
        assert model.layers[0].mixer.attn_fn is not attn_fn
    assert "forward" not in model.layers[0].mlp.__dict__
    assert model.layers[0].mixer.attn_fn is attn_fn
    torch.testing.assert_close(model(ids), before)
    with pytest.raises(ValueError, match="unknown LRP variant"):
        with lrp_mode(model, "gradcam"):
            pass
    with pytest.raises(ValueError, match="at least one"):
        relevance_matrix(model, [1, 2], [])


class _Shift(torch.nn.Module):
    """A token mixer no LRP rule covers: each position takes its predecessor's state."""

    def __init__(self, cfg, layer):
        super().__init__()

    def forward(self, x, inp):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)

    def new_cache(self, *args):
        return None


def test_unsupported_mixer_is_named_and_nothing_stays_patched():
    register_mixer("lrp_test_shift", _Shift)
    cfg = ModelConfig(
        vocab_size=32, n_layer=2, n_head=2, d_model=32, mixer=("attention", "lrp_test_shift")
    )
    model = Transformer(cfg)
    with pytest.raises(ValueError, match="layer 1: _Shift has no LRP rule"):
        with lrp_mode(model):
            pass
    assert "forward" not in model.layers[0].mlp.__dict__
    assert "forward" not in model.norm.__dict__
