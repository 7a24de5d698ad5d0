import pytest
import torch

from minirepro.papers.coconut import (
    BOT,
    EOT,
    LATENT,
    METHODS,
    PAUSE,
    Curriculum,
    build_tokenizer,
    collate,
    extract_answer,
    inference_prompt,
    mixed_stages,
    stage_example,
    tokenize_record,
)
from minirepro.tasks.prosqa import ProsQAConfig, generate_prosqa

CUR = Curriculum(max_latent_stage=3, c_thought=2, steps_per_stage=5, final_steps=7)


@pytest.fixture(scope="module")
def data():
    recs = generate_prosqa(20, 0, ProsQAConfig(n_nodes=(9, 11), mode_nodes=None, n_steps=(3, 4)))
    tok = build_tokenizer(recs)
    return tok, [tokenize_record(tok, r) for r in recs]


def _count(ids, tok, name):
    return ids.count(tok.token_to_id(name))


@pytest.mark.parametrize("stage", [0, 1, 2, 3, 4])
def test_stage_k_replaces_k_steps_by_k_times_c_thoughts(data, stage):
    tok, recs = data
    r = recs[0]
    ex = stage_example(r, "coconut", stage, CUR, tok)
    n_latent = min(stage, 3) * 2
    assert _count(ex.ids, tok, LATENT) == n_latent
    kept = r.steps[stage:] if stage <= 3 else []
    assert ex.ids == [*r.question, tok.token_to_id(BOT), *[tok.token_to_id(LATENT)] * n_latent,
                      tok.token_to_id(EOT), *[t for s in kept for t in s], *r.answer]  # fmt: skip
    # labels: ignored on the question, the markers and the latents; the rest is learned
    n_prefix = len(r.question) + 2 + n_latent
    assert ex.labels[:n_prefix] == [-100] * n_prefix
    assert ex.labels[n_prefix:] == ex.ids[n_prefix:]
    assert ex.align == len(r.question) + 1


def test_baselines_sequences(data):
    tok, recs = data
    r = recs[1]
    steps = [t for s in r.steps for t in s]
    cot = stage_example(r, "cot", 0, CUR, tok)
    assert cot.ids == [*r.question, *steps, *r.answer]
    assert cot.labels == [-100] * len(r.question) + steps + r.answer
    assert stage_example(r, "no_cot", 0, CUR, tok).ids == [*r.question, *r.answer]
    pause = stage_example(r, "pause", 2, CUR, tok)
    assert _count(pause.ids, tok, PAUSE) == 4 and _count(pause.ids, tok, LATENT) == 0
    final = stage_example(r, "no_curriculum", 4, CUR, tok)
    assert _count(final.ids, tok, LATENT) == 6 and final.ids[-len(r.answer) :] == r.answer
    assert inference_prompt(r, "coconut", CUR, tok)[-8:] == [tok.token_to_id(BOT)] + [
        tok.token_to_id(LATENT)
    ] * 6 + [tok.token_to_id(EOT)]


def test_schedules_spend_the_same_steps_and_walk_the_stages():
    for m in METHODS:
        assert sum(n for _, n in CUR.schedule(m)) == 4 * 5 + 7
    assert [s for s, _ in CUR.schedule("coconut")] == [0, 1, 2, 3, 4]
    assert {s for s, _ in CUR.schedule("no_curriculum")} == {4}
    assert {s for s, _ in CUR.schedule("cot")} == {0}
    with pytest.raises(ValueError, match="unknown method"):
        CUR.schedule("coconut2")


def test_collate_aligns_latents_and_shifts_targets(data):
    tok, recs = data
    exs = [stage_example(r, "coconut", 2, CUR, tok) for r in recs[:4]]
    x, y, d = collate(exs, tok.pad_id)
    latent = x == tok.token_to_id(LATENT)
    assert (latent == latent[:1]).all() and latent.sum(1).tolist() == [4] * 4
    for i, e in enumerate(exs):
        start = int(d[i].argmax())
        assert x[i, start : start + len(e.ids) - 1].tolist() == e.ids[:-1]
        assert y[i, start : start + len(e.ids) - 1].tolist() == e.labels[1:]
        assert (y[i][d[i] == 0] == -100).all()


def test_extract_answer(data):
    tok, recs = data
    ans = recs[0].answer[3:-1]
    assert extract_answer(tok, recs[0].steps[0] + recs[0].answer[:-1]) == ans
    assert extract_answer(tok, ans) == ans


def test_curriculum_bounds():
    with pytest.raises(ValueError):
        Curriculum(c_thought=0)
    with pytest.raises(ValueError):
        Curriculum(steps_per_stage=0)
    with pytest.raises(ValueError, match="uniform_prob"):
        Curriculum(uniform_prob=1.5)


def test_named_option_reads_which_option_an_answer_names():
    from minirepro.papers.coconut.evaluate import named_option
    from minirepro.tasks.prosqa import options

    rec = generate_prosqa(1, 3, ProsQAConfig(n_nodes=(9, 11), mode_nodes=None, n_steps=(3, 4)))[0]
    tok = build_tokenizer([rec])
    right, wrong = options(rec)
    name = rec["idx_to_symbol"][rec["root"]]
    other = next(s for s in rec["idx_to_symbol"] if s not in (right, wrong, name))
    said = lambda text: named_option(tok, tok.encode(text), rec)  # noqa: E731
    assert said(f"{name} is a {right} .") == 0
    assert said(f"{name} is a {wrong} .") == 1
    assert said(right) == 0  # the form does not matter
    assert said(f"{name} is a {other} .") is None  # a concept, not an option
    assert said(f"{right} {wrong}") is None  # both: no choice


def test_evaluate_reports_option_choice_beside_exact_match():
    from minirepro.papers.coconut.evaluate import evaluate
    from minirepro.tasks.prosqa import options

    recs = generate_prosqa(4, 1, ProsQAConfig(n_nodes=(7, 9), mode_nodes=None, n_steps=(2, 3)))
    tok = build_tokenizer(recs)
    name = [r["idx_to_symbol"][r["root"]] for r in recs]
    said = [  # right, wrong option, a concept that is no option, right without "###"
        f"### {name[0]} is a {options(recs[0])[0]} .",
        f"### {name[1]} is a {options(recs[1])[1]} .",
        f"### {name[2]} is a "
        + next(s for s in recs[2]["idx_to_symbol"][::-1] if s not in (*options(recs[2]), name[2])),
        f"{name[3]} is a {options(recs[3])[0]} .",
    ]

    class Replay:  # a model that says the answers above
        def eval(self):
            return self

        def generate(self, prompts, max_new_tokens, stop_tokens):
            return [tok.encode(t) for t in said[: len(prompts)]]

    ev = evaluate(Replay(), tok, recs, "no_cot", CUR)
    assert ev["accuracy"] == 50.0  # exact match after the last "###" (or the whole output)
    assert ev["named"] == 75.0 and ev["choice_accuracy"] == pytest.approx(200 / 3)


def test_each_stage_restarts_the_learning_rate_schedule(data):
    from minirepro.core.model import ModelConfig
    from minirepro.papers.coconut.training import TrainSettings, make_model, train_method

    tok, recs = data
    cur = Curriculum(max_latent_stage=0, c_thought=1, steps_per_stage=4, final_steps=4)
    net = make_model("coconut", tok, ModelConfig(vocab_size=tok.vocab_size, d_model=16))
    settings = TrainSettings(lr=1e-2, batch_size=2, min_lr_ratio=0.1)
    hist = train_method(net, recs[:4], "coconut", cur, tok, settings)
    for stage in (0, 1):
        lrs = [h["lr"] for h in hist if h["stage"] == stage]
        assert lrs[0] > 5e-3 and lrs[-1] == pytest.approx(1e-3)  # cosine, restarted
    one = Curriculum(max_latent_stage=0, c_thought=1, steps_per_stage=4, final_steps=0)
    const = train_method(net, recs[:4], "no_cot", one, tok, TrainSettings(lr=1e-2, batch_size=2))
    assert {h["lr"] for h in const} == {1e-2}  # the reference's constant rate by default


def test_uniform_prob_draws_stages_uniformly_and_deterministically(data):
    _, recs = data
    many = recs * 100  # 2,000 records of 3-4 steps
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert mixed_stages(many, 2, CUR, g(0)) == [2] * len(many)  # 0: the reference's default
    mix = Curriculum(max_latent_stage=3, uniform_prob=0.3)
    a, b = mixed_stages(many, 2, mix, g(5)), mixed_stages(many, 2, mix, g(5))
    assert a == b and a != mixed_stages(many, 2, mix, g(6))
    moved = sum(s != 2 for s in a) / len(a)
    # a draw lands on the current stage too: 0.3 * (1 - 1/(n+1)) with n = 3 or 4 steps
    assert 0.2 < moved < 0.28
    every = mixed_stages(many, 9, Curriculum(max_latent_stage=3, uniform_prob=1.0), g(1))
    for n in {len(r.steps) for r in recs}:
        got = [s for s, r in zip(every, many) if len(r.steps) == n]
        assert set(got) == set(range(n + 1))  # 0..n steps, uniformly
        for k in range(n + 1):
            assert abs(got.count(k) / len(got) - 1 / (n + 1)) < 0.06


def test_uniform_prob_changes_the_training_sequences_of_the_curriculum_methods(data):
    from minirepro.core.model import ModelConfig
    from minirepro.papers.coconut.training import TrainSettings, make_model, train_method

    tok, recs = data
    settings = TrainSettings(lr=1e-2, batch_size=4)

    def losses(method, p):
        cur = Curriculum(max_latent_stage=1, steps_per_stage=3, final_steps=0, uniform_prob=p)
        net = make_model(method, tok, ModelConfig(vocab_size=tok.vocab_size, d_model=16))
        return [h["loss"] for h in train_method(net, recs[:8], method, cur, tok, settings)]

    assert losses("coconut", 1.0) == losses("coconut", 1.0)  # seeded
    assert losses("coconut", 1.0) != losses("coconut", 0.0)
    assert losses("cot", 1.0) == losses("cot", 0.0)  # only the curriculum methods mix
