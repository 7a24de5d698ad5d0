"""`LLMEngine`: requests in, token deltas out, one iteration per `step()`.

An iteration: apply the requests added or aborted since the last one; let the scheduler
pick the work (decodes, prefill chunks) under the token budget; run the model over it; draw
each sequence's next token; check eos, stop ids, stop strings and max_tokens; report deltas.

Two executor options overlap CPU work with model compute (same outputs either way):
- `async_scheduling`: the model runs on a worker thread; while iteration i computes,
  `step()` schedules iteration i+1 (placeholders for i's tokens), and returns i's results
  only afterwards. A sequence that finishes in i still rides in i+1 and its token there is
  dropped (eos is not waited for).
- `nano_batches=k`: the iteration is split into k nano-batches run one after another on the
  worker; the sampling, detokenisation, stop checks and offload writes of nano-batch j run
  on the calling thread while nano-batch j+1 computes.

All writes into the KV cache happen on the worker, in submission order, so a block released
by an abort or a preemption and handed to another sequence is never written out of order.

A model step that raises fails only the requests of its (nano-)batch: they finish with
finish_reason "error" (and `RequestOutput.error` saying why), their blocks are freed, and
the engine goes on with the others, in every mode.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from minirepro.core.model import Transformer
from minirepro.papers.serve.dtypes import DTYPES, activation_dtype, resolve_dtype
from minirepro.papers.serve.gemm import GEMMS
from minirepro.papers.serve.kv_cache import BlockManager, PagedKVCache
from minirepro.papers.serve.offload import OffloadStore
from minirepro.papers.serve.paged_attention import BACKENDS
from minirepro.papers.serve.runner import BatchInput, ModelRunner, SeqWork
from minirepro.papers.serve.sampling import (
    Detokenizer,
    SamplingParams,
    make_generator,
    sample_tokens,
)
from minirepro.papers.serve.scheduler import (
    Scheduled,
    Scheduler,
    SchedulerConfig,
    Sequence,
)

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    """Sizes and switches of the engine (vLLM's names where vLLM has the knob)."""

    block_size: int = 16
    num_blocks: int = 1024  # KV blocks in the pool (per layer)
    max_num_seqs: int = 64  # running sequences at most
    max_num_batched_tokens: int = 512  # per-iteration token budget (chunked prefill)
    # None: on for models of attention layers, off for hybrids (a Mamba state is per sequence,
    # it cannot be shared through KV blocks); True with a hybrid is an error
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool = True
    async_scheduling: bool = False  # prepare iteration i+1 while i runs; same outputs
    # KV offload of finished conversation turns (None: off; not for hybrids)
    offload_dir: str | None = None
    offload_max_bytes: int = 1 << 30  # LRU-bounded disk use
    nano_batches: int | str = 1  # 1: off; k: split each iteration into k; "auto": search
    attention: str = "auto"  # decode attention: "kernel" (C++ paged), "torch", "auto"
    gemm: str = "auto"  # projections: "packed" (C++, decode) + oneDNN, "onednn", "torch", "auto"
    # number format (dtypes.py): "float32"; "bfloat16" weights and KV cache; "int8" weight-only
    # int8 decode GEMMs (bf16 KV cache). Without native bf16 it warns and runs float32.
    dtype: str = "float32"
    # mixed into what the KV is said to belong to (prefix-cache root, offload files): an
    # adapter's name or a tenant, so their cached blocks are never shared
    cache_salt: str = ""

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.offload_max_bytes <= 0:
            raise ValueError(f"offload_max_bytes must be positive, got {self.offload_max_bytes}")
        nb = self.nano_batches
        if not (nb == "auto" or (isinstance(nb, int) and not isinstance(nb, bool) and nb >= 1)):
            raise ValueError(f"nano_batches must be an int >= 1 or 'auto', got {nb!r}")
        if self.attention not in BACKENDS:
            raise ValueError(f"attention must be one of {BACKENDS}, got {self.attention!r}")
        if self.gemm not in GEMMS:
            raise ValueError(f"gemm must be one of {GEMMS}, got {self.gemm!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    error: str | None = None  # finish_reason "error": what failed


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_cache_queries: int  # prompt tokens looked up
    prefix_cache_hits: int  # prompt tokens found
    num_preemptions: int
    offload_hits: int
    offload_misses: int


@dataclass
class _Launched:
    """An iteration in flight: its nano-batches and their futures (or logits)."""

    groups: list[list[Scheduled]]
    results: list[Future | Tensor | Exception]


def split_nano_batches(work: list[Scheduled], sizes: Seq[int]) -> list[list[Scheduled]]:
    """Cut work (in order) into groups of about `sizes[j]` tokens each (no empty group)."""
    total = sum(s.num_tokens for s in work)
    bounds = list(itertools.accumulate(sizes))
    scale = total / bounds[-1] if bounds and bounds[-1] else 1.0
    groups: list[list[Scheduled]] = [[] for _ in sizes]
    acc, j = 0, 0
    for s in work:
        while j < len(bounds) - 1 and acc >= bounds[j] * scale:
            j += 1
        groups[j].append(s)
        acc += s.num_tokens
    return [g for g in groups if g]


class LLMEngine:
    """A continuous-batching engine over the core `Transformer`.

    Args:
        model: the decoder (causal mask): attention layers, and Mamba layers (a hybrid), which
            run from a per-sequence state without prefix caching, KV offload or
            nano_batches="auto"; its weights are used, not copied, except for fused q/k/v and
            gate/up matrices.
        tokenizer: an HF tokenizer for text deltas and stop strings, or None (token ids only).
        config: sizes and switches.
        eos_token_ids: ids that end a request unless its params say ignore_eos.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any = None,
        config: EngineConfig | None = None,
        *,
        eos_token_ids: Seq[int] = (),
    ) -> None:
        self.config = config = config or EngineConfig()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        cfg = model.cfg
        w = model.embed.weight
        # what runs here: config.dtype, or float32 where the CPU lacks native bf16 (warns)
        if w.dtype != torch.float32 and config.dtype != "float32":
            raise ValueError(f"dtype={config.dtype!r} converts a float32 model, got {w.dtype}")
        self.dtype = resolve_dtype(config.dtype, w.device)
        self.cache = PagedKVCache(
            cfg.n_layer,
            config.num_blocks,
            config.block_size,
            cfg.n_kv_head,
            cfg.head_dim,
            activation_dtype(self.dtype) if w.dtype == torch.float32 else w.dtype,
            w.device,
        )
        # what the KV belongs to: the root of the prefix cache's hash chain, the offload's key
        self.identity = hashlib.sha256(
            repr(
                (
                    cfg.to_dict(),
                    str(w.dtype),
                    self.dtype,
                    float(w.detach().float().sum()),
                    config.cache_salt,
                )
            ).encode()
        ).hexdigest()[:16]
        self.runner = ModelRunner(model, self.cache, config.attention, config.gemm, self.dtype)
        prefix_caching = self._check_stateful(config)
        self.blocks = BlockManager(
            config.num_blocks, config.block_size, prefix_caching, self.identity
        )
        self.scheduler = Scheduler(
            SchedulerConfig(
                config.max_num_seqs, config.max_num_batched_tokens, config.enable_chunked_prefill
            ),
            self.blocks,
            restore=self._restore if config.offload_dir else None,
            new_state=self.runner.new_state if self.runner.stateful else None,
        )
        self.offload: OffloadStore | None = None
        if config.offload_dir:
            self.offload = OffloadStore(config.offload_dir, config.offload_max_bytes, self.identity)
        self.offload_hits = self.offload_misses = 0
        self.nano_costs = None  # nanobatch.OpCosts, measured on first use when "auto"
        self.last_plan = None  # the NanoPlan of the latest iteration ("auto")
        use_worker = config.async_scheduling or config.nano_batches != 1
        self._worker = ThreadPoolExecutor(1, "serve-model") if use_worker else None
        self._io = ThreadPoolExecutor(1, "serve-offload") if self.offload else None
        self._io_futures: list[Future] = []
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Any]] = []
        self._active: dict[str, Sequence] = {}  # added and not yet reported finished
        self._arrival = itertools.count()
        self._gen_ids = itertools.count()
        self._inflight: _Launched | None = None
        self._finished_out: list[RequestOutput] = []

    def _check_stateful(self, config: EngineConfig) -> bool:
        """Whether prefix caching is on; refuses what a model with Mamba layers cannot do."""
        if not self.runner.stateful:
            return config.enable_prefix_caching is not False
        cfg = self.model.cfg
        mixers = sorted({cfg.mixer_of(i) for i in range(cfg.n_layer)} - {"attention"})
        why = f"the model has {'/'.join(mixers)} layers, whose state is per sequence"
        if config.enable_prefix_caching:
            raise ValueError(
                f"enable_prefix_caching=True shares KV blocks between requests, but {why} "
                "and cannot be rebuilt from shared blocks: leave it unset or False"
            )
        if config.offload_dir:
            raise ValueError(
                f"offload_dir: the KV offload saves and restores keys and values only, but {why} "
                "and is not saved: leave it unset"
            )
        if config.nano_batches == "auto":
            raise ValueError(
                f"nano_batches='auto' profiles attention layers only, but {why}: "
                "give a count instead"
            )
        return False

    @classmethod
    def from_pretrained(cls, pretrained, config: EngineConfig | None = None) -> LLMEngine:
        """An engine on a `minirepro.core.pretrained.Pretrained` (eos = its stop tokens)."""
        return cls(
            pretrained.model, pretrained.tokenizer, config, eos_token_ids=pretrained.stop_tokens
        )

    # ------------------------------------------------------------------ requests
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        conversation_id: str | None = None,
    ) -> None:
        """Queue a request (thread-safe; it joins at the next step)."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be SamplingParams, got {type(params).__name__}")
        if isinstance(prompt_token_ids, Tensor):
            prompt_token_ids = prompt_token_ids.tolist()
        ids = list(prompt_token_ids)
        if not ids:
            raise ValueError(f"request {request_id!r}: the prompt is empty")
        if any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise ValueError(f"request {request_id!r}: prompt token ids must be ints")
        V = self.model.cfg.vocab_size
        if min(ids) < 0 or max(ids) >= V:
            raise ValueError(
                f"request {request_id!r}: token ids must lie in [0, {V}), "
                f"got min {min(ids)}, max {max(ids)}"
            )
        limit = self.model.cfg.max_seq_len
        if len(ids) + params.max_tokens > limit:
            raise ValueError(
                f"request {request_id!r}: prompt of {len(ids)} tokens + max_tokens "
                f"{params.max_tokens} exceeds the model's max_seq_len {limit}"
            )
        bs = self.config.block_size
        if -(-(len(ids) + params.max_tokens) // bs) > self.config.num_blocks:
            raise ValueError(
                f"request {request_id!r}: {len(ids) + params.max_tokens} positions need more "
                f"than the {self.config.num_blocks} KV blocks of {bs} the engine has"
            )
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need an engine with a tokenizer")
        if conversation_id is not None and not isinstance(conversation_id, str):
            raise ValueError(f"conversation_id must be a string, got {conversation_id!r}")
        if any(t >= V for t in params.stop_token_ids):
            raise ValueError(f"stop_token_ids must lie in [0, {V})")
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.eos_token_ids
        seq = Sequence(
            request_id=request_id,
            prompt_ids=ids,
            params=params,
            generator=make_generator(params),
            detok=Detokenizer(self.tokenizer, params.stop),
            stop_ids=frozenset(stop_ids),
            arrival=next(self._arrival),
            conversation_id=conversation_id,
        )
        with self._lock:
            if request_id in self._active:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._active[request_id] = seq
            self._pending.append(("add", seq))

    def abort_request(self, request_id: str) -> None:
        """Stop a request (thread-safe); its blocks are freed at the next step, which reports
        it with finish_reason "abort". Unknown or finished ids are ignored."""
        with self._lock:
            self._pending.append(("abort", request_id))

    def has_unfinished_requests(self) -> bool:
        with self._lock:
            return bool(self._active) or bool(self._pending)

    def stats(self) -> EngineStats:
        s = self.scheduler
        with self._lock:
            pending = sum(1 for op, _ in self._pending if op == "add")
        return EngineStats(
            num_running=len(s.running),
            num_waiting=len(s.waiting) + pending,
            kv_blocks_used=self.blocks.num_used(),
            kv_blocks_total=self.blocks.num_blocks,
            prefix_cache_queries=s.prefix_queries,
            prefix_cache_hits=s.prefix_hits,
            num_preemptions=s.num_preemptions,
            offload_hits=self.offload_hits,
            offload_misses=self.offload_misses,
        )

    # ------------------------------------------------------------------ iteration
    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for op, arg in pending:
            if op == "add":
                self.scheduler.add(arg)
                continue
            seq = self._active.get(arg)
            if seq is not None:
                self.scheduler.finish(seq, "abort")

    def step(self) -> list[RequestOutput]:
        """Run one iteration and return what it produced (call from one thread only)."""
        self._apply_pending()
        outputs: list[RequestOutput] = []
        work = self.scheduler.schedule()  # async: iteration i+1, while i computes
        if self.config.async_scheduling:
            launched, self._inflight = self._inflight, None  # processed once, even if it fails
            if launched is not None:
                outputs += self._process(launched)
            # a sequence whose iteration i failed has no token for its placeholder: drop it
            work = [s for s in work if s.seq.finish_reason != "error"]
            if work:
                self._inflight = self._launch(work)
                self._set_placeholders(work)
        elif work:
            outputs += self._process(self._launch(work))
        self._report_finished(outputs)
        return outputs

    def _report_finished(self, outputs: list[RequestOutput]) -> None:
        """Report the sequences that finished outside `_process` (aborts, scheduler errors)."""
        with self._lock:
            seqs = [seq for seq in self._active.values() if seq.finished]
        outputs += [self._output(seq, final=True) for seq in seqs]

    def _set_placeholders(self, work: list[Scheduled]) -> None:
        for s in work:
            seq = s.seq
            if s.sample and not seq.finished and seq.num_output + 1 < seq.params.max_tokens:
                seq.placeholder = 1

    def _nano_groups(self, work: list[Scheduled]) -> list[list[Scheduled]]:
        """Split an iteration into nano-batches: k even ones, or the auto-search's plan."""
        k = self.config.nano_batches
        if k != "auto":
            total = sum(s.num_tokens for s in work)
            k = min(int(k), len(work))
            return split_nano_batches(work, [total / k] * k)
        from minirepro.papers.serve import nanobatch

        if self.nano_costs is None:
            self.nano_costs = nanobatch.default_costs(self.model, self.tokenizer)
        shape = nanobatch.BatchShape.from_work([(s.start, s.num_tokens) for s in work])
        plan = nanobatch.search(self.nano_costs, shape, max_nano=4)
        self.last_plan = plan
        groups = plan.assign([s.num_tokens == 1 and s.start > 0 for s in work])
        # "layer" order (layer-wise interleaving) is not run here: nano-batches go whole,
        # one after another, which is what lets host work overlap on a CPU.
        return [[work[i] for i in g] for g in groups]

    def _launch(self, work: list[Scheduled]) -> _Launched:
        groups = [work]
        if self.config.nano_batches != 1 and len(work) > 1:
            groups = self._nano_groups(work)
        # one group, nothing to overlap with (no async scheduling): run it on this thread
        inline = len(groups) == 1 and not self.config.async_scheduling
        results: list[Future | Tensor | Exception] = []
        for group in groups:
            try:
                batch = self.runner.prepare(
                    [
                        SeqWork(s.start, s.num_tokens, s.block_table, s.sample, s.state)
                        for s in group
                    ]
                )
                ids = [t for s in group for t in s.seq.token_ids[s.start : s.start + s.num_tokens]]
                self.runner.set_input_ids(batch, ids)
                results.append(self.runner.forward(batch) if inline else self._run(batch))
            except Exception as exc:  # fails this group's requests in `_process`
                results.append(exc)
        return _Launched(groups, results)

    def _run(self, batch: BatchInput) -> Future | Tensor:
        if self._worker is None:
            return self.runner.forward(batch)
        return self._worker.submit(self.runner.forward, batch)

    def _process(self, launched: _Launched) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        for group, result in zip(launched.groups, launched.results):
            try:
                outputs += self._process_group(group, result)
            except Exception as exc:
                log.exception("model step failed; its %d requests fail", len(group))
                error = f"engine step failed: {type(exc).__name__}: {exc}"
                for s in group:
                    self.scheduler.finish(s.seq, "error", error)
        return outputs

    def _process_group(
        self, group: list[Scheduled], result: Future | Tensor | Exception
    ) -> list[RequestOutput]:
        if isinstance(result, Exception):
            raise result
        logits = result.result() if isinstance(result, Future) else result
        samplers = [s for s in group if s.sample and not s.seq.finished]
        rows = [i for i, s in enumerate(x for x in group if x.sample) if not s.seq.finished]
        if samplers:
            tokens = sample_tokens(
                logits[rows] if len(rows) != logits.shape[0] else logits,
                [s.seq.params for s in samplers],
                [s.seq.generator for s in samplers],
            )
            for s, tok in zip(samplers, tokens):
                self._append(s.seq, tok)
        for s in group:
            self.scheduler.register_computed(s)
        return [self._output(s.seq, final=s.seq.finished) for s in samplers]

    def _append(self, seq: Sequence, token: int) -> None:
        seq.placeholder = 0
        seq.token_ids.append(token)
        seq.new_token_ids.append(token)
        seq.detok.add([token])
        reason = None
        if token in seq.stop_ids or seq.detok.stopped:
            reason = "stop"
        elif seq.num_output >= seq.params.max_tokens:
            reason = "length"
        if reason is not None:
            self._save_offload(seq)
            self.scheduler.finish(seq, reason)

    def _output(self, seq: Sequence, final: bool) -> RequestOutput:
        out = RequestOutput(
            request_id=seq.request_id,
            new_token_ids=seq.new_token_ids,
            new_text=seq.detok.delta(final),
            finished=seq.finished,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt,
            output_tokens=seq.num_output,
            cached_tokens=seq.cached_tokens,
            error=seq.error,
        )
        seq.new_token_ids = []
        if seq.finished:
            with self._lock:
                self._active.pop(seq.request_id, None)
        return out

    # ------------------------------------------------------------------ KV offload
    def _slots(self, table: list[int], begin: int, end: int) -> Tensor:
        pos = torch.arange(begin, end)
        return (
            torch.tensor(table, dtype=torch.long)[pos // self.config.block_size]
            * (self.config.block_size)
            + pos % self.config.block_size
        )

    def _save_offload(self, seq: Sequence) -> None:
        """Copy out the finished turn's K/V (all but the last token, whose K/V was never
        computed) and write it to disk on the I/O thread."""
        if self.offload is None or seq.conversation_id is None:
            return
        n = len(seq.token_ids) - 1
        if n < 1 or seq.num_computed < n or len(seq.block_table) * self.config.block_size < n:
            return
        k, v = self.cache.read(self._slots(seq.block_table, 0, n))  # copies
        tokens = seq.token_ids[:n]
        self._io_futures = [f for f in self._io_futures if not f.done()]
        self._io_futures.append(
            self._io.submit(self.offload.save, seq.conversation_id, tokens, k, v)
        )

    def _restore(self, seq: Sequence) -> int:
        """Scheduler hook at a sequence's first admission: load its conversation's saved
        K/V beyond the prefix-cache hit. Returns the tokens restored."""
        if self.offload is None or seq.conversation_id is None or seq.first_scheduled:
            return 0
        self.wait_offload()  # the previous turn's file may still be being written
        # the whole common prefix, not only whole blocks: the K/V of a position depends only
        # on the tokens up to it (a partial last block is filled, just not named)
        saved = self.offload.lookup(seq.conversation_id, seq.token_ids)
        n = min(saved, len(seq.token_ids) - 1)
        if n <= seq.num_computed:  # nothing saved, or the prefix cache already has it all
            self.offload_misses += n == 0
            return 0
        if self.scheduler.blocks_needed(seq, n - seq.num_computed) > self.blocks.num_available():
            return 0
        kv = self.offload.load(seq.conversation_id, seq.token_ids, n)
        if kv is None:
            self.offload_misses += 1
            return 0
        start = seq.num_computed
        table = self.scheduler.mark_computed(seq, n)  # the restored full blocks join the cache
        slots = self._slots(table, start, n)
        k, v = kv[0][:, start:n], kv[1][:, start:n]
        if self._worker is None:
            self.cache.write(slots, k, v)
        else:  # after every iteration already submitted, before any later one
            self._worker.submit(self.cache.write, slots, k, v)
        self.offload_hits += 1
        return n - start

    def wait_offload(self) -> None:
        """Block until every queued offload write is on disk (a failed write is logged and
        forgotten: the next turn recomputes)."""
        futures, self._io_futures = self._io_futures, []
        for f in futures:
            try:
                f.result()
            except Exception:
                log.exception("a KV offload write failed")

    # ------------------------------------------------------------------ offline
    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[list[int]]:
        """Output token ids of each prompt (in prompt order), running the engine to the end."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        tag = next(self._gen_ids)
        ids = [f"generate-{tag}-{i}" for i in range(len(prompts))]
        for rid, prompt, p in zip(ids, prompts, params):
            self.add_request(rid, list(prompt), p)
        out: dict[str, list[int]] = {rid: [] for rid in ids}
        errors = []
        while self.has_unfinished_requests():
            for o in self.step():
                if o.request_id in out:
                    out[o.request_id] += o.new_token_ids
                    if o.error is not None:
                        errors.append(f"{o.request_id}: {o.error}")
        if errors:
            raise RuntimeError(f"{len(errors)} of {len(ids)} requests failed; {errors[0]}")
        return [out[rid] for rid in ids]

    @torch.inference_mode()
    def score(self, token_ids: Seq[int]) -> Tensor:
        """Log-probability of each token given the ones before it, computed by the engine's
        own forward (its dtype, GEMMs and KV cache): (len(token_ids) - 1,) fp32.

        The text goes through in chunks of `max_num_batched_tokens`, as a chunked prefill
        would; its blocks are taken from the pool and given back. Call it on an idle engine
        (no unfinished requests), from the thread that calls `step()`.
        """
        ids = [int(t) for t in token_ids]
        V, T = self.model.cfg.vocab_size, len(ids)
        if T < 2 or T > self.model.cfg.max_seq_len or min(ids) < 0 or max(ids) >= V:
            raise ValueError(
                f"score needs 2 to {self.model.cfg.max_seq_len} token ids in [0, {V}), got {T} ids"
            )
        if self.has_unfinished_requests() or self._inflight is not None:
            raise RuntimeError("score() runs on an idle engine (requests are unfinished)")
        n_blocks = -(-T // self.config.block_size)
        if n_blocks > self.blocks.num_available():
            raise ValueError(f"{T} tokens need {n_blocks} free KV blocks")
        table = self.blocks.allocate(n_blocks)
        state = self.runner.new_state()
        out = []
        try:
            step = self.config.max_num_batched_tokens
            for start in range(0, T - 1, step):
                m = min(step, T - 1 - start)
                batch = self.runner.prepare([SeqWork(start, m, table, True, state)])
                batch.logits_rows = torch.arange(m)
                self.runner.set_input_ids(batch, ids[start : start + m])
                logp = torch.log_softmax(self.runner.forward(batch).float(), dim=-1)
                nxt = torch.tensor(ids[start + 1 : start + m + 1])
                out.append(logp.gather(1, nxt[:, None])[:, 0])
        finally:
            self.blocks.release(table)
        return torch.cat(out)

    def close(self) -> None:
        """Finish offload writes and stop the worker threads."""
        if self._io is not None:
            self.wait_offload()
            self._io.shutdown()
        if self._worker is not None:
            self._worker.shutdown()

    def __del__(self) -> None:
        try:
            if self._worker is not None:
                self._worker.shutdown(wait=False)
            if self._io is not None:
                self._io.shutdown(wait=True)
        except Exception:
            pass
