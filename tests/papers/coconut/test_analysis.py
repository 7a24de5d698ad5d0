import torch

from minirepro.core.model import ModelConfig
from minirepro.papers.coconut import (
    CLASSES,
    Curriculum,
    build_tokenizer,
    frontier_analysis,
    inference_prompt,
    left_pad,
    make_model,
    tokenize_record,
)
from minirepro.tasks.prosqa import ProsQAConfig, bfs_depths, generate_prosqa


def test_classes_partition_the_concepts_by_bfs_depth():
    recs = generate_prosqa(6, 0, ProsQAConfig(n_nodes=(9, 11), mode_nodes=None, n_steps=(2, 3)))
    tok = build_tokenizer(recs)
    cur = Curriculum(max_latent_stage=3)
    net = make_model("coconut", tok, ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1))
    got = frontier_analysis(net, tok, recs, cur, batch_size=4)
    # independently: the probability on every concept of each graph, from thought t
    for t in range(3):
        total, frontier = 0.0, 0.0
        for r in recs:
            p = inference_prompt(tokenize_record(tok, r), "coconut", cur, tok)
            ids, docs = left_pad([p], [len(p)])
            with torch.no_grad():
                probs = net(ids, docs)[0].softmax(-1)  # (S, V)
            # thought t+1 comes out of position len(question) + t (<bot> is the first)
            row = probs[len(tokenize_record(tok, r).question) + t]
            sym = r["idx_to_symbol"]
            depth = bfs_depths(len(sym), r["edges"], r["root"])
            concepts = [tok.token_to_id(s) for v, s in enumerate(sym) if v != r["root"]]
            total += float(row[concepts].sum())
            at_t = [tok.token_to_id(sym[v]) for v, d in enumerate(depth) if d == t + 1]
            frontier += float(row[at_t].sum())
        n = len(recs)
        assert abs(sum(got["mass"][c][t] for c in CLASSES) - total / n) < 1e-5
        assert abs(got["mass"]["frontier"][t] - frontier / n) < 1e-5
    assert got["mass"]["visited"][0] == 0.0  # nothing is visited before the first thought
    assert torch.isfinite(torch.tensor(got["per_node"]["unreachable"])).all()
