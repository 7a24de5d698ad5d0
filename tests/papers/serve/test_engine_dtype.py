"""Engine dtypes on any CPU: bf16 weights + KV cache and weight-only int8 against fp32 on a
tiny model, the bf16 KV cache in the paged attention kernel, the int8 quantizer, and the
float32 fallback (with its message) where the CPU has no native bf16."""

import copy

import pytest
import torch
import torch.nn.functional as F

from minirepro.core.precision import CpuFeatures, cpu_features
from minirepro.papers.serve import EngineConfig, LLMEngine, SamplingParams, dtypes, gemm
from minirepro.papers.serve.kernels import kernel_available
from minirepro.papers.serve.paged_attention import paged_decode_attention

pytestmark = pytest.mark.usefixtures("one_thread")

NATIVE = cpu_features().native_bf16
needs_bf16 = pytest.mark.skipif(not NATIVE, reason="no native bf16: the fallback test runs")
AMX_LIKE = CpuFeatures(amx_bf16=True, amx_int8=True, source="test")


def test_bad_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineConfig(dtype="fp16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtypes.resolve_dtype("float16")


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_falls_back_to_float32_without_native_bf16(dtype, tiny_model, monkeypatch):
    none = CpuFeatures(source="test")
    with pytest.warns(RuntimeWarning, match="needs native bf16 matmul.*runs in float32"):
        assert dtypes.resolve_dtype(dtype, features=none) == "float32"
    assert dtypes.resolve_dtype(dtype, features=AMX_LIKE) == dtype
    assert dtypes.resolve_dtype("float32", features=none) == "float32"
    monkeypatch.setattr(dtypes, "cpu_features", lambda: none)
    with pytest.warns(RuntimeWarning, match="no bf16/int8 matrix instructions detected"):
        engine = LLMEngine(tiny_model, config=EngineConfig(dtype=dtype, num_blocks=16))
    assert engine.dtype == "float32" and engine.cache.k[0].dtype == torch.float32


def test_low_precision_needs_a_float32_model(tiny_model):
    model = copy.deepcopy(tiny_model).double()
    with pytest.raises(ValueError, match="converts a float32 model"):
        LLMEngine(model, config=EngineConfig(dtype="bfloat16"))


def test_quantize_int8_per_channel():
    w = torch.randn(24, 40) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different scale
    w[5] = 0
    q, scale = dtypes.quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (24,) and int(q.abs().max()) == 127
    err = (dtypes.dequantize_int8(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-9).all()  # round to nearest, per row
    assert scale[5] == 1 and (q[5] == 0).all()
    with pytest.raises(ValueError, match="2-D"):
        dtypes.quantize_int8(torch.randn(3))


@needs_bf16
@pytest.mark.parametrize(
    ("dtype", "int8_path"), [("bfloat16", None), ("int8", "kernel"), ("int8", "torch")]
)
@pytest.mark.parametrize("rows", [1, gemm.TORCH_INT8_ROWS, gemm.INT8_ROWS, 37])
def test_low_precision_linear_matches_its_weights(dtype, int8_path, rows, monkeypatch):
    """bf16 / int8 GEMMs (every path: the int8 kernel -- or torch's int8 without a compiler
    -- for few rows, bf16 oneDNN for many) equal an fp64 product of the same rounded
    weights, up to bf16 output rounding."""
    if int8_path == "kernel" and not kernel_available():
        pytest.skip("no C++ compiler")
    if int8_path == "torch":
        monkeypatch.setattr(gemm, "kernel_available", lambda: False)
    torch.manual_seed(0)
    w = torch.randn(37, 96) / 10  # N not a multiple of the 16-column panels
    x = torch.randn(rows, 96).to(torch.bfloat16)
    kind = gemm.resolve_gemm("auto", w, dtype)
    packed = gemm.pack(w, kind, dtype)
    if dtype == "int8":
        q, s = dtypes.quantize_int8(w)
        ref_w = dtypes.dequantize_int8(q, s)
        assert (packed.panels8 is not None) == (int8_path == "kernel")
        assert (packed.int8 is not None) == (int8_path == "torch")
    else:
        ref_w = w.bfloat16().float()
    ref = F.linear(x.double(), ref_w.double())
    y = gemm.linear(x, packed)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, 37)
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)


def test_packed_gemm_is_float32_only():
    if not kernel_available():
        pytest.skip("no C++ compiler")
    with pytest.raises(ValueError, match="packed GEMM kernel needs dtype 'float32'"):
        gemm.resolve_gemm("packed", torch.zeros(2, 2), "bfloat16")


def test_kernel_reads_a_bf16_cache():
    if not kernel_available():
        pytest.skip("no C++ compiler")
    g = torch.Generator().manual_seed(0)
    k = torch.randn(12, 4, 2, 16, generator=g).bfloat16()
    v = torch.randn(12, 4, 2, 16, generator=g).bfloat16()
    q = 2 * torch.randn(3, 4, 16, generator=g)
    tables = torch.tensor([[3, 7, 1, 0], [5, 2, 9, 11], [8, 0, 0, 0]])
    lens = torch.tensor([10, 16, 3])
    out = paged_decode_attention(q, k, v, tables, lens, backend="kernel")
    ref = paged_decode_attention(q, k.float(), v.float(), tables, lens, backend="torch")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="float32 or bfloat16 cache"):
        paged_decode_attention(q, k.half(), v.half(), tables, lens, backend="kernel")


@needs_bf16
@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_engine_tracks_float32(dtype, tiny_model):
    """Greedy tokens of a mixed prefill/decode batch (KV kernel and torch attention) stay
    mostly equal to the fp32 engine's, and per-token log-probs stay close."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (5, 17, 33, 9, 26, 12)]
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    ref_engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64))
    ref = ref_engine.generate(prompts, params)
    text = [t for p in prompts for t in p]
    ref_lp = ref_engine.score(text)
    for attention in ("auto", "torch"):
        engine = LLMEngine(
            tiny_model, config=EngineConfig(num_blocks=64, dtype=dtype, attention=attention)
        )
        assert engine.cache.k[0].dtype == torch.bfloat16
        out = engine.generate(prompts, params)
        assert sum(a == b for a, b in zip(out, ref)) >= len(ref) - 1
        lp = engine.score(text)
        assert (lp - ref_lp).abs().mean() < 0.05
        assert abs(lp.mean() - ref_lp.mean()) < 0.02


def test_score_checks_its_input(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, max_num_batched_tokens=8))
    with pytest.raises(ValueError, match="score needs"):
        engine.score([1])
    with pytest.raises(ValueError, match="score needs"):
        engine.score([1, 64])
    lp = engine.score(list(range(30)))  # four chunks of 8 through the cache
    logits = tiny_model(torch.arange(30)[None])
    logits = logits[0] if isinstance(logits, tuple) else logits
    ref = torch.log_softmax(logits[0, :-1].float(), -1).gather(1, torch.arange(1, 30)[:, None])
    torch.testing.assert_close(lp, ref[:, 0], rtol=1e-4, atol=1e-4)
    assert engine.blocks.num_available() == 16


def test_llama_cpp_contender_is_skipped_with_a_reason(monkeypatch):
    import sys

    from minirepro.papers.serve import contenders

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    assert "llama_cpp not installed" in contenders.llama_cpp_available()
    assert "make bench" in contenders.llama_cpp_available()


def test_timed_engine_run_reports_ttft_and_rates(tiny_model):
    from minirepro.papers.serve import contenders

    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32))
    t = contenders.run_engine_timed(engine, [[1, 2, 3], [4, 5, 6, 7]], [5, 3])
    assert [len(o) for o in t.outputs] == [5, 3] and t.output_tokens == 8
    assert t.prompt_tokens == 7 and 0 < min(t.ttft_s) <= max(t.ttft_s) <= t.wall_s
    assert t.total_tok_s > t.output_tok_s > 0
    s = contenders.single_stream(contenders.engine_single(engine), [1, 2, 3, 4], 6)
    assert s["decode_tok_s"] > 0 and s["ttft_s"] > 0


def test_cli_serve_rejects_an_unknown_dtype():
    from typer.testing import CliRunner

    from minirepro import cli

    result = CliRunner().invoke(cli.app, ["serve", "--dtype", "fp16", "--port", "0"])
    assert result.exit_code == 2
    assert "dtype must be one of" in result.output
