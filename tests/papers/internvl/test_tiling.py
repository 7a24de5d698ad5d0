"""Tiling against transformers' GotOcr2/InternVL image processor (PIL backend)."""

import numpy as np
import pytest

from minirepro.papers.internvl import (
    candidate_grids,
    closest_grid,
    dynamic_preprocess,
    tiles_to_tensor,
)

hf = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")
from transformers.image_utils import PILImageResampling, SizeDict  # noqa: E402

# (height, width, tile, min_num, max_num): wide, tall, square, ties, tiny and extreme images
TABLE = [
    (64, 256, 64, 1, 6), (256, 64, 64, 1, 6), (64, 192, 64, 1, 6), (300, 200, 32, 1, 12),
    (448, 448, 448, 1, 12), (448, 448, 64, 1, 12),  # ratio 1: 1x1, 2x2, 3x3 tie
    (32, 48, 32, 1, 3), (2, 3, 32, 1, 3),  # ratio 1.5: 1x1 vs 2x1 tie; large vs small image
    (100, 125, 32, 1, 12), (64, 80, 32, 2, 4), (1, 1, 32, 1, 12), (1, 2, 16, 1, 12),
    (2, 1, 16, 1, 6), (2, 1000, 32, 1, 12), (997, 3, 16, 1, 8), (50, 50, 16, 4, 9),
    (37, 91, 24, 1, 1), (91, 37, 24, 3, 3),
]  # fmt: skip


@pytest.mark.parametrize("h,w,tile,lo,hi", TABLE)
def test_tiles_equal_transformers(h, w, tile, lo, hi):
    rng = np.random.default_rng(h * 1009 + w)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert closest_grid(w, h, tile, lo, hi) == hf.get_optimal_tiled_canvas(
        (h, w), (tile, tile), lo, hi
    )
    # HF infers the channel axis; give it (C, H, W) so 1-pixel images are not ambiguous.
    ref = hf.GotOcr2ImageProcessorPil().crop_image_to_patches(
        img.transpose(2, 0, 1), lo, hi, patch_size=SizeDict(height=tile, width=tile),
        resample=PILImageResampling.BICUBIC,
    )  # fmt: skip
    ours = dynamic_preprocess(img, tile, lo, hi)
    assert len(ours) == len(ref)
    for a, b in zip(ours.tiles, ref):
        np.testing.assert_array_equal(np.asarray(a), b.transpose(1, 2, 0))
    cols, rows = ours.grid
    assert len(ours) == cols * rows + (cols * rows > 1)


def test_tie_rule_prefers_more_tiles_only_for_large_images():
    assert closest_grid(48, 32, 32, 1, 3) == (2, 1)  # area 1536 > 0.5 * 32² * 2
    assert closest_grid(3, 2, 32, 1, 3) == (1, 1)
    assert closest_grid(448 * 3, 448 * 3, 448, 1, 12) == (3, 3)


@pytest.mark.parametrize("lo,hi", [(1, 12), (1, 6), (2, 4), (3, 3)])
def test_candidate_grids_equal_transformers(lo, hi):
    assert list(candidate_grids(lo, hi)) == hf.get_all_supported_aspect_ratios(lo, hi)


def test_row_major_crops_and_thumbnail():
    img = np.zeros((16, 48), np.uint8)
    img[:, 16:32] = 255  # the middle third white
    t = dynamic_preprocess(img, 16, 1, 6)
    assert t.grid == (3, 1) and t.thumbnail
    means = [np.asarray(x).mean() for x in t.tiles]
    assert means[0] == 0 and means[1] == 255 and means[2] == 0 and 0 < means[3] < 255
    x = tiles_to_tensor(t)
    assert x.shape == (4, 1, 16, 16) and float(x.max()) == 1.0
    assert len(dynamic_preprocess(img, 16, 1, 6, use_thumbnail=False)) == 3


@pytest.mark.parametrize(
    "image,kwargs,match",
    [
        (np.zeros((0, 5), np.uint8), {}, "0 pixels|both sides"),
        (np.zeros((5, 0, 3), np.uint8), {}, "both sides"),
        (np.zeros((8, 8), np.float32), {}, "uint8"),
        (np.zeros((8, 8, 2), np.uint8), {}, r"\(H, W\)"),
        (np.zeros((8, 8), np.uint8), {"min_num": 0}, "min_num"),
        (np.zeros((8, 8), np.uint8), {"min_num": 5, "max_num": 4}, "min_num"),
        (np.zeros((8, 8), np.uint8), {"tile_size": 0}, "tile_size"),
        ([[0, 1]], {}, "PIL image or a numpy array"),
    ],
)
def test_images_that_cannot_be_tiled_get_clear_errors(image, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dynamic_preprocess(image, **{"tile_size": 8, **kwargs})
