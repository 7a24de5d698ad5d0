"""GameNGen on the CPU: generation speed of the world model by denoising steps and frame size.

The interactive loop generates one frame at a time (batch 1): `steps` DDIM steps of the
U-Net, each one forward pass. For every frame size the step counts alternate (A B C D A B
...), and we report medians, frames per second and ms per frame; the model has the quick
preset's shape (weights do not change the speed). Before timing, the sampler is checked to
be deterministic for a fixed seed and to give frames in range.

    python benchmarks/gamengen.py                      # sizes 32 48 64, steps 1 2 4 8
    python benchmarks/gamengen.py --threads 2 --repeats 10

The last line is one JSON document; summary keys:
    fps_quick       frames per second at the quick preset's size with 4 steps
    ms_per_step     ms per U-Net evaluation at that size (ms/frame / steps)
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from minirepro.core.bench import BenchReport, time_contenders
from minirepro.papers.gamengen import PRESETS, WorldModel, WorldModelConfig


def _model(size: int) -> WorldModel:
    q = PRESETS["quick"]
    torch.manual_seed(0)
    cfg = WorldModelConfig(
        frame_size=size, context=q.context, n_actions=4, channels=q.channels, d_emb=q.d_emb,
        attn_max_res=size // 2,
    )  # fmt: skip
    return WorldModel(cfg).eval().to(memory_format=torch.channels_last)  # as GameSession


def _generate(model: WorldModel, ctx: torch.Tensor, steps: int) -> torch.Tensor:
    """One interactive frame: `steps` DDIM steps from a fixed seed, batch 1."""
    act = torch.zeros(1, model.cfg.context, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    sigma = PRESETS["quick"].infer_sigma
    return model.predict(ctx, act, steps=steps, context_sigma=sigma, generator=g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = BenchReport("gamengen")
    q = PRESETS["quick"]
    for size in args.sizes:
        gen = partial(_generate, _model(size), torch.rand(1, q.context, 3, size, size) * 2 - 1)
        a, b = gen(4), gen(4)
        assert torch.equal(a, b) and a.abs().max() <= 1, "sampler is not deterministic/in range"
        fns = {f"{s} steps": partial(gen, s) for s in args.steps}
        times = time_contenders(fns, warmup=3, repeats=args.repeats)
        for s, t in zip(args.steps, times.values()):
            report.add_case(
                frame_size=size, steps=s, ms_per_frame=t.median * 1e3, iqr_ms=t.iqr * 1e3,
                fps=1.0 / t.median, ms_per_unet=t.median * 1e3 / s,
            )  # fmt: skip
            if size == q.frame_size and s == q.ddim_steps:
                report.set_summary(fps_quick=1.0 / t.median, ms_per_step=t.median * 1e3 / s)
    report.set_summary(threads=args.threads)
    report.emit()


if __name__ == "__main__":
    main()
