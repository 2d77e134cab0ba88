"""How long the special models take, one request at a time, against a plain chat request as a baseline.

It starts chatgate on the default catalogue's model (qwen2.5-coder-0.5b-instruct) and, in a temporary
data directory, fills the local index with the project's docs. Then it times, each ``--repeats``
times, with the official ``openai`` client:

- a plain question (the baseline: one model step);
- the same question about a picture of "HELLO 42" sent as a data URL (image analysis, then the model);
- a browsing question over the local index (query step, search, answer step);
- a drawing with the offline sketch backend (plan step, drawing step, render).

Run from the repository root on an otherwise idle machine::

    .venv/bin/python bench/features.py --repeats 3
"""

import argparse
import base64
import contextlib
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench-" + "b" * 24
CATALOGUE = """
models:
  - name: qwen
    deployment: {kind: local, asset: qwen2.5-coder-0.5b-instruct-q4_k_m, context_length: 4096, instances: 1}
  - name: qwen-browsing
    deployment: {kind: browsing, base: qwen, search: {backend: local_index}}
  - name: qwen-sketch
    deployment: {kind: image_generation, base: qwen, backend: {backend: sketch}, sizes: ["512x512"]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[str]:
    (workdir / "catalogue.yaml").write_text(CATALOGUE)
    env = {
        **os.environ,
        "CHATGATE_API_KEY": KEY,
        "CHATGATE_DATA_DIR": str(workdir / "data"),
        "CHATGATE_MODEL_DIR": str(ROOT / ".chatgate" / "models"),
        "CHATGATE_CATALOGUE": str(workdir / "catalogue.yaml"),
    }
    chatgate = [sys.executable, "-m", "chatgate"]
    subprocess.run([*chatgate, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([*chatgate, "index", "add", str(ROOT / "docs")], env=env, check=True, capture_output=True)
    port = free_port()
    with (workdir / "server.log").open("w") as log:
        process = subprocess.Popen([*chatgate, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "server.log").read_text()[-2000:])
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(30)


def hello_42() -> str:
    image = Image.new("RGB", (480, 160), "white")
    ImageDraw.Draw(image).text((30, 40), "HELLO 42", fill="black", font=ImageFont.load_default(size=64))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def cases(client: openai.OpenAI) -> dict[str, Callable[[], Any]]:
    question = "What number is written in the image? Answer with the number only."
    picture = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": hello_42()}}]

    def chat(model: str, content: Any, **extra: Any) -> Any:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], temperature=0, **extra
        )

    return {
        "plain question (baseline)": lambda: chat(
            "qwen", "What number comes after 41? Answer with the number only.", max_tokens=16
        ),
        "image analysis + answer": lambda: chat("qwen", picture, max_tokens=16),
        "browsing (local index)": lambda: chat(
            "qwen-browsing", "How many random bits are in a chatgate file id?", max_tokens=64
        ),
        "drawing (sketch backend)": lambda: chat(
            "qwen-sketch", "Draw a red car on a grey road under a blue sky."
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatgate-bench-") as tmp, server(Path(tmp)) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=300)
        rows = []
        for name, call in cases(client).items():
            call()  # warm-up: the OCR models load on first use
            seconds, usage = [], None
            for _ in range(args.repeats):
                began = time.perf_counter()
                answer = call()
                seconds.append(time.perf_counter() - began)
                usage = answer.usage
            assert usage is not None
            rows.append(
                (name, statistics.median(seconds), min(seconds), usage.prompt_tokens, usage.completion_tokens)
            )
    print(f"| request | median s | best s | prompt tokens | completion tokens |  (repeats: {args.repeats})")
    print("|---|---:|---:|---:|---:|")
    for name, median, best, prompt, completion in rows:
        print(f"| {name} | {median:.2f} | {best:.2f} | {prompt} | {completion} |")


if __name__ == "__main__":
    main()
