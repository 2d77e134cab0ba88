"""A property-based fuzzer driven by the OpenAPI document (schemathesis) finds no server error and no
answer the document does not describe, against a real server, with a user's real API token and an
admin's real console session (tests/e2e/fuzz_hooks.py signs it in).

``make test`` runs a bounded, seeded pass (a few hundred cases: explicit examples, then generated
ones, then chains of calls along the document's links). ``CHATGATE_FUZZ_DEEP=1`` adds the coverage
phase (every boundary and type the schemas define: about two thousand cases, a few minutes) and
more generated cases, with the seed in ``CHATGATE_FUZZ_SEED`` or a new one (printed).
"""

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import infra
from tests.e2e.conftest import EMBED, SMALL
from tests.e2e.infra import ROOT, Server

CATALOGUE = f"""
models:
  - name: {SMALL}
    deployment: {{kind: local, asset: smollm2-135m-instruct-q4_1, context_length: 512, instances: 1}}
  - name: {EMBED}
    deployment: {{kind: local_embedding, asset: all-minilm-l6-v2, workers: 1}}
"""
ADMIN = ("fuzz-admin@example.com", "fuzz admin password")
USER = ("fuzz-user@example.com", "fuzz user password")
SPARE = ("fuzz-spare@example.com", "fuzz spare password")
DEEP = os.environ.get("CHATGATE_FUZZ_DEEP") == "1"
SEED = int(os.environ.get("CHATGATE_FUZZ_SEED") or (random.randrange(2**32) if DEEP else 20261206))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: the fuzzer signs up users, grants credits and disables accounts."""
    with infra.chatgate(tmp_path_factory.mktemp("fuzz"), CATALOGUE) as running:
        yield running


def _sign_up(http: httpx.Client, email: str, password: str) -> int:
    answer = http.post("/api/signup", json={"email": email, "password": password})
    assert answer.status_code == 201, answer.text
    user_id: int = answer.json()["user"]["id"]
    return user_id


def test_the_fuzzer_finds_nothing_the_document_does_not_say(fuzz_server: Server, tmp_path: Path) -> None:
    fuzz_server.cli("admin", "create", "--email", ADMIN[0], "--password", ADMIN[1])
    with httpx.Client(base_url=fuzz_server.base_url, timeout=60) as http:
        admin_id = http.post("/api/login", json={"email": ADMIN[0], "password": ADMIN[1]}).json()["user"][
            "id"
        ]
        user_id, spare_id = _sign_up(http, *USER), _sign_up(http, *SPARE)
    token = fuzz_server.cli("keys", "create", "--user", USER[0], "--name", "fuzz").strip().splitlines()[-1]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_hooks",
        "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis"),  # its caches, not in the repository
        "CHATGATE_FUZZ_URL": fuzz_server.base_url,
        "CHATGATE_FUZZ_TOKEN": token,
        "CHATGATE_FUZZ_EMAIL": ADMIN[0],
        "CHATGATE_FUZZ_PASSWORD": ADMIN[1],
        "CHATGATE_FUZZ_MODEL": SMALL,
        "CHATGATE_FUZZ_EMBEDDING_MODEL": EMBED,
        "CHATGATE_FUZZ_PROTECTED_USERS": f"{admin_id},{user_id}",
        "CHATGATE_FUZZ_SPARE_USER": str(spare_id),
    }
    phases = "examples,coverage,fuzzing,stateful" if DEEP else "examples,fuzzing,stateful"
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(ROOT / "tests" / "e2e" / "schemathesis.toml"),
        "run",
        f"{fuzz_server.base_url}/openapi.json",
        f"--phases={phases}",
        f"--max-examples={50 if DEEP else 8}",
        f"--seed={SEED}",
        "--workers=1",
        "--request-timeout=60",
        "--generation-database=none",  # no .hypothesis directory in the repository
        "--no-color",
        # The API under /openai and /openai/v1 (and Anthropic's under /anthropic/v1) is the same
        # routes as under /v1, each documented under every prefix (the conformance test calls
        # each): fuzzing one prefix is enough.
        "--exclude-path-regex=^/(openai|anthropic)/",
    ]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = run.stdout + run.stderr
    print(report[-3000:])
    assert run.returncode == 0, f"seed {SEED}:\n{report[-20000:]}"
