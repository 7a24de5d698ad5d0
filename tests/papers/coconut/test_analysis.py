import pytest
import torch

from minirepro.core.model import ModelConfig
from minirepro.papers.coconut import (
    BOT,
    CLASSES,
    EOT,
    LATENT,
    Curriculum,
    build_tokenizer,
    frontier_analysis,
    inference_prompt,
    left_pad,
    make_model,
    plot_frontier,
    thought_decode_analysis,
    tokenize_record,
)
from minirepro.tasks.prosqa import ProsQAConfig, bfs_depths, generate_prosqa


def test_thought_decoding_partitions_the_concepts_by_bfs_depth():
    recs = generate_prosqa(6, 0, ProsQAConfig(n_nodes=(9, 11), mode_nodes=None, n_steps=(2, 3)))
    tok = build_tokenizer(recs)
    cur = Curriculum(max_latent_stage=3)
    net = make_model("coconut", tok, ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1))
    got = thought_decode_analysis(net, tok, recs, cur, batch_size=4)
    assert got["probe"] == "thought"
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


_SMALL = ProsQAConfig(n_nodes=(9, 11), mode_nodes=None, n_steps=(2, 3))


class _FrontierOracle(torch.nn.Module):
    """A hand-made model: after "<eot> Every" it puts all its probability, evenly, on the
    concepts at BFS depth k (k = the thoughts in the prompt); elsewhere uniform."""

    def __init__(self, tok, recs, target_depth=lambda k: k):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.latent_id, self.recycle, self.V = tok.token_to_id(LATENT), True, tok.vocab_size
        self.by_question = {tuple(tok.encode(r["question"])): r for r in recs}
        self.tok, self.target_depth = tok, target_depth

    def forward(self, ids, docs):
        out = torch.zeros(*ids.shape, self.V)
        bot = self.tok.token_to_id(BOT)
        for b, row in enumerate(ids.tolist()):
            start = int(docs[b].argmax())
            q = row[start : row.index(bot)]
            r = self.by_question[tuple(q)]
            k = row.count(self.latent_id)
            depth = bfs_depths(len(r["idx_to_symbol"]), r["edges"], r["root"])
            want = self.target_depth(k)
            hot = [self.tok.token_to_id(s) for s, d in zip(r["idx_to_symbol"], depth) if d == want]
            out[b, -1] = -1e9
            out[b, -1, hot] = 0.0
        return out


def test_language_probe_finds_the_frontier_of_a_hand_made_model():
    recs = generate_prosqa(8, 1, _SMALL)
    tok = build_tokenizer(recs)
    cur = Curriculum(max_latent_stage=3)
    got = frontier_analysis(_FrontierOracle(tok, recs), tok, recs, cur, batch_size=3)
    assert got["probe"] == "language" and got["n_thoughts"] == 3
    depths = [bfs_depths(len(r["idx_to_symbol"]), r["edges"], r["root"]) for r in recs]
    for k in range(3):
        have = sum(k + 1 in d for d in depths) / len(recs)  # records with nodes at depth k+1
        assert k == 2 or have == 1.0
        assert abs(got["mass"]["frontier"][k] - have) < 1e-6
        for c in ("visited", "later", "unreachable"):
            assert have < 1 or got["mass"][c][k] < 1e-6  # (no frontier: uniform over the vocab)
    # the reference step's node is one of the frontier's: its value is 1 / frontier size
    sizes = [
        sum(d == 1 for d in bfs_depths(len(r["idx_to_symbol"]), r["edges"], r["root"]))
        for r in recs
    ]
    assert abs(got["gold"][0] - sum(1 / s for s in sizes) / len(recs)) < 1e-6
    # a model that looks one level too deep puts its mass on "later", not the frontier
    deeper = frontier_analysis(_FrontierOracle(tok, recs, lambda k: k + 1), tok, recs, cur)
    assert deeper["mass"]["frontier"][0] < 1e-6 and deeper["mass"]["later"][0] > 0.99


def test_language_probe_reads_the_slot_after_eot_every():
    recs = generate_prosqa(5, 2, _SMALL)
    tok = build_tokenizer(recs)
    cur = Curriculum(max_latent_stage=2)
    net = make_model("coconut", tok, ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1))
    got = frontier_analysis(net, tok, recs, cur, batch_size=2)
    lat, bot, eot = (tok.token_to_id(t) for t in (LATENT, BOT, EOT))
    for k in (1, 2):
        total, frontier = 0.0, 0.0
        for r in recs:
            p = [*tok.encode(r["question"]), bot, *[lat] * k, eot, tok.token_to_id("Every")]
            ids, docs = left_pad([p], [len(p)])
            with torch.no_grad():
                row = net(ids, docs)[0, -1].softmax(-1)
            sym = r["idx_to_symbol"]
            depth = bfs_depths(len(sym), r["edges"], r["root"])
            total += float(
                row[[tok.token_to_id(s) for v, s in enumerate(sym) if v != r["root"]]].sum()
            )
            frontier += float(
                row[[tok.token_to_id(sym[v]) for v, d in enumerate(depth) if d == k]].sum()
            )
        assert abs(sum(got["mass"][c][k - 1] for c in CLASSES) - total / len(recs)) < 1e-5
        assert abs(got["mass"]["frontier"][k - 1] - frontier / len(recs)) < 1e-5
        assert 0.0 < sum(got["mass"][c][k - 1] for c in CLASSES) < 1.0


def test_language_probe_refuses_bad_input():
    recs = generate_prosqa(3, 3, _SMALL)
    tok = build_tokenizer(recs)
    net = make_model("coconut", tok, ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1))
    with pytest.raises(ValueError, match="no records"):
        frontier_analysis(net, tok, [], Curriculum(max_latent_stage=2))
    with pytest.raises(ValueError, match="no thoughts"):
        frontier_analysis(net, tok, recs, Curriculum(max_latent_stage=0))
    with pytest.raises(ValueError, match="step_prefix"):
        frontier_analysis(net, tok, recs, Curriculum(max_latent_stage=2), step_prefix="Some")
    clash = {**recs[0], "idx_to_symbol": [*recs[0]["idx_to_symbol"]]}
    clash["idx_to_symbol"][-1] = "zzzunknownpus"
    with pytest.raises(ValueError, match="not in the tokenizer"):
        frontier_analysis(net, tok, [clash], Curriculum(max_latent_stage=2))
    with pytest.raises(ValueError, match="no analyses"):
        plot_frontier([])
