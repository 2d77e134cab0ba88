"""The OpenAPI document the server serves is valid OpenAPI 3.1 and true: every operation in it is
called, with answers that succeed and answers that fail, and each answer (status, content type,
headers, body, every event of a stream) is checked against what the document says of it."""

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from openapi_spec_validator import validate
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests.e2e import infra
from tests.e2e.conftest import API_KEY, CHROMIUM, EMBED, FLAGS, PAINTER, SKETCH, SMALL, Server
from tests.e2e.mailbox import link, mailbox, smtp_env, token_of
from tests.e2e.openapi_conformance import Conformance

PREFIXES = ("/v1", "/openai/v1", "/openai")
ANTHROPIC_PREFIXES = ("/v1", "/anthropic/v1")


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    answer = httpx.get(server.base_url + "/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture(scope="module")
def conformance(document: dict[str, Any]) -> Conformance:
    return Conformance(document)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # against the OpenAPI 3.1 schema, raising on the first fault
    assert document["openapi"].startswith("3.1.")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (20, 140, 220)).save(out, format="PNG")
    return out.getvalue()


class Console:
    """A signed-in browser: its session cookie and its CSRF token."""

    def __init__(self, base_url: str, email: str, password: str = "a long password", *, new: bool = True):
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.email, self.password = email, password
        answer = self.http.post(
            "/api/signup" if new else "/api/login", json={"email": email, "password": password}
        )
        assert answer.status_code in (200, 201), answer.text
        self.answer = answer
        self.csrf = answer.json()["csrf_token"]
        self.id: int = answer.json()["user"]["id"]

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers={"x-csrf-token": self.csrf}, **kwargs)


@pytest.fixture(scope="module")
def calls(
    server: Server, conformance: Conformance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[httpx.Response]]:
    """Every operation, called so that it succeeds and so that it fails; each answer is checked."""
    base = server.base_url
    made: list[httpx.Response] = []
    admin_email = unique("openapi-admin")
    server.cli("admin", "create", "--email", admin_email, "--password", "an admin password")
    user = Console(base, unique("openapi-user"))
    admin = Console(base, admin_email, "an admin password", new=False)
    spare = Console(base, unique("openapi-spare"))
    anonymous = httpx.Client(base_url=base, timeout=60)
    made += [user.answer, admin.answer]

    # The console's API, as a user and as an admin.
    made.append(
        anonymous.post("/api/signup", json={"email": user.email, "password": "another password"})
    )  # 409
    made.append(anonymous.post("/api/signup", json={"email": 5, "password": "x"}))  # 400
    made.append(
        anonymous.post("/api/login", json={"email": user.email, "password": "not the password"})
    )  # 401
    made.append(user.send("GET", "/api/me"))
    for path in ("/api/me", "/api/tokens", "/api/usage"):
        made.append(anonymous.get(path))  # 401
    made.append(
        user.send(
            "POST", "/api/me/password", json={"current_password": "wrong", "new_password": "new password 1"}
        )
    )
    made.append(
        user.send(
            "POST", "/api/me/password", json={"current_password": user.password, "new_password": "short"}
        )
    )
    made.append(
        user.send(
            "POST",
            "/api/me/password",
            json={"current_password": user.password, "new_password": "new password 1"},
        )
    )
    made.append(user.http.post("/api/tokens", json={"name": "no csrf"}))  # 403
    issued = user.send("POST", "/api/tokens", json={"name": "openapi", "expires_at": "2099-01-01T00:00:00Z"})
    made.append(issued)
    token_id, key = issued.json()["id"], issued.json()["key"]
    made.append(user.send("POST", "/api/tokens", json={"name": "bad", "quota_cap": -1}))  # 400
    made.append(user.send("GET", "/api/tokens"))
    made.append(user.send("PATCH", f"/api/tokens/{token_id}", json={"name": "renamed"}))
    made.append(user.send("PATCH", "/api/tokens/999999999", json={"name": "nobody's"}))  # 404
    made.append(user.send("GET", "/api/usage/requests?limit=0"))  # 400
    made.append(user.send("GET", "/api/admin/users"))  # 403
    made.append(user.send("GET", "/api/admin/models"))  # 403
    made.append(admin.send("GET", "/api/admin/users?limit=5"))
    made.append(admin.send("GET", "/api/admin/models"))
    made.append(admin.send("POST", f"/api/admin/users/{user.id}/grant", json={"credits": 1000}))
    made.append(admin.send("POST", "/api/admin/users/999999999/grant", json={"credits": 1}))  # 404
    made.append(admin.send("POST", f"/api/admin/users/{spare.id}/disable", json={"disabled": True}))
    made.append(admin.send("POST", "/api/admin/users/999999999/disable", json={"disabled": True}))  # 404
    made.append(admin.send("POST", f"/api/admin/users/{spare.id}/limits", json={"rpm_limit": 1000}))
    made.append(admin.send("POST", f"/api/admin/users/{spare.id}/limits", json={"rpm_limit": 0}))  # 400
    made.append(admin.send("POST", "/api/admin/users/999999999/limits", json={"rpm_limit": None}))  # 404
    invite = admin.send("POST", "/api/admin/invites", json={"uses": 2, "days": 1, "note": "openapi"})
    made += [invite, admin.send("POST", "/api/admin/invites", json={"uses": 0})]  # 201, 400
    made.append(admin.send("GET", "/api/admin/invites"))
    made.append(admin.send("GET", "/api/admin/invites?limit=0"))  # 400
    made.append(admin.send("DELETE", f"/api/admin/invites/{invite.json()['id']}"))
    made.append(admin.send("DELETE", "/api/admin/invites/999999999"))  # 404
    made.append(anonymous.get("/api/signup"))  # the sign-up mode

    # The OpenAI-compatible API, under each prefix, with the user's token (and the master key).
    bearer = {"authorization": f"Bearer {key}"}
    chat = {"model": SMALL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    for prefix in PREFIXES:
        api = httpx.Client(base_url=base + prefix, headers=bearer, timeout=120)
        made.append(api.get("/models"))
        made.append(anonymous.get(prefix + "/models"))  # 401
        made.append(api.get(f"/models/{SMALL}"))
        made.append(api.get("/models/no-such-model"))  # 404
        made.append(api.get("/usage"))
        made.append(anonymous.get(prefix + "/usage", headers={"authorization": "Bearer sk-wrong"}))  # 401
        made.append(api.post("/chat/completions", json=chat))
        with api.stream("POST", "/chat/completions", json={**chat, "stream": True}) as streamed:
            streamed.read()
            made.append(streamed)
        made.append(api.post("/chat/completions", json={**chat, "temperature": 9}))  # 400
        made.append(api.post("/chat/completions", json={**chat, "model": "no-such-model"}))  # 404
        made.append(api.post("/chat/completions", json={**chat, "model": EMBED}))  # 400 model_not_supported
        made.append(api.post("/embeddings", json={"model": EMBED, "input": ["hello", "world"]}))
        made.append(
            api.post("/embeddings", json={"model": EMBED, "input": "hi", "encoding_format": "base64"})
        )
        made.append(api.post("/embeddings", json={"model": SMALL, "input": "hi"}))  # 400 model_not_supported
        made.append(api.post("/embeddings", json={"model": "no-such-model", "input": "hi"}))  # 404
        made.append(api.post("/embeddings", json={"model": EMBED, "input": ""}))  # 400
        made.append(
            api.post("/images/generations", json={"model": PAINTER, "prompt": "a dot", "size": "256x256"})
        )
        made.append(
            api.post("/images/generations", json={"model": PAINTER, "prompt": "a dot", "n": 9})
        )  # 400
        uploaded = api.post(
            "/files", files={"file": ("dot.png", png(), "image/png")}, data={"purpose": "vision"}
        )
        made.append(uploaded)
        made.append(api.post("/files", files={"file": ("no.png", b"not an image", "image/png")}))  # 400
        made.append(anonymous.get(f"/files/{uploaded.json()['id']}"))
        made.append(anonymous.get("/files/file-" + "x" * 32))  # 404
        made.append(api.get("/files"))
        made.append(anonymous.get(prefix + "/files"))  # 401
        made.append(api.delete(f"/files/{uploaded.json()['id']}"))
        made.append(api.delete("/files/file-" + "x" * 32))  # 404
        # The Responses API: a response (kept), its events, the stored response and its input items.
        ask = {"model": SMALL, "input": "Say hi.", "max_output_tokens": 4}
        created = api.post("/responses", json=ask)
        made.append(created)
        response_id = created.json()["id"]
        with api.stream("POST", "/responses", json={**ask, "stream": True}) as streamed:
            streamed.read()
            made.append(streamed)
        made.append(api.post("/responses", json={**ask, "temperature": 9}))  # 400
        made.append(api.post("/responses", json={**ask, "previous_response_id": "resp_none"}))  # 404
        made.append(api.get(f"/responses/{response_id}"))
        made.append(api.get("/responses/resp_none"))  # 404
        made.append(api.get(f"/responses/{response_id}/input_items", params={"limit": 1, "order": "asc"}))
        made.append(api.get(f"/responses/{response_id}/input_items", params={"after": "msg_none"}))  # 400
        made.append(api.delete(f"/responses/{response_id}"))
        made.append(api.delete(f"/responses/{response_id}"))  # 404: gone
        api.close()
    # Anthropic's Messages API, under each of its prefixes: the token in x-api-key (or as a bearer).
    message = {"model": SMALL, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}
    for prefix in ANTHROPIC_PREFIXES:
        claude = httpx.Client(
            base_url=base + prefix, headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, timeout=120
        )
        made.append(claude.post("/messages", json=message))
        with claude.stream("POST", "/messages", json={**message, "stream": True}) as streamed:
            streamed.read()
            made.append(streamed)
        made.append(
            anonymous.post(prefix + "/messages", headers=bearer, json={**message, "max_tokens": 0})
        )  # 400
        made.append(
            claude.post("/messages", json={**message, "model": "no-such-model"})
        )  # 404 not_found_error
        made.append(anonymous.post(prefix + "/messages", json=message))  # 401
        made.append(
            claude.post("/messages/count_tokens", json={"model": SMALL, "messages": message["messages"]})
        )
        made.append(claude.post("/messages/count_tokens", json={"model": SMALL}))  # 400
        claude.close()
    # A prompt longer than the planning model's context (this server's is 2,048 tokens).
    made.append(
        anonymous.post(
            "/v1/images/generations",
            headers=bearer,
            json={"model": SKETCH, "prompt": "a red dot on a blue square " * 1100, "size": "256x256"},
        )
    )
    assert made[-1].status_code == 400 and made[-1].json()["error"]["code"] == "context_length_exceeded"
    # A token capped below what a drawing could cost: refused before any work (429 insufficient_quota).
    capped = user.send("POST", "/api/tokens", json={"name": "capped", "quota_cap": 1}).json()["key"]
    made.append(
        anonymous.post(
            "/v1/images/generations",
            headers={"authorization": f"Bearer {capped}"},
            json={"model": SKETCH, "prompt": "a dot", "size": "256x256"},
        )
    )
    assert made[-1].status_code == 429 and made[-1].json()["error"]["code"] == "insufficient_quota"
    # The same in Anthropic's shape: 402 billing_error.
    made.append(
        anonymous.post(
            "/anthropic/v1/messages", headers={"x-api-key": capped}, json={**message, "max_tokens": 64}
        )
    )
    assert made[-1].status_code == 402 and made[-1].json()["error"]["type"] == "billing_error"
    master = httpx.Client(base_url=base, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60)
    made.append(master.get("/v1/usage"))  # the unmetered key: credits_left is null

    made += business(base, user, admin, spare, anonymous, chat)
    made += email_links(tmp_path_factory.mktemp("openapi-mail"))

    made.append(user.send("DELETE", f"/api/tokens/{token_id}"))
    made.append(user.send("DELETE", "/api/tokens/999999999"))  # 404
    made.append(user.send("GET", "/api/usage"))
    made.append(user.send("GET", "/api/usage/requests?limit=5"))
    made.append(user.send("POST", "/api/logout"))
    made.append(user.send("POST", "/api/logout"))  # 401: the session has ended
    made.append(anonymous.get("/files/x", params={"download": "maybe"}))  # 400

    # Operators' endpoints and the reference.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        made.append(anonymous.get(path))  # /metrics: 401 without the master key
    for path in ("/healthz", "/readyz", "/metrics"):
        made.append(master.get(path))  # the detail
    for client in (user.http, admin.http, spare.http, anonymous, master):
        client.close()
    yield made


def business(
    base: str, user: Console, admin: Console, spare: Console, anonymous: httpx.Client, chat: dict[str, Any]
) -> list[httpx.Response]:
    """Top-up codes, price groups, pricing, deployments, the admin's logs, deleting an account."""
    made: list[httpx.Response] = []
    made.append(admin.send("POST", "/api/admin/codes", json={"credits": 100, "count": 2, "note": "openapi"}))
    first, second = made[-1].json()["codes"]
    made.append(admin.send("POST", "/api/admin/codes", json={"credits": 0}))  # 400
    made.append(admin.send("GET", "/api/admin/codes", params={"state": "unused", "limit": 5}))
    newest = made[-1].json()["data"][0]["id"]  # the second code
    made.append(admin.send("GET", "/api/admin/codes", params={"limit": 0}))  # 400
    made.append(admin.send("GET", "/api/admin/codes.csv"))
    made.append(admin.send("GET", "/api/admin/codes.csv", params={"state": "spent"}))  # 400
    made.append(user.send("POST", "/api/redeem", json={"code": first}))
    made.append(user.send("POST", "/api/redeem", json={"code": first}))  # 409
    made.append(admin.send("POST", f"/api/admin/codes/{newest}/disable"))
    made.append(user.send("POST", "/api/redeem", json={"code": second}))  # 403: disabled
    made.append(admin.send("POST", "/api/admin/codes/999999999/disable"))  # 404
    made.append(user.send("GET", "/api/pricing"))
    made.append(anonymous.get("/api/pricing"))  # 401
    made.append(user.send("POST", "/api/pricing/estimate", json=chat))
    made.append(user.send("POST", "/api/pricing/estimate", json={**chat, "model": "no-such-model"}))  # 404
    group = f"openapi-{uuid.uuid4().hex[:8]}"
    made.append(admin.send("GET", "/api/admin/groups"))
    made.append(user.send("GET", "/api/admin/groups"))  # 403
    made.append(admin.send("POST", "/api/admin/groups", json={"name": group, "multiplier": 1.5}))
    made.append(admin.send("POST", "/api/admin/groups", json={"name": group}))  # 409
    made.append(admin.send("PATCH", f"/api/admin/groups/{group}", json={"multiplier": 1.25}))
    made.append(admin.send("PATCH", "/api/admin/groups/no-such-group", json={"multiplier": 1}))  # 404
    made.append(admin.send("POST", f"/api/admin/users/{spare.id}/group", json={"group": group}))
    made.append(admin.send("POST", f"/api/admin/users/{spare.id}/group", json={"group": "nope"}))  # 404
    made.append(admin.send("GET", "/api/admin/deployments"))
    deployment = quote(next(d["id"] for d in made[-1].json()["data"] if d["model"] == SMALL), safe="")
    made.append(user.send("GET", "/api/admin/deployments"))  # 403
    made.append(admin.send("POST", f"/api/admin/deployments/{deployment}/test"))
    made.append(admin.send("POST", "/api/admin/deployments/no-such/test"))  # 404
    # Enabled again, as it is: the session's server keeps serving every other test.
    made.append(admin.send("POST", f"/api/admin/deployments/{deployment}/disable", json={"disabled": False}))
    made.append(admin.send("POST", "/api/admin/deployments/no-such/disable", json={"disabled": True}))  # 404
    made.append(admin.send("GET", "/api/admin/requests", params={"limit": 5}))
    made.append(admin.send("GET", "/api/admin/requests", params={"limit": 0}))  # 400
    made.append(admin.send("GET", "/api/admin/requests.csv", params={"model": SMALL}))
    made.append(admin.send("GET", "/api/admin/requests.csv", params={"status": "odd"}))  # 400
    made.append(admin.send("GET", "/api/admin/audit", params={"limit": 5}))
    made.append(admin.send("GET", "/api/admin/audit", params={"limit": 0}))  # 400
    leaver = Console(base, unique("openapi-leaver"))
    made.append(leaver.send("DELETE", "/api/me", json={"password": "not the password"}))  # 403
    made.append(leaver.send("DELETE", "/api/me", json={"password": leaver.password}))
    leaver.http.close()
    return made


def email_links(workdir: Path) -> list[httpx.Response]:
    """Sign-up with a confirmed address and a password reset, on a server of their own that sends
    its links to a real SMTP server on loopback."""
    made: list[httpx.Response] = []
    catalogue = 'models:\n  - {name: m, deployment: {kind: openai_compatible, base_url: "http://127.0.0.1:9/v1", model: m}}\n'
    with mailbox() as box:
        with (
            infra.chatgate(workdir, catalogue, **smtp_env(box)) as server,
            httpx.Client(base_url=server.base_url) as http,
        ):
            email, password = unique("openapi-mail"), "a long password"
            made.append(http.post("/api/signup", json={"email": email, "password": password}))  # pending
            made.append(http.post("/api/login", json={"email": email, "password": password}))  # 403
            made.append(http.post("/api/verify/resend", json={"email": email}))
            made.append(http.post("/api/verify/resend", json={"email": 7}))  # 400
            token = token_of(link(box.wait(email)[0]))
            made.append(http.post("/api/verify", json={"token": token}))
            made.append(http.post("/api/verify", json={"token": token}))  # 400: used
            made.append(http.post("/api/password/forgot", json={"email": email}))
            made.append(http.post("/api/password/forgot", json={}))  # 400
            token = token_of(link(box.wait(email, 3)[-1]))
            made.append(
                http.post("/api/password/reset", json={"token": token, "new_password": "a new password"})
            )
            made.append(http.post("/api/password/reset", json={"token": token, "new_password": "again pass"}))
    return made


def test_every_answer_is_as_the_document_says(calls: list[httpx.Response], conformance: Conformance) -> None:
    for response in calls:
        conformance.check(response)


def test_every_operation_was_seen_to_succeed_and_to_fail(
    calls: list[httpx.Response], conformance: Conformance
) -> None:
    """Each operation answered with success, and with an error too wherever one can be caused from
    outside (not a 500, a 413, an upstream's refusal or a limit)."""
    for response in calls:
        conformance.check(response)
    missing = []
    for method, template, operation in conformance.operations():
        statuses = conformance.seen.get((method, template), set())
        if not any(200 <= s < 300 for s in statuses):
            missing.append(f"{method} {template}: never seen to succeed")
        causable = {s for s in operation["responses"] if s in ("400", "401", "403", "404", "409")}
        if causable and not any(400 <= s < 500 for s in statuses):
            missing.append(f"{method} {template}: never seen to fail (it documents {sorted(causable)})")
    assert not missing, (
        "operations of /openapi.json the `calls` fixture (tests/e2e/test_openapi.py) does not exercise; "
        "add a call that succeeds and one that fails for each (docs/openapi.md):\n" + "\n".join(missing)
    )


def test_the_docs_page_renders_the_document_from_this_server_alone(server: Server) -> None:
    """In Chromium: /docs lists the operations, links schemas, and loads nothing from anywhere else
    (its Content-Security-Policy allows this server alone, and nothing breaks it)."""
    origin = server.base_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        requested: list[str] = []
        problems: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.on(
            "console", lambda message: message.type in ("error", "warning") and problems.append(message.text)
        )
        page.on("pageerror", lambda error: problems.append(str(error)))
        answer = page.goto(origin + "/docs")
        assert answer is not None and "default-src 'none'" in answer.headers["content-security-policy"]
        expect(page.get_by_role("heading", name="chatgate API")).to_be_visible()
        chat = page.locator("#create_chat_completion")
        expect(chat).to_contain_text("/v1/chat/completions")
        expect(chat).to_contain_text("/openai/chat/completions")  # the other prefixes, once
        expect(chat).to_contain_text("Authorization: Bearer")
        expect(chat).to_contain_text("text/event-stream")
        expect(page.locator("#revoke_token")).to_contain_text("x-csrf-token")
        chat.get_by_role("link", name="ChatCompletionRequest").first.click()
        expect(page.locator("#schema-ChatCompletionRequest")).to_contain_text("messages")
        page.wait_for_load_state("networkidle")
        browser.close()
    assert requested and all(url.startswith(origin + "/") for url in requested), requested
    assert problems == []
