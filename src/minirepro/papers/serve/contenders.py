"""Our engine in each dtype and llama.cpp on the same requests: throughput and time to first
token, batched (a whole workload arriving at once) and single-stream (one request alone).

llama.cpp runs through llama-cpp-python (`pip install llama-cpp-python`, built from its
source package by `make bench`, see benchmarks/README or the Makefile), on the GGUF file our
engine loads (SmolLM2-135M-Instruct Q4_1), one request at a time: the binding's high-level
API has no continuous batching. llama.cpp's own server (parallel slots) is in the same source
package (vendor/llama.cpp/tools/server) but is not built here yet -- see NOTES.md. Every
request must produce exactly its number of tokens, so llama.cpp's generator is read past
end-of-sequence, as our engine runs with ignore_eos.

llama.cpp runs in a process of its own (`LlamaCpp` talks to it over a pipe), so that its
OpenMP runtime and threads never share a process with torch's; contenders still run one
after another, never at the same time.

All times are wall-clock; TTFT is measured from the moment the workload arrives (every
request at t = 0), so for a one-at-a-time server it includes the wait for the requests
before it.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import dataclass


@dataclass
class Timing:
    """One contender's pass over a workload."""

    wall_s: float
    output_tokens: int
    prompt_tokens: int
    ttft_s: list[float]  # per request, from the workload's arrival
    outputs: list[list[int]]

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def total_tok_s(self) -> float:
        return (self.output_tokens + self.prompt_tokens) / self.wall_s

    @property
    def ttft_median_s(self) -> float:
        return statistics.median(self.ttft_s)


def run_engine_timed(engine, prompts: list[list[int]], output_lens: list[int]) -> Timing:
    """All requests added at t = 0 to `engine` (an idle `LLMEngine`), run to the end."""
    from minirepro.papers.serve.sampling import SamplingParams

    t0 = time.perf_counter()
    ids = [f"timed-{i}" for i in range(len(prompts))]
    for rid, p, n in zip(ids, prompts, output_lens):
        engine.add_request(rid, p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    first: dict[str, float] = {}
    outs: dict[str, list[int]] = {rid: [] for rid in ids}
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.new_token_ids and o.request_id not in first:
                first[o.request_id] = time.perf_counter() - t0
            outs[o.request_id] += o.new_token_ids
            if o.error is not None:
                raise RuntimeError(f"{o.request_id}: {o.error}")
    wall = time.perf_counter() - t0
    return Timing(
        wall,
        sum(output_lens),
        sum(len(p) for p in prompts),
        [first[r] for r in ids],
        [outs[r] for r in ids],
    )


def llama_cpp_available() -> str | None:
    """None when llama-cpp-python imports, else why not (a line for the benchmark)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"llama_cpp not installed ({exc}); `make bench` builds it from source"
    return None


class LlamaCpp:
    """llama.cpp on a GGUF file in a worker process: `generate` and `run` as `_LocalLlama`'s,
    timed inside the worker (the pipe's latency is not in the figures).

    Args:
        gguf: Path of the model file.
        n_threads: Threads for prefill and decode (default: torch's intra-op thread count,
            so both contenders get the same).
        n_ctx: Context window (prompt + output of the longest request).
    """

    def __init__(self, gguf: str, n_threads: int | None = None, n_ctx: int = 1024) -> None:
        if n_threads is None:
            import torch

            n_threads = torch.get_num_threads()
        self.n_threads = n_threads
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_llama_worker, args=(child, str(gguf), n_threads, n_ctx), daemon=True
        )
        self._proc.start()
        self.version, self.system_info = self._call("info")

    def _call(self, method: str, *args):
        self._conn.send((method, args))
        while not self._conn.poll(1.0):  # a worker that died never answers
            if not self._proc.is_alive():
                raise RuntimeError(f"the llama.cpp worker exited ({self._proc.exitcode})")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"llama.cpp worker: {value}")
        return value

    def generate(self, prompt: list[int], n: int) -> tuple[float, float, list[int]]:
        """(seconds to the first token, seconds in all, the n greedy tokens) of one request."""
        return self._call("generate_timed", list(prompt), n)

    def run(self, prompts: list[list[int]], output_lens: list[int]) -> Timing:
        """The whole workload, arriving at t = 0, served one request after another."""
        return self._call("run", [list(p) for p in prompts], list(output_lens))

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()


def _llama_worker(conn, gguf: str, n_threads: int, n_ctx: int) -> None:
    try:
        llm = _LocalLlama(gguf, n_threads, n_ctx)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        conn.recv()
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while (msg := conn.recv()) is not None:
        method, args = msg
        try:
            if method == "info":
                conn.send(("ok", (llm.version, llm.system_info)))
            else:
                conn.send(("ok", getattr(llm, method)(*args)))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _LocalLlama:
    """llama.cpp (through llama-cpp-python) in this process, greedy, one request at a time."""

    def __init__(self, gguf: str, n_threads: int, n_ctx: int = 1024) -> None:
        import llama_cpp

        self.n_threads = n_threads
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )
        self.version = llama_cpp.__version__
        info = llama_cpp.llama_print_system_info()
        self.system_info = info.decode() if isinstance(info, bytes) else str(info)

    def generate(self, prompt: list[int], n: int, t0: float | None = None) -> tuple[float, list]:
        """(seconds from t0 -- default: now -- to the first token, the n greedy tokens)."""
        t0 = time.perf_counter() if t0 is None else t0
        self.llm.reset()  # no reuse of the previous request's KV
        out: list[int] = []
        first = 0.0
        for tok in self.llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            if not out:
                first = time.perf_counter() - t0
            out.append(int(tok))
            if len(out) == n:
                break
        return first, out

    def generate_timed(self, prompt: list[int], n: int) -> tuple[float, float, list[int]]:
        t0 = time.perf_counter()
        first, out = self.generate(prompt, n, t0)
        return first, time.perf_counter() - t0, out

    def run(self, prompts: list[list[int]], output_lens: list[int]) -> Timing:
        """The whole workload, arriving at t = 0, served one request after another."""
        t0 = time.perf_counter()
        ttft, outs = [], []
        for p, n in zip(prompts, output_lens):
            first, out = self.generate(p, n, t0)
            ttft.append(first)
            outs.append(out)
        wall = time.perf_counter() - t0
        return Timing(wall, sum(output_lens), sum(len(p) for p in prompts), ttft, outs)


def single_stream(run, prompt: list[int], n: int) -> dict[str, float]:
    """TTFT (= prefill of `prompt`) and decode tok/s of one request alone.

    `run(prompt, n)` returns (seconds to first token, wall seconds, tokens).
    """
    ttft, wall, toks = run(prompt, n)
    if len(toks) != n:
        raise RuntimeError(f"asked for {n} tokens, got {len(toks)}")
    return {
        "ttft_s": ttft,
        "prefill_tok_s": len(prompt) / ttft,
        "decode_tok_s": (n - 1) / (wall - ttft),
    }


def engine_single(engine):
    """A `single_stream` runner on an idle `LLMEngine`."""

    def run(prompt, n):
        t = run_engine_timed(engine, [prompt], [n])
        return t.ttft_s[0], t.wall_s, t.outputs[0]

    return run


def llama_single(llm: LlamaCpp):
    """A `single_stream` runner on a `LlamaCpp`."""

    return llm.generate
