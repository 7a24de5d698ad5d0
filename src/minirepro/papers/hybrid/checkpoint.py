"""Saving and loading hybrids: safetensors weights, the model config, the tokenizer.

The folder has the layout of the SmolLM2 cache (model.safetensors, config.json, tokenizer/),
which `minirepro.papers.serve.served_model.load_checkpoint_model` also reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minirepro.core.model import ModelConfig, Transformer

__all__ = ["load_hybrid", "save_hybrid"]


def save_hybrid(model: Transformer, path: str | Path, tokenizer: Any = None) -> Path:
    """Write model.safetensors, config.json (and tokenizer/ if given) under `path`."""
    from safetensors.torch import save_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path / "tokenizer"))
    return path


def load_hybrid(path: str | Path) -> Transformer:
    """The model saved by `save_hybrid` (eval mode).

    Raises:
        FileNotFoundError: no model.safetensors or config.json in `path`.
        ValueError: the weights do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(path)
    for name in ("model.safetensors", "config.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} has no {name} (not a save_hybrid folder)")
    try:
        cfg = ModelConfig(**json.loads((path / "config.json").read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path / 'config.json'} is not a model config: {exc}") from None
    model = Transformer(cfg)
    try:
        load_model(model, str(path / "model.safetensors"))
    except (RuntimeError, SafetensorError, OSError) as exc:
        raise ValueError(f"{path / 'model.safetensors'} does not fit its config: {exc}") from None
    return model.eval()
