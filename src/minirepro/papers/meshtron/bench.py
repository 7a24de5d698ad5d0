"""Speed and memory measurements: training steps, peak training memory, generation.

Peak memory is the growth of the process's resident set (Linux VmHWM after resetting it
through /proc/self/clear_refs, minus VmRSS before) over a few training steps, measured in
a fresh Python subprocess per contender so no allocator cache or earlier peak is shared.
tracemalloc does not see torch's buffers and torch keeps no CPU allocator statistics, so
RSS is the honest measure here; it includes AdamW state created in the first step, which
every contender of a comparison has alike (same parameter count up to the hourglass's
two shortening/upsampling maps).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from minirepro.core.bench import Timing, time_contenders
from minirepro.papers.meshtron.hourglass import HourglassLM, MeshtronConfig
from minirepro.papers.meshtron.sampling import generate
from minirepro.papers.meshtron.tokenizer import MeshTokenizer

__all__ = [
    "generation_timings",
    "peak_train_memory",
    "random_batch",
    "train_step",
    "train_timings",
]


def random_batch(cfg: MeshtronConfig, batch_size: int, seq_len: int, n_points: int, seed: int = 0):
    """x, y (B, S) random coordinate tokens, points (B, N, 3), n_faces (B,).

    Speed and memory do not depend on the token values, only on shapes.
    """
    g = torch.Generator().manual_seed(seed)
    n_levels = cfg.vocab_size - 3
    x = torch.randint(0, n_levels, (batch_size, seq_len), generator=g)
    x[:, 0] = n_levels  # BOS
    y = torch.randint(0, n_levels, (batch_size, seq_len), generator=g)
    points = torch.rand(batch_size, n_points, 3, generator=g) - 0.5
    n_faces = torch.full((batch_size,), max(1, seq_len // 9))
    return x, y, points, n_faces


def train_step(model: HourglassLM, batch, optimizer: torch.optim.Optimizer) -> Callable[[], float]:
    """A closure running one forward, backward and AdamW step on `batch`; returns the loss."""
    x, y, points, n_faces = batch
    cond = (points, n_faces) if model.condition is not None else (None, None)

    def step() -> float:
        logits = model(x, *cond)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def train_timings(
    models: dict[str, HourglassLM], batch, *, warmup: int = 1, repeats: int = 3
) -> dict[str, Timing]:
    """Seconds per training step of each model on the same batch, alternated (A B A B)."""
    steps = {
        name: train_step(m.train(), batch, torch.optim.AdamW(m.parameters(), lr=1e-4))
        for name, m in models.items()
    }
    return time_contenders(steps, warmup=warmup, repeats=repeats)


def generation_timings(
    models: dict[str, HourglassLM],
    tok: MeshTokenizer,
    batch_size: int,
    max_faces: int,
    *,
    points=None,
    n_faces=None,
    warmup: int = 0,
    repeats: int = 1,
    seed: int = 0,
) -> dict[str, Timing]:
    """Seconds to decode `batch_size` x 9 max_faces tokens, alternated.

    Plain sampling with EOS masked, so every contender decodes the same number of tokens.
    """

    def run(m: HourglassLM) -> Callable[[], None]:
        def go() -> None:
            g = torch.Generator().manual_seed(seed)
            generate(m, tok, batch_size, max_faces, points=points, n_faces=n_faces,
                     robust=False, generator=g, stop_at_eos=False)  # fmt: skip

        return go

    return time_contenders({k: run(m) for k, m in models.items()}, warmup=warmup, repeats=repeats)


# ------------------------------------------------------------------ memory, in a subprocess


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _measure(spec: dict) -> dict:
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    cfg = MeshtronConfig(**spec["model"])
    torch.manual_seed(0)
    model = HourglassLM(cfg).train()
    batch = random_batch(cfg, spec["batch_size"], spec["seq_len"], spec["n_points"])
    step = train_step(model, batch, torch.optim.AdamW(model.parameters(), lr=1e-4))
    before = _proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    for _ in range(spec.get("steps", 2)):
        step()
    peak = _proc_status("VmHWM")
    return {"peak_bytes": peak - before, "rss_before": before}


def peak_train_memory(
    cfg: MeshtronConfig,
    batch_size: int,
    seq_len: int,
    n_points: int = 256,
    *,
    steps: int = 2,
    threads: int | None = None,
) -> float:
    """Peak RSS growth (MiB) of `steps` training steps on (batch_size, seq_len) tokens,
    measured in a fresh subprocess (see the module docstring)."""
    if not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("peak memory needs Linux /proc (VmHWM and clear_refs)")
    spec = {
        "model": asdict(cfg), "batch_size": batch_size, "seq_len": seq_len,
        "n_points": n_points, "steps": steps, "threads": threads,
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "minirepro.papers.meshtron.bench", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"memory measurement failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
