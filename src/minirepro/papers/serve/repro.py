"""Reproduction: how close the engine gets to the machine's optimal serving throughput.

1. Throughput of `LLMEngine` (continuous batching, paged KV, chunked prefill) on a seeded
   workload against HF transformers `generate`, one request at a time and in static
   left-padded batches of 16 (paper: 1.91x TensorRT-LLM; our baseline is HF, a deviation).
2. Fraction of optimal: tokens/s over (measured peak matmul FLOP/s / (2 x parameters))
   (paper: 68.5% on LLaMA-2-70B, 8xA100).
3. Nano-batching: the auto-searched plan against no split, measured on this CPU (steady
   decoding iterations of engines with nano_batches 1, 2, "auto", alternated) and in the
   analytic LLaMA-2-70B / 8xA100 model (simulated, labelled as a model).
4. KV offload: time to first token of a conversation's second turn with the first turn's
   KV restored from disk vs re-prefilled.

The measurement functions are shared with benchmarks/serve.py.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from minirepro.core.bench import peak_matmul_flops
from minirepro.core.results import AtLeast, AtMost, Result, RunDir, Within
from minirepro.core.threads import num_threads
from minirepro.registry import Paper

CLAIMS = [
    "The engine reaches >= 50% of the optimal (compute-bound) throughput (paper: 68.5%)",
    "The engine's throughput is well above HF generate with static batches (paper: 1.91x TRT-LLM)",
    "Nano-batching with an auto-searched plan is no slower than no split, and overlaps "
    "resources in the paper's 70B/8xA100 setting (modelled)",
    "Restoring a finished turn's KV from the offload cache cuts the next turn's TTFT >= 3x",
]


@dataclass
class Config:
    """Sizes of the reproduction.

    Attributes:
        model: "smollm2" (the real SmolLM2-135M-Instruct) or "random" (a small core model).
        random_model: ModelConfig fields of the random model.
        num_requests: Requests of the throughput workload (engine and static batches).
        seq_requests: Requests HF runs one at a time (a subset of the same workload: a rate
            measured on a subset drawn from the same distribution is comparable).
        prompt_range, output_range: Uniform ranges of prompt and output lengths (tokens).
        static_batch: HF static batch size.
        rounds: Rounds of the throughput comparison (contenders alternate within a round).
        batch_sizes: max_num_seqs values of the throughput-vs-batch-size figure.
        sweep_requests, sweep_output: Workload of that figure.
        nano_seqs, nano_context, nano_steps: Steady decoding batch of the nano-batching check.
        offload_tokens: Length of the first turn of the offload conversation.
        offload_reps: Alternated repetitions of the TTFT measurement.
        num_blocks: KV blocks of the engine's pool.
        peak_sizes: Matrix sizes of the peak matmul FLOP/s measurement.
        threads: torch threads (None: leave as is).
        seed: Seed of workloads and the random model.
    """

    model: str = "smollm2"
    random_model: dict = field(
        default_factory=lambda: dict(
            vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=1024
        )
    )
    num_requests: int = 32
    seq_requests: int = 4
    prompt_range: tuple[int, int] = (16, 512)
    output_range: tuple[int, int] = (16, 256)
    static_batch: int = 16
    rounds: int = 1
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    sweep_requests: int = 16
    sweep_output: int = 24
    nano_seqs: int = 16
    nano_context: int = 256
    nano_steps: int = 6
    offload_tokens: int = 400
    offload_reps: int = 3
    num_blocks: int = 2048
    peak_sizes: tuple[int, ...] = (512, 1024, 2048)
    threads: int | None = None
    seed: int = 0


PRESETS = {
    "smoke": Config(
        model="random",
        num_requests=8,
        seq_requests=2,
        prompt_range=(8, 48),
        output_range=(4, 16),
        static_batch=4,
        batch_sizes=(1, 4),
        sweep_requests=4,
        sweep_output=8,
        nano_seqs=4,
        nano_context=32,
        nano_steps=3,
        offload_tokens=200,
        offload_reps=2,
        num_blocks=256,
        peak_sizes=(256, 512),
        threads=1,  # tiny ops: one thread is robust on a machine shared with other jobs
    ),
    "quick": Config(),
    "full": Config(
        num_requests=64,
        seq_requests=16,
        rounds=2,
        batch_sizes=(1, 4, 16, 64),
        sweep_requests=64,
        nano_steps=12,
        offload_reps=5,
    ),
}


# --------------------------------------------------------------------------- workload


@dataclass
class Workload:
    """Prompts (token ids) and exact output lengths (ignore_eos)."""

    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def subset(self, idx: Sequence[int]) -> Workload:
        return Workload([self.prompts[i] for i in idx], [self.output_lens[i] for i in idx])


def make_workload(
    n: int,
    vocab_size: int,
    *,
    prompt_range: tuple[int, int] = (16, 512),
    output_range: tuple[int, int] = (16, 256),
    seed: int = 0,
    low_id: int = 0,
) -> Workload:
    """`n` requests with uniform prompt/output lengths and uniform random prompt tokens.

    Args:
        n: Requests.
        vocab_size: Token ids are drawn from [low_id, vocab_size).
        prompt_range, output_range: Inclusive length ranges.
        seed: Seed of lengths and tokens.
        low_id: Smallest id drawn (skips a tokenizer's special tokens).
    """
    if n < 1:
        raise ValueError(f"a workload needs at least one request, got n={n}")
    for name, (lo, hi) in [("prompt_range", prompt_range), ("output_range", output_range)]:
        if not 1 <= lo <= hi:
            raise ValueError(f"{name} must satisfy 1 <= lo <= hi, got {(lo, hi)}")
    rng = random.Random(seed)
    prompts, outs = [], []
    for _ in range(n):
        prompts.append(
            [rng.randrange(low_id, vocab_size) for _ in range(rng.randint(*prompt_range))]
        )
        outs.append(rng.randint(*output_range))
    return Workload(prompts, outs)


# --------------------------------------------------------------------------- contenders


def engine_config(cfg: Config, **overrides):
    from minirepro.papers.serve.engine import EngineConfig

    return EngineConfig(
        **(dict(num_blocks=cfg.num_blocks, max_num_seqs=64, max_num_batched_tokens=512) | overrides)
    )


def greedy(max_tokens: int):
    from minirepro.papers.serve.sampling import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def run_engine(model, wl: Workload, config, tokenizer=None) -> tuple[float, float, list[list[int]]]:
    """(wall s, process CPU s, outputs) of `LLMEngine.generate` over the workload.

    The engine is built outside the clocks. CPU time counts every thread of the process.
    """
    from minirepro.papers.serve.engine import LLMEngine

    engine = LLMEngine(model, tokenizer, config)
    try:
        params = [greedy(n) for n in wl.output_lens]
        t0, c0 = time.perf_counter(), time.process_time()
        out = engine.generate(wl.prompts, params)
        return time.perf_counter() - t0, time.process_time() - c0, out
    finally:
        engine.close()


@torch.inference_mode()
def run_hf_sequential(hf, wl: Workload) -> tuple[float, float, list[list[int]]]:
    """(wall s, process CPU s, outputs) of HF `generate`, greedy, one request at a time."""
    outs = []
    t0, c0 = time.perf_counter(), time.process_time()
    for prompt, n in zip(wl.prompts, wl.output_lens):
        ids = torch.tensor([prompt])
        gen = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
        outs.append(gen[0, len(prompt) :].tolist())
    return time.perf_counter() - t0, time.process_time() - c0, outs


@torch.inference_mode()
def run_hf_static(hf, wl: Workload, batch_size: int) -> tuple[float, float, list[list[int]]]:
    """(wall s, CPU s, outputs) of HF `generate` in static left-padded batches, in order.

    Each batch runs until its longest request is done (static batching); only each
    request's own `output_len` tokens are useful and returned.
    """
    outs: list[list[int]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for b in range(0, len(wl.prompts), batch_size):
        prompts, lens = wl.prompts[b : b + batch_size], wl.output_lens[b : b + batch_size]
        S = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), S, dtype=torch.long)  # (B, S), left padded
        mask = torch.zeros(len(prompts), S, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, S - len(p) :] = torch.tensor(p)
            mask[i, S - len(p) :] = 1
        n = max(lens)
        gen = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
        outs += [gen[i, S : S + lens[i]].tolist() for i in range(len(prompts))]
    return time.perf_counter() - t0, time.process_time() - c0, outs


def optimal_tok_s(
    model, sizes: tuple[int, ...] = (512, 1024, 2048), dtype: str = "float32"
) -> tuple[float, float]:
    """(optimal tokens/s, peak FLOP/s): measured peak matmul FLOP/s / (2 x parameters).

    The peak is measured afresh (not the per-process cache) at the current thread count, in
    the arithmetic the engine's `dtype` multiplies in: fp32 for "float32", bf16 for
    "bfloat16" and for "int8" (weight-only int8 is widened to bf16 before the multiply-adds).
    """
    from minirepro.papers.serve.dtypes import activation_dtype

    peak = peak_matmul_flops.__wrapped__(tuple(sizes), dtype=activation_dtype(dtype))
    return peak / (2 * model.num_params()), peak


# --------------------------------------------------------------------------- offload TTFT


def _ttft(
    engine, rid: str, prompt: list[int], params, conversation_id: str
) -> tuple[float, list[int]]:
    """Seconds from add_request to the request's first token; runs it to the end."""
    t0 = time.perf_counter()
    engine.add_request(rid, prompt, params, conversation_id=conversation_id)
    first, toks = None, []
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.request_id == rid and o.new_token_ids:
                if first is None:
                    first = time.perf_counter() - t0
                toks += o.new_token_ids
    return first, toks


def measure_offload(model, cfg: Config, tokenizer=None) -> dict[str, float]:
    """Second-turn TTFT: re-prefill (offload off) vs KV restored (offload on), alternated.

    Prefix caching is off in both engines, so the second turn's prompt is either computed
    again or read back from the offload files. Each repetition is a new conversation: a
    first turn of `offload_tokens - 24` prompt tokens and 16 output tokens, then a second
    turn whose prompt is the whole first turn plus 8 new tokens (~offload_tokens in all).
    """
    vocab = model.cfg.vocab_size
    rng = random.Random(cfg.seed + 1)
    times = {"reprefill": [], "restored": []}
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        engines = {
            "reprefill": _engine(model, tokenizer, engine_config(cfg, enable_prefix_caching=False)),
            "restored": _engine(
                model,
                tokenizer,
                engine_config(cfg, enable_prefix_caching=False, offload_dir=tmp),
            ),
        }
        try:
            for rep in range(cfg.offload_reps + 1):  # repetition 0 warms up
                turn1 = [rng.randrange(vocab) for _ in range(cfg.offload_tokens - 24)]
                extra = [rng.randrange(vocab) for _ in range(8)]
                outs = {}
                for name, eng in engines.items():
                    conv = f"conv-{rep}"
                    _, out1 = _ttft(eng, f"{conv}-1", turn1, greedy(16), conv)
                    eng.wait_offload()
                    prompt2 = turn1 + out1 + extra
                    t, out2 = _ttft(eng, f"{conv}-2", prompt2, greedy(4), conv)
                    outs[name] = out2
                    if rep:
                        times[name].append(t)
                same &= outs["reprefill"] == outs["restored"]
            hits = engines["restored"].stats().offload_hits
        finally:
            for eng in engines.values():
                eng.close()
    re, rs = statistics.median(times["reprefill"]), statistics.median(times["restored"])
    return {
        "ttft_reprefill_s": re,
        "ttft_restored_s": rs,
        "offload_ttft_speedup": re / rs,
        "offload_hits": hits,
        "offload_same_tokens": float(same),
    }


def _engine(model, tokenizer, config):
    from minirepro.papers.serve.engine import LLMEngine

    return LLMEngine(model, tokenizer, config)


# --------------------------------------------------------------------------- nano-batching


def measure_nano(model, cfg: Config, tokenizer=None) -> dict[str, float]:
    """Steady decoding iterations of engines with nano_batches 1, 2 and "auto", alternated.

    Each engine holds the same `nano_seqs` sequences with `nano_context` cached tokens; we
    time `step()` (one decode iteration each) in rounds 1, 2, auto, 1, 2, auto, ... and
    compare with the cost model's simulated makespans of the same batch shape.
    """
    from minirepro.papers.serve import nanobatch as nb

    costs = nb.default_costs(model, tokenizer)
    rng = random.Random(cfg.seed + 2)
    prompts = [
        [rng.randrange(model.cfg.vocab_size) for _ in range(cfg.nano_context)]
        for _ in range(cfg.nano_seqs)
    ]
    steps = cfg.nano_steps + 2
    engines = {}
    for k in (1, 2, "auto"):
        eng = _engine(model, tokenizer, engine_config(cfg, nano_batches=k))
        if k == "auto":
            eng.nano_costs = costs  # the same measured costs as the prediction below
        for i, p in enumerate(prompts):
            eng.add_request(f"n{i}", p, greedy(steps + 4))
        started: set[str] = set()
        while len(started) < len(prompts):  # prefill until every sequence decodes
            started |= {o.request_id for o in eng.step() if o.new_token_ids}
        engines[k] = eng
    times: dict[object, list[float]] = {k: [] for k in engines}
    host = _time_methods(engines[1], [("scheduler", "schedule"), ("runner", "prepare")])
    try:
        for r in range(steps):
            if r == 2:  # two warm-up rounds
                host.clear()
            for k, eng in engines.items():
                t0 = time.perf_counter()
                eng.step()
                if r >= 2:
                    times[k].append(time.perf_counter() - t0)
        plan_auto = engines["auto"].last_plan
    finally:
        for eng in engines.values():
            eng.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    # The engine's own host work before the forward (scheduling, batch metadata), measured
    # in the unsplit engine, joins the cost model as the "schedule" op.
    sched_s = sum(host.values()) / max(1, len(times[1]))
    costs = dataclasses.replace(
        costs,
        curves=costs.curves | {"schedule": nb.Curve([float(cfg.nano_seqs)], [sched_s])},
        plans={},
    )
    shape = nb.BatchShape(0, cfg.nano_seqs, cfg.nano_context + 4)
    whole = nb.simulate(costs, shape, nb.unsplit(shape))
    halves = nb.simulate(costs, shape, nb.NanoPlan(_halves(cfg.nano_seqs)))
    sim1, sim2 = whole.makespan, halves.makespan
    plan = nb.search(costs, shape)
    return {
        "step_1_s": med[1],
        "step_2_s": med[2],
        "step_auto_s": med["auto"],
        "measured_2_over_1": med[2] / med[1],
        "measured_auto_over_1": med["auto"] / med[1],
        "sim_1_s": sim1,
        "sim_2_s": sim2,
        "sim_2_over_1": sim2 / sim1,
        "sim_over_measured_1": sim1 / med[1],
        "auto_plan": plan.sizes,
        "host_schedule_prepare_s": sched_s,
        "engine_auto_plan": getattr(plan_auto, "sizes", None),
        "cpu_schedules": (whole, halves),
    }


def _time_methods(engine, names: list[tuple[str, str]]) -> dict[str, float]:
    """Accumulates the seconds spent in `engine.<part>.<method>` (instance wrappers)."""
    acc: dict[str, float] = {}
    for part, method in names:
        obj = getattr(engine, part)
        fn = getattr(obj, method)

        def timed(*args, _fn=fn, _key=f"{part}.{method}", **kwargs):
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                acc[_key] = acc.get(_key, 0.0) + time.perf_counter() - t0

        setattr(obj, method, timed)
    return acc


def _halves(n: int) -> list[int]:
    return [n - n // 2, n // 2] if n > 1 else [n]


def paper_model(max_nano: int = 3) -> dict[str, object]:
    """The analytic LLaMA-2-70B / 8xA100 case: unsplit vs searched plan (a model)."""
    from minirepro.papers.serve import nanobatch as nb

    costs = nb.paper_costs()
    # A dense batch of 2048 tokens as in the paper's Fig. 6: 512 prefill, 1536 decodes.
    shape = nb.BatchShape(512, 1536, 1024.0, 1)
    plan = nb.search(costs, shape, max_nano=max_nano, keep=2, budget=12)
    whole = nb.simulate(costs, shape, nb.unsplit(shape))
    split = nb.simulate(costs, shape, plan)
    opt = costs.meta["optimal_tok_s"]
    return {
        "costs": costs,
        "shape": shape,
        "whole": whole,
        "split": split,
        "speedup": whole.makespan / split.makespan,
        "fraction_whole": shape.tokens / whole.makespan / opt,
        "fraction_split": shape.tokens / split.makespan / opt,
    }


# --------------------------------------------------------------------------- run


def load_models(cfg: Config):
    """(core model, HF model, tokenizer or None) for cfg.model."""
    from minirepro.core.hf_llama import to_hf
    from minirepro.core.model import ModelConfig, Transformer

    if cfg.model == "smollm2":
        from minirepro.core.pretrained import load_smollm2

        pre = load_smollm2()
        return pre.model, to_hf(pre.model), pre.tokenizer
    if cfg.model == "random":
        torch.manual_seed(cfg.seed)
        model = Transformer(ModelConfig(**cfg.random_model)).eval()
        return model, to_hf(model), None
    raise ValueError(f"Config.model must be 'smollm2' or 'random', got {cfg.model!r}")


def throughput_workload(model, cfg: Config, tokenizer=None) -> Workload:
    """The throughput comparison's requests (special token ids skipped with a tokenizer)."""
    return make_workload(
        cfg.num_requests,
        model.cfg.vocab_size,
        prompt_range=cfg.prompt_range,
        output_range=cfg.output_range,
        seed=cfg.seed,
        low_id=0 if tokenizer is None else 2,
    )


def throughput(
    model, hf, cfg: Config, out: RunDir | None, tokenizer=None, progress=None
) -> dict[str, float]:
    """Engine vs HF sequential vs HF static batches: output tok/s, alternated in rounds.

    `progress(text)`, if given, is told each contender's rate as it is measured.
    """
    say = progress or (lambda text: None)
    wl = throughput_workload(model, cfg, tokenizer)
    # Correctness first: greedy tokens of a few requests equal HF's.
    few = wl.subset(range(min(3, len(wl.prompts))))
    few = Workload(few.prompts, [min(n, 12) for n in few.output_lens])
    *_, ours = run_engine(model, few, engine_config(cfg))
    *_, ref = run_hf_sequential(hf, few)
    check = sum(a == b for a, b in zip(ours, ref)) / len(ref)
    say(f"greedy tokens equal HF on {len(ref)} requests: {check:.0%}")
    rates: dict[str, list[float]] = {"engine": [], "hf_sequential": [], "hf_static": []}
    cpu_rates: dict[str, list[float]] = {k: [] for k in rates}
    totals: dict[str, list[float]] = {"engine": [], "engine_cpu": []}
    static_match = []
    rng = random.Random(cfg.seed + 3)
    order = list(range(len(wl.prompts)))
    for r in range(cfg.rounds):
        t, c, eng_out = run_engine(model, wl, engine_config(cfg), tokenizer)
        rates["engine"].append(wl.output_tokens / t)
        cpu_rates["engine"].append(wl.output_tokens / c)
        totals["engine"].append((wl.output_tokens + wl.prompt_tokens) / t)
        totals["engine_cpu"].append((wl.output_tokens + wl.prompt_tokens) / c)
        say(f"round {r}: engine {rates['engine'][-1]:.1f} output tok/s ({t:.1f} s, {c:.1f} CPU s)")
        t, c, st_out = run_hf_static(hf, wl, cfg.static_batch)
        rates["hf_static"].append(wl.output_tokens / t)
        cpu_rates["hf_static"].append(wl.output_tokens / c)
        static_match.append(sum(a == b for a, b in zip(eng_out, st_out)) / len(st_out))
        say(
            f"round {r}: hf static {rates['hf_static'][-1]:.1f} output tok/s ({t:.1f} s, {c:.1f} CPU s)"
        )
        sub = wl.subset(rng.sample(order, min(cfg.seq_requests, len(order))))
        t, c, _ = run_hf_sequential(hf, sub)
        rates["hf_sequential"].append(sub.output_tokens / t)
        cpu_rates["hf_sequential"].append(sub.output_tokens / c)
        say(
            f"round {r}: hf sequential {rates['hf_sequential'][-1]:.1f} output tok/s ({t:.1f} s, {c:.1f} CPU s)"
        )
        if out is not None:
            out.log(phase="throughput", round=r, **{k: v[-1] for k, v in rates.items()})
    med = {k: statistics.median(v) for k, v in rates.items()}
    cmed = {k: statistics.median(v) for k, v in cpu_rates.items()}
    return {
        "engine_tok_s": med["engine"],
        "engine_total_tok_s": statistics.median(totals["engine"]),
        # per second of this process's CPU time, x threads: what the rate would be with
        # the cores to ourselves (other jobs on a shared machine take wall time, not ours)
        "engine_total_tok_cpu_s": statistics.median(totals["engine_cpu"]) * torch.get_num_threads(),
        "vs_hf_sequential_cpu": cmed["engine"] / cmed["hf_sequential"],
        "vs_hf_static_cpu": cmed["engine"] / cmed["hf_static"],
        "hf_sequential_tok_s": med["hf_sequential"],
        "hf_static_tok_s": med["hf_static"],
        "vs_hf_sequential": med["engine"] / med["hf_sequential"],
        "vs_hf_static": med["engine"] / med["hf_static"],
        "greedy_match_hf": check,
        "static_batch_match": statistics.median(static_match),
        "requests": len(wl.prompts),
        "prompt_tokens": wl.prompt_tokens,
        "output_tokens": wl.output_tokens,
    }


def batch_sweep(model, cfg: Config, tokenizer=None) -> dict[int, float]:
    """Engine output tok/s against max_num_seqs (the figure's curve)."""
    wl = make_workload(
        cfg.sweep_requests,
        model.cfg.vocab_size,
        prompt_range=(cfg.prompt_range[0], min(cfg.prompt_range[1], 128)),
        output_range=(cfg.sweep_output, cfg.sweep_output),
        seed=cfg.seed + 4,
    )
    res = {}
    for b in cfg.batch_sizes:
        t, _, _ = run_engine(model, wl, engine_config(cfg, max_num_seqs=b), tokenizer)
        res[b] = wl.output_tokens / t
    return res


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Runs the four measurements; returns the Results."""
    with num_threads(cfg.threads):
        return _run(cfg, out)


def _run(cfg: Config, out: RunDir) -> list[Result]:
    model, hf, tok = load_models(cfg)
    steps = list(
        out.track(
            ["throughput", "optimal", "sweep", "nano", "paper model", "offload"], "measurements"
        )
    )
    m: dict[str, object] = {}
    for step in steps:
        if step == "throughput":
            m.update(throughput(model, hf, cfg, out, tok))
        elif step == "optimal":
            opt, peak = optimal_tok_s(model, cfg.peak_sizes)
            m.update(optimal_tok_s=opt, peak_flops=peak, params=model.num_params())
        elif step == "sweep":
            m["sweep"] = batch_sweep(model, cfg, tok)
        elif step == "nano":
            m.update(measure_nano(model, cfg, tok))
        elif step == "paper model":
            pm = paper_model()
            m["paper_model"] = pm
        elif step == "offload":
            m.update(measure_offload(model, cfg, tok))
    pm = m.pop("paper_model")
    cpu_schedules = m.pop("cpu_schedules")
    out.log(phase="summary", **{k: v for k, v in m.items() if k != "sweep"}, sweep=m["sweep"])
    _figures(m, pm, cpu_schedules, out)
    frac_total = m["engine_total_tok_s"] / m["optimal_tok_s"]
    frac_out = m["engine_tok_s"] / m["optimal_tok_s"]
    frac_cpu = m["engine_total_tok_cpu_s"] / m["optimal_tok_s"]
    where = f"{cfg.model}, {cfg.num_requests} requests, {torch.get_num_threads()} threads"
    return [
        Result.check(
            "engine throughput / optimal (prompt + output tokens/s over peak FLOP/s / 2P)",
            paper_value=0.685,
            values=[frac_total],
            criterion=AtLeast(0.5),
            seeds=[cfg.seed],
            note=f"{where}; engine {m['engine_tok_s']:.1f} output tok/s, "
            f"{m['engine_total_tok_s']:.1f} prompt + output tok/s; optimal "
            f"{m['optimal_tok_s']:.0f} tok/s from {m['peak_flops'] / 1e9:.0f} "
            f"GFLOP/s; output tokens only: {frac_out:.3f}; per CPU-second (shared-machine "
            f"correction): {frac_cpu:.3f}",
        ),
        Result.check(
            "engine output tok/s / HF generate with static batches",
            paper_value="1.91x (vs TensorRT-LLM)",
            values=[m["vs_hf_static"]],
            criterion=AtLeast(1.5),
            seeds=[cfg.seed],
            unit="x",
            note=f"baseline is HF static batching of {cfg.static_batch}, not TensorRT-LLM; "
            f"{m['engine_tok_s']:.1f} vs {m['hf_static_tok_s']:.1f} tok/s; per CPU-second "
            f"{m['vs_hf_static_cpu']:.2f}x",
        ),
        Result.check(
            "engine output tok/s / HF generate one request at a time",
            paper_value="(vLLM-style baseline; no paper number)",
            values=[m["vs_hf_sequential"]],
            criterion=AtLeast(5.0),
            seeds=[cfg.seed],
            unit="x",
            note=f"HF sequential measured on {cfg.seq_requests} requests of the same workload "
            f"({m['hf_sequential_tok_s']:.1f} tok/s; per CPU-second {m['vs_hf_sequential_cpu']:.2f}x); "
            f"greedy tokens equal HF: "
            f"{m['greedy_match_hf']:.0%}",
        ),
        Result.check(
            "nano-batching on this CPU: measured decode-iteration time, auto plan / no split",
            paper_value="nano-batching pays where resources overlap (GPU)",
            values=[m["measured_auto_over_1"]],
            criterion=AtMost(1.05),
            seeds=[cfg.seed],
            unit="x",
            note=f"auto plan {m['auto_plan']} for {cfg.nano_seqs} decodes; forced 2-way split "
            f"measured {m['measured_2_over_1']:.3f}x, simulated {m['sim_2_over_1']:.3f}x",
        ),
        Result.check(
            "cost model: simulated / measured ratio of 2-way-split to unsplit iteration time",
            paper_value="(the paper's search uses profiled op costs)",
            values=[m["sim_2_over_1"] / m["measured_2_over_1"]],
            criterion=Within(1.0, rel=0.25),
            seeds=[cfg.seed],
            note=f"absolute: simulated / measured unsplit iteration {m['sim_over_measured_1']:.2f}",
        ),
        Result.check(
            "MODEL (not measured): LLaMA-2-70B on 8xA100, iteration time unsplit / auto plan",
            paper_value="68.5% of optimal with all of NanoFlow",
            values=[pm["speedup"]],
            criterion=AtLeast(1.1),
            seeds=[cfg.seed],
            unit="x",
            note=f"roofline model with assumed interference; plan {pm['split'].plan.sizes} "
            f"({pm['split'].plan.order} order); modelled fraction of optimal "
            f"{pm['fraction_whole']:.2f} -> {pm['fraction_split']:.2f}",
        ),
        Result.check(
            "second-turn TTFT, re-prefill / KV restored from offload",
            paper_value="offload avoids recompute (no TTFT figure in the paper)",
            values=[m["offload_ttft_speedup"]],
            criterion=AtLeast(3.0),
            seeds=[cfg.seed],
            unit="x",
            note=f"~{cfg.offload_tokens}-token conversation; {m['ttft_reprefill_s'] * 1e3:.1f} vs "
            f"{m['ttft_restored_s'] * 1e3:.1f} ms; same tokens: {bool(m['offload_same_tokens'])}; "
            f"restored from offload: {m['offload_hits']} times",
        ),
    ]


def _figures(m: dict, pm: dict, cpu_schedules, out: RunDir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minirepro.papers.serve.nanobatch import draw_schedule

    whole, split = pm["whole"], pm["split"]
    out.figures_dir.mkdir(exist_ok=True)
    draw_schedule(
        [whole, split],
        out.figures_dir / "nano_schedule_70b_model.png",
        titles=["MODEL 70B/8xA100, no split", f"MODEL, auto plan {split.plan.sizes}"],
        window=whole.makespan * 3 / pm["costs"].n_layer,
    )
    whole, halves = cpu_schedules
    draw_schedule(
        [whole, halves],
        out.figures_dir / "nano_schedule_cpu.png",
        titles=[
            f"this CPU (measured op costs), {whole.batch.num_decode_seqs} decodes, no split",
            f"forced 2-way split {halves.plan.sizes}",
        ],
    )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = sorted(m["sweep"])
    ax.plot(xs, [m["sweep"][x] for x in xs], "o-", label="engine")
    ax.axhline(m["hf_static_tok_s"], ls="--", c="C1", label="HF static batches")
    ax.axhline(m["hf_sequential_tok_s"], ls=":", c="C2", label="HF one at a time")
    ax.axhline(m["optimal_tok_s"], ls="-", c="k", lw=0.8, label="optimal (peak / 2P)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max_num_seqs")
    ax.set_ylabel("output tokens/s")
    ax.set_title("throughput vs batch size")
    ax.legend(fontsize=7)
    out.savefig(fig, "throughput_vs_batch")


PAPER = Paper(
    id="serve",
    title="NanoFlow: towards optimal large language model serving throughput",
    arxiv="2408.12757",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
    # every claim is checked; on 2 cores nano-batching itself does not pay (NOTES.md)
    status="implemented",
)
