"""bf16 and weight-only int8 engines on the real SmolLM2-135M-Instruct, against the fp32 engine
(itself checked against HF transformers in test_engine_smollm2.py): the share of prompts whose
greedy continuation is identical, and perplexity on a held-out text."""

import math

import pytest
import torch

from minirepro.core.precision import cpu_features
from minirepro.papers.serve import EngineConfig, LLMEngine, SamplingParams

pytestmark = [pytest.mark.llm, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

N_NEW = 12
QUESTIONS = [
    "What is the capital of France?",
    "Name a colour.",
    "Write one word about the sea, then stop.",
    "How many legs does a spider have?",
    "What is 2 + 2?",
    "Give me a synonym for happy.",
    "What do bees make?",
    "Translate 'thank you' into Spanish.",
    "Which planet is closest to the sun?",
    "What is the opposite of cold?",
    "Name a fruit that is yellow.",
    "Who wrote Romeo and Juliet?",
    "What language is spoken in Brazil?",
    "How many days are in a week?",
    "What gas do plants take in?",
    "Finish the sentence: the early bird",
]
# Written for this test (so in no training set): the held-out text of the perplexity check.
HELD_OUT = (
    "The lighthouse keeper on the northern island kept a notebook of every ship that passed. "
    "In the spring of that year she counted forty-one fishing boats, three ferries and a "
    "single sailing yacht with a torn red sail. The yacht came back twice, always at dusk, and "
    "never answered her radio. On the third evening she rowed out to meet it, carrying a lamp "
    "and a thermos of tea. The sailor was an old man who had lost his charts in a storm and was "
    "trying to find the harbour by the shape of the cliffs. She drew him a map on the back of "
    "an envelope, and in return he gave her a jar of honey from his brother's farm. Years "
    "later, when the lighthouse was automated and she moved to the mainland, the envelope was "
    "still pinned above her desk, next to the notebook and the empty jar."
)
# Stated tolerances. Measured here (AMX, torch 2.13): bf16 13 of 16 prompts identical, perplexity
# 32.469 vs 32.488; int8 11 of 16, 32.209 (see papers/serve/NOTES.md).
MIN_SAME = {"bfloat16": 0.75, "int8": 0.6}  # share of prompts with identical greedy tokens
MAX_PPL_RATIO = {"bfloat16": 1.01, "int8": 1.02}  # perplexity / fp32 engine's perplexity


@pytest.fixture(scope="module")
def fp32_run(smollm2):
    prompts = [smollm2.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    engine = LLMEngine(smollm2.model, config=EngineConfig(num_blocks=256))
    out = engine.generate(prompts, SamplingParams(max_tokens=N_NEW, temperature=0, ignore_eos=True))
    ppl = math.exp(-engine.score(smollm2.tokenizer.encode(HELD_OUT)).mean().item())
    engine.close()
    return prompts, out, ppl


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_low_precision_engine_tracks_fp32(smollm2, fp32_run, dtype):
    if not cpu_features().native_bf16:
        pytest.skip("no native bf16 here: test_engine_dtype.py checks the fallback")
    prompts, ref, ppl32 = fp32_run
    engine = LLMEngine(smollm2.model, config=EngineConfig(num_blocks=256, dtype=dtype))
    assert engine.dtype == dtype and engine.cache.k[0].dtype == torch.bfloat16
    out = engine.generate(prompts, SamplingParams(max_tokens=N_NEW, temperature=0, ignore_eos=True))
    ppl = math.exp(-engine.score(smollm2.tokenizer.encode(HELD_OUT)).mean().item())
    engine.close()
    same = sum(a == b for a, b in zip(out, ref)) / len(ref)
    print(f"{dtype}: {same:.0%} identical, perplexity {ppl:.3f} vs fp32 {ppl32:.3f}")
    assert same >= MIN_SAME[dtype], f"{same:.0%} of prompts identical"
    assert ppl / ppl32 <= MAX_PPL_RATIO[dtype], f"perplexity {ppl:.3f} vs fp32 {ppl32:.3f}"
    assert ppl / ppl32 >= 1 / MAX_PPL_RATIO[dtype]
