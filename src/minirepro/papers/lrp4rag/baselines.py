"""Two hallucination detectors that need no relevance: LRP4RAG's points of comparison.

- mean token log-probability of the response (low confidence -> hallucination);
- prompt the model as a judge: "Is the answer supported by the passage? Yes or No", scored
  by logit(No) - logit(Yes) at its first answer token (the paper prompts Llama-2 and GPT).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from minirepro.core.pretrained import Pretrained
from minirepro.papers.lrp4rag.lrp import Relevance
from minirepro.tasks.rag import RAGSample

__all__ = ["JUDGE_TEMPLATE", "judge_scores", "logprob_scores"]

JUDGE_TEMPLATE = (
    "{prompt}\n\nProposed answer: {response}\n\n"
    "Is the proposed answer supported by the passage? Reply with Yes or No."
)


def logprob_scores(relevances: Sequence[Relevance]) -> np.ndarray:
    """(N,) minus the mean token log-probability of each response (high = suspicious)."""
    return np.array([-float(r.logprobs.mean()) for r in relevances])


def _first_token(pm: Pretrained, word: str) -> int:
    ids = pm.tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise ValueError(f"the tokenizer maps {word!r} to no tokens")
    return ids[0]


@torch.no_grad()
def judge_scores(pm: Pretrained, samples: Sequence[RAGSample]) -> np.ndarray:
    """(N,) logit("No") - logit("Yes") of the model judging each response (high = suspicious)."""
    yes, no = _first_token(pm, "Yes"), _first_token(pm, "No")
    out = []
    for s in samples:
        text = JUDGE_TEMPLATE.format(prompt=s.prompt, response=s.response)
        ids = torch.tensor([pm.encode_chat([{"role": "user", "content": text}])])
        logits = pm.model(ids)[0, -1]
        out.append(float(logits[no] - logits[yes]))
    return np.array(out)
