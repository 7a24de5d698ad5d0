"""VLM splicing, decoding, loss weighting, filters, voting and training stages."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minirepro.core.generate import SamplingParams
from minirepro.core.model import ModelConfig
from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.internvl import (
    IMG_CONTEXT,
    VLM,
    ViTConfig,
    VLMConfig,
    build_prompt,
    collate,
    duplicate_lines,
    dynamic_preprocess,
    encode_record,
    extract_answer,
    filter_records,
    loss_weights,
    majority_vote,
    make_tokenizer,
    repetition_score,
    tiles_to_tensor,
    train_stage,
    weighted_lm_loss,
)  # fmt: skip
from minirepro.tasks.glyphs import GlyphConfig, answer_quality, generate_glyphs


def tiny_vlm(tok, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = VLMConfig(
        vit=ViTConfig(32, 8, 1, 16, 1, 2), llm=ModelConfig(tok.vocab_size, 1, 2, d_model=32, max_seq_len=128),
        max_num=4, **kw,
    )  # fmt: skip
    return VLM(cfg, tok.token_to_id(IMG_CONTEXT))


def test_image_features_replace_context_tokens_in_order():
    tok = make_tokenizer()
    vlm = tiny_vlm(tok)
    ids = torch.tensor(
        [build_prompt(tok, 8, "first digit ?"), build_prompt(tok, 8, "read the digits")]
    )
    tiles = torch.rand(4, 1, 32, 32)  # 2 tiles per row, 4 tokens each after unshuffle
    emb = vlm.embed(ids, tiles)
    feats = vlm.encode_tiles(tiles)  # (4, 4, d)
    torch.testing.assert_close(emb[0, 2:10], feats[:2].flatten(0, 1))
    torch.testing.assert_close(emb[1, 2:10], feats[2:].flatten(0, 1))
    torch.testing.assert_close(emb[:, 10:], vlm.llm.embed(ids[:, 10:]))
    with pytest.raises(ValueError, match="image features"):
        vlm.embed(ids, tiles[:3])
    with pytest.raises(ValueError, match="no tiles"):
        vlm.embed(ids, None)
    with pytest.raises(ValueError, match="lacks the special tokens"):
        build_prompt(WordTokenizer(["first"]), 4, "first")


def test_vlm_answers_images_of_any_aspect_ratio_with_a_correct_cache():
    tok = make_tokenizer()
    vlm = tiny_vlm(tok).eval()
    for shape in [(32, 128), (96, 32), (32, 32), (5, 200)]:
        img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        texts = vlm.answer(img, "read the digits", tok, n=2)
        assert len(texts) == 2
    img = np.random.default_rng(1).integers(0, 256, (32, 96), dtype=np.uint8)
    tiles = vlm.tiles(img)
    assert len(tiles) == 4  # 3x1 grid + thumbnail
    ids = torch.tensor([build_prompt(tok, 4 * len(tiles), "read the digits")])
    params = SamplingParams(max_new_tokens=6)
    (cached,) = vlm.generate(ids, tiles, params)
    seq = ids
    with torch.no_grad():  # the oracle: recompute the whole sequence each step
        for _ in range(6):
            nxt = vlm(seq, tiles)[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert cached == seq[0, ids.shape[1] :].tolist()
    with pytest.raises(ValueError, match="channels"):
        vlm.answer(np.zeros((32, 64, 3), np.uint8), "first digit ?", tok)
    with pytest.raises(ValueError, match="unknown symbol 'colour'"):
        vlm.answer(img, "first colour ?", tok)
    with pytest.raises(ValueError, match="<IMG_CONTEXT> tokens"):  # a literal special in the text
        vlm.answer(img, "first <IMG_CONTEXT> ?", tok)


def test_unshuffle_gives_four_times_fewer_tokens():
    tok = make_tokenizer()
    assert (
        tiny_vlm(tok).cfg.tokens_per_tile * 4
        == tiny_vlm(tok, downsample_ratio=1.0).cfg.tokens_per_tile
    )
    with pytest.raises(ValueError, match="downsample_ratio"):
        tiny_vlm(tok, downsample_ratio=0.3)


def test_loss_weightings_against_explicit_formulas():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :5] = -100  # x = 1, 3, 6 supervised tokens
    labels[1, :3] = -100
    ce = F.cross_entropy(
        logits.flatten(0, 1), labels.clamp(min=0).flatten(), reduction="none"
    ).view(3, 6)
    mask = labels != -100
    xs = mask.sum(1)
    torch.testing.assert_close(
        weighted_lm_loss(logits, labels, "token"),
        F.cross_entropy(logits.flatten(0, 1), labels.flatten()),
    )
    per_sample = torch.stack([ce[i][mask[i]].mean() for i in range(3)])
    torch.testing.assert_close(weighted_lm_loss(logits, labels, "sample"), per_sample.mean())
    w = [1 / math.sqrt(int(x)) for x in xs]
    expected = sum(w[i] * ce[i][mask[i]].sum() for i in range(3)) / sum(
        w[i] * int(xs[i]) for i in range(3)
    )
    torch.testing.assert_close(weighted_lm_loss(logits, labels, "square"), expected)
    assert loss_weights(labels, "square")[0, :5].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown loss weighting"):
        loss_weights(labels, "cube")
    with pytest.raises(ValueError, match="no supervised"):
        weighted_lm_loss(logits, torch.full((3, 6), -100), "token")


def test_filters_drop_injected_repetitive_and_noisy_records():
    recs = generate_glyphs(300, 3, GlyphConfig(repetitive_frac=0.3, noisy_frac=0.1))
    n_rep, n_noisy = sum(r["repetitive"] for r in recs), sum(r["noisy"] for r in recs)
    assert n_rep > 20 and n_noisy > 5
    kept, dropped = filter_records(recs, answer_quality)
    assert not any(r["repetitive"] or r["noisy"] for r in kept)
    assert dropped["repetition"] + dropped["length"] >= n_rep - 2  # a loop of two equal digits
    assert dropped["quality"] == n_noisy
    assert len(kept) + sum(dropped.values()) == len(recs)
    assert repetition_score("3 4 " * 12) < 1 and repetition_score("1 2 3 4 5") == 10
    assert duplicate_lines("a\nb\na\na") and not duplicate_lines("a\nb\na")
    with pytest.raises(ValueError, match="answer"):
        filter_records([{"question": "q"}])
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        filter_records([{"answer": "1"}], lambda r: 11)


def test_majority_vote_and_answer_extraction():
    assert extract_answer("3 7 1 so 7") == "7"
    assert extract_answer("3 so 7 so 9") == "9"
    assert extract_answer("3 7 so") is None
    assert extract_answer("5") == "5"
    assert majority_vote(["7", "3", "3", None, "7", "3"]) == "3"
    assert majority_vote(["7", "3"]) == "7"  # a tie goes to the first seen
    assert majority_vote([None, None]) is None


@pytest.mark.parametrize(
    "stage,trains",
    [("1", {"projector"}), ("1.5", {"vit", "projector"}), ("2", {"vit", "projector", "llm"})],
)
def test_each_stage_trains_only_its_parts(stage, trains):
    tok = make_tokenizer()
    vlm = tiny_vlm(tok)
    recs = generate_glyphs(16, 0, GlyphConfig(tile=32, ratios=(1, 2), n_digits=(1, 2)))
    ex = [
        encode_record(tok, r, tiles_to_tensor(dynamic_preprocess(r["image"], 32, 1, 4)), 4)
        for r in recs
    ]
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    hist = train_stage(vlm, stage, ex, 3, pad_id=tok.pad_id, batch_size=4, lr_scale=100)
    assert len(hist) >= 1
    for part in ("vit", "projector", "llm"):
        changed = any(
            not torch.equal(v, before[k])
            for k, v in vlm.state_dict().items()
            if k.startswith(part + ".")
        )
        assert changed == (part in trains), part
    assert all(p.requires_grad for p in vlm.parameters())  # restored afterwards
    b = collate(ex[:2], tok.pad_id)
    assert b["tiles"].shape[0] == sum(len(e.tiles) for e in ex[:2])
