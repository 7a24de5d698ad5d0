"""Dynamic high-resolution tiling (InternVL's ``dynamic_preprocess``).

An image is cut into a grid of ``cols x rows`` square tiles whose aspect ratio is closest to
the image's, with ``min_num <= cols * rows <= max_num``; a thumbnail of the whole image
follows when there is more than one tile. The grid search follows the reference
(OpenGVLab/InternVL ``internvl_chat/internvl/train/dataset.py``) and transformers'
``GotOcr2ImageProcessor.crop_image_to_patches``:

- candidates sorted by tile count (ties in count keep the (cols, rows) enumeration order,
  cols outer);
- the first candidate with the smallest ``|w/h - cols/rows|`` wins, except that a later
  candidate with an equal difference replaces it while the image's area exceeds half the
  candidate's canvas area (``area > 0.5 * tile² * cols * rows``);
- the image is resized (bicubic) to ``tile*cols x tile*rows`` and cropped row-major.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

__all__ = ["Tiling", "candidate_grids", "closest_grid", "dynamic_preprocess", "tiles_to_tensor"]


@lru_cache(maxsize=64)
def candidate_grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """Every (cols, rows) with ``min_num <= cols * rows <= max_num``, sorted by tile count.

    Args:
        min_num: fewest tiles, >= 1.
        max_num: most tiles, >= min_num.
    Returns:
        The grids, stable-sorted by ``cols * rows`` (cols outer, rows inner within a count).
    """
    _check_counts(min_num, max_num)
    grids = [
        (c, r)
        for c in range(1, max_num + 1)
        for r in range(1, max_num + 1)
        if min_num <= c * r <= max_num
    ]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def closest_grid(
    width: int, height: int, tile_size: int, min_num: int = 1, max_num: int = 12
) -> tuple[int, int]:
    """The (cols, rows) grid whose aspect ratio is closest to ``width / height``.

    Args:
        width, height: image size in pixels, >= 1.
        tile_size: side of a square tile in pixels (448 in the paper).
        min_num, max_num: the range of tile counts (1 and 12 in the paper).
    Returns:
        (cols, rows).
    """
    _check_size(width, height)
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    ratio, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(ratio - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)  # the reference's tie rule: more tiles for a large image
    return best


@dataclass
class Tiling:
    """What `dynamic_preprocess` returns.

    Attributes:
        tiles: ``cols * rows`` crops, row-major, then the thumbnail if there is one; each a
            PIL image of ``tile_size x tile_size``.
        grid: (cols, rows).
        thumbnail: whether the last tile is the thumbnail.
    """

    tiles: list[Image.Image]
    grid: tuple[int, int]
    thumbnail: bool

    def __len__(self) -> int:
        return len(self.tiles)


def dynamic_preprocess(
    image: Image.Image | np.ndarray,
    tile_size: int = 448,
    min_num: int = 1,
    max_num: int = 12,
    use_thumbnail: bool = True,
) -> Tiling:
    """Cut an image of any aspect ratio into square tiles (InternVL's dynamic resolution).

    Args:
        image: a PIL image, or a uint8 array (H, W) or (H, W, C) with C in {1, 3, 4}.
        tile_size: side of each tile in pixels.
        min_num, max_num: the range of tile counts of the grid (the thumbnail not counted).
        use_thumbnail: append the whole image resized to one tile when the grid has more
            than one tile.
    Returns:
        A `Tiling`: the tiles (PIL, the image's mode), the grid, whether a thumbnail was added.
    """
    image = _as_pil(image)
    width, height = image.size
    cols, rows = closest_grid(width, height, tile_size, min_num, max_num)
    resized = image.resize((tile_size * cols, tile_size * rows), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(rows)
        for c in range(cols)
    ]  # row-major
    thumbnail = use_thumbnail and len(tiles) != 1
    if thumbnail:
        tiles.append(image.resize((tile_size, tile_size), Image.Resampling.BICUBIC))
    return Tiling(tiles, (cols, rows), thumbnail)


def tiles_to_tensor(tiles: list[Image.Image] | Tiling) -> torch.Tensor:
    """Tiles as a float tensor in [0, 1], (N, C, tile, tile)."""
    tiles = tiles.tiles if isinstance(tiles, Tiling) else tiles
    if not tiles:
        raise ValueError("no tiles to convert")
    arrays = [np.asarray(t, dtype=np.float32) / 255.0 for t in tiles]
    x = torch.from_numpy(np.stack(arrays))  # (N, H, W) or (N, H, W, C)
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        _check_size(*image.size)
        return image
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (0-255), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"image array must be (H, W) or (H, W, 3|4), got {image.shape}")
    _check_size(image.shape[1], image.shape[0])
    return Image.fromarray(image)


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(
            f"cannot tile an image of {width}x{height} pixels: both sides must be >= 1"
        )


def _check_counts(min_num: int, max_num: int) -> None:
    if min_num < 1 or max_num < min_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
