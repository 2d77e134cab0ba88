"""Accounts, tokens, quota and usage against a real server, on SQLite and on PostgreSQL."""

import asyncio
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from chatgate.storage import usage
from chatgate.storage.database import Database
from chatgate.storage.tables import ApiToken, User
from tests.e2e import infra
from tests.e2e.conftest import (
    SMALL,
    admitted_until_the_limit,
    assert_ledger_adds_up,
    database_url,
    ledger_checked,
    well_inside_a_minute,
)
from tests.e2e.infra import Server

OTHER = "some-other-model"  # in the catalogue for tokens' allow-lists; never called
CATALOGUE = f"""
models:
  - name: {SMALL}
    deployment: {{kind: local, asset: smollm2-135m-instruct-q4_1, context_length: 2048, instances: 2}}
    price: {{prompt: 1000000, completion: 2000000}}
  - name: {OTHER}
    deployment: {{kind: openai_compatible, base_url: "http://127.0.0.1:9/v1", model: none}}
"""
HI: list[Any] = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def accounts_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {"CHATGATE_MAX_QUEUE": "64", "CHATGATE_FREE_CREDITS": "100000"}
    if request.param == "postgres":
        env["CHATGATE_DATABASE_URL"] = request.getfixturevalue("postgres").create_database("accounts")
    with infra.chatgate(tmp_path_factory.mktemp(f"accounts-{request.param}"), CATALOGUE, **env) as running:
        yield running


def database_of(server: Server) -> Database:
    return Database(database_url(server))


verified = ledger_checked("accounts_server")


class Console:
    """A signed-in browser session on the accounts JSON API."""

    def __init__(self, server: Server, email: str, password: str = "correct horse battery") -> None:
        self.http = httpx.Client(base_url=server.base_url, timeout=60)
        response = self.http.post("/api/signup", json={"email": email, "password": password})
        assert response.status_code == 201, response.text
        self.user = response.json()["user"]
        self.csrf = response.json()["csrf_token"]

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, headers={"x-csrf-token": self.csrf}, **kwargs)

    def token(self, **fields: Any) -> dict[str, Any]:
        response = self.post("/api/tokens", json={"name": "t", **fields})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def revoke(self, token_id: int) -> httpx.Response:
        return self.http.delete(f"/api/tokens/{token_id}", headers={"x-csrf-token": self.csrf})


def unique(name: str) -> str:
    return f"{name}-{datetime.now(UTC).strftime('%H%M%S%f')}@example.com"


class Clients:
    """Every HTTP client a test opens, closed when it ends."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._open: list[httpx.Client | openai.OpenAI] = []

    def console(self, email: str) -> Console:
        console = Console(self.server, email)
        self._open.append(console.http)
        return console

    def sdk(self, key: str, retries: int = 0) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.server.base_url + "/v1", api_key=key, max_retries=retries)
        self._open.append(client)
        return client

    def usage(self, key: str) -> dict[str, Any]:
        with httpx.Client(base_url=self.server.base_url) as http:
            report: dict[str, Any] = http.get("/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
            return report

    def close(self) -> None:
        for client in self._open:
            client.close()


@pytest.fixture
def clients(accounts_server: Server) -> Iterator[Clients]:
    opened = Clients(accounts_server)
    yield opened
    opened.close()


def test_sign_up_acquire_call_usage_revoke(accounts_server: Server, clients: Clients) -> None:
    console = clients.console(unique("flow"))
    assert console.user["credits"] == 100000
    created = console.token(name="laptop")
    key = created["key"]
    assert key.startswith("sk-") and created["prefix"] == key[:10]
    listed = console.http.get("/api/tokens").json()["data"]
    assert [t["name"] for t in listed] == ["laptop"] and "key" not in listed[0]

    answer = clients.sdk(key).chat.completions.create(model=SMALL, messages=HI, max_tokens=5)
    assert answer.usage is not None
    expected_cost = answer.usage.prompt_tokens + 2 * answer.usage.completion_tokens  # 1 and 2 credits a token

    report = httpx.get(
        accounts_server.base_url + "/v1/usage", headers={"authorization": f"Bearer {key}"}
    ).json()
    assert report["requests"] == 1
    assert report["prompt_tokens"] == answer.usage.prompt_tokens
    assert report["completion_tokens"] == answer.usage.completion_tokens
    assert report["total_tokens"] == answer.usage.total_tokens
    assert report["credits_used"] == expected_cost
    assert report["credits_left"] == 100000 - expected_cost
    assert report["models"][0]["model"] == SMALL and len(report["daily"]) == 1

    assert console.revoke(created["id"]).json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError) as caught:
        clients.sdk(key).chat.completions.create(model=SMALL, messages=HI, max_tokens=5)
    assert caught.value.code == "invalid_token"


@pytest.mark.parametrize("case", ["unknown", "revoked", "expired"])
def test_dead_tokens_are_401_invalid_token(accounts_server: Server, clients: Clients, case: str) -> None:
    console = clients.console(unique(case))
    if case == "unknown":
        key = "sk-" + "x" * 48
    elif case == "revoked":
        created = console.token()
        console.revoke(created["id"])
        key = created["key"]
    else:
        key = console.token(expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())["key"]
    with httpx.Client(base_url=accounts_server.base_url) as http:
        response = http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": SMALL, "messages": HI, "max_tokens": 2},
        )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    assert response.json()["success"] is False


def test_model_outside_the_allow_list_is_token_mismatched(accounts_server: Server, clients: Clients) -> None:
    key = clients.console(unique("allow")).token(allowed_models=[OTHER])["key"]
    sdk = clients.sdk(key)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=SMALL, messages=HI, max_tokens=2)
    assert caught.value.code == "token_mismatched"
    # Nor does the token see the model: not listed, and not found when asked for by name.
    assert SMALL not in [m.id for m in sdk.models.list()]
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(SMALL)


def test_a_token_limited_to_a_model_lists_just_that_model(accounts_server: Server, clients: Clients) -> None:
    key = clients.console(unique("only")).token(allowed_models=[SMALL])["key"]
    sdk = clients.sdk(key)
    assert [m.id for m in sdk.models.list()] == [SMALL]
    assert sdk.models.retrieve(SMALL).id == SMALL


def test_out_of_quota_is_429_insufficient_quota_and_the_sdk_does_not_retry(
    accounts_server: Server, clients: Clients
) -> None:
    key = clients.console(unique("broke")).token(quota_cap=5)["key"]
    with pytest.raises(openai.RateLimitError) as caught:
        clients.sdk(key, retries=3).chat.completions.create(model=SMALL, messages=HI, max_tokens=5)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"
    report = httpx.get(
        accounts_server.base_url + "/v1/usage", headers={"authorization": f"Bearer {key}"}
    ).json()
    assert report["requests"] == 1  # one attempt, not four
    assert report["credits_used"] == 0


def test_quota_running_out_midway(accounts_server: Server, clients: Clients) -> None:
    cap = 200
    key = clients.console(unique("midway")).token(quota_cap=cap)["key"]
    client = clients.sdk(key)
    served = 0
    for _ in range(20):
        try:
            client.chat.completions.create(model=SMALL, messages=HI, max_tokens=20)
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            break
        served += 1
    else:
        pytest.fail("the quota never ran out")
    report = httpx.get(
        accounts_server.base_url + "/v1/usage", headers={"authorization": f"Bearer {key}"}
    ).json()
    assert served >= 1
    assert 0 <= report["credits_left"] <= cap - report["credits_used"]
    assert report["credits_used"] <= cap


def test_a_token_revoked_while_in_use(accounts_server: Server, clients: Clients) -> None:
    console = clients.console(unique("inuse"))
    created = console.token()
    client = clients.sdk(created["key"])
    stream = client.chat.completions.create(
        model=SMALL,
        messages=[{"role": "user", "content": "Count from 1 to 100."}],
        max_tokens=60,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [next(stream)]
    console.revoke(created["id"])
    chunks.extend(stream)  # the request in flight finishes: it was authorised when it began
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=SMALL, messages=HI, max_tokens=2)


def test_fifty_parallel_requests_never_overspend(accounts_server: Server, clients: Clients) -> None:
    """50 requests at once on a token whose cap covers 10: the balance never goes below zero,
    and the ledger agrees with the usage log to the credit."""
    console = clients.console(unique("parallel"))
    probe = clients.sdk(console.token()["key"]).chat.completions.create(
        model=SMALL, messages=HI, max_tokens=8
    )
    assert probe.usage is not None
    worst_case = probe.usage.prompt_tokens + 2 * 8  # prompt at 1 credit a token, 8 completion tokens at 2
    cap = 10 * worst_case
    created = console.token(quota_cap=cap)
    body = {"model": SMALL, "messages": HI, "max_tokens": 8}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=accounts_server.base_url,
            headers={"authorization": f"Bearer {created['key']}"},
            timeout=300,
        ) as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(50)))

    responses = asyncio.run(fire())
    codes = [r.status_code for r in responses]
    assert codes.count(200) >= 10 and set(codes) <= {200, 429}, codes
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in responses if r.status_code == 429)
    httpx.get(
        accounts_server.base_url + "/v1/usage", headers={"authorization": f"Bearer {created['key']}"}
    )  # flushes

    async def audit() -> tuple[int, int, int, int]:
        db = database_of(accounts_server)
        try:
            async with db.sessions() as session:
                token = await session.get(ApiToken, created["id"])
                user = await session.get(User, console.user["id"])
                assert token is not None and user is not None
                logged = await usage.totals(session, user_id=user.id)
                return token.spent, user.credits, logged.cost, logged.requests
        finally:
            await db.dispose()

    spent, credits, logged_cost, logged_requests = asyncio.run(audit())
    assert 0 <= spent <= cap
    assert credits >= 0
    assert logged_requests == 51  # the probe and the fifty
    assert credits + logged_cost == 100_000  # the free credits: every one spent is in the usage log
    assert_ledger_adds_up(accounts_server, cli=True)  # and the ledger's own check, as the command


def test_users_cannot_touch_each_others_tokens(accounts_server: Server, clients: Clients) -> None:
    alice, mallory = clients.console(unique("alice")), clients.console(unique("mallory"))
    token = alice.token(name="alice-only")
    assert mallory.http.get("/api/tokens").json()["data"] == []
    assert mallory.revoke(token["id"]).status_code == 404
    rename = mallory.http.patch(
        f"/api/tokens/{token['id']}", json={"name": "pwned"}, headers={"x-csrf-token": mallory.csrf}
    )
    assert rename.status_code == 404
    assert [t["name"] for t in alice.http.get("/api/tokens").json()["data"]] == ["alice-only"]
    assert alice.http.get("/api/admin/users").status_code == 403


def test_console_api_needs_a_session_and_the_csrf_token(accounts_server: Server, clients: Clients) -> None:
    console = clients.console(unique("csrf"))
    no_csrf = console.http.post("/api/tokens", json={"name": "x"})
    assert no_csrf.status_code == 403 and no_csrf.json()["error"]["code"] == "csrf_failed"
    wrong = console.http.post("/api/tokens", json={"name": "x"}, headers={"x-csrf-token": "nope"})
    assert wrong.status_code == 403
    with httpx.Client(base_url=accounts_server.base_url) as http:
        anonymous = http.post("/api/tokens", json={"name": "x"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_signed_in"
    assert console.http.get("/api/tokens").json()["data"] == []


def test_sign_up_refuses_bad_input_and_duplicates(accounts_server: Server, clients: Clients) -> None:
    http = clients.console(unique("first")).http
    assert (
        http.post("/api/signup", json={"email": "not-an-email", "password": "long enough"}).json()["error"][
            "param"
        ]
        == "email"
    )
    assert (
        http.post("/api/signup", json={"email": unique("short"), "password": "short"}).json()["error"][
            "param"
        ]
        == "password"
    )
    email = unique("dup")
    assert http.post("/api/signup", json={"email": email, "password": "long enough"}).status_code == 201
    again = http.post("/api/signup", json={"email": email, "password": "long enough"})
    assert again.status_code == 409
    wrong = http.post("/api/login", json={"email": email, "password": "wrong password"})
    assert wrong.status_code == 401


def test_cli_keys_and_grants(accounts_server: Server, clients: Clients) -> None:
    email = unique("cli")
    key = accounts_server.cli("keys", "create", "--user", email, "--quota", "1000").strip().splitlines()[-1]
    assert key.startswith("sk-")
    assert "cap=1000" in accounts_server.cli("keys", "list", "--user", email)
    assert "100500 credits" in accounts_server.cli("quota", "grant", "--user", email, "--credits", "500")
    answer = clients.sdk(key).chat.completions.create(model=SMALL, messages=HI, max_tokens=2)
    assert answer.choices[0].message.content is not None
    accounts_server.cli("keys", "revoke", key[:10])
    with pytest.raises(openai.AuthenticationError):
        clients.sdk(key).chat.completions.create(model=SMALL, messages=HI, max_tokens=2)


def test_cli_revokes_a_token_by_its_prefix_as_keys_list_prints_it(
    accounts_server: Server, clients: Clients
) -> None:
    email = unique("cli-prefix")
    first, second = (
        accounts_server.cli("keys", "create", "--user", email, "--name", name).strip().splitlines()[-1]
        for name in ("first", "second")
    )
    listed = {
        line.split("\t")[2]: line.split("\t")[1]
        for line in accounts_server.cli("keys", "list", "--user", email).splitlines()
    }
    assert listed == {"first": first[:10] + "...", "second": second[:10] + "..."}

    for printed, answer in (("sk-...", "More than one"), ("sk-\u2026", "More than one"), ("...", "No")):
        with pytest.raises(subprocess.CalledProcessError) as refused:
            accounts_server.cli("keys", "revoke", printed)
        assert f"{answer} token matches {printed!r}" in refused.value.stderr
    assert "active" in accounts_server.cli("keys", "list", "--user", email)

    assert f"revoked token {listed['first']}" in accounts_server.cli("keys", "revoke", listed["first"])
    assert f"revoked token {listed['second']}" in accounts_server.cli(
        "keys", "revoke", second[:10] + "\u2026"
    )
    assert "active" not in accounts_server.cli("keys", "list", "--user", email)
    for key in (first, second):
        with pytest.raises(openai.AuthenticationError):
            clients.sdk(key).chat.completions.create(model=SMALL, messages=HI, max_tokens=2)


def test_a_resent_request_id_is_refused_and_does_not_block_later_accounting(
    accounts_server: Server, clients: Clients
) -> None:
    key = clients.console(unique("resend")).token()["key"]
    trace = f"resend-{datetime.now(UTC).timestamp()}"
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": SMALL, "messages": HI, "max_tokens": 3}
    with httpx.Client(base_url=accounts_server.base_url, timeout=60) as http:
        first = http.post("/v1/chat/completions", json=body, headers={**headers, "x-request-id": trace})
        again = http.post("/v1/chat/completions", json=body, headers={**headers, "x-request-id": trace})
        later = http.post("/v1/chat/completions", json=body, headers=headers)
    assert (first.status_code, again.status_code, later.status_code) == (200, 409, 200)
    assert again.json()["error"]["code"] == "duplicate_request"
    report = clients.usage(key)
    assert report["requests"] == 3
    expected = sum(
        r.json()["usage"]["prompt_tokens"] + 2 * r.json()["usage"]["completion_tokens"]
        for r in (first, later)
    )
    assert report["credits_used"] == expected
    assert report["credits_left"] == 100000 - expected  # every refund landed


def test_another_users_request_id_is_no_obstacle(accounts_server: Server, clients: Clients) -> None:
    """Request ids are unique per user: the same x-request-id from two users is two requests."""
    trace = f"shared-{datetime.now(UTC).timestamp()}"
    body = {"model": SMALL, "messages": HI, "max_tokens": 2}
    with httpx.Client(base_url=accounts_server.base_url, timeout=60) as http:
        for name in ("first-user", "second-user"):
            key = clients.console(unique(name)).token()["key"]
            headers = {"authorization": f"Bearer {key}", "x-request-id": trace}
            response = http.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == trace
            assert clients.usage(key)["credits_used"] > 0


def test_one_user_never_sees_anothers_usage_or_request_log(accounts_server: Server, clients: Clients) -> None:
    alice, bob = clients.console(unique("alice-log")), clients.console(unique("bob-log"))
    key = alice.token()["key"]
    clients.sdk(key).chat.completions.create(model=SMALL, messages=HI, max_tokens=2)
    assert alice.http.get("/api/usage/requests").json()["total"] == 1
    assert bob.http.get("/api/usage/requests").json() == {"total": 0, "data": []}
    assert bob.http.get("/api/usage").json()["requests"] == 0
    with httpx.Client(base_url=accounts_server.base_url) as anonymous:
        assert anonymous.get("/api/usage").status_code == 401
        assert anonymous.get("/api/usage/requests").status_code == 401


def test_rpm_and_tpm_limits_in_one_process(accounts_server: Server) -> None:
    email = f"limits-{datetime.now(UTC).timestamp()}@example.com"
    rpm_key = accounts_server.cli("keys", "create", "--user", email, "--rpm", "3").strip().splitlines()[-1]
    tpm_key = accounts_server.cli("keys", "create", "--user", email, "--tpm", "60").strip().splitlines()[-1]
    with httpx.Client(base_url=accounts_server.base_url, timeout=60) as http:
        well_inside_a_minute()

        def call(key: str) -> httpx.Response:
            body = {"model": SMALL, "messages": HI, "max_tokens": 4}
            return http.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})

        codes = [call(rpm_key).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        responses = [call(tpm_key) for _ in range(8)]
    admitted_until_the_limit(responses, 60)
    refused = responses[-1]
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert refused.headers["x-ratelimit-limit-tokens"] == "60"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refused.headers["retry-after"]) >= 1


def test_numbers_out_of_range_are_a_one_line_refusal_on_every_database(
    accounts_server: Server, clients: Clients
) -> None:
    """The same ranges for the command line and the console API, checked before any database sees
    the number (PostgreSQL's 32-bit tpm column took 10^11 as a traceback)."""
    email = unique("ranges")
    for args, message in (
        (
            ("keys", "create", "--user", email, "--tpm", "100000000000"),
            "argument --tpm: must be a whole number",
        ),
        (("keys", "create", "--user", email, "--rpm", "0"), "argument --rpm: must be a whole number from 1"),
        (
            ("keys", "create", "--user", email, "--quota", str(10**20)),
            "argument --quota: must be a whole number",
        ),
        (
            ("quota", "grant", "--user", email, "--credits", str(10**20)),
            "argument --credits: must be a whole",
        ),
        (("keys", "revoke", str(10**20)), "No token matches"),
        (("users", "limits", "--user", email, "--concurrency", "lots"), "argument --concurrency: must be"),
    ):
        with pytest.raises(subprocess.CalledProcessError) as refused:
            accounts_server.cli(*args)
        lines = refused.value.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("chatgate: ") and message in lines[0], lines
        assert refused.value.returncode == 2

    admin_email = unique("ranges-admin")
    accounts_server.cli("admin", "create", "--email", admin_email, "--password", "admin password 1")
    admin = clients.console(unique("ranges-user"))
    with httpx.Client(base_url=accounts_server.base_url, timeout=60) as http:
        csrf = http.post("/api/login", json={"email": admin_email, "password": "admin password 1"}).json()[
            "csrf_token"
        ]
        headers = {"x-csrf-token": csrf}
        user_id = admin.user["id"]
        cases = [
            (
                http.post(f"/api/admin/users/{user_id}/grant", json={"credits": 10**20}, headers=headers),
                "credits",
            ),
            (http.post(f"/api/admin/users/{10**20}/grant", json={"credits": 1}, headers=headers), "user_id"),
            (http.get("/api/admin/users", params={"offset": 10**12}), "offset"),
            (
                http.post(f"/api/admin/users/{user_id}/limits", json={"tpm_limit": 10**11}, headers=headers),
                "tpm_limit",
            ),
            (admin.post("/api/tokens", json={"name": "t", "quota_cap": 10**20}), "quota_cap"),
            (admin.http.delete(f"/api/tokens/{10**20}", headers={"x-csrf-token": admin.csrf}), "token_id"),
        ]
        for response, param in cases:
            assert response.status_code == 400, (param, response.text)
            assert response.json()["error"]["param"] == param and response.json()["success"] is False
        to_the_top = 10**15 - admin.user["credits"]  # the largest balance there may be
        granted = http.post(
            f"/api/admin/users/{user_id}/grant", json={"credits": to_the_top}, headers=headers
        )
        over = http.post(f"/api/admin/users/{user_id}/grant", json={"credits": 1}, headers=headers)
    assert granted.status_code == 200
    assert over.status_code == 400 and over.json()["error"]["param"] == "credits"  # past the largest balance
    assert clients.console(unique("after")).token()["key"]  # nothing left broken behind
