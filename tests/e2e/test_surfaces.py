"""What a server shows of itself: operator endpoints behind the master key, no internal addresses in
errors, sign-up modes and their production default, Secure cookies, sessions ended by a password
change, settings refused in one line, and idle connections kept longer than the SDKs keep theirs."""

import http.client
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e import infra
from tests.e2e.conftest import faulty_catalogue
from tests.e2e.infra import API_KEY, Server

PASSWORD = "a long enough password"
OPERATOR = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def closed(faulty_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Development, sign-up closed: accounts are made by the operator."""
    catalogue = faulty_catalogue(faulty_port, fast="ok", leaky="leaky")
    with infra.chatgate(tmp_path_factory.mktemp("closed"), catalogue, CHATGATE_SIGNUP="closed") as server:
        yield server


@pytest.fixture(scope="module")
def production(faulty_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """CHATGATE_ENV=production and nothing else said about sign-up or cookies."""
    catalogue = faulty_catalogue(faulty_port, fast="ok", leaky="leaky")
    with infra.chatgate(
        tmp_path_factory.mktemp("production"), catalogue, CHATGATE_ENV="production"
    ) as server:
        yield server


def unique(name: str) -> str:
    return f"{name}-{time.time_ns()}@example.com"


def operator_made(server: Server, name: str) -> str:
    """An account the operator made (with a password, so it can sign in): its email."""
    email = unique(name)
    server.cli("admin", "create", "--email", email, "--password", PASSWORD)
    return email


# ---- operator endpoints -------------------------------------------------------------------------


def test_healthz_is_open_and_terse_readyz_and_metrics_detail_need_the_master_key(closed: Server) -> None:
    key = closed.cli("keys", "create", "--user", unique("user")).strip().splitlines()[-1]
    with httpx.Client(base_url=closed.base_url) as anyone:
        assert anyone.get("/healthz").json() == {"status": "ok"}
        assert anyone.get("/readyz").json() == {"ready": True}
        refused = anyone.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
        user = {"authorization": f"Bearer {key}"}
        assert anyone.get("/metrics", headers=user).status_code == 401  # a user's token is no master key
        assert anyone.get("/readyz", headers=user).json() == {"ready": True}
        assert anyone.get("/healthz", headers={"authorization": "Bearer nonsense"}).json() == {"status": "ok"}

        detail = anyone.get("/readyz", headers=OPERATOR).json()
        assert detail["ready"] is True and set(detail["models"]) == {"fast", "leaky"}
        metrics = anyone.get("/metrics", headers=OPERATOR)
        assert metrics.status_code == 200 and "chatgate_deployment_up" in metrics.text
        assert set(anyone.get("/healthz", headers=OPERATOR).json()["models"]) == {"fast", "leaky"}


# ---- no internal addresses ----------------------------------------------------------------------


def test_error_messages_never_show_internal_addresses(closed: Server) -> None:
    with httpx.Client(base_url=closed.base_url, headers=OPERATOR, timeout=60) as http:
        image = {
            "model": "fast",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "http://localhost:9/secret.png"}},
                    ],
                }
            ],
        }
        refused = http.post("/v1/chat/completions", json=image)
        failed = http.post(
            "/v1/chat/completions", json={"model": "leaky", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_image"
    assert "localhost" in refused.json()["error"]["message"]
    assert failed.status_code == 502 and "<address>" in failed.json()["error"]["message"]
    for response in (refused, failed):
        for internal in ("127.0.0.1", "::1", "10.1.2.3", "fd00::7"):
            assert internal not in response.text, response.text


# ---- sign-up modes, cookies, sessions -----------------------------------------------------------


def test_sign_up_closed_refuses_everyone(closed: Server) -> None:
    with httpx.Client(base_url=closed.base_url) as http:
        assert http.get("/api/signup").json() == {"mode": "closed"}
        refused = http.post("/api/signup", json={"email": unique("closed"), "password": PASSWORD})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "signup_closed"


def test_in_production_sign_up_needs_an_invite_and_cookies_are_secure(production: Server) -> None:
    email = operator_made(production, "prod-admin")
    with httpx.Client(base_url=production.base_url) as http:
        assert http.get("/api/signup").json() == {"mode": "invite"}
        signed_in = http.post("/api/login", json={"email": email, "password": PASSWORD})
        cookie = signed_in.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        refused = http.post("/api/signup", json={"email": unique("uninvited"), "password": PASSWORD})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "invite_required"
        assert refused.json()["error"]["param"] == "invite"


def test_invite_codes_from_the_cli_and_the_admin_console(production: Server) -> None:
    out = production.cli("invites", "create", "--uses", "2", "--note", "for the team")
    code = out.strip().splitlines()[-1]
    assert code.startswith("inv-") and "2 sign-up(s)" in out

    def sign_up(http: httpx.Client, invite: str | None) -> httpx.Response:
        body = {"email": unique("invited"), "password": PASSWORD, "invite": invite}
        return http.post("/api/signup", json=body)

    with httpx.Client(base_url=production.base_url) as http:
        assert sign_up(http, "inv-made-up").json()["error"]["code"] == "invalid_invite"
        assert [sign_up(http, code).status_code for _ in range(3)] == [201, 201, 403]  # good for two

        admin = operator_made(production, "invite-admin")
        signed_in = http.post("/api/login", json={"email": admin, "password": PASSWORD})
        # The cookie is Secure, so a client keeps it off plain HTTP: sent by hand here.
        session = {
            "cookie": f"chatgate_session={signed_in.cookies['chatgate_session']}",
            "x-csrf-token": signed_in.json()["csrf_token"],
        }
        made = http.post("/api/admin/invites", json={"uses": 1, "days": 1, "note": "one"}, headers=session)
        assert made.status_code == 201
        listed = http.get("/api/admin/invites", headers=session).json()["data"]
        assert listed[0]["id"] == made.json()["id"] and "code" not in listed[0]  # shown once, kept hashed
        assert any(i["note"] == "for the team" and i["uses"] == 2 for i in listed)
        withdrawn = http.delete(f"/api/admin/invites/{made.json()['id']}", headers=session)
        assert withdrawn.json()["revoked_at"] is not None
        assert sign_up(http, made.json()["code"]).json()["error"]["code"] == "invalid_invite"
        bad = http.post("/api/admin/invites", json={"uses": 0}, headers=session)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "uses"
    assert "used 2/2" in production.cli("invites", "list")


def test_cookies_are_not_secure_in_development_unless_set(closed: Server) -> None:
    email = operator_made(closed, "dev")
    with httpx.Client(base_url=closed.base_url) as http:
        signed_in = http.post("/api/login", json={"email": email, "password": PASSWORD})
    assert "secure" not in signed_in.headers["set-cookie"].lower()


def test_a_password_change_ends_the_users_other_sessions(closed: Server) -> None:
    email = operator_made(closed, "changer")
    with httpx.Client(base_url=closed.base_url) as here, httpx.Client(base_url=closed.base_url) as elsewhere:
        csrf = here.post("/api/login", json={"email": email, "password": PASSWORD}).json()["csrf_token"]
        assert elsewhere.post("/api/login", json={"email": email, "password": PASSWORD}).status_code == 200
        assert elsewhere.get("/api/me").status_code == 200
        changed = here.post(
            "/api/me/password",
            json={"current_password": PASSWORD, "new_password": "another long password"},
            headers={"x-csrf-token": csrf},
        )
        assert changed.status_code == 204
        assert here.get("/api/me").status_code == 200  # this session goes on
        ended = elsewhere.get("/api/me")
        assert ended.status_code == 401 and ended.json()["error"]["code"] == "not_signed_in"
        assert here.post("/api/login", json={"email": email, "password": PASSWORD}).status_code == 401
        assert (
            here.post("/api/login", json={"email": email, "password": "another long password"}).status_code
            == 200
        )


# ---- settings -----------------------------------------------------------------------------------


def test_a_setting_out_of_range_stops_the_server_with_one_line(closed: Server) -> None:
    env = {**closed.env, "CHATGATE_DEFAULT_TPM": "100000000000"}
    result = subprocess.run(
        [sys.executable, "-m", "chatgate", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "chatgate: CHATGATE_DEFAULT_TPM must be a whole number from 1 to 2,000,000,000 (got 100,000,000,000)."
    ]


def test_an_idle_connection_outlives_the_sdks_own_idle_limit(closed: Server) -> None:
    """The OpenAI and Anthropic SDKs keep an idle connection 5 s. A server that closed its side at 5 s
    (uvicorn's default) raced the SDK's next request on it, which failed with "Server disconnected
    without sending a response". Here a connection idles past the SDK's limit and still answers."""
    idle = openai._constants.DEFAULT_CONNECTION_LIMITS.keepalive_expiry
    assert idle is not None
    host, port = closed.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200
        first = conn.sock
        time.sleep(idle + 1)
        # The same connection (http.client opens another only when it closed this one itself); a
        # server that had closed its side makes this raise RemoteDisconnected.
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200 and conn.sock is first
    finally:
        conn.close()
