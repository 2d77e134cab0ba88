"""One real chatgate server per test session, started as a subprocess and spoken to over HTTP."""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = Path(os.environ.get("CHATGATE_OPENAI_SPEC", ROOT.parent / "shared/openai-spec/chat_schemas.json"))
API_KEY = "sk-test-" + "k" * 24
SMALL = "smollm2-135m"  # fast: for tests that are not about answer quality
QWEN = "qwen2.5-coder-0.5b-instruct"

CATALOGUE = f"""
models:
  - name: {SMALL}
    aliases: [small]
    deployment: {{kind: local, asset: smollm2-135m-instruct-q4_1, context_length: 2048, instances: 2}}
  - name: {QWEN}
    deployment: {{kind: local, asset: qwen2.5-coder-0.5b-instruct-q4_k_m, context_length: 2048, instances: 1}}
"""
MAX_QUEUE = 2


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[str]
    log: Path


def _wait_for_banner(process: subprocess.Popen[str], timeout: float) -> str:
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if "listening on" in line:
                found.append(line.split("listening on ")[1].split()[0])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        process.kill()
        raise RuntimeError("chatgate did not start")
    return found[0]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("server")
    catalogue = workdir / "catalogue.yaml"
    catalogue.write_text(CATALOGUE)
    log = workdir / "server.log"
    env = {
        **os.environ,
        "CHATGATE_API_KEY": API_KEY,
        "CHATGATE_DATA_DIR": str(workdir / "data"),
        "CHATGATE_MODEL_DIR": str(ROOT / ".chatgate" / "models"),
        "CHATGATE_MAX_QUEUE": str(MAX_QUEUE),
        "CHATGATE_ENGINE_THREADS": "2",
    }
    subprocess.run([sys.executable, "-m", "chatgate", "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatgate", "serve", "--port", "0", "--config", str(catalogue)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=workdir,
        )
    try:
        try:
            base_url = _wait_for_banner(process, timeout=300)
        except RuntimeError:
            raise RuntimeError("chatgate did not start:\n" + log.read_text()[-3000:]) from None
        yield Server(base_url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/openai", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as c:
        yield c


class Spec:
    """Validates what the server sent against the official OpenAI schemas."""

    def __init__(self, path: Path) -> None:
        self.document = json.loads(path.read_text())

    def validate(self, definition: str, instance: Any) -> None:
        schema = {**self.document, "$ref": f"#/$defs/{definition}"}
        jsonschema.Draft202012Validator(schema).validate(instance)


@pytest.fixture(scope="session")
def spec() -> Spec:
    if not SPEC_PATH.is_file():
        pytest.fail(f"OpenAI spec not found at {SPEC_PATH} (set CHATGATE_OPENAI_SPEC)")
    return Spec(SPEC_PATH)


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order (comments and blank lines skipped)."""
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
