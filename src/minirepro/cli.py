"""The `minirepro` command line: list, run, bench, report, serve, play, wim ask, processbench
eval.

    minirepro list
    minirepro run flow --preset smoke -o n_steps=200
    minirepro run all
    minirepro bench flexattn
    minirepro report runs/
    minirepro serve --model smollm2 --port 8000
    minirepro play gamengen --checkpoint runs/gamengen/<run>/world_model.safetensors
    minirepro processbench eval data.jsonl --evaluator critic -o predictions.jsonl
    minirepro wim ask --context long.txt --question "Where was the author born?"

Heavy libraries (torch, matplotlib) are imported by the papers when they run, not here,
so `minirepro --help` and `minirepro list` stay fast.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from minirepro import registry
from minirepro.core.results import RunDir
from minirepro.terminal import print_results

app = typer.Typer(
    help="Much-discussed ML papers: CPU-sized reproductions, benchmarks and a report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)

_REPO_ROOT = Path(__file__).resolve().parents[2]  # src/minirepro/cli.py -> repository

RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Root folder of run folders.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Prints a one-line red error and returns the Exit to raise."""
    err_console.print(Text.assemble(("error: ", "bold red"), (message, "red")), soft_wrap=True)
    return typer.Exit(code)


def _progress():
    """A progress display for a paper's `RunDir.track` bars; None when not in a terminal."""
    if not console.is_terminal:
        return contextlib.nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=console)


@app.command("list")
def list_papers() -> None:
    """List the papers: id, title, arXiv link, status."""
    table = Table(title="minirepro papers")
    table.add_column("id", no_wrap=True)
    table.add_column("title", overflow="fold")
    table.add_column("arXiv", no_wrap=True)
    table.add_column("status", overflow="fold")
    for row in registry.all_papers():
        style = "green" if row.paper else ("red" if row.error else "dim")
        table.add_row(row.id, row.title, row.link, Text(row.status, style))
    console.print(table)


def _ids_option(help_text: str) -> Any:
    return typer.Option(help=f"{help_text} Comma-separated ids, repeatable; with 'all'.")


@app.command()
def run(
    paper_id: Annotated[str, typer.Argument(help="A paper id (see `minirepro list`), or 'all'.")],
    preset: Annotated[
        str | None, typer.Option(help="smoke (seconds), quick (minutes; the default), full.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Base seed (replaces the preset's).")] = None,
    override: Annotated[
        list[str] | None,
        typer.Option("--override", "-o", help="Config override key=value; repeatable."),
    ] = None,
    only: Annotated[list[str] | None, _ids_option("Run only these papers.")] = None,
    skip: Annotated[list[str] | None, _ids_option("Do not run these papers.")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue an interrupted `run all` in this folder (runs/all/<time>-<sha>): "
            "papers finished there with the same config and git commit are not run again."
        ),
    ] = None,
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Run a paper's reproduction (or all of them) and print the verdicts.

    Exit code: 0 every verdict passed; 1 some verdict failed; 2 bad command line; 3 some
    paper raised (traceback.txt in its run folder); 130 interrupted (`run all`: continue
    with --resume).
    """
    from minirepro import runall

    overrides = override or []
    if paper_id == "all":
        if overrides:
            raise _fail("-o overrides name one paper's config keys; not allowed with 'all'")
        if resume is not None and not resume.is_dir():
            raise _fail(f"--resume: no such folder: {resume}")
        try:
            code = runall.run_all(
                console,
                runs_dir=runs_dir,
                preset=preset,
                seed=seed,
                only=only or [],
                skip=skip or [],
                resume=resume,
            )
        except registry.RegistryError as exc:
            raise _fail(str(exc)) from None
        raise typer.Exit(int(code))
    if only or skip or resume is not None:
        raise _fail("--only, --skip and --resume go with 'run all'")
    try:
        paper = registry.get_paper(paper_id)
        cfg = registry.make_config(paper, preset or "quick", seed=seed, overrides=overrides)
    except registry.RegistryError as exc:
        raise _fail(str(exc)) from None
    except registry.PaperImportError as exc:
        err_console.print("".join(traceback.format_exception(exc.__cause__ or exc)))
        raise _fail(str(exc), code=runall.ExitCode.ERROR) from None
    out = RunDir(paper.id, cfg, root=runs_dir, preset=preset or "quick")
    try:
        with _progress() as progress:
            out.progress = progress
            results = runall.run_paper(paper, cfg, out)
    except KeyboardInterrupt:
        raise _fail(
            f"interrupted; partial run in {out.path}", runall.ExitCode.INTERRUPTED
        ) from None
    print_results(console, [(paper.id, r) for r in results])
    console.print(f"run folder: {out.path}", soft_wrap=True)
    failed = any(r.verdict == "fail" for r in results)
    raise typer.Exit(int(runall.ExitCode.FAIL if failed else runall.ExitCode.PASS))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    paper_id: Annotated[str, typer.Argument(help="A paper id.")],
) -> None:
    """Run a paper's benchmark: benchmarks/<id>.py, else the package's bench.main().

    Extra arguments are passed on to the benchmark.
    """
    if paper_id not in registry.known_ids():
        try:
            registry.get_paper(paper_id)  # raises the message with suggestions
        except registry.RegistryError as exc:
            raise _fail(str(exc)) from None
    script = _REPO_ROOT / "benchmarks" / f"{paper_id}.py"
    if script.is_file():
        rc = subprocess.call([sys.executable, str(script), *ctx.args])
        raise typer.Exit(rc)
    name = f"minirepro.papers.{paper_id}.bench"
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    main = getattr(importlib.import_module(name), "main", None) if spec else None
    if main is None:
        raise _fail(f"{paper_id} has no benchmark: neither {script} nor {name}.main() exists")
    rc: Any = main(ctx.args) if ctx.args else main()
    raise typer.Exit(rc if isinstance(rc, int) else 0)


@app.command()
def report(
    runs_dir: Annotated[Path, typer.Argument(help="Runs root to collect.")] = Path("runs"),
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md/html (default: RUNS_DIR).")
    ] = None,
    all_runs: Annotated[
        bool, typer.Option("--all", help="Every run, not only the latest per paper.")
    ] = False,
) -> None:
    """Build report.md and a self-contained report.html from run folders."""
    from minirepro.core.report import collect_runs, write_report

    if not runs_dir.is_dir():
        raise _fail(f"no such runs folder: {runs_dir}")
    try:
        runs = collect_runs(runs_dir, all_runs=all_runs)
    except ValueError as exc:
        raise _fail(str(exc), code=1) from None
    if not runs:
        raise _fail(f"no result.json under {runs_dir}", code=1)
    status = {
        p: registry.NOT_IMPLEMENTED for p in registry.known_ids() if not registry.has_package(p)
    }
    md, html = write_report(runs, out or runs_dir, papers=registry.paper_meta(), status=status)
    console.print(f"{md}\n{html}")


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Option(help="'smollm2', or a core checkpoint: folder, run folder or .safetensors."),
    ] = "smollm2",
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option(help="The model id clients send (default: smollm2 / folder name).")
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per KV block.")] = None,
    num_blocks: Annotated[int | None, typer.Option(help="KV blocks in the pool.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Running sequences at most.")] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(help="Token budget per iteration.")
    ] = None,
    prefix_caching: Annotated[
        bool | None, typer.Option("--prefix-caching/--no-prefix-caching", help="Prefix cache.")
    ] = None,
    chunked_prefill: Annotated[
        bool | None,
        typer.Option("--chunked-prefill/--no-chunked-prefill", help="Chunked prefill."),
    ] = None,
    async_scheduling: Annotated[
        bool | None, typer.Option(help="Prepare iteration i+1 while i runs.")
    ] = None,
    nano_batches: Annotated[
        str | None, typer.Option(help="Nano-batches per iteration: a count, or 'auto'.")
    ] = None,
    offload_dir: Annotated[
        Path | None, typer.Option(help="Folder for the KV offload of finished turns.")
    ] = None,
    offload_max_mib: Annotated[
        int | None, typer.Option(help="Disk budget of the KV offload (MiB).")
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Number format: float32, bfloat16 (weights + KV cache) or int8 (weight-only "
            "int8 decode GEMMs, bf16 KV cache); falls back to float32 without native bf16."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (completions, chat, /metrics)."""
    import ipaddress
    import socket

    try:
        import uvicorn

        from minirepro.papers.serve.async_engine import AsyncEngine
        from minirepro.papers.serve.engine import EngineConfig, LLMEngine
        from minirepro.papers.serve.served_model import load_served_model
        from minirepro.papers.serve.server import create_app
    except ImportError as exc:
        raise _fail(f"{exc}; install the server with: pip install -e '.[serve]'") from None
    options = {
        "block_size": block_size,
        "num_blocks": num_blocks,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "enable_prefix_caching": prefix_caching,
        "enable_chunked_prefill": chunked_prefill,
        "async_scheduling": async_scheduling,
        "offload_dir": str(offload_dir) if offload_dir is not None else None,
        "offload_max_bytes": offload_max_mib << 20 if offload_max_mib is not None else None,
        "dtype": dtype,
        "nano_batches": (
            int(nano_batches)
            if nano_batches is not None and nano_batches.isdigit()
            else nano_batches
        ),
    }
    try:
        config = EngineConfig(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        with console.status(f"loading {model}"):
            served = load_served_model(model)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        sock.close()
        raise _fail(str(exc)) from None
    try:
        engine = LLMEngine(
            served.model, served.tokenizer, config, eos_token_ids=served.eos_token_ids
        )
    except ValueError as exc:
        sock.close()
        raise _fail(str(exc)) from None
    if engine.dtype != config.dtype:
        err_console.print(Text(f"warning: running {engine.dtype}, not {config.dtype}", "yellow"))
    async_engine = AsyncEngine(engine)
    name = served_model_name or served.name
    api = create_app(
        async_engine, model_name=name, tokenizer=served.tokenizer, chat_encoder=served.chat_encoder
    )
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        err_console.print(
            Text(
                f"warning: {host} is reachable from other machines; there is no authentication",
                "yellow",
            )
        )
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving [bold]{name}[/bold] at http://{shown}:{port}/v1 (Ctrl-C stops)")
    try:
        uvicorn.Server(uvicorn.Config(api, log_level=log_level)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled once it has stopped
        pass
    finally:
        async_engine.shutdown()
        engine.close()
        sock.close()


PLAYABLE = ("gamengen",)


def _latest_checkpoint(runs_dir: Path, paper_id: str) -> Path | None:
    found = sorted(
        (runs_dir / paper_id).glob("*/world_model.safetensors"), key=lambda p: p.stat().st_mtime
    )
    return found[-1] if found else None


@app.command()
def play(
    paper_id: Annotated[str, typer.Argument(help="A paper with a playable model: gamengen.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A world_model.safetensors (default: the latest in RUNS_DIR)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).")] = 8765,
    steps: Annotated[int, typer.Option(help="DDIM denoising steps per frame.")] = 4,
    context_sigma: Annotated[
        float, typer.Option(help="Context noise at inference (its bucket is embedded).")
    ] = 0.1,
    threads: Annotated[int, typer.Option(help="torch threads for generation.")] = 1,
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Play a learned game in the browser: every frame is generated by the model."""
    if paper_id not in PLAYABLE:
        raise _fail(f"{paper_id!r} has nothing to play; playable: {', '.join(PLAYABLE)}")
    if steps < 1 or threads < 1:
        raise _fail("--steps and --threads must be >= 1")
    import torch

    from minirepro.papers.gamengen.play import GameSession, make_server

    path = checkpoint or _latest_checkpoint(runs_dir, paper_id)
    if path is None:
        raise _fail(
            f"no world_model.safetensors under {runs_dir / paper_id}: run "
            f"`minirepro run {paper_id}` first, or pass --checkpoint"
        )
    try:
        session = GameSession.from_checkpoint(path, steps=steps, context_sigma=context_sigma)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    torch.set_num_threads(threads)
    try:
        server = make_server(session, host, port)
    except (OSError, OverflowError) as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc}") from None
    bound_host, bound_port = server.server_address[:2]
    console.print(f"playing {path}", soft_wrap=True)
    console.print(f"open http://{bound_host}:{bound_port}/ (Ctrl-C stops)", soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


wim_app = typer.Typer(
    help="Writing in the Margins: ask a long document a question, margins streamed.",
    no_args_is_help=True,
)
app.add_typer(wim_app, name="wim")


@wim_app.command("ask")
def wim_ask(
    context: Annotated[Path, typer.Option(help="A UTF-8 text file: the long document.")],
    question: Annotated[str, typer.Option(help="The question about it.")],
    segment_tokens: Annotated[int, typer.Option(help="Most tokens per segment.")] = 1024,
    max_margin_tokens: Annotated[int, typer.Option(help="Most tokens per margin.")] = 100,
    max_answer_tokens: Annotated[int, typer.Option(help="Most tokens of the answer.")] = 128,
    classifier: Annotated[
        str, typer.Option(help="'model' (YES/NO by the LM) or 'all' (every informative margin).")
    ] = "model",
    stop_after: Annotated[
        int | None, typer.Option(help="Answer as soon as this many margins are relevant.")
    ] = None,
) -> None:
    """Read FILE segment by segment with SmolLM2, show each margin, then the answer."""
    from minirepro.papers.wim import WiMConfig, WiMSession
    from minirepro.papers.wim import stop_after as make_rule

    if not context.is_file():
        raise _fail(f"--context: no such file {context}")
    if not question.strip():
        raise _fail("--question is empty")
    try:
        text = context.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _fail(f"--context: {context} is not UTF-8 text") from None
    try:
        cfg = WiMConfig(
            segment_tokens=segment_tokens,
            max_margin_tokens=max_margin_tokens,
            max_answer_tokens=max_answer_tokens,
            classifier=classifier,
        )
        rule = make_rule(stop_after) if stop_after is not None else None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    from minirepro.core.pretrained import load_smollm2

    try:
        with console.status("loading SmolLM2-135M-Instruct"):
            model = load_smollm2()
        session = WiMSession(model, text, question, cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    n = len(session.segments)
    console.print(f"[dim]{n} segment(s) of at most {segment_tokens} tokens[/dim]")
    for margin in session:
        mark = "[green]relevant[/green]" if margin.relevant else "[dim]not relevant[/dim]"
        console.print(
            f"[bold]margin {margin.segment.index + 1}/{n}[/bold] ({mark}, {margin.seconds:.1f} s)"
        )
        console.print(Text(margin.text or "(empty)"), soft_wrap=True)
        if rule is not None and rule(session.margins):
            console.print(
                f"[yellow]early exit after {len(session.margins)} of {n} segments[/yellow]"
            )
            break
    with console.status("answering"):
        out = session.answer()
    console.print(f"[bold]answer[/bold] ({out.time_to_answer:.1f} s):")
    console.print(Text(out.answer), soft_wrap=True)


processbench_app = typer.Typer(help="ProcessBench: score a file of step-by-step solutions.")
app.add_typer(processbench_app, name="processbench")


@processbench_app.command("eval")
def processbench_eval(
    file: Annotated[Path, typer.Argument(help="ProcessBench records: .jsonl, or .json list.")],
    evaluator: Annotated[
        str, typer.Option(help="critic (SmolLM2 prompted), prm or outcome (a trained verifier).")
    ] = "critic",
    model: Annotated[
        str | None,
        typer.Option(help="critic: 'smollm2'; prm/outcome: a verifier folder from `run`."),
    ] = None,
    samples: Annotated[int, typer.Option(help="Critic samples per record (>1: vote).")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Critic generation budget.")] = 512,
    calibration_subset: Annotated[
        str | None, typer.Option(help="prm/outcome: choose the threshold by F1 on this subset.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N records per subset.")] = None,
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="Skip malformed records (counted) instead of failing."),
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write per-record predictions (JSONL).")
    ] = None,
) -> None:
    """Score FILE with one evaluator and print error acc, correct acc and F1 per subset."""
    from minirepro.papers.processbench.evaluate import evaluate_file
    from minirepro.papers.processbench.records import RecordError

    try:
        result = evaluate_file(
            file, evaluator, model, skip_bad=skip_bad, limit=limit, samples=samples,
            max_new_tokens=max_new_tokens, calibration_subset=calibration_subset,
        )  # fmt: skip
    except (FileNotFoundError, RecordError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if result.n_skipped:
        err_console.print(
            f"skipped {result.n_skipped} malformed record(s); first: {result.skipped[0]}"
        )
    console.print(result.report.table(), soft_wrap=True, highlight=False)
    if output is not None:
        console.print(f"predictions: {result.write(output)}", soft_wrap=True)


if __name__ == "__main__":
    app()
