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


def test_glyphs_appear_in_reading_order():
    cfg = GlyphConfig(noise=0.0, n_digits=(3, 3), ratios=(4,))
    train_imgs, _ = digit_pool("train")
    for r in generate_glyphs(10, 1, cfg):
        img = r["image"] if r["image"].shape[1] > r["image"].shape[0] else r["image"].T
        cols = np.nonzero(img.max(0))[0]  # columns holding ink, left to right
        assert len(cols) and cols.max() - cols.min() > 64  # spread along the canvas


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
