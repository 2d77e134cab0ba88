"""Running it as a business, on two replicas sharing one database: deployment health, disabling by
hand and by policy (and the probe that enables again), the admins' request log and the audit log."""

import contextlib
import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, expect

from chatgate.config import Catalogue
from tests.e2e import infra
from tests.e2e.infra import API_KEY, Server
from tests.e2e.test_console import DESKTOP, PHONE, shot

T = TypeVar("T")
ADMIN = ("ops-admin@example.com", "ops admin password")
FAULTY = Path(__file__).with_name("faulty_upstream.py")


def catalogue(faulty: str, late: str) -> str:
    return f"""
health: {{auto_disable_after: 2, probe_seconds: 1}}
models:
  - name: duo
    retries: 0
    deployments:
      - {{kind: openai_compatible, id: duo-ok, base_url: "{faulty}", model: ok}}
      - {{kind: openai_compatible, base_url: "{faulty}", model: counting}}
  - name: late
    retries: 0
    deployment: {{kind: openai_compatible, id: late, base_url: "{late}", model: ok}}
"""


@dataclass
class Ops:
    a: Server
    b: Server
    faulty_port: int
    late_port: int
    workdir: Path
    env: dict[str, str]
    text: str

    def upstream_counts(self) -> dict[str, int]:
        counts: dict[str, int] = httpx.get(f"http://127.0.0.1:{self.faulty_port}/stats").json()
        return counts


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    workdir = tmp_path_factory.mktemp("ops")
    faulty_port, late_port = infra.free_port(), infra.free_port()
    text = catalogue(f"http://127.0.0.1:{faulty_port}/v1", f"http://127.0.0.1:{late_port}/v1")
    env = {
        "CHATGATE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'shared.db'}",
        "CHATGATE_DEPLOYMENT_SYNC_SECONDS": "0.5",
    }
    command = [sys.executable, str(FAULTY), "--port", str(faulty_port)]
    with (
        infra.process(command, faulty_port, workdir / "faulty.log"),
        infra.chatgate(workdir / "a", text, **env) as a,
        infra.chatgate(workdir / "b", text, **env) as b,
    ):
        a.cli("admin", "create", "--email", ADMIN[0], "--password", ADMIN[1])
        yield Ops(a, b, faulty_port, late_port, workdir, env, text)


@contextlib.contextmanager
def admin_session(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        signed_in = http.post("/api/login", json={"email": ADMIN[0], "password": ADMIN[1]}).json()
        http.headers["x-csrf-token"] = signed_in["csrf_token"]
        yield http


def chat(server: Server, model: str, key: str = API_KEY, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, **extra}
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def eventually(read: Callable[[], T], ready: Callable[[T], bool], seconds: float = 20) -> T:
    """``read()`` once ``ready`` holds for it: a bound on waiting for the replicas' sync, not a timing test."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def deployments(http: httpx.Client) -> dict[str, dict[str, Any]]:
    response = http.get("/api/admin/deployments")
    assert response.status_code == 200, response.text
    return {d["id"]: d for d in response.json()["data"]}


def states_in_memory(server: Server) -> dict[str, str]:
    """What a replica's router does now (its /readyz), by deployment id."""
    models = httpx.get(server.base_url + "/readyz", headers={"authorization": f"Bearer {API_KEY}"}).json()[
        "models"
    ]
    return {d["id"]: d["state"] for entries in models.values() for d in entries}


def test_ids_are_stable_and_figures_add_up_across_replicas(ops: Ops) -> None:
    derived = Catalogue.model_validate(yaml.safe_load(ops.text)).models[0].deployments
    assert derived[0].id == "duo-ok" and derived[1].id is None
    with admin_session(ops.a) as http:
        ids = list(deployments(http))
        assert ids[0] == "duo-ok" and ids[1].startswith("duo/") and ids[2] == "late"
        before = deployments(http)
        for server in (ops.a, ops.b, ops.a, ops.b, ops.a, ops.b):
            assert chat(server, "duo").status_code == 200
        both = ["duo-ok", ids[1]]

        def sent(view: dict[str, dict[str, Any]]) -> int:
            return sum(view[d]["requests"] - before[d]["requests"] for d in both)

        after = eventually(lambda: deployments(http), lambda view: sent(view) == 6)
    assert sent(after) == 6  # three through each replica, counted in one place
    assert all(after[d]["errors"] == 0 and after[d]["state"] == "up" for d in both)
    answered = [after[d] for d in both if after[d]["requests"]]
    assert answered and all(0 < d["p50_ms"] <= d["p95_ms"] for d in answered)
    assert {d["kind"] for d in after.values()} == {"upstream"} and after["duo-ok"]["model"] == "duo"


def test_a_deployment_disabled_on_one_replica_stops_getting_traffic_on_all_and_after_a_restart(
    ops: Ops, tmp_path: Path
) -> None:
    with admin_session(ops.a) as http:
        tested = http.post("/api/admin/deployments/duo-ok/test").json()
        assert tested["ok"] and tested["reply"] == "Hello from upstream." and tested["latency_ms"] >= 0
        assert (
            http.post("/api/admin/deployments/duo-ok/disable", json={"disabled": True}).json()["state"]
            == "disabled"
        )
        assert (
            eventually(lambda: states_in_memory(ops.b), lambda s: s["duo-ok"] == "disabled")["duo-ok"]
            == "disabled"
        )
        before = ops.upstream_counts()
        for server in (ops.a, ops.b) * 4:
            assert chat(server, "duo").status_code == 200
        after = ops.upstream_counts()
        assert after.get("ok", 0) == before.get("ok", 0)  # the router never chose it
        assert after["counting"] == before.get("counting", 0) + 8
        # A disabled deployment can still be tested.
        assert http.post("/api/admin/deployments/duo-ok/test").json()["ok"]

        # A replica started afresh reads the state before its first request.
        with infra.chatgate(tmp_path / "c", ops.text, **ops.env) as c:
            assert states_in_memory(c)["duo-ok"] == "disabled"

        assert (
            http.post("/api/admin/deployments/duo-ok/disable", json={"disabled": False}).json()["state"]
            == "up"
        )
        assert eventually(lambda: states_in_memory(ops.b), lambda s: s["duo-ok"] == "up")["duo-ok"] == "up"
        actions = [e["action"] for e in http.get("/api/admin/audit?action=deployment.").json()["data"]]
        assert actions[:2] == ["deployment.enable", "deployment.disable"]
        unknown = http.post("/api/admin/deployments/nope/test")
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "id"


def test_a_failing_deployment_is_disabled_automatically_and_the_probe_enables_it_again(ops: Ops) -> None:
    for _ in range(2):  # nothing listens on its port yet: two failures in a row
        assert chat(ops.a, "late").status_code == 502
    refused = chat(ops.a, "late")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
    with admin_session(ops.b) as http:
        view = eventually(lambda: deployments(http), lambda v: v["late"]["state"] == "disabled")
        assert view["late"]["automatic"] and "2 failed requests in a row" in view["late"]["reason"]
        assert view["late"]["errors"] >= 2 and "upstream_error" in view["late"]["last_error"]
        failed = http.post("/api/admin/deployments/late/test").json()
        assert not failed["ok"] and failed["error"].startswith("upstream_error")
        assert "disabled automatically" in ops.a.log.read_text()

        # The upstream comes back: the probe finds it answering and enables it.
        command = [sys.executable, str(FAULTY), "--port", str(ops.late_port)]
        with infra.process(command, ops.late_port, ops.workdir / "late.log"):
            assert eventually(lambda: chat(ops.a, "late").status_code, lambda s: s == 200) == 200
            assert eventually(lambda: chat(ops.b, "late").status_code, lambda s: s == 200) == 200
        entries = http.get("/api/admin/audit?action=deployment.auto").json()["data"]
        assert {(e["action"], e["actor"], e["target"]) for e in entries} >= {
            ("deployment.auto_disable", "chatgate", "late"),
            ("deployment.auto_enable", "chatgate", "late"),
        }


def new_user(server: Server, email: str) -> str:
    return server.cli("keys", "create", "--user", email, "--name", "ops").strip().splitlines()[-1]


def test_the_request_log_of_every_user_filters_pages_and_exports(ops: Ops) -> None:
    ada, bob = f"ada-{time.time_ns()}@example.com", f"bob-{time.time_ns()}@example.com"
    ada_key, bob_key = new_user(ops.a, ada), new_user(ops.a, bob)
    for _ in range(3):
        assert chat(ops.a, "duo", ada_key).status_code == 200
    assert chat(ops.b, "duo", bob_key).status_code == 200
    assert chat(ops.b, "=HYPERLINK(1)", bob_key).status_code == 404  # a hostile model name, logged
    with admin_session(ops.a) as http:
        mine = eventually(
            lambda: http.get("/api/admin/requests", params={"user": ada}).json(), lambda p: p["total"] == 3
        )
        assert mine["total"] == 3 and {r["email"] for r in mine["data"]} == {ada}
        assert mine["data"][0]["token"] == ada_key[:10] + "..." and mine["data"][0]["model"] == "duo"
        assert http.get("/api/admin/requests", params={"token": ada_key[:10]}).json()["total"] == 3
        bobs = eventually(
            lambda: http.get("/api/admin/requests", params={"user": bob}).json(), lambda p: p["total"] == 2
        )
        assert [r["status"] for r in bobs["data"]] == ["error", "ok"]
        errors = http.get("/api/admin/requests", params={"user": bob, "status": "error"}).json()
        assert errors["total"] == 1 and errors["data"][0]["error_code"] == "model_not_found"
        first, second = (
            http.get("/api/admin/requests", params={"user": ada, "limit": 2, "offset": offset}).json()
            for offset in (0, 2)
        )
        assert len(first["data"]) == 2 and len(second["data"]) == 1
        assert first["data"][1]["trace_id"] != second["data"][0]["trace_id"]
        stamp = mine["data"][-1]["time"]
        after = http.get("/api/admin/requests", params={"user": ada, "since": stamp}).json()["total"]
        before = http.get("/api/admin/requests", params={"user": ada, "until": stamp}).json()["total"]
        assert after == 3 and before == 0

        exported = http.get("/api/admin/requests.csv", params={"user": bob})
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [r["email"] for r in rows] == [bob, bob]
        assert rows[0]["model"] == "'=HYPERLINK(1)"  # a spreadsheet shows it as text, never runs it
        everything = list(csv.DictReader(io.StringIO(http.get("/api/admin/requests.csv").text)))
        assert len(everything) == http.get("/api/admin/requests").json()["total"]

        bad = http.get("/api/admin/requests", params={"user": "nobody@example.com"})
        assert bad.status_code == 404 and bad.json()["error"]["param"] == "user"
        assert http.get("/api/admin/requests", params={"status": "lost"}).status_code == 400
    with httpx.Client(base_url=ops.a.base_url) as stranger:
        stranger.post(
            "/api/signup", json={"email": f"s-{time.time_ns()}@example.com", "password": "a long password"}
        )
        assert stranger.get("/api/admin/requests").status_code == 403
        assert stranger.get("/api/admin/audit").status_code == 403


def test_the_audit_log_says_who_did_what_and_when(ops: Ops) -> None:
    email = f"carol-{time.time_ns()}@example.com"
    new_user(ops.a, email)
    ops.a.cli("quota", "grant", "--user", email, "--credits", "500")
    with admin_session(ops.a) as http:
        users = http.get("/api/admin/users", params={"limit": 500}).json()["data"]
        carol = next(u for u in users if u["email"] == email)
        assert http.post(f"/api/admin/users/{carol['id']}/grant", json={"credits": 1234}).status_code == 200
        assert (
            http.post(f"/api/admin/users/{carol['id']}/disable", json={"disabled": True}).status_code == 200
        )
        entries = http.get("/api/admin/audit", params={"limit": 10}).json()["data"]
    mine = [e for e in entries if e["target"] == f"user {carol['id']}"]
    assert [(e["action"], e["actor"], e["actor_email"]) for e in mine] == [
        ("user.disable", "admin", ADMIN[0]),
        ("user.grant", "admin", ADMIN[0]),
        ("user.grant", "operator", None),
    ]
    assert mine[1]["detail"]["credits"] == 1234 and mine[2]["detail"]["credits"] == 500
    assert all(e["time"] for e in mine) and json.dumps(mine)


def test_in_the_browser_test_and_disable_a_deployment_and_read_the_logs(ops: Ops, browser: Browser) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(ops.a.base_url + "/")
    page.get_by_label("Email").fill(ADMIN[0])
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Admin").click()
    page.get_by_role("link", name="Deployments").click()
    table = page.get_by_test_id("deployments")
    row = table.locator("tr[data-deployment='duo-ok']")
    expect(row).to_contain_text("up")

    row.get_by_role("button", name="Test duo-ok").click()
    expect(page.get_by_test_id("test-result")).to_contain_text("answered")
    expect(page.get_by_test_id("test-result")).to_contain_text("Hello from upstream.")
    row.get_by_role("button", name="Disable duo-ok").click()
    expect(row.get_by_text("disabled", exact=True)).to_be_visible()
    eventually(lambda: states_in_memory(ops.b), lambda s: s["duo-ok"] == "disabled")
    before = ops.upstream_counts().get("ok", 0)
    for server in (ops.a, ops.b) * 3:
        assert chat(server, "duo").status_code == 200
    assert ops.upstream_counts().get("ok", 0) == before  # neither replica's router chose it
    page.get_by_role("button", name="Refresh").click()
    expect(row.get_by_text("disabled", exact=True)).to_be_visible()
    shot(page, "admin-deployments-desktop")
    row.get_by_role("button", name="Enable duo-ok").click()
    expect(row.get_by_text("up", exact=True)).to_be_visible()

    page.get_by_role("link", name="Requests").click()
    log = page.get_by_test_id("admin-request-log")
    expect(log).to_contain_text("duo")
    page.get_by_label("Model").fill("duo")
    page.get_by_label("Status").select_option("ok")
    page.get_by_role("button", name="Filter").click()
    expect(log.locator("tbody tr").first).to_contain_text("ok")
    assert "model=duo" in (page.get_by_test_id("export-csv").get_attribute("href") or "")
    with page.expect_download() as download:
        page.get_by_test_id("export-csv").click()
    assert Path(download.value.path()).read_text().startswith("time,trace_id,user_id,email")
    shot(page, "admin-requests-desktop")

    page.get_by_role("link", name="Audit log").click()
    audit = page.get_by_test_id("audit-log")
    expect(audit).to_contain_text("deployment.disable")
    expect(audit).to_contain_text(ADMIN[0])
    shot(page, "admin-audit-desktop")
    context.close()

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = phone.new_page()
    page.goto(ops.a.base_url + "/")
    page.get_by_label("Email").fill(ADMIN[0])
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Sign in").click()
    for tab, heading in (
        ("Deployments", "Deployments"),
        ("Requests", "Requests of every user"),
        ("Audit log", "Audit log"),
    ):
        page.get_by_role("link", name="Admin").click()
        page.get_by_role("link", name=tab).click()
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, f"{tab} scrolls sideways on a phone ({width}px)"
    page.get_by_role("link", name="Deployments").click()
    expect(page.get_by_test_id("deployments")).to_contain_text("duo-ok")
    shot(page, "admin-deployments-phone")
    phone.close()
