"""Continuous batching: which sequences run in the next iteration, with how many tokens.

Each iteration has a token budget (`max_num_batched_tokens`). Running sequences come first
(one token each when decoding, the next chunk of their prompt when prefilling), then waiting
ones in arrival order while the budget, `max_num_seqs` and the free blocks allow. A prompt
longer than the remaining budget is prefilled in chunks over several iterations; without
chunked prefill it waits for an iteration with nothing else in it and runs alone (over the
budget), so it never blocks the queue for good. When the blocks run out, the newest
running sequence is preempted: its blocks are released and it goes back to the front of
the queue, to be recomputed (prompt and output so far) later.

With async scheduling the next iteration is formed while the current one still runs: a
sequence whose next token is not known yet counts one placeholder token.

A sequence's queue, blocks and status change only here: `schedule` admits, preempts and
advances it, `mark_computed` names the blocks restored from the KV offload (as
`register_computed` those an iteration filled), and `finish` (stop, length, abort, error)
releases its blocks and takes it out of the queues. The engine appends sampled tokens.

A model with recurrent (Mamba) layers also keeps a per-sequence state (`new_state()`): it
is made here when a sequence's first token is scheduled (first admission, or the recompute
after a preemption), and dropped by `finish` and `_preempt`, so an in-flight iteration
still holding the old one cannot touch the new one.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from minirepro.papers.serve.kv_cache import BlockKey, BlockManager, hash_chain
from minirepro.papers.serve.sampling import Detokenizer, SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request's state inside the engine."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    detok: Detokenizer
    stop_ids: frozenset[int]
    arrival: int
    conversation_id: str | None = None
    token_ids: list[int] = field(default_factory=list)  # prompt + output
    status: Status = Status.WAITING
    num_computed: int = 0  # positions whose K/V is in the cache or being written
    placeholder: int = 0  # 1 while the next token is being computed (async)
    block_table: list[int] = field(default_factory=list)
    block_keys: list[BlockKey] = field(default_factory=list)  # keys of named full blocks
    num_registered: int = 0
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache / KV offload
    first_scheduled: bool = False
    state: Any = None  # recurrent layers' decoding state (`Scheduler.new_state`), or None
    epoch: int = 0  # bumped on preemption: results of older iterations no longer apply
    finish_reason: str | None = None
    error: str | None = None  # why it failed (finish_reason "error")
    new_token_ids: list[int] = field(default_factory=list)  # not yet reported

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_ids)

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def num_total(self) -> int:
        return len(self.token_ids) + self.placeholder

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass
class Scheduled:
    """One sequence's part in an iteration."""

    seq: Sequence
    start: int
    num_tokens: int
    sample: bool
    epoch: int
    block_table: list[int]  # as scheduled: the sequence may be freed before this runs
    state: Any = None  # the sequence's recurrent state as scheduled (None: attention only)


@dataclass
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool


class Scheduler:
    """Waiting and running queues over one `BlockManager`.

    `restore(seq)` is called once when a sequence is first admitted, after the prefix cache
    lookup; it may fill more of the sequence's prefix (KV offload) and returns the number of
    tokens it provided. `new_state()` makes a sequence's recurrent-layer state (models with
    Mamba layers), or is None.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        blocks: BlockManager,
        restore: Callable[[Sequence], int] | None = None,
        new_state: Callable[[], Any] | None = None,
    ) -> None:
        self.config, self.blocks = config, blocks
        self.block_size = blocks.block_size
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.restore = restore
        self.new_state = new_state
        self.num_preemptions = 0
        self.prefix_queries = 0
        self.prefix_hits = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        """The one way out: release the sequence's blocks, take it out of the queues and
        mark it finished (reason: "stop", "length", "abort" or "error"). Idempotent."""
        if seq.finished:
            return
        blocks, seq.block_table = seq.block_table, []
        self.blocks.release(blocks)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        seq.finish_reason, seq.error = reason, error
        seq.placeholder = 0
        seq.state = None

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        seq.block_table, seq.block_keys = [], []
        seq.num_registered = seq.num_computed = seq.placeholder = 0
        seq.state = None  # recomputed from the first token
        seq.status = Status.WAITING
        seq.epoch += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        need = -(-(seq.num_computed + num_tokens) // self.block_size)
        return max(0, need - len(seq.block_table))

    def _match_prefix(self, seq: Sequence) -> None:
        """Take the cached blocks of the sequence's longest cached prefix (never all of it:
        the last token is always computed, it yields the logits)."""
        bs = self.block_size
        usable = (len(seq.token_ids) - 1) // bs
        keys = hash_chain(seq.token_ids, bs, self.blocks.root, stop=usable)
        blocks = self.blocks.match(keys)
        seq.block_table = blocks
        seq.block_keys = keys[: len(blocks)]
        seq.num_registered = len(blocks)
        seq.num_computed = len(blocks) * bs

    def schedule(self, num_tokens_left: Callable[[Sequence], int] | None = None) -> list[Scheduled]:
        """The next iteration's work; advances each chosen sequence's num_computed."""
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        out: list[Scheduled] = []
        preempted = False
        scheduled_ids: set[int] = set()
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = seq.num_total - seq.num_computed
            if n <= 0:
                i += 1
                continue
            if n > budget and not cfg.enable_chunked_prefill and out:
                i += 1
                continue
            n = n if not cfg.enable_chunked_prefill else min(n, budget)
            need = self.blocks_needed(seq, n)
            while need > self.blocks.num_available():
                victim = self.running[-1]
                if id(victim) in scheduled_ids:
                    raise RuntimeError("a scheduled sequence cannot be preempted")
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue  # seq itself was preempted; running[i] is the next one now
            seq.block_table += self.blocks.allocate(need)
            out.append(self._take(seq, n))
            scheduled_ids.add(id(seq))
            budget -= n
            i += 1
        while (
            not preempted and self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs
        ):
            seq = self.waiting[0]
            prefix_hit = seq.num_computed
            if seq.num_computed == 0 and not seq.block_table:
                self._match_prefix(seq)
                prefix_hit = seq.num_computed
                if self.restore is not None:
                    self.restore(seq)
            n = seq.num_total - seq.num_computed
            if n > budget and not cfg.enable_chunked_prefill and out:
                break  # over the budget: it runs alone, in an iteration of its own
            n = n if not cfg.enable_chunked_prefill else min(n, budget)
            need = self.blocks_needed(seq, n)
            if need > self.blocks.num_available():
                self.blocks.release(seq.block_table)  # give back the prefix taken above
                seq.block_table, seq.block_keys = [], []
                seq.num_computed = seq.num_registered = 0
                break
            seq.block_table += self.blocks.allocate(need)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            if not seq.first_scheduled:
                self.prefix_queries += seq.num_prompt
                self.prefix_hits += min(prefix_hit, seq.num_prompt)
                seq.cached_tokens = min(seq.num_computed, seq.num_prompt)
            seq.first_scheduled = True
            self.running.append(seq)
            out.append(self._take(seq, n))
            budget -= n
        if not out and not preempted and not self.running and self.waiting:
            # nothing runs and the head still cannot start: it never will (the engine checks
            # sizes on admission, so this is a safety net, not a path): fail it, not loop
            seq = self.waiting[0]
            self.finish(seq, "error", f"{seq.num_total} tokens cannot be scheduled")
        return out

    def _take(self, seq: Sequence, n: int) -> Scheduled:
        if self.new_state is not None and seq.num_computed == 0:
            seq.state = self.new_state()
        s = Scheduled(
            seq,
            seq.num_computed,
            n,
            seq.num_computed + n == seq.num_total,
            seq.epoch,
            list(seq.block_table),
            seq.state,
        )
        seq.num_computed += n
        return s

    def register_computed(self, s: Scheduled) -> None:
        """Name the blocks that iteration `s` filled, so later requests can share them."""
        seq = s.seq
        if seq.epoch != s.epoch or seq.status is not Status.RUNNING:
            return
        self._name_blocks(seq, min(s.start + s.num_tokens, len(seq.token_ids)))

    def mark_computed(self, seq: Sequence, n: int) -> list[int]:
        """Make the sequence's first n positions count as computed (their K/V restored from
        elsewhere): allocate the blocks they need, name the full ones. Returns the block
        table; the caller writes the K/V of positions num_computed..n-1 before any later
        iteration reads it."""
        need = self.blocks_needed(seq, n - seq.num_computed)
        seq.block_table += self.blocks.allocate(need)
        seq.num_computed = n
        self._name_blocks(seq, n)
        return seq.block_table

    def _name_blocks(self, seq: Sequence, n: int) -> None:
        """Register the full blocks among the first n positions in the prefix cache."""
        full = n // self.block_size
        if seq.num_registered >= full:
            return
        parent = seq.block_keys[-1] if seq.block_keys else self.blocks.root
        keys = hash_chain(seq.token_ids, self.block_size, parent, seq.num_registered, full)
        for b, key in enumerate(keys, start=seq.num_registered):
            self.blocks.register(seq.block_table[b], key)
        seq.block_keys += keys
        seq.num_registered = full
