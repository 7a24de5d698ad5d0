"""What the server serves: a model with its tokenizer, chat template and eos ids.

`load_served_model("smollm2")` is the real SmolLM2-135M-Instruct with its chat template;
any other name is a core checkpoint (`load_checkpoint_model`). A core char/word tokenizer
saved beside the checkpoint is wrapped in `CoreTokenizerAdapter`, which offers the HF-style
calls the engine's detokeniser makes, and gets a plain ``role: content`` chat template.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CoreTokenizerAdapter:
    """A core char/word `Tokenizer` behind the HF-style calls the engine and server make.

    `decode(ids, skip_special_tokens=...)` is what the engine's detokeniser calls; ids the
    tokenizer does not know (a model vocabulary larger than the tokenizer's) decode to "".
    """

    def __init__(self, tokenizer: Any) -> None:
        self.core = tokenizer

    @property
    def eos_token_id(self) -> int:
        return self.core.eos_id

    @property
    def vocab_size(self) -> int:
        return self.core.vocab_size

    def __len__(self) -> int:
        return self.core.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.core.encode(text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        n = self.core.vocab_size
        return self.core.decode([int(i) for i in ids if 0 <= int(i) < n], skip_special_tokens)


def make_plain_chat_encoder(encode: Callable[[str], list[int]]) -> Callable[..., list[int]]:
    """A chat template for models without one: ``role: content`` lines, then ``assistant:``."""

    def plain_chat(messages: list[dict[str, str]]) -> list[int]:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return encode(text + "assistant:")

    plain_chat.__name__ = "plain_chat"
    return plain_chat


@dataclass
class ServedModel:
    """A model with what the server needs around it.

    Attributes:
        name: the id clients pass as ``model``.
        model: the core Transformer, in eval mode.
        tokenizer: HF-style (``encode``, ``decode(ids, skip_special_tokens=...)``), or None.
        chat_encoder: messages -> prompt ids, or None (no chat endpoint).
        eos_token_ids: ids that end a generation.
    """

    name: str
    model: Any
    tokenizer: Any
    chat_encoder: Callable[[list[dict[str, str]]], list[int]] | None
    eos_token_ids: tuple[int, ...]


def load_served_model(spec: str) -> ServedModel:
    """``"smollm2"`` (the real SmolLM2-135M-Instruct) or a core checkpoint path.

    Raises:
        FileNotFoundError: no such model or checkpoint (the message says what was looked for).
        ValueError: the checkpoint is incomplete or does not fit its config.
    """
    if spec == "smollm2":
        from minirepro.core.pretrained import load_smollm2

        p = load_smollm2()
        return ServedModel("smollm2", p.model, p.tokenizer, p.encode_chat, tuple(p.stop_tokens))
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"no model {spec!r}: it is neither 'smollm2' nor an existing checkpoint folder "
            "or .safetensors file"
        )
    return load_checkpoint_model(path)


CHAR_ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.?!:\n"


def random_char_model(max_seq_len: int = 2048, seed: int = 0) -> ServedModel:
    """A random 2-layer decoder over a character tokenizer, with the plain chat template:
    its answers are noise, but it exercises the whole server in milliseconds (tests, soaks).

    init_std 0.3 makes greedy continuations differ from prompt to prompt (at 0.02 they mostly
    repeat one character), so answers mixed up between requests would show.
    """
    import torch

    from minirepro.core.model import ModelConfig, Transformer
    from minirepro.core.tokenizer import CharTokenizer

    tokenizer = CoreTokenizerAdapter(CharTokenizer.from_text(CHAR_ALPHABET))
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=64,
        max_seq_len=max_seq_len,
        init_std=0.3,
    )
    chat = make_plain_chat_encoder(tokenizer.encode)
    eos = (tokenizer.eos_token_id,)
    return ServedModel("random-char", Transformer(cfg).eval(), tokenizer, chat, eos)


_MODEL_CONFIG_FILES = ("model_config.json", "config.json")


def _weights_file(path: Path) -> Path:
    """The safetensors file of a checkpoint given as a file, a checkpoint or a run folder."""
    from minirepro.core.checkpoint import latest_checkpoint

    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file")
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    latest = latest_checkpoint(path)
    if latest is not None and (latest / "model.safetensors").is_file():
        return latest / "model.safetensors"
    raise FileNotFoundError(
        f"no model.safetensors in {path} (nor in a checkpoints/step_* folder under it)"
    )


def _as_model_config(data: Any) -> dict[str, Any] | None:
    """`data` (or its "model" entry) if it holds ModelConfig fields, else None."""
    from dataclasses import fields

    from minirepro.core.model import ModelConfig

    names = {f.name for f in fields(ModelConfig)}
    for candidate in (data, data.get("model") if isinstance(data, dict) else None):
        if isinstance(candidate, dict) and "d_model" in candidate and set(candidate) <= names:
            return candidate
    return None


def _find_model_config(folders: list[Path]) -> dict[str, Any]:
    import torch

    for folder in folders:
        for name in _MODEL_CONFIG_FILES:
            f = folder / name
            if f.is_file():
                try:
                    found = _as_model_config(json.loads(f.read_text()))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{f} is not valid JSON: {exc}") from None
                if found is not None:
                    return found
        state = folder / "state.pt"  # core.checkpoint's: the cfg passed to save_checkpoint
        if state.is_file():
            found = _as_model_config(
                torch.load(state, map_location="cpu", weights_only=True).get("config")
            )
            if found is not None:
                return found
    raise FileNotFoundError(
        "no model config for the checkpoint: looked for "
        f"{' or '.join(_MODEL_CONFIG_FILES)} holding ModelConfig fields, or a state.pt "
        f"saved with cfg=ModelConfig, in {', '.join(str(f) for f in folders)}"
    )


def _find_tokenizer(folders: list[Path]) -> Any:
    """A tokenizer saved beside the checkpoint, HF-style, or None."""
    from minirepro.core.tokenizer import load_tokenizer

    for folder in folders:
        if (folder / "tokenizer").is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        f = folder / "tokenizer.json"
        if f.is_file():
            kind = json.loads(f.read_text()).get("type")
            if kind in ("char", "word"):
                return CoreTokenizerAdapter(load_tokenizer(f))
            if (folder / "tokenizer_config.json").is_file():
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(str(folder))
    return None


def load_checkpoint_model(path: str | Path) -> ServedModel:
    """A core model from a checkpoint, with the tokenizer saved beside it if any.

    Accepts a ``.safetensors`` file, a folder holding ``model.safetensors`` (a
    `core.checkpoint` step folder, or a converted-model folder like the SmolLM2 cache), or a
    training run folder (its latest ``checkpoints/step_*``). The model config is read from
    ``model_config.json`` / ``config.json`` or from ``state.pt`` (when ``save_checkpoint`` got
    ``cfg=model.cfg``), in that folder or up to two folders above. The tokenizer is a core
    ``tokenizer.json`` (`Tokenizer.save`) or an HF ``tokenizer/`` folder, found the same way;
    without one the server takes token-id prompts only.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from minirepro.core.model import ModelConfig, Transformer

    weights = _weights_file(Path(path))
    folders = [weights.parent, *list(weights.parent.parents)[:2]]
    cfg = ModelConfig(**_find_model_config(folders))
    _register_mixers(cfg)
    model = Transformer(cfg)
    try:
        load_model(model, str(weights))
    except (RuntimeError, SafetensorError, OSError) as exc:
        raise ValueError(f"{weights} does not fit its config {cfg}: {exc}") from None
    tokenizer = _find_tokenizer(folders)
    eos: tuple[int, ...] = ()
    chat = None
    if tokenizer is not None:
        tok_vocab = getattr(tokenizer, "vocab_size", None)
        if isinstance(tokenizer, CoreTokenizerAdapter) and tok_vocab > cfg.vocab_size:
            raise ValueError(
                f"the tokenizer has {tok_vocab} tokens but the model only {cfg.vocab_size}"
            )
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos = (int(tokenizer.eos_token_id),)
        if getattr(tokenizer, "chat_template", None):
            chat = _hf_chat_encoder(tokenizer)
        else:
            chat = make_plain_chat_encoder(tokenizer.encode)
    name = Path(path).name if Path(path).is_dir() else weights.parent.name
    return ServedModel(name, model.eval(), tokenizer, chat, eos)


# Token mixers that a paper registers when imported: a checkpoint naming one loads it.
_MIXER_PACKAGES = {"mamba": "minirepro.papers.hybrid", "mamba2": "minirepro.papers.hybrid"}


def _register_mixers(cfg: Any) -> None:
    import importlib

    for i in range(cfg.n_layer):
        package = _MIXER_PACKAGES.get(cfg.mixer_of(i))
        if package is not None:
            importlib.import_module(package)


def _hf_chat_encoder(tokenizer: Any) -> Callable[[list[dict[str, str]]], list[int]]:
    def hf_chat(messages: list[dict[str, str]]) -> list[int]:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    return hf_chat


__all__ = [
    "CoreTokenizerAdapter",
    "ServedModel",
    "load_checkpoint_model",
    "load_served_model",
    "make_plain_chat_encoder",
    "random_char_model",
]
