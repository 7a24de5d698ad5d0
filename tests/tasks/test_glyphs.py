"""The glyph canvases: deterministic, real digits in reading order, wide and tall."""

import numpy as np
import pytest

from minirepro.tasks.glyphs import GlyphConfig, answer_quality, digit_pool, generate_glyphs


def test_deterministic_and_well_formed():
    a = generate_glyphs(40, 5)
    b = generate_glyphs(40, 5)
    assert all(
        np.array_equal(x["image"], y["image"]) and x["answer"] == y["answer"] for x, y in zip(a, b)
    )
    shapes = {r["image"].shape for r in a}
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
    for r in a:
        assert min(r["image"].shape) == 64 and max(r["image"].shape) in (128, 192, 256)
        assert answer_quality(r) == 10.0
        d = r["digits"]
        expected = {
            "first": str(d[0]),
            "read": " ".join(map(str, d)),
            "max": f"{' '.join(map(str, d))} so {max(d)}",
        }
        assert r["answer"] == expected[r["kind"]]


def test_upright_glyphs_appear_in_reading_order():
    cfg = GlyphConfig(noise=0.0, n_digits=(3, 4), ratios=(2, 4))
    pool, labels = digit_pool("train")
    found_tall = found_wide = False
    for r in generate_glyphs(20, 1, cfg):
        img = r["image"]
        tall = img.shape[0] > img.shape[1]
        found_tall |= tall
        found_wide |= not tall
        blocks = []  # the aligned 8x8 blocks holding ink, in reading order
        for a in range(0, max(img.shape), 8):
            for c in range(0, min(img.shape), 8):
                block = img[a : a + 8, c : c + 8] if tall else img[c : c + 8, a : a + 8]
                if block.any():
                    blocks.append(block)
        read = []
        for block in blocks:  # each block is one real glyph of the pool, upright
            (match,) = np.nonzero((pool == block).all(axis=(1, 2)))[:1]
            assert len(match), "a glyph is not an upright pool digit"
            read.append(int(labels[match[0]]))
        assert read == r["digits"]
    assert found_tall and found_wide


def test_splits_are_disjoint_and_corruption_flags():
    tr, te = digit_pool("train"), digit_pool("test")
    assert len(tr[0]) + len(te[0]) == 1797
    recs = generate_glyphs(200, 0, GlyphConfig(repetitive_frac=0.5, noisy_frac=0.2))
    rep = [r for r in recs if r["repetitive"]]
    assert rep and all(r["kind"] != "first" and len(r["answer"].split()) == 24 for r in rep)
    assert all(answer_quality(r) == 0.0 for r in recs if r["noisy"])


@pytest.mark.parametrize(
    "kw,match",
    [({"kinds": ("sum",)}, "kind"), ({"n_digits": (3, 2)}, "n_digits"), ({"n_digits": (1, 9), "ratios": (1,)}, "fit"),
     ({"repetitive_frac": 1.5}, "repetitive_frac")],
)  # fmt: skip
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        GlyphConfig(**kw)
    with pytest.raises(ValueError, match="split"):
        digit_pool("val")
