"""Transformers Struggle to Learn to Search (arXiv 2412.04703).

Claim: a transformer learns graph connectivity search when trained on a carefully balanced
distribution of DAG search problems — it is then accurate at every lookahead — but not on
a naive distribution of random DAGs; the mechanism it learns keeps, at each vertex token,
a set of reachable vertices whose radius doubles per layer ("exponential path-merging");
and learning gets harder as the graph grows, which more parameters do not fix.

Implemented here:
- the task (`minirepro.tasks.dag_search`): the reference's token format, the naive and
  balanced distributions with lookahead control, DFS and selection-inference traces;
- `make_search_model`: the core decoder with the reference's fixed one-hot token-and-
  position input (``embedding="onehot"``) or a learned embedding; one head per layer;
- `train_search`: streaming training on fresh examples with the core trainer;
- `accuracy_by_lookahead`: evaluation on balanced test sets of each lookahead;
- `reachability_probe`: per-layer linear probes of the reachable set at each edge's
  target token, and the reachable radius per layer.

Deviations: much smaller graphs and training budgets (CPU minutes, see NOTES.md); the core
decoder keeps RoPE and RMSNorm/SwiGLU beside the one-hot input; probes are linear
(least squares) rather than the paper's activation-patching analysis.

Run: ``minirepro run search`` (quick), ``minirepro run search --preset full``.
"""

from minirepro.papers.search.evaluate import accuracy, accuracy_by_lookahead, predict
from minirepro.papers.search.experiments import Job, run_job
from minirepro.papers.search.model import EMBEDDINGS, OneHotEmbedding, make_search_model
from minirepro.papers.search.probe import (
    ProbeResult,
    edge_target_positions,
    layer_states,
    probe_targets,
    radius_growth,
    reachability_probe,
)
from minirepro.papers.search.repro import CLAIMS, PRESETS, Config, make_jobs, results, run
from minirepro.papers.search.train import (
    SearchRun,
    SearchTrainConfig,
    next_vertex_loss,
    train_search,
)
from minirepro.registry import Paper

PAPER = Paper(
    id="search",
    title="Transformers Struggle to Learn to Search",
    arxiv="2412.04703",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "CLAIMS",
    "EMBEDDINGS",
    "PAPER",
    "PRESETS",
    "Config",
    "Job",
    "OneHotEmbedding",
    "ProbeResult",
    "SearchRun",
    "SearchTrainConfig",
    "accuracy",
    "accuracy_by_lookahead",
    "edge_target_positions",
    "layer_states",
    "make_jobs",
    "make_search_model",
    "next_vertex_loss",
    "predict",
    "probe_targets",
    "radius_growth",
    "reachability_probe",
    "results",
    "run",
    "run_job",
    "train_search",
]
