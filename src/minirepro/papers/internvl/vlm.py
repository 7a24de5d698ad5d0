"""ViT-MLP-LLM: image tokens spliced into the core decoder's input embeddings.

A prompt holds ``tokens_per_tile`` ``<IMG_CONTEXT>`` ids per tile; `VLM.embed` replaces their
token embeddings by the projected vision features, in order (InternVL's
``input_embeds[selected] = vit_embeds``), and the decoder runs on ``embeds=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from minirepro.core.generate import SamplingParams, decode_from
from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.tokenizer import Tokenizer
from minirepro.papers.internvl.projector import MLPProjector, pixel_shuffle, tokens_to_grid
from minirepro.papers.internvl.tiling import dynamic_preprocess, tiles_to_tensor
from minirepro.papers.internvl.vit import ViT, ViTConfig

__all__ = [
    "IMG_CONTEXT",
    "IMG_END",
    "IMG_START",
    "SEP",
    "VLM",
    "VLMConfig",
    "build_prompt",
    "check_specials",
]

IMG_START, IMG_END, IMG_CONTEXT, SEP = "<img>", "</img>", "<IMG_CONTEXT>", "<sep>"


@dataclass
class VLMConfig:
    """A VLM's parts.

    Attributes:
        vit: the vision encoder.
        llm: the decoder (its vocabulary must hold the image special tokens).
        downsample_ratio: pixel-unshuffle scale (0.5: 4x fewer tokens; 1.0: none).
        ps_version: "v2" (InternVL 2.5) or "v1".
        max_num: most tiles of the dynamic grid (1: a single resize, no thumbnail).
    """

    vit: ViTConfig = field(default_factory=ViTConfig)
    llm: ModelConfig = field(default_factory=ModelConfig)
    downsample_ratio: float = 0.5
    ps_version: str = "v2"
    max_num: int = 6

    def __post_init__(self) -> None:
        r = round(1 / self.downsample_ratio) if self.downsample_ratio > 0 else 0
        if r < 1 or self.vit.grid % r:
            raise ValueError(
                f"downsample_ratio={self.downsample_ratio} must be 1/r with r dividing the "
                f"ViT's {self.vit.grid}-patch grid"
            )
        if self.max_num < 1:
            raise ValueError(f"max_num must be >= 1, got {self.max_num}")

    @property
    def tokens_per_tile(self) -> int:
        """LLM tokens per tile: (grid · ratio)²."""
        return round(self.vit.grid * self.downsample_ratio) ** 2


class VLM(nn.Module):
    """ViT -> drop CLS -> pixel unshuffle -> MLP -> spliced into the decoder's inputs.

    Args:
        cfg: the parts' shapes.
        img_context_id: the token id of ``<IMG_CONTEXT>``.
        vit, llm: existing modules to reuse (progressive scaling; a pretrained decoder).
    """

    def __init__(
        self, cfg: VLMConfig, img_context_id: int, vit: ViT | None = None,
        llm: Transformer | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.img_context_id = img_context_id
        self.vit = vit if vit is not None else ViT(cfg.vit)
        self.llm = llm if llm is not None else Transformer(cfg.llm)
        r = round(1 / cfg.downsample_ratio)
        self.projector = MLPProjector(self.vit.cfg.d_model * r * r, self.llm.cfg.d_model)
        if not 0 <= img_context_id < self.llm.cfg.vocab_size:
            raise ValueError(f"img_context_id {img_context_id} outside the LLM's vocabulary")

    def encode_tiles(self, tiles: Tensor) -> Tensor:
        """tiles (N, C, S, S) -> image features (N, tokens_per_tile, d_model) of the LLM."""
        x = self.vit(tiles)[:, 1:]  # (N, grid², C): CLS dropped
        x = tokens_to_grid(x)  # (N, grid, grid, C)
        if self.cfg.downsample_ratio != 1.0:
            x = pixel_shuffle(x, self.cfg.downsample_ratio, self.cfg.ps_version)
        return self.projector(x.flatten(1, 2))  # (N, T, d_model)

    def embed(self, input_ids: Tensor, tiles: Tensor | None) -> Tensor:
        """Token embeddings (B, S, d_model) with the ``<IMG_CONTEXT>`` slots replaced by the
        features of ``tiles`` (N, C, S, S), filled in row-major order over the batch."""
        x = self.llm.embed(input_ids)  # (B, S, d_model)
        slots = input_ids == self.img_context_id
        n_slots = int(slots.sum())
        if tiles is None or len(tiles) == 0:
            if n_slots:
                raise ValueError(f"the prompt has {n_slots} image tokens but no tiles were given")
            return x
        feats = self.encode_tiles(tiles).flatten(0, 1)  # (N·T, d_model)
        if n_slots != len(feats):
            raise ValueError(
                f"{n_slots} <IMG_CONTEXT> tokens in the prompt but {len(tiles)} tiles give "
                f"{len(feats)} image features ({self.cfg.tokens_per_tile} per tile)"
            )
        return x.masked_scatter(slots[..., None], feats.to(x.dtype))

    def forward(self, input_ids: Tensor, tiles: Tensor | None = None, cache=None) -> Tensor:
        """Logits (B, S, vocab) of the prompt ids (B, S) with its images' tiles."""
        return self.llm(None, cache, embeds=self.embed(input_ids, tiles))

    @torch.inference_mode()
    def generate(
        self, input_ids: Tensor, tiles: Tensor | None, params: SamplingParams
    ) -> list[list[int]]:
        """Continue equal-length prompts (B, S) (their tiles in row order); new ids per row,
        cut before the first stop token."""
        B, S = input_ids.shape
        cache = self.llm.new_cache(B, S + params.max_new_tokens)
        logits = self(input_ids, tiles, cache)[:, -1]
        steps = list(decode_from(lambda t: self.llm(t[:, None], cache)[:, -1], logits, params))
        out = []
        stop = set(params.stop_tokens)
        for row in torch.stack(steps, 1).tolist() if steps else [[] for _ in range(B)]:
            out.append(row[: next((i for i, t in enumerate(row) if t in stop), len(row))])
        return out

    def answer(
        self, image, question: str, tok: Tokenizer, params: SamplingParams | None = None,
        n: int = 1,
    ) -> list[str]:  # fmt: skip
        """Answer a question about an image of any aspect ratio (tiled dynamically).

        Args:
            image: PIL image or uint8 array (H, W) / (H, W, C) matching the ViT's channels.
            question: the question text (words the tokenizer knows).
            tok: the tokenizer, with `IMG_START`, `IMG_END`, `IMG_CONTEXT`, `SEP` specials.
            params: sampling (default greedy, stop at ``<eos>``).
            n: samples to draw (a batch of the same prompt).
        Returns:
            n decoded answers.
        """
        params = params or SamplingParams(max_new_tokens=32, stop_tokens=(tok.eos_id,))
        tiles = self.tiles(image)
        ids = torch.tensor([build_prompt(tok, len(tiles) * self.cfg.tokens_per_tile, question)])
        ids, tiles = ids.expand(n, -1), tiles.repeat(n, 1, 1, 1)
        device = self.projector.linear_1.weight.device
        rows = self.generate(ids.to(device), tiles.to(device), params)
        return [tok.decode(r) for r in rows]

    def tiles(self, image) -> Tensor:
        """The image's tiles as the ViT takes them, (N, C, S, S)."""
        tiling = dynamic_preprocess(image, self.cfg.vit.image_size, 1, self.cfg.max_num)
        t = tiles_to_tensor(tiling)
        if t.shape[1] != self.cfg.vit.channels:
            raise ValueError(
                f"image has {t.shape[1]} channels, the ViT takes {self.cfg.vit.channels}"
            )
        return t


def build_prompt(tok: Tokenizer, n_image_tokens: int, question: str) -> list[int]:
    """``<bos> <img> <IMG_CONTEXT>×n </img> question <sep>`` as ids."""
    check_specials(tok)
    ctx = tok.token_to_id(IMG_CONTEXT)
    return (
        [tok.bos_id, tok.token_to_id(IMG_START)] + [ctx] * n_image_tokens
        + [tok.token_to_id(IMG_END)] + tok.encode(question) + [tok.token_to_id(SEP)]
    )  # fmt: skip


def check_specials(
    tok: Tokenizer, names: Sequence[str] = (IMG_START, IMG_END, IMG_CONTEXT, SEP)
) -> None:
    """Raise if the tokenizer lacks one of the image special tokens."""
    missing = [n for n in names if n not in tok.specials]
    if missing:
        raise ValueError(f"tokenizer lacks the special tokens {missing}")
