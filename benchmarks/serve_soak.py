"""Soak the OpenAI server: 128 concurrent clients for 60 s, a mix of valid, malformed and
over-limit requests, every answer checked against the status it must get.

The server runs in this process on 127.0.0.1 (uvicorn in a thread) over a random
character-level model (`random_char_model`): what is soaked is the server, the admission
limits and the engine's bookkeeping, not the model. Afterwards: every KV block is back in the
pool, /health answers 200 and a fresh request is served.

    python benchmarks/serve_soak.py                   # 128 clients, 60 s
    python benchmarks/serve_soak.py --seconds 10      # shorter
    python benchmarks/serve_soak.py --async-scheduling --nano-batches 2
    python benchmarks/serve_soak.py --fault-every 40  # every 40th model step raises

The last line is one JSON document (`passed`: no wrong answer, no leaked block, healthy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

import httpx
import torch

from minirepro.papers.serve.admission import AdmissionLimits
from minirepro.papers.serve.async_engine import AsyncEngine
from minirepro.papers.serve.engine import EngineConfig, LLMEngine
from minirepro.papers.serve.loadtest import FaultInjector, StressPlan, serve_in_thread, stress
from minirepro.papers.serve.served_model import random_char_model
from minirepro.papers.serve.server import create_app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=128)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--context", type=int, default=128, help="the model's max_seq_len")
    p.add_argument("--max-waiting", type=int, default=32)
    p.add_argument("--max-body-bytes", type=int, default=64 << 10)
    p.add_argument("--async-scheduling", action="store_true")
    p.add_argument("--nano-batches", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-every", type=int, default=0, help="every N-th model step raises")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    served = random_char_model(args.context)
    config = EngineConfig(
        block_size=8,
        num_blocks=512,
        max_num_seqs=32,
        max_num_batched_tokens=256,
        async_scheduling=args.async_scheduling,
        nano_batches=args.nano_batches,
    )
    engine = LLMEngine(served.model, served.tokenizer, config, eos_token_ids=served.eos_token_ids)
    faults = FaultInjector(engine, lambda n: args.fault_every > 0 and n % args.fault_every == 0)
    if args.fault_every:  # the engine logs each failed step with its traceback
        logging.getLogger("minirepro.papers.serve").setLevel(logging.CRITICAL)
    aengine = AsyncEngine(engine)
    admission = AdmissionLimits(
        max_body_bytes=args.max_body_bytes, max_prompts=8, max_waiting=args.max_waiting
    )
    app = create_app(
        aengine,
        model_name="soak",
        tokenizer=served.tokenizer,
        chat_encoder=served.chat_encoder,
        admission=admission,
    )
    plan = StressPlan(
        "soak",
        args.context,
        admission.max_body_bytes,
        admission.max_prompts,
        engine_faults=args.fault_every > 0,
    )
    load_before = os.getloadavg()[0]
    with serve_in_thread(app) as url:
        report = asyncio.run(
            stress(url, plan, clients=args.clients, duration_s=args.seconds, seed=args.seed)
        )
        faults.remove()  # what follows checks a healthy engine
        deadline = time.monotonic() + 30
        while engine.has_unfinished_requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = engine.stats()
        healthy = httpx.get(f"{url}/health").status_code == 200
        body = {"model": "soak", "prompt": "after the soak", "max_tokens": 4, "ignore_eos": True}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        served_after = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    aengine.shutdown()
    engine.close()

    print(f"{report.requests} requests in {report.seconds:.1f} s from {args.clients} clients")
    print(f"{'kind':<18} {'status':>6} {'count':>7}")
    for (kind, status), n in sorted(report.statuses.items()):
        print(f"{kind:<18} {status:>6} {n:>7}")
    print(f"completed (200 with every token): {report.completed}")
    print(f"model steps failed on purpose: {faults.count}")
    print(f"wrong answers: {len(report.wrong)}")
    for line in report.wrong[:10]:
        print("  " + line)
    print(f"KV blocks in use afterwards: {stats.kv_blocks_used} of {stats.kv_blocks_total}")
    print(f"healthy afterwards: {healthy}; a new request served: {served_after}")
    summary = report.to_dict() | {
        "clients": args.clients,
        "kv_blocks_used_after": stats.kv_blocks_used,
        "healthy_after": healthy,
        "served_after": served_after,
        "step_errors": aengine.num_step_errors,
        "injected_faults": faults.count,
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
    }
    summary["passed"] = not report.wrong and stats.kv_blocks_used == 0 and healthy and served_after
    print(json.dumps(summary))
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
