"""Decode speed and time-to-first-token: chatgate's HTTP API against llama-cpp-python called directly.

What it measures
----------------
Four scenarios, each with the same model file, the same 2 CPU threads and greedy decoding
(``temperature=0``), for a prompt that makes the model write a long answer:

* ``chatgate x1`` / ``chatgate xN``: 1 or N (default 4) simultaneous streaming
  ``POST /v1/chat/completions`` requests (``stream=true``, ``stream_options.include_usage=true``)
  to a chatgate server that this script starts itself (4 sequences, ``CHATGATE_ENGINE_THREADS=2``).
  The SSE body is read as ``data:`` lines until ``data: [DONE]``; the completion token count is
  ``usage.completion_tokens`` from the final usage chunk.
* ``direct x1`` / ``direct xN``: ``llama_cpp.Llama(...).create_chat_completion(stream=True)`` in this
  process, on one ``Llama`` (``n_threads=2``, ``n_threads_batch=2``). One ``Llama`` serves one
  sequence at a time, so the N "concurrent" requests are submitted at once from N threads and take
  turns behind a lock; their time to first token therefore includes the time spent queueing.

With ``--ceiling`` it also measures, in the same run, what ``bench/ceiling.py`` calls the ceiling:
two bare llama.cpp contexts of one thread each decoding at once (no server, no prompt), and reports
chatgate's concurrent aggregate as a share of it. The ceiling leaves the prompts out, so the same
run also times the concurrent scenario's N prompts on those two bare contexts (``prefill xN``) and
reports ``bound xN``: the scenario's completion tokens over the prompts' time plus the tokens' time
at the ceiling's rate: the most an engine of separate one-thread contexts (chatgate's way) could make
of these streams on these cores. An engine that evaluates all N prompts in one batch on both
threads (llama.cpp's server) can go past it: batched prompts are evaluated faster.

With ``--xllamacpp`` it also runs ``xllamacpp x1`` / ``xllamacpp xN``: the same streams, over the
same lean client, against llama.cpp's own server in-process through ``xllamacpp`` (a prebuilt
wheel, installed into ``.venv-xllamacpp`` on first use; ``bench/xllamacpp_server.py``), which
decodes up to N sequences together in one context (continuous batching) on the same 2 threads.
That is the alternative engine the issue asks chatgate to be measured against.

Per stream the script records: the request start, the arrival of the first and of the last
non-empty content delta, the end of the stream, and the number of completion tokens. Per scenario:

* ``ttft_ms``: mean over the streams of (first non-empty content - request start).
* ``per_stream_tok_s``: mean over the streams of (completion_tokens - 1) / (last content - first
  content), i.e. the decode rate once the first token is out (prompt processing excluded).
* ``aggregate_tok_s``: total completion tokens / (last stream end - first request start).

Each scenario runs ``--repeats`` times (default 2); every column reported is the median over the
repeats, taken per column. Before measuring, each side gets a warm-up: one request per chatgate
engine sequence (sent together so every sequence is exercised), and one request to the direct
``Llama``. The chatgate server is stopped before the direct side starts, and the two sides never
run at the same time, so they never compete for the CPU.

How the direct side counts tokens (exactly, without re-tokenizing text)
-----------------------------------------------------------------------
llama-cpp-python's streamed chat chunks carry no usage, and a chunk is not always one token (it
holds back text that could begin a stop sequence and merges tokens that split a UTF-8 character).
So the script wraps the ``Llama`` object's ``sample`` method, which ``Llama.generate`` calls once
per generated token, and counts the sampled tokens that are not end-of-generation tokens. That is
exactly how llama-cpp-python itself counts ``usage.completion_tokens`` (and how chatgate counts its
own), at the cost of one Python function call per token. The warm-up request on the direct side is
a non-streamed call, and the script checks that the counter agrees with its
``usage.completion_tokens``; it stops with an error if it does not.

Prompt caching
--------------
Both chatgate and llama-cpp-python reuse the KV cache when a prompt repeats the previous one's
prefix, which would skip prompt processing and flatter the time to first token. Every request
therefore begins with a unique session tag in its system message, so every measured request, on
both sides, processes its whole prompt.

How to run
----------
From the repository root::

    .venv/bin/python bench/engine.py                      # table on stdout, progress on stderr
    .venv/bin/python bench/engine.py --max-tokens 256 --repeats 3
    .venv/bin/python bench/engine.py --json               # the same numbers as JSON
    .venv/bin/python bench/engine.py --max-tokens 128 --repeats 3 --xllamacpp --ceiling

Run it on an otherwise idle machine; anything else using the CPU skews both sides.
"""

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / ".chatgate" / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_NAME = "bench-model"
CONTEXT_LENGTH = 2048
INSTANCES = 4  # sequences chatgate generates at once: one per stream of the concurrent scenario
THREADS = 2
READY_TIMEOUT_S = 180.0
WARMUP_MAX_TOKENS = 32
PROMPT = "Write a detailed, long explanation of how hash tables work, with examples."
READY_MARKER = "chatgate listening on "

_session_ids = itertools.count(1)
_session_prefix = secrets.token_hex(3)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def bench_messages() -> list[dict[str, str]]:
    """The benchmark conversation, tagged with a unique session so no request reuses a cached prompt."""
    session = f"{_session_prefix}-{next(_session_ids):04d}"
    return [
        {"role": "system", "content": f"Session {session}. You are a helpful assistant."},
        {"role": "user", "content": PROMPT},
    ]


# --------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True)
class StreamTiming:
    """One request's timeline (``time.perf_counter`` seconds) and its completion token count."""

    start: float
    first_content: float | None
    last_content: float | None
    end: float
    completion_tokens: int

    @property
    def ttft(self) -> float | None:
        return None if self.first_content is None else self.first_content - self.start

    @property
    def decode_rate(self) -> float | None:
        if self.first_content is None or self.last_content is None or self.completion_tokens < 2:
            return None
        span = self.last_content - self.first_content
        return (self.completion_tokens - 1) / span if span > 0 else None


@dataclass(frozen=True)
class ScenarioResult:
    ttft_ms: float | None
    per_stream_tok_s: float | None
    aggregate_tok_s: float
    completion_tokens: float
    wall_s: float


def summarize(streams: list[StreamTiming]) -> ScenarioResult:
    ttfts = [t for s in streams if (t := s.ttft) is not None]
    rates = [r for s in streams if (r := s.decode_rate) is not None]
    tokens = sum(s.completion_tokens for s in streams)
    wall = max(s.end for s in streams) - min(s.start for s in streams)
    return ScenarioResult(
        ttft_ms=1000 * statistics.fmean(ttfts) if ttfts else None,
        per_stream_tok_s=statistics.fmean(rates) if rates else None,
        aggregate_tok_s=tokens / wall if wall > 0 else 0.0,
        completion_tokens=tokens,
        wall_s=wall,
    )


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def median_result(repeats: list[ScenarioResult]) -> ScenarioResult:
    """The per-column median over the repeats of one scenario."""
    return ScenarioResult(
        ttft_ms=_median([r.ttft_ms for r in repeats]),
        per_stream_tok_s=_median([r.per_stream_tok_s for r in repeats]),
        aggregate_tok_s=statistics.median(r.aggregate_tok_s for r in repeats),
        completion_tokens=statistics.median(r.completion_tokens for r in repeats),
        wall_s=statistics.median(r.wall_s for r in repeats),
    )


def _describe(label: str, result: ScenarioResult) -> str:
    ttft = "n/a" if result.ttft_ms is None else f"{result.ttft_ms:.0f} ms"
    rate = "n/a" if result.per_stream_tok_s is None else f"{result.per_stream_tok_s:.1f}"
    return (
        f"{label}: ttft {ttft}, per-stream {rate} tok/s, aggregate {result.aggregate_tok_s:.1f} tok/s "
        f"({result.completion_tokens:.0f} tokens in {result.wall_s:.2f} s)"
    )


# --------------------------------------------------------------------------------------------
# chatgate over HTTP


class ServerError(RuntimeError):
    pass


class ChatgateServer:
    """A ``chatgate serve`` subprocess on a free port, serving one local model."""

    def __init__(self, model: Path, workdir: Path) -> None:
        self.model = model
        self.workdir = workdir
        self.api_key = "bench-" + secrets.token_urlsafe(24)
        self.catalogue = workdir / "catalogue.yaml"
        self.stderr_path = workdir / "chatgate.stderr.log"
        self.base_url = ""
        self.command: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._stdout_lines: list[str] = []

    def _write_catalogue(self) -> None:
        # A JSON string is a valid YAML scalar, so the path needs no further quoting.
        self.catalogue.write_text(
            "models:\n"
            f"  - name: {MODEL_NAME}\n"
            "    deployment:\n"
            "      kind: local\n"
            f"      path: {json.dumps(str(self.model))}\n"
            f"      context_length: {CONTEXT_LENGTH}\n"
            f"      instances: {INSTANCES}\n",
            encoding="utf-8",
        )

    def _stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no stderr captured)"
        return "\n".join(text.splitlines()[-lines:]) or "(stderr was empty)"

    def _failure(self, what: str) -> ServerError:
        stdout = "\n".join(self._stdout_lines[-20:]) or "(stdout was empty)"
        return ServerError(
            f"{what}\ncommand: {' '.join(self.command)}\n"
            f"--- stdout ---\n{stdout}\n--- stderr (last lines, full log at {self.stderr_path}) ---\n"
            f"{self._stderr_tail()}"
        )

    async def start(self) -> None:
        self._write_catalogue()
        python = REPO / ".venv" / "bin" / "python"
        exe = str(python) if python.exists() else sys.executable
        self.command = [exe, "-m", "chatgate", "serve", "--port", "0", "--config", str(self.catalogue)]
        env = dict(os.environ)
        env.update(
            CHATGATE_API_KEY=self.api_key,
            CHATGATE_ENGINE_THREADS=str(THREADS),
            # `serve --port 0` alone is currently ignored (the CLI drops falsy overrides, so the
            # server binds the default 8000); the environment setting makes port 0 stick.
            CHATGATE_PORT="0",
            PYTHONUNBUFFERED="1",
            # A database of its own, migrated here: the run never depends on (or touches) the clone's.
            CHATGATE_DATA_DIR=str(self.workdir / "data"),
            CHATGATE_MODEL_DIR=str(REPO / ".chatgate" / "models"),
        )
        subprocess.run([exe, "-m", "chatgate", "migrate"], cwd=REPO, env=env, check=True, capture_output=True)
        log(f"starting: CHATGATE_API_KEY=... CHATGATE_ENGINE_THREADS={THREADS} {' '.join(self.command)}")
        with self.stderr_path.open("wb") as stderr:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command,
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"chatgate did not report ready within {READY_TIMEOUT_S:.0f} s")
            try:
                raw = await asyncio.wait_for(self._proc.stdout.readline(), remaining)
            except TimeoutError:
                raise self._failure(f"chatgate did not report ready within {READY_TIMEOUT_S:.0f} s") from None
            if not raw:
                code = await self._proc.wait()
                raise self._failure(f"chatgate exited with status {code} before reporting ready")
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._stdout_lines.append(line)
            if line.startswith(READY_MARKER):
                url = line[len(READY_MARKER) :].split()[0]
                self.base_url = url.rstrip("/")
                break
        log(f"ready: {line}")
        self._drain = asyncio.create_task(self._drain_stdout())

    async def _drain_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            self._stdout_lines.append(line.decode("utf-8", errors="replace").rstrip("\n"))

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        await terminate(proc, "chatgate")
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        note = " = SIGTERM, as sent" if proc.returncode == -signal.SIGTERM else ""
        log(f"chatgate stopped (status {proc.returncode}{note})")


async def terminate(proc: asyncio.subprocess.Process, name: str) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within 30 s."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        log(f"{name} did not stop within 30 s of SIGTERM; killing it")
        proc.kill()
        await proc.wait()


async def chatgate_stream(client: httpx.AsyncClient, max_tokens: int) -> StreamTiming:
    body = stream_body(max_tokens)
    first: float | None = None
    last: float | None = None
    usage: dict[str, Any] | None = None
    done = False
    start = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode("utf-8", errors="replace")
            raise ServerError(f"chatgate answered HTTP {response.status_code}: {detail}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators and SSE comments
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise ServerError(f"chatgate sent an error in the stream: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
            if chunk.get("usage"):
                usage = chunk["usage"]
    end = time.perf_counter()
    if not done:
        raise ServerError("chatgate's stream ended without 'data: [DONE]'")
    if usage is None:
        raise ServerError("chatgate's stream had no usage chunk despite stream_options.include_usage")
    return StreamTiming(start, first, last, end, int(usage["completion_tokens"]))


def stream_body(max_tokens: int) -> dict[str, Any]:
    """The streamed request both chatgate clients send: greedy, with usage at the end."""
    return {
        "model": MODEL_NAME,
        "messages": bench_messages(),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def lean_stream(base_url: str, api_key: str, max_tokens: int) -> StreamTiming:
    """The same streamed request over a bare asyncio socket, parsing as little as possible.

    On a 2-core machine the client shares the CPU with the engine, so a heavy client slows the
    server it measures. This one decodes HTTP/1.1 chunked framing by hand, timestamps frames whose
    delta has non-empty content by a byte search, and parses JSON only for the final usage chunk.
    """
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps(stream_body(max_tokens)).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    first: float | None = None
    last: float | None = None
    usage: dict[str, Any] | None = None
    done = False
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body)
        status = await reader.readline()
        if b" 200 " not in status:
            raise ServerError(f"chatgate answered {status.decode(errors='replace').strip()}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # response headers; the body is chunked
        pending = b""
        while not done:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            pending += await reader.readexactly(size + 2)
            pending = pending[:-2] if pending.endswith(b"\r\n") else pending
            *frames, pending = pending.split(b"\n\n")
            for frame in frames:
                if frame == b"data: [DONE]":
                    done = True
                elif b'"content":"' in frame and b'"content":""' not in frame:
                    last = time.perf_counter()
                    first = first if first is not None else last
                elif b'"choices":[]' in frame:
                    usage = json.loads(frame.removeprefix(b"data: "))["usage"]
                elif b'"error"' in frame:
                    raise ServerError(
                        f"chatgate sent an error in the stream: {frame.decode(errors='replace')}"
                    )
    finally:
        writer.close()
    end = time.perf_counter()
    if not done or usage is None:
        raise ServerError("chatgate's stream ended without usage and 'data: [DONE]'")
    return StreamTiming(start, first, last, end, int(usage["completion_tokens"]))


async def lean_scenario(base_url: str, api_key: str, streams: int, max_tokens: int) -> ScenarioResult:
    timings = await asyncio.gather(*(lean_stream(base_url, api_key, max_tokens) for _ in range(streams)))
    return summarize(list(timings))


async def chatgate_scenario(client: httpx.AsyncClient, streams: int, max_tokens: int) -> ScenarioResult:
    timings = await asyncio.gather(*(chatgate_stream(client, max_tokens) for _ in range(streams)))
    return summarize(list(timings))


async def run_chatgate(
    model: Path, max_tokens: int, repeats: int, concurrency: int
) -> dict[str, ScenarioResult]:
    results: dict[str, ScenarioResult] = {}
    with tempfile.TemporaryDirectory(prefix="chatgate-bench-") as tmp:
        server = ChatgateServer(model, Path(tmp))
        try:
            await server.start()
            timeout = httpx.Timeout(600.0, connect=10.0)
            limits = httpx.Limits(max_connections=concurrency + INSTANCES)
            async with httpx.AsyncClient(
                base_url=server.base_url,
                headers={"Authorization": f"Bearer {server.api_key}"},
                timeout=timeout,
                limits=limits,
                trust_env=False,  # never route localhost through a proxy from the environment
            ) as client:
                log(f"chatgate warm-up: {INSTANCES} requests at once (one per engine sequence)")
                await chatgate_scenario(client, INSTANCES, min(max_tokens, WARMUP_MAX_TOKENS))
                for streams in (1, concurrency):
                    for label, run in (
                        (
                            f"chatgate x{streams}",
                            functools.partial(
                                lean_scenario, server.base_url, server.api_key, streams, max_tokens
                            ),
                        ),
                        (
                            f"chatgate x{streams} httpx",
                            functools.partial(chatgate_scenario, client, streams, max_tokens),
                        ),
                    ):
                        runs = []
                        for i in range(repeats):
                            runs.append(await run())
                            log(_describe(f"{label} (repeat {i + 1}/{repeats})", runs[-1]))
                        results[label] = median_result(runs)
        finally:
            await server.stop()
    return results


# --------------------------------------------------------------------------------------------
# llama.cpp's own server through xllamacpp (continuous batching), with --xllamacpp

XLLAMACPP_VENV = REPO / ".venv-xllamacpp"
XLLAMACPP_MARKER = "listening "


def ensure_xllamacpp(venv: Path) -> Path:
    """xllamacpp's prebuilt wheel in a virtualenv of its own; returns its interpreter."""
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        log(f"installing xllamacpp into {venv} (first run only)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--progress-bar", "on", "xllamacpp"], check=True
        )
        (venv / ".installed").touch()
    return python


async def run_xllamacpp(
    model: Path, max_tokens: int, repeats: int, concurrency: int
) -> dict[str, ScenarioResult]:
    """The same streams against llama.cpp's server batching ``concurrency`` sequences in one context."""
    python = ensure_xllamacpp(XLLAMACPP_VENV)
    command = [
        str(python),
        str(REPO / "bench" / "xllamacpp_server.py"),
        str(model),
        f"--threads={THREADS}",
        f"--parallel={concurrency}",
        f"--context={CONTEXT_LENGTH}",
    ]
    log(f"starting: {' '.join(command)}")
    results: dict[str, ScenarioResult] = {}
    with tempfile.TemporaryFile() as stderr:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)).decode()
            if not line.startswith(XLLAMACPP_MARKER):
                stderr.seek(0)
                tail = stderr.read().decode(errors="replace")[-3000:]
                raise ServerError(f"xllamacpp did not start (status {proc.returncode}):\n{tail}")
            base_url = line[len(XLLAMACPP_MARKER) :].strip()
            log(f"xllamacpp ready at {base_url}; warm-up: {concurrency} requests at once")
            await lean_scenario(base_url, "unused", concurrency, min(max_tokens, WARMUP_MAX_TOKENS))
            for streams in (1, concurrency):
                label = f"xllamacpp x{streams}"
                runs = []
                for i in range(repeats):
                    runs.append(await lean_scenario(base_url, "unused", streams, max_tokens))
                    log(_describe(f"{label} (repeat {i + 1}/{repeats})", runs[-1]))
                results[label] = median_result(runs)
        finally:
            await terminate(proc, "xllamacpp")
    return results


# --------------------------------------------------------------------------------------------
# llama-cpp-python directly


class TokenCounter:
    """Counts the non-end-of-generation tokens a ``Llama`` samples (see the module docstring)."""

    def __init__(self, llama: Any) -> None:
        import llama_cpp

        self.count = 0
        self._is_eog: Callable[[Any, int], bool] = llama_cpp.llama_vocab_is_eog
        self._vocab = llama._model.vocab
        self._sample: Callable[..., int] = llama.sample
        llama.sample = self._counting_sample

    def _counting_sample(self, *args: Any, **kwargs: Any) -> int:
        token = self._sample(*args, **kwargs)
        if not self._is_eog(self._vocab, token):
            self.count += 1
        return token


class DirectEngine:
    """One ``Llama``, one sequence at a time: concurrent callers queue on a lock."""

    def __init__(self, model: Path) -> None:
        import llama_cpp

        # Typed as Any: llama-cpp-python's TypedDict signatures add nothing to a benchmark.
        self.llama: Any = llama_cpp.Llama(
            model_path=str(model),
            n_ctx=CONTEXT_LENGTH,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            verbose=False,
        )
        self.counter = TokenCounter(self.llama)
        self.lock = threading.Lock()

    def close(self) -> None:
        self.llama.close()

    def warm_up(self, max_tokens: int) -> None:
        """One non-streamed request, which also checks the token counter against llama-cpp-python's usage."""
        with self.lock:
            before = self.counter.count
            response = self.llama.create_chat_completion(
                messages=bench_messages(), stream=False, max_tokens=max_tokens, temperature=0.0
            )
            counted = self.counter.count - before
        reported = int(response["usage"]["completion_tokens"])
        if counted != reported:
            raise RuntimeError(
                f"direct token counter disagrees with llama-cpp-python: counted {counted} sampled tokens, "
                f"usage.completion_tokens is {reported}; the direct numbers would be wrong"
            )
        log(f"direct warm-up: {reported} tokens; token counter agrees with usage.completion_tokens")

    def stream(self, max_tokens: int) -> StreamTiming:
        messages = bench_messages()
        start = time.perf_counter()
        with self.lock:
            before = self.counter.count
            first: float | None = None
            last: float | None = None
            chunks: Iterator[dict[str, Any]] = self.llama.create_chat_completion(
                messages=messages, stream=True, max_tokens=max_tokens, temperature=0.0
            )
            for chunk in chunks:
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        last = now
            end = time.perf_counter()
            tokens = self.counter.count - before
        return StreamTiming(start, first, last, end, tokens)

    def scenario(self, streams: int, max_tokens: int) -> ScenarioResult:
        if streams == 1:
            return summarize([self.stream(max_tokens)])
        with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="direct") as pool:
            futures = [pool.submit(self.stream, max_tokens) for _ in range(streams)]
            return summarize([f.result() for f in futures])


def run_direct(model: Path, max_tokens: int, repeats: int, concurrency: int) -> dict[str, ScenarioResult]:
    results: dict[str, ScenarioResult] = {}
    log(f"loading {model.name} in this process (n_threads={THREADS}, n_ctx={CONTEXT_LENGTH})")
    engine = DirectEngine(model)
    try:
        engine.warm_up(min(max_tokens, WARMUP_MAX_TOKENS))
        for streams in (1, concurrency):
            label = f"direct x{streams}"
            runs = []
            for i in range(repeats):
                runs.append(engine.scenario(streams, max_tokens))
                log(_describe(f"{label} (repeat {i + 1}/{repeats})", runs[-1]))
            results[label] = median_result(runs)
    finally:
        engine.close()
    return results


# --------------------------------------------------------------------------------------------
# Report


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def build_report(
    results: dict[str, ScenarioResult], args: argparse.Namespace, concurrency: int
) -> dict[str, Any]:
    n = concurrency
    order = [
        "direct x1",
        "chatgate x1",
        "chatgate x1 httpx",
        f"direct x{n}",
        f"chatgate x{n}",
        f"chatgate x{n} httpx",
        "xllamacpp x1",
        f"xllamacpp x{n}",
        "ceiling",
        f"prefill x{n}",
    ]
    r = results
    most = bound(r, n)
    return {
        "config": {
            "model": str(args.model),
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "concurrency": n,
            "threads": THREADS,
            "chatgate_instances": INSTANCES,
            "context_length": CONTEXT_LENGTH,
            "prompt": PROMPT,
            "statistic": "median over repeats, per column",
        },
        "scenarios": {name: asdict(r[name]) for name in order if name in r},
        "ratios": {
            "chatgate_x1_over_direct_x1_decode": _ratio(
                r["chatgate x1"].per_stream_tok_s, r["direct x1"].per_stream_tok_s
            ),
            f"chatgate_x{n}_over_chatgate_x1_aggregate": _ratio(
                r[f"chatgate x{n}"].aggregate_tok_s, r["chatgate x1"].aggregate_tok_s
            ),
            f"chatgate_x{n}_over_direct_x{n}_aggregate": _ratio(
                r[f"chatgate x{n}"].aggregate_tok_s, r[f"direct x{n}"].aggregate_tok_s
            ),
            "chatgate_x1_httpx_over_direct_x1_decode": _ratio(
                r["chatgate x1 httpx"].per_stream_tok_s, r["direct x1"].per_stream_tok_s
            ),
            **(
                {
                    f"xllamacpp_x{n}_over_xllamacpp_x1_aggregate": _ratio(
                        r[f"xllamacpp x{n}"].aggregate_tok_s, r["xllamacpp x1"].aggregate_tok_s
                    ),
                    f"chatgate_x{n}_over_xllamacpp_x{n}_aggregate": _ratio(
                        r[f"chatgate x{n}"].aggregate_tok_s, r[f"xllamacpp x{n}"].aggregate_tok_s
                    ),
                }
                if "xllamacpp x1" in r
                else {}
            ),
            **(
                {
                    f"chatgate_x{n}_ttft_over_xllamacpp_x{n}_ttft": _ratio(
                        r[f"chatgate x{n}"].ttft_ms, r[f"xllamacpp x{n}"].ttft_ms
                    )
                }
                if f"xllamacpp x{n}" in r
                else {}
            ),
            **(
                {
                    f"chatgate_x{n}_over_ceiling_aggregate": _ratio(
                        r[f"chatgate x{n}"].aggregate_tok_s, r["ceiling"].aggregate_tok_s
                    )
                }
                if "ceiling" in r
                else {}
            ),
            **(
                {
                    f"bound_x{n}_over_ceiling_aggregate": _ratio(most, r["ceiling"].aggregate_tok_s),
                    f"chatgate_x{n}_over_bound_aggregate": _ratio(r[f"chatgate x{n}"].aggregate_tok_s, most),
                }
                if most is not None
                else {}
            ),
        },
        "bound_aggregate_tok_s": most,
    }


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_table(report: dict[str, Any], concurrency: int) -> None:
    n = concurrency
    print(f"{'scenario':<20}{'ttft_ms':>10}{'per_stream_tok_s':>18}{'aggregate_tok_s':>17}{'tokens':>8}")
    for name, row in report["scenarios"].items():
        print(
            f"{name:<20}{_fmt(row['ttft_ms'], 0):>10}{_fmt(row['per_stream_tok_s'], 1):>18}"
            f"{_fmt(row['aggregate_tok_s'], 1):>17}{row['completion_tokens']:>8.0f}"
        )
    if report.get("bound_aggregate_tok_s") is not None:
        print(f"{f'bound x{n}':<20}{'':>10}{'':>18}{report['bound_aggregate_tok_s']:>17.1f}")
    ratios = report["ratios"]
    decode = ratios["chatgate_x1_over_direct_x1_decode"]
    print(f"chatgate x1 / direct x1 decode: {'n/a' if decode is None else f'{100 * decode:.1f}%'}")
    heavy = ratios["chatgate_x1_httpx_over_direct_x1_decode"]
    print(f"chatgate x1 httpx / direct x1 decode: {'n/a' if heavy is None else f'{100 * heavy:.1f}%'}")
    scale = ratios[f"chatgate_x{n}_over_chatgate_x1_aggregate"]
    print(f"chatgate x{n} / chatgate x1 aggregate: {'n/a' if scale is None else f'{scale:.2f}x'}")
    versus = ratios[f"chatgate_x{n}_over_direct_x{n}_aggregate"]
    print(f"chatgate x{n} / direct x{n} aggregate: {'n/a' if versus is None else f'{versus:.2f}x'}")
    for key, label in (
        (f"xllamacpp_x{n}_over_xllamacpp_x1_aggregate", f"xllamacpp x{n} / xllamacpp x1 aggregate"),
        (f"chatgate_x{n}_over_xllamacpp_x{n}_aggregate", f"chatgate x{n} / xllamacpp x{n} aggregate"),
        (
            f"chatgate_x{n}_ttft_over_xllamacpp_x{n}_ttft",
            f"chatgate x{n} / xllamacpp x{n} time to first token",
        ),
        (
            f"chatgate_x{n}_over_ceiling_aggregate",
            f"chatgate x{n} / ceiling ({THREADS} bare contexts) aggregate",
        ),
        (
            f"bound_x{n}_over_ceiling_aggregate",
            f"bound x{n} (the prompts, then decoding at the ceiling) / ceiling aggregate",
        ),
        (f"chatgate_x{n}_over_bound_aggregate", f"chatgate x{n} / bound x{n} aggregate"),
    ):
        if (value := ratios.get(key)) is not None:
            print(f"{label}: {value:.2f}x")
    print(f"load average (1 min) before and after: {report['config']['load_average_before_after']}")
    print(
        f"(median of {report['config']['repeats']} repeats; max_tokens={report['config']['max_tokens']}; "
        f"{THREADS} threads; tokens = total completion tokens per scenario)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Decode tok/s and TTFT: chatgate's streaming HTTP API vs llama-cpp-python directly."
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF model file")
    parser.add_argument("--max-tokens", type=int, default=128, help="completion tokens per request")
    parser.add_argument("--repeats", type=int, default=2, help="runs per scenario; the median is reported")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="streams in the concurrent scenarios (default 4)"
    )
    parser.add_argument(
        "--xllamacpp",
        action="store_true",
        help="also run llama.cpp's own server (xllamacpp, continuous batching), installed into .venv-xllamacpp",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also measure two bare one-thread llama.cpp contexts decoding at once (bench/ceiling.py)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    args.model = args.model.expanduser().resolve()
    if not args.model.is_file():
        parser.error(f"model file not found: {args.model}")
    for flag in ("max_tokens", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.concurrency < 2:
        parser.error("--concurrency must be at least 2")
    return args


def run_ceiling(model: Path, max_tokens: int, repeats: int, concurrency: int) -> dict[str, ScenarioResult]:
    """Two bare contexts of one thread each, decoding together: the most these cores give (bench/ceiling.py).

    And what the concurrent scenario's prompts cost before that: its ``concurrency`` prompts (the
    chat template around this script's own messages, each with its session tag) evaluated on two
    bare one-thread contexts at once, shared between them in turn. The ceiling decodes only; a
    server answering those streams first has these prompts to evaluate, on the same two cores. So
    ``bound`` (in the report) is the most an engine of one-thread contexts could make of the
    scenario: its completion tokens over the prompts' time plus the tokens' time at the ceiling's
    rate, with no gap, no overhead and no HTTP (one that batches the prompts can do better)."""
    import ceiling  # bench/ceiling.py, beside this script

    log(f"ceiling: {THREADS} bare contexts of 1 thread each, {max_tokens} tokens, {repeats} repeats")
    totals = ceiling.run_workers(model, THREADS, 1, max_tokens, repeats)
    log(f"ceiling: {', '.join(f'{total:.1f}' for total in totals)} tok/s")
    prompts = [
        ceiling.chat_prompt(system["content"], user["content"])
        for system, user in (bench_messages() for _ in range(concurrency))
    ]
    shares = [prompts[i::THREADS] for i in range(THREADS)]
    log(f"prefill: {concurrency} prompts on {THREADS} bare contexts of 1 thread each, {repeats} repeats")
    times = ceiling.run_prefill(model, shares, repeats)
    log(f"prefill: {', '.join(f'{1000 * t:.0f}' for t in times)} ms")
    total = statistics.median(totals)
    prefill = statistics.median(times)
    return {
        "ceiling": ScenarioResult(None, total / THREADS, total, THREADS * max_tokens, 0.0),
        f"prefill x{concurrency}": ScenarioResult(1000 * prefill, None, 0.0, 0.0, prefill),
    }


def bound(results: dict[str, ScenarioResult], concurrency: int) -> float | None:
    """The most an engine of one-thread contexts could give the concurrent scenario here (see
    run_ceiling), in tok/s."""
    prefill = results.get(f"prefill x{concurrency}")
    if prefill is None or "ceiling" not in results:
        return None
    tokens = results[f"chatgate x{concurrency}"].completion_tokens
    return tokens / (prefill.wall_s + tokens / results["ceiling"].aggregate_tok_s)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.concurrency
    load_before = os.getloadavg()
    try:
        results = asyncio.run(run_chatgate(args.model, args.max_tokens, args.repeats, n))
    except ServerError as exc:
        print(f"bench: chatgate side failed: {exc}", file=sys.stderr)
        return 1
    if args.xllamacpp:
        try:
            results.update(asyncio.run(run_xllamacpp(args.model, args.max_tokens, args.repeats, n)))
        except ServerError as exc:
            print(f"bench: xllamacpp side failed: {exc}", file=sys.stderr)
            return 1
    results.update(run_direct(args.model, args.max_tokens, args.repeats, n))
    if args.ceiling:
        results.update(run_ceiling(args.model, args.max_tokens, args.repeats, n))
    report = build_report(results, args, n)
    report["config"]["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
