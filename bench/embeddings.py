"""Embeddings: the default model called directly and through chatgate, side by side in one run; and the
same model on llama.cpp's server (the engine chatgate did not choose), directly and relayed.

Four paths embed the same texts:

- ``direct``: chatgate's engine called in this process (tokenizer and ONNX Runtime, two workers), no
  HTTP: what the model itself costs;
- ``chatgate``: ``POST /v1/embeddings`` on a chatgate server with a user's token (SQLite): the same
  engine plus HTTP, authentication, the rate limiter, reserving and settling credits, the usage log;
- ``llama.cpp``: llama.cpp's own server (llama-cpp-python[server], ``--embedding``) on the same model
  written as float32 GGUF (``tests/e2e/bert_gguf.py``), two threads;
- ``chatgate->llama.cpp``: chatgate relaying to that server (an ``openai_embeddings`` deployment).

Two loads each: one short text per request, one request at a time (per-request latency, p50 and
p95); and batches of 32 texts from 2 clients at once (texts per second). The texts are sentences of
the repository's docs (mean about 30 tokens). Run from the repository root on an otherwise idle
machine::

    .venv/bin/python bench/embeddings.py                 # 20 s per load and path
    .venv/bin/python bench/embeddings.py --seconds 10 --json
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e import bert_gguf  # noqa: E402

from chatgate.config import LocalEmbeddingDeployment  # noqa: E402
from chatgate.protocol.embeddings import EmbeddingRequest  # noqa: E402
from chatgate.providers.embeddings import local  # noqa: E402
from gateway import free_port, log, running  # noqa: E402  (bench/ is this script's directory)

MASTER = "bench-master-key-0123456789"
MODEL = "all-minilm-l6-v2"
Send = Callable[[list[str]], Awaitable[int]]  # embeds texts, returns the vectors it got


def corpus() -> list[str]:
    text = " ".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in sentences if 30 <= len(s) <= 300][:2000]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_at_a_time(send: Send, texts: list[str], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        await send([texts[i % len(texts)]])
        latencies.append((time.perf_counter() - started) * 1000)
        i += 1
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(_percentile(latencies, 0.95), 2),
    }


async def batches(send: Send, texts: list[str], seconds: float, size: int, clients: int) -> dict[str, float]:
    done = 0
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + seconds

    async def client(offset: int) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < deadline:
            batch = [texts[(i + j) % len(texts)] for j in range(size)]
            begun = time.perf_counter()
            done += await send(batch)
            latencies.append((time.perf_counter() - begun) * 1000)
            i += size * clients

    await asyncio.gather(*(client(c * size) for c in range(clients)))
    elapsed = time.monotonic() - started
    return {"texts_per_s": round(done / elapsed, 1), "batch_p50_ms": round(statistics.median(latencies), 1)}


def http_sender(http: httpx.AsyncClient, url: str, key: str, model: str) -> Send:
    async def send(texts: list[str]) -> int:
        response = await http.post(
            url,
            json={"model": model, "input": texts, "encoding_format": "base64"},
            headers={"authorization": f"Bearer {key}"},
        )
        response.raise_for_status()
        return len(response.json()["data"])

    return send


def direct_sender(embedder: local.LocalEmbedder) -> Send:
    async def send(texts: list[str]) -> int:
        result = await embedder.run(embedder.prepare(EmbeddingRequest(model=MODEL, input=texts)))
        return int(result.vectors.shape[0])

    return send


async def measure(
    args: argparse.Namespace, ports: dict[str, int], token: str, models_dir: Path
) -> dict[str, Any]:
    texts = corpus()
    deployment = LocalEmbeddingDeployment(kind="local_embedding", asset=MODEL, workers=2)
    encoder, longest = local.load(deployment, models_dir)
    embedder = local.LocalEmbedder(MODEL, deployment, encoder, longest)
    gateway = f"http://127.0.0.1:{ports['chatgate']}/v1/embeddings"
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_keepalive_connections=8)) as http:
        paths: dict[str, Send] = {
            "direct": direct_sender(embedder),
            "chatgate": http_sender(http, gateway, token, MODEL),
            "llama.cpp": http_sender(
                http, f"http://127.0.0.1:{ports['llama']}/v1/embeddings", "none", "minilm"
            ),
            "chatgate->llama.cpp": http_sender(http, gateway, token, "minilm-llama"),
        }
        report: dict[str, Any] = {"texts": len(texts), "paths": {}}
        for name, send in paths.items():
            await send(texts[:64])  # warm up
            log(f"{name}: one text a request")
            single = await one_at_a_time(send, texts, args.seconds)
            log(f"{name}: batches of {args.batch} from {args.clients} clients")
            batched = await batches(send, texts, args.seconds, args.batch, args.clients)
            report["paths"][name] = {**single, **batched}
    await embedder.aclose()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    python = sys.executable
    load_before = os.getloadavg()
    models_dir = ROOT / ".chatgate" / "models"
    with tempfile.TemporaryDirectory(prefix="chatgate-bench-embed-") as tmp:
        workdir = Path(tmp)
        gguf_path = bert_gguf.write(workdir / "all-minilm-l6-v2-f32.gguf")
        ports = {"chatgate": free_port(), "llama": free_port()}
        catalogue = workdir / "catalogue.yaml"
        catalogue.write_text(
            "models:\n"
            f"  - name: {MODEL}\n    deployment: {{kind: local_embedding, asset: {MODEL}, workers: 2}}\n"
            "  - name: minilm-llama\n"
            f"    deployment: {{kind: openai_embeddings, base_url: 'http://127.0.0.1:{ports['llama']}/v1', model: minilm}}\n"
        )
        env = {
            **os.environ,
            "CHATGATE_API_KEY": MASTER,
            "CHATGATE_DATA_DIR": str(workdir / "data"),
            "CHATGATE_MODEL_DIR": str(models_dir),
            "CHATGATE_CATALOGUE": str(catalogue),
            "CHATGATE_FREE_CREDITS": str(10**12),
            "CHATGATE_DEFAULT_RPM": "1000000",
            "CHATGATE_DEFAULT_TPM": "1000000000",
            "CHATGATE_LOG_LEVEL": "warning",
        }
        subprocess.run([python, "-m", "chatgate", "migrate"], env=env, check=True, capture_output=True)
        token = subprocess.run(
            [python, "-m", "chatgate", "keys", "create", "--user", "bench@example.com"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        llama = [
            python, "-m", "llama_cpp.server", "--model", str(gguf_path), "--model_alias", "minilm", "--embedding", "true",
            "--host", "127.0.0.1", "--port", str(ports["llama"]), "--n_ctx", "512", "--n_batch", "512",
            "--n_ubatch", "512", "--n_threads", "2",
        ]  # fmt: skip
        with (
            running(llama, env, ports["llama"], workdir / "llama.log"),
            running([python, "-m", "chatgate", "serve", "--port", str(ports["chatgate"])], env, ports["chatgate"], workdir / "chatgate.log"),
        ):  # fmt: skip
            report = asyncio.run(measure(args, ports, token, models_dir))
    report["load"] = {"before": load_before, "after": os.getloadavg()}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"load average before {load_before[0]:.2f}, after {report['load']['after'][0]:.2f}")
    print(f"{'path':<22}{'p50 ms':>9}{'p95 ms':>9}{'texts/s (batches)':>20}{'batch p50 ms':>14}")
    for name, row in report["paths"].items():
        print(
            f"{name:<22}{row['p50_ms']:>9}{row['p95_ms']:>9}{row['texts_per_s']:>20}{row['batch_p50_ms']:>14}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
