"""From RAG samples to relevance matrices on a chat model, and the model's own answers.

`explain` teacher-forces each sample's response after its chat-formatted prompt and returns
the `Relevance` of every prompt token for every response token (`lrp.relevance_matrix`).
`model_answers` lets the model answer synthetic RAG questions itself and labels each answer
against the passage.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from minirepro.core.generate import SamplingParams, generate_many
from minirepro.core.pretrained import Pretrained
from minirepro.papers.lrp4rag.lrp import Relevance, Variant, relevance_matrix
from minirepro.tasks.rag import RAGExample, RAGSample, is_faithful

__all__ = ["SYSTEM", "encode_sample", "explain", "model_answers"]

SYSTEM = "Answer the question in one sentence, using only the passage."


def _messages(sample: RAGSample) -> list[dict[str, str]]:
    system = [{"role": "system", "content": sample.system}] if sample.system else []
    return system + [{"role": "user", "content": sample.prompt}]


def encode_sample(
    pm: Pretrained, sample: RAGSample, max_response_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids): the chat prompt, and the response ending its turn.

    Args:
        pm: the chat model and tokenizer.
        sample: prompt and response text.
        max_response_tokens: cut longer responses (None: keep all).
    """
    if not sample.response.strip():
        raise ValueError(f"sample {sample.source_id!r} has an empty response")
    prompt = pm.encode_chat(_messages(sample))
    response = pm.tokenizer.encode(sample.response, add_special_tokens=False)
    response = (
        response[:max_response_tokens] if max_response_tokens else response + [pm.stop_tokens[-1]]
    )
    limit = pm.model.cfg.max_seq_len
    if len(prompt) + len(response) > limit:
        raise ValueError(
            f"sample {sample.source_id!r}: {len(prompt)} prompt + {len(response)} response "
            f"tokens exceed the model's {limit}"
        )
    return prompt, response


def explain(
    pm: Pretrained,
    samples: Iterable[RAGSample],
    variant: Variant = "attnlrp",
    chunk_size: int | None = 32,
    max_response_tokens: int | None = None,
) -> list[Relevance]:
    """The relevance matrix of every sample (one forward, batched backwards each).

    Args:
        pm: the chat model.
        samples: prompts and responses (any iterable, e.g. one wrapped in a progress bar).
        variant: "attnlrp" or "cp".
        chunk_size: response tokens explained per vmapped backward.
        max_response_tokens: explain at most this many response tokens.
    """
    out = []
    for s in samples:
        p, r = encode_sample(pm, s, max_response_tokens)
        out.append(relevance_matrix(pm.model, p, r, variant, chunk_size))
    return out


def model_answers(
    pm: Pretrained,
    examples: Sequence[RAGExample],
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    system: str | None = SYSTEM,
) -> list[RAGSample]:
    """The model's own answer to each example, labelled by checking it against the passage.

    A sampled answer (temperature > 0) is faithful when it names the passage's entity and
    no other entity of that kind (`tasks.rag.is_faithful`); otherwise hallucinated.
    """
    rng = random.Random(seed)
    shells = [RAGSample(ex.user_prompt(), "-", False, "model", system=system) for ex in examples]
    prompts = [pm.encode_chat(_messages(s)) for s in shells]
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        stop_tokens=pm.stop_tokens,
        seed=rng.randrange(2**31),
    )
    answers = generate_many(pm.model, prompts, params)
    out = []
    for i, (ex, ids) in enumerate(zip(examples, answers, strict=True)):
        text = pm.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if not text:
            continue
        out.append(
            RAGSample(
                ex.user_prompt(),
                text,
                not is_faithful(ex, text),
                "model",
                source_id=str(i),
                system=system,
                meta={"answer": ex.answer},
            )
        )
    return out
