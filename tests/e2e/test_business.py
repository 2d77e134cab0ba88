"""Selling quota: top-up codes (CLI, admin API, redemption exactly once across sessions and
replicas on SQLite and PostgreSQL, their errors and throttling) and price groups (a multiplier on
what requests cost, reserved and settled, recorded; models a group may see; the pricing page)."""

import contextlib
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.e2e import infra
from tests.e2e.conftest import assert_ledger_adds_up
from tests.e2e.infra import Server
from tests.e2e.test_console import DESKTOP, PHONE, shot

ADMIN = ("biz-admin@example.com", "biz admin password")
PASSWORD = "a long enough password"
FREE = 10_000
FAULTY = Path(__file__).with_name("faulty_upstream.py")
CODE = re.compile(r"^CG-[0-9A-HJKMNP-TV-Z]{5}(-[0-9A-HJKMNP-TV-Z]{5}){3}$")
# The faulty upstream's "ok" model always reports 9 prompt and 4 completion tokens.
PRICE = {"prompt": 1_000_000, "completion": 2_000_000}
LIST_COST = 9 * 1 + 4 * 2  # 17 credits at the list price
GENEROUS = {"CHATGATE_REDEEM_PER_USER_HOUR": "10000", "CHATGATE_REDEEM_PER_ADDRESS_HOUR": "100000"}


def catalogue(upstream: str, closed: str) -> str:
    return f"""
models:
  - name: echo
    price: {{prompt: {PRICE["prompt"]}, completion: {PRICE["completion"]}}}
    deployment: {{kind: openai_compatible, base_url: "{upstream}", model: ok}}
  - name: painter
    deployment:
      kind: image_generation
      base: echo
      backend: {{backend: openai_images, base_url: "{closed}", model: gpt-image-1}}
      sizes: ["256x256"]
      image_price: 3000
"""


@dataclass
class Shop:
    a: Server
    b: Server
    text: str
    env: dict[str, str]
    db: Path | None


@contextlib.contextmanager
def shop(workdir: Path, database_url: str | None, *, replicas: int = 2, **extra: str) -> Iterator[Shop]:
    """An upstream and two replicas sharing one database (or one alone: then ``a`` and ``b`` are it)."""
    upstream_port, closed_port = infra.free_port(), infra.free_port()
    text = catalogue(f"http://127.0.0.1:{upstream_port}/v1", f"http://127.0.0.1:{closed_port}/v1")
    db = None
    if database_url is None:
        db = workdir / "shop.db"
        database_url = f"sqlite+aiosqlite:///{db}"
    env = {"CHATGATE_DATABASE_URL": database_url, "CHATGATE_FREE_CREDITS": str(FREE), **extra}
    command = [sys.executable, str(FAULTY), "--port", str(upstream_port)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(infra.process(command, upstream_port, workdir / "upstream.log"))
        a = stack.enter_context(infra.chatgate(workdir / "a", text, **env))
        b = stack.enter_context(infra.chatgate(workdir / "b", text, **env)) if replicas == 2 else a
        a.cli("admin", "create", "--email", ADMIN[0], "--password", ADMIN[1])
        yield Shop(a, b, text, env, db)


@pytest.fixture(scope="module")
def sqlite_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    with shop(tmp_path_factory.mktemp("shop"), None, **GENEROUS) as running:
        yield running


@contextlib.contextmanager
def session(server: Server, email: str, *, sign_up: bool = True) -> Iterator[httpx.Client]:
    """A console session: its cookie, and its CSRF header on every call."""
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        path = "/api/signup" if sign_up else "/api/login"
        signed_in = http.post(path, json={"email": email, "password": PASSWORD if sign_up else ADMIN[1]})
        assert signed_in.status_code in (200, 201), signed_in.text
        http.headers["x-csrf-token"] = signed_in.json()["csrf_token"]
        yield http


def admin(server: Server) -> contextlib.AbstractContextManager[httpx.Client]:
    return session(server, ADMIN[0], sign_up=False)


def new_email() -> str:
    return f"buyer-{time.time_ns()}@example.com"


def create_codes(server: Server, *options: str) -> list[str]:
    out = server.cli("codes", "create", *options).strip().splitlines()
    count = int(options[options.index("--count") + 1]) if "--count" in options else 1
    codes = out[-count:]
    assert all(CODE.match(code) for code in codes), out
    return codes


def me(http: httpx.Client) -> dict[str, Any]:
    user: dict[str, Any] = http.get("/api/me").json()["user"]
    return user


def test_codes_from_the_cli_are_redeemed_once_each_into_the_ledger(sqlite_shop: Shop) -> None:
    codes = create_codes(
        sqlite_shop.a, "--credits", "500", "--count", "3", "--expires-in", "7", "--note", "cli batch"
    )
    assert len(set(codes)) == 3
    listed = sqlite_shop.a.cli("codes", "list", "--state", "unused")
    assert listed.count("cli batch") >= 3 and codes[0][:7] in listed and codes[0] not in listed
    with session(sqlite_shop.a, new_email()) as http:
        key = http.post("/api/tokens", json={"name": "t"}).json()["key"]
        done = http.post("/api/redeem", json={"code": codes[0].lower().replace("-", " ")})  # as typed
        assert done.status_code == 200 and done.json() == {"credits": 500, "balance": FREE + 500}
        usage = httpx.get(
            sqlite_shop.a.base_url + "/v1/usage", headers={"authorization": f"Bearer {key}"}
        ).json()
        assert usage["credits_left"] == FREE + 500
        again = http.post("/api/redeem", json={"code": codes[0]})
        assert again.status_code == 409 and again.json()["error"]["code"] == "code_used"
        unknown = http.post("/api/redeem", json={"code": "CG-00000-00000-00000-00000"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "code_unknown"
        assert http.post("/api/redeem", json={"code": "not a code"}).status_code == 404
        no_csrf = httpx.post(
            sqlite_shop.a.base_url + "/api/redeem", json={"code": codes[1]}, cookies=http.cookies
        )
        assert no_csrf.status_code == 403
        user_id = me(http)["id"]
    assert sqlite_shop.db is not None
    with sqlite3.connect(sqlite_shop.db) as db:
        entries = db.execute(
            "SELECT kind, amount FROM ledger WHERE user_id = ? AND kind = 'redeem'", (user_id,)
        ).fetchall()
        stored = [row[0] for row in db.execute("SELECT code_hash FROM redemption_codes")]
    assert entries == [("redeem", 500)]
    assert not any(code.replace("-", "")[2:] in value for code in codes for value in stored)  # only hashes
    assert_ledger_adds_up(sqlite_shop.a, cli=True)  # `chatgate ledger verify` counts a redeem as granted


def test_disabled_and_expired_codes_each_get_their_own_error(sqlite_shop: Shop) -> None:
    with admin(sqlite_shop.a) as boss:
        made = boss.post("/api/admin/codes", json={"credits": 70, "count": 2, "note": "to spoil"})
        assert made.status_code == 201
        spoiled, stale = made.json()["codes"]
        listed = boss.get("/api/admin/codes", params={"state": "unused", "limit": 200}).json()["data"]
        ids = [c["id"] for c in listed if c["note"] == "to spoil"]
        assert boss.post(f"/api/admin/codes/{max(ids)}/disable").status_code == 204  # the newest: the second
        assert boss.post(f"/api/admin/codes/{max(ids)}/disable").status_code == 404
    assert sqlite_shop.db is not None
    with sqlite3.connect(sqlite_shop.db) as db:
        db.execute(
            "UPDATE redemption_codes SET expires_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (min(ids),)
        )
    with session(sqlite_shop.b, new_email()) as http:
        disabled = http.post("/api/redeem", json={"code": stale})
        assert disabled.status_code == 403 and disabled.json()["error"]["code"] == "code_disabled"
        expired = http.post("/api/redeem", json={"code": spoiled})
        assert expired.status_code == 410 and expired.json()["error"]["code"] == "code_expired"
        assert me(http)["credits"] == FREE
    with admin(sqlite_shop.a) as boss:
        states = {
            c["state"]
            for c in boss.get("/api/admin/codes", params={"limit": 200}).json()["data"]
            if c["note"] == "to spoil"
        }
        assert states == {"expired", "disabled"}
        assert boss.get("/api/admin/codes", params={"state": "expired"}).json()["total"] >= 1
        exported = boss.get("/api/admin/codes.csv", params={"state": "disabled"})
        assert exported.headers["content-type"].startswith("text/csv")
        assert exported.text.splitlines()[0].startswith("id,code,credits,state")
        assert "to spoil" in exported.text
        actions = [
            e["action"] for e in boss.get("/api/admin/audit", params={"action": "code"}).json()["data"]
        ]
        assert "code.disable" in actions and "codes.create" in actions


def at_once(code: str, sessions: tuple[httpx.Client, httpx.Client]) -> tuple[int, int]:
    """One code redeemed by two sessions at the same instant: their two statuses."""
    barrier = threading.Barrier(2)
    statuses = [0, 0]

    def go(index: int) -> None:
        barrier.wait()
        statuses[index] = sessions[index].post("/api/redeem", json={"code": code}).status_code

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses[0], statuses[1]


def race(codes: list[str], first: httpx.Client, second: httpx.Client) -> list[tuple[int, int]]:
    return [at_once(code, (first, second)) for code in codes]


def exactly_once(shop: Shop) -> None:
    codes = create_codes(shop.a, "--credits", "1000", "--count", "12")
    ada, bob = new_email(), new_email()
    with (
        session(shop.a, ada) as ada_on_a,
        session(shop.b, bob) as bob_on_b,
        httpx.Client(base_url=shop.b.base_url, timeout=60) as ada_on_b,
    ):
        login = ada_on_b.post("/api/login", json={"email": ada, "password": PASSWORD}).json()
        ada_on_b.headers["x-csrf-token"] = login["csrf_token"]
        # Two users through two replicas, then one user's two sessions through two replicas.
        results = race(codes[:6], ada_on_a, bob_on_b) + race(codes[6:], ada_on_a, ada_on_b)
        assert all(sorted(pair) == [200, 409] for pair in results), results
        assert me(ada_on_a)["credits"] + me(bob_on_b)["credits"] == 2 * FREE + 12 * 1000
    assert_ledger_adds_up(shop.a)


def test_a_code_raced_by_two_sessions_through_two_replicas_pays_once_on_sqlite(sqlite_shop: Shop) -> None:
    exactly_once(sqlite_shop)


def test_a_code_raced_by_two_sessions_through_two_replicas_pays_once_on_postgres(
    postgres: infra.Postgres, tmp_path: Path
) -> None:
    with shop(tmp_path, postgres.create_database("shop"), **GENEROUS) as on_postgres:
        exactly_once(on_postgres)


def test_redemption_attempts_are_throttled_per_user_and_per_address(tmp_path: Path) -> None:
    limits = {"CHATGATE_REDEEM_PER_USER_HOUR": "3", "CHATGATE_REDEEM_PER_ADDRESS_HOUR": "5"}
    with shop(tmp_path, None, replicas=1, **limits) as small:
        with session(small.a, new_email()) as guesser:
            codes = [
                guesser.post("/api/redeem", json={"code": f"CG-{i:05d}-00000-00000-00000"}).status_code
                for i in range(4)
            ]
            assert codes == [404, 404, 404, 429]
            refused = guesser.post("/api/redeem", json={"code": "CG-99999-00000-00000-00000"})
            assert (
                refused.json()["error"]["code"] == "too_many_requests"
                and int(refused.headers["retry-after"]) >= 1
            )
        with session(small.a, new_email()) as other:  # another account from the same address
            assert [other.post("/api/redeem", json={"code": "x"}).status_code for _ in range(3)] == [
                404,
                404,
                429,
            ]


def chat(server: Server, key: str, model: str = "echo") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_a_group_multiplier_is_reserved_settled_and_recorded_and_its_models_are_all_its_members_see(
    sqlite_shop: Shop,
) -> None:
    email = new_email()
    with session(sqlite_shop.a, email) as http, admin(sqlite_shop.a) as boss:
        user_id = me(http)["id"]
        key = http.post("/api/tokens", json={"name": "t"}).json()["key"]
        assert chat(sqlite_shop.a, key).status_code == 200
        body = {"model": "echo", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        at_list = http.post("/api/pricing/estimate", json=body).json()

        created = boss.post(
            "/api/admin/groups", json={"name": "premium", "multiplier": 2.5, "description": "x2.5"}
        )
        assert created.status_code == 201 and created.json()["multiplier"] == 2.5
        assert boss.post("/api/admin/groups", json={"name": "premium"}).status_code == 409
        assert boss.post("/api/admin/groups", json={"name": "Bad Name"}).status_code == 400
        assert boss.post(f"/api/admin/users/{user_id}/group", json={"group": "premium"}).status_code == 204
        assert boss.post(f"/api/admin/users/{user_id}/group", json={"group": "nope"}).status_code == 404

        assert chat(sqlite_shop.b, key).status_code == 200  # the other replica reads the group with the token
        at_premium = http.post("/api/pricing/estimate", json=body).json()
        assert at_premium["multiplier"] == 2.5 and at_premium["max_credits"] >= 2 * at_list["max_credits"]
        rows = _requests(boss, email, 2)
        assert [r["cost"] for r in rows] == [-(-LIST_COST * 25 // 10), LIST_COST]  # newest first
        assert [r["price_multiplier"] for r in rows] == [2.5, 1.0]
        assert (
            rows[0]["price_prompt"] == PRICE["prompt"] and rows[0]["price_completion"] == PRICE["completion"]
        )

        # Reserved at the multiplier: a balance that covers the most at the list price but not at 2.5x.
        balance = me(http)["credits"]
        grant = at_premium["max_credits"] - 1 - balance
        assert boss.post(f"/api/admin/users/{user_id}/grant", json={"credits": grant}).status_code == 200
        refused = chat(sqlite_shop.a, key)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        assert boss.post(f"/api/admin/users/{user_id}/group", json={"group": "default"}).status_code == 204
        assert chat(sqlite_shop.a, key).status_code == 200

        pricing = http.get("/api/pricing").json()
        assert pricing["group"] == "default" and {p["model"] for p in pricing["data"]} == {"echo", "painter"}
        painter = next(p for p in pricing["data"] if p["model"] == "painter")
        assert painter["per_image"] == 3000 and painter["kind"] == "image_generation"

        assert (
            boss.post(
                "/api/admin/groups", json={"name": "free", "multiplier": 0.5, "models": ["echo"]}
            ).status_code
            == 201
        )
        assert boss.post("/api/admin/groups", json={"name": "typo", "models": ["nope"]}).status_code == 400
        boss.post(f"/api/admin/users/{user_id}/group", json={"group": "free"})
        listed = httpx.get(
            sqlite_shop.a.base_url + "/v1/models", headers={"authorization": f"Bearer {key}"}
        ).json()
        assert [m["id"] for m in listed["data"]] == ["echo"]
        hidden = chat(sqlite_shop.a, key, "painter")
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
        pricing = http.get("/api/pricing").json()
        assert pricing["multiplier"] == 0.5 and [p["model"] for p in pricing["data"]] == ["echo"]
        assert pricing["data"][0]["prompt_per_million"] == PRICE["prompt"] / 2

        groups = {g["name"]: g for g in boss.get("/api/admin/groups").json()["data"]}
        assert groups["free"]["members"] >= 1 and groups["default"]["models"] is None
        changed = boss.patch("/api/admin/groups/free", json={"multiplier": 0.25, "all_models": True}).json()
        assert changed["multiplier"] == 0.25 and changed["models"] is None
        audit = [e["action"] for e in boss.get("/api/admin/audit", params={"action": "group"}).json()["data"]]
        assert audit[:1] == ["group.update"] and "group.create" in audit
        moves = boss.get("/api/admin/audit", params={"action": "user.group"}).json()["data"]
        assert moves[0]["detail"] == {"from": "default", "to": "free"}
    assert_ledger_adds_up(sqlite_shop.a)


def _requests(boss: httpx.Client, email: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:  # a bound on waiting (a request's row is written before its answer ends)
        rows: list[dict[str, Any]] = boss.get("/api/admin/requests", params={"user": email}).json()["data"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_in_the_browser_codes_redeemed_and_a_group_multiplier_moves_the_cost(
    sqlite_shop: Shop, browser: Browser
) -> None:
    base = sqlite_shop.a.base_url
    page = browser.new_context(viewport=DESKTOP).new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(base + "/")
    page.get_by_label("Email").fill(ADMIN[0])
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Admin").click()
    page.get_by_role("link", name="Codes").click()
    page.get_by_label("Credits each").fill("2500")
    page.get_by_label("How many").fill("2")
    page.get_by_label("Note").fill("browser batch")
    page.get_by_role("button", name="Create codes").click()
    made = page.get_by_test_id("new-codes").locator("pre").inner_text().split()
    assert len(made) == 2 and all(CODE.match(code) for code in made)
    expect(page.get_by_test_id("codes")).to_contain_text("browser batch")
    shot(page, "admin-codes-desktop")
    page.get_by_role("link", name="Groups").click()
    page.get_by_label("Group name").fill("triple")
    page.get_by_label("Price multiplier").fill("3")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("groups").locator("tr[data-group='triple']")).to_contain_text(
        "\N{MULTIPLICATION SIGN}3"
    )
    shot(page, "admin-groups-desktop")

    buyer = browser.new_context(viewport=DESKTOP).new_page()
    email = new_email()
    buyer.goto(base + "/")
    buyer.get_by_label("Email").fill(email)
    buyer.get_by_label("Password").fill(PASSWORD)
    buyer.get_by_role("button", name="Create account").click()
    expect(buyer.get_by_test_id("balance")).to_have_text(f"Balance: {FREE:,} credits.")
    buyer.get_by_label("Top-up code").fill(made[0])
    buyer.get_by_role("button", name="Redeem").click()
    expect(buyer.get_by_test_id("balance")).to_have_text(f"Balance: {FREE + 2500:,} credits.")
    buyer.get_by_role("button", name="Acquire").click()
    shot(buyer, "tokens-redeem-desktop")

    buyer.get_by_role("link", name="Playground").click()
    expect(buyer.get_by_label("Model")).to_have_value("echo")
    expect(buyer.get_by_test_id("cost")).to_contain_text("costs at most")
    buyer.get_by_role("button", name="Try").click()
    expect(buyer.get_by_test_id("cost")).to_have_text(f"This request cost {LIST_COST} credits.")

    page.get_by_role("link", name="Users").click()
    page.get_by_label(f"Group of {email}").select_option("triple")
    expect(page.locator("#toast")).to_contain_text("is now in triple")
    buyer.get_by_role("link", name="Pricing").click()
    expect(buyer.get_by_test_id("pricing-group")).to_contain_text("triple (\N{MULTIPLICATION SIGN}3")
    expect(buyer.get_by_test_id("pricing")).to_contain_text("3,000,000")
    shot(buyer, "pricing-desktop")
    buyer.get_by_role("link", name="Playground").click()
    buyer.get_by_role("button", name="Try").click()
    expect(buyer.get_by_test_id("cost")).to_have_text(f"This request cost {3 * LIST_COST} credits.")
    buyer.get_by_role("link", name="Usage").click()
    expect(buyer.get_by_test_id("request-log")).to_contain_text(str(3 * LIST_COST))

    page.get_by_role("link", name="Codes").click()
    page.get_by_label("Show").select_option("used")
    expect(page.get_by_test_id("codes")).to_contain_text(email)

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True).new_page()
    phone.goto(base + "/")
    phone.get_by_label("Email").fill(email)
    phone.get_by_label("Password").fill(PASSWORD)
    phone.get_by_role("button", name="Sign in").click()
    phone.get_by_role("link", name="Pricing").click()
    expect(phone.get_by_test_id("pricing")).to_contain_text("echo")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    shot(phone, "pricing-phone")
