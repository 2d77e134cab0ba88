"""Accounts a public service needs, against a real SMTP server (aiosmtpd) on loopback: email
verification at sign-up, password reset by emailed link, and deleting one's own account."""

import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.e2e import infra
from tests.e2e.infra import Server
from tests.e2e.mailbox import Mailbox, link, mailbox, smtp_env, token_of
from tests.e2e.test_console import DESKTOP, PHONE, shot

FREE = 5000
PASSWORD = "a long enough password"
FAULTY = Path(__file__).with_name("faulty_upstream.py")


@dataclass
class Site:
    server: Server
    mail: Mailbox
    db: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("email")
    upstream_port = infra.free_port()
    catalogue = (
        "models:\n  - name: echo\n    deployment: "
        f'{{kind: openai_compatible, base_url: "http://127.0.0.1:{upstream_port}/v1", model: ok}}\n'
    )
    command = [sys.executable, str(FAULTY), "--port", str(upstream_port)]
    with mailbox() as box, infra.process(command, upstream_port, workdir / "upstream.log"):
        env = {**smtp_env(box), "CHATGATE_FREE_CREDITS": str(FREE)}
        with infra.chatgate(workdir / "chatgate", catalogue, **env) as server:
            yield Site(server, box, workdir / "chatgate" / "data" / "chatgate.db")


def new_address() -> str:
    return f"person-{time.time_ns()}@example.com"


def signed_up_and_verified(site: Site, http: httpx.Client, address: str) -> None:
    assert http.post("/api/signup", json={"email": address, "password": PASSWORD}).status_code == 201
    (message,) = site.mail.wait(address)
    assert http.post("/api/verify", json={"token": token_of(link(message))}).status_code == 200


def test_sign_up_sends_a_link_and_only_a_confirmed_address_signs_in_with_its_free_credits(site: Site) -> None:
    address = new_address()
    with httpx.Client(base_url=site.server.base_url) as http:
        created = http.post("/api/signup", json={"email": address, "password": PASSWORD})
        assert created.status_code == 201 and created.json()["verification_required"] is True
        assert "chatgate_session" not in http.cookies and created.json()["user"]["credits"] == 0
        refused = http.post("/api/login", json={"email": address, "password": PASSWORD})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "email_not_verified"

        (message,) = site.mail.wait(address)
        assert message["From"] == "chatgate <noreply@example.com>" and "Confirm" in message["Subject"]
        url = link(message)
        assert url.startswith(site.server.base_url + "/#/verify?token=")
        done = http.post("/api/verify", json={"token": token_of(url)})
        assert done.status_code == 200 and done.json() == {
            "email": address,
            "email_verified": True,
            "credits": FREE,
        }
        again = http.post("/api/verify", json={"token": token_of(url)})
        assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_link"
        assert http.post("/api/verify", json={"token": "made-up"}).status_code == 400

        me = http.post("/api/login", json={"email": address, "password": PASSWORD})
        assert me.status_code == 200 and me.json()["user"]["credits"] == FREE


def test_resending_is_bounded_and_says_nothing_about_other_addresses(site: Site) -> None:
    address = new_address()
    with httpx.Client(base_url=site.server.base_url) as http:
        http.post("/api/signup", json={"email": address, "password": PASSWORD})
        codes = [http.post("/api/verify/resend", json={"email": address}).status_code for _ in range(3)]
        assert codes == [202, 202, 429]  # three links an hour, the sign-up's included
        assert len(site.mail.wait(address, 3)) == 3
        assert http.post("/api/verify/resend", json={"email": new_address()}).status_code == 202


def test_a_forgotten_password_is_reset_by_a_link_that_works_once_and_ends_every_session(site: Site) -> None:
    address = new_address()
    with (
        httpx.Client(base_url=site.server.base_url) as http,
        httpx.Client(base_url=site.server.base_url) as other,
    ):
        signed_up_and_verified(site, http, address)
        assert other.post("/api/login", json={"email": address, "password": PASSWORD}).status_code == 200
        unknown = new_address()
        assert http.post("/api/password/forgot", json={"email": unknown}).status_code == 202
        assert http.post("/api/password/forgot", json={"email": address.upper()}).status_code == 202
        reset_mail = site.mail.wait(address, 2)[-1]
        assert "Reset" in reset_mail["Subject"] and site.mail.to(unknown) == []
        token = token_of(link(reset_mail))
        short = http.post("/api/password/reset", json={"token": token, "new_password": "short"})
        assert short.status_code == 400 and short.json()["error"]["param"] == "password"
        assert (
            http.post(
                "/api/password/reset", json={"token": token, "new_password": "a brand new one"}
            ).status_code
            == 204
        )
        assert other.get("/api/me").status_code == 401  # the other session ended
        assert (
            http.post(
                "/api/password/reset", json={"token": token, "new_password": "once more please"}
            ).status_code
            == 400
        )
        assert http.post("/api/login", json={"email": address, "password": PASSWORD}).status_code == 401
        assert (
            http.post("/api/login", json={"email": address, "password": "a brand new one"}).status_code == 200
        )


def test_deleting_an_account_revokes_its_tokens_and_removes_its_personal_data_but_keeps_the_books(
    site: Site,
) -> None:
    address = new_address()
    with httpx.Client(base_url=site.server.base_url) as http:
        signed_up_and_verified(site, http, address)
        signed_in = http.post("/api/login", json={"email": address, "password": PASSWORD}).json()
        http.headers["x-csrf-token"] = signed_in["csrf_token"]
        user_id = signed_in["user"]["id"]
        key = http.post("/api/tokens", json={"name": "Ada's laptop"}).json()["key"]
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        auth = {"authorization": f"Bearer {key}"}
        assert http.post("/v1/chat/completions", json=body, headers=auth).status_code == 200

        wrong = http.request("DELETE", "/api/me", json={"password": "not my password"})
        assert wrong.status_code == 403
        assert http.request("DELETE", "/api/me", json={"password": PASSWORD}).status_code == 204
        assert http.get("/api/me").status_code == 401
        assert http.post("/v1/chat/completions", json=body, headers=auth).status_code == 401
        assert http.post("/api/login", json={"email": address, "password": PASSWORD}).status_code == 401
        assert http.post("/api/signup", json={"email": address, "password": PASSWORD}).status_code == 201

    with sqlite3.connect(site.db) as db:
        email, password, deleted = db.execute(
            "SELECT email, password_hash, deleted_at FROM users WHERE id = ?", (user_id,)
        ).fetchone()
        names = {row[0] for row in db.execute("SELECT name FROM api_tokens WHERE user_id = ?", (user_id,))}
        kinds = {row[0] for row in db.execute("SELECT kind FROM ledger WHERE user_id = ?", (user_id,))}
        links = db.execute("SELECT count(*) FROM email_tokens WHERE user_id = ?", (user_id,)).fetchone()[0]
    assert address not in email and password is None and deleted is not None
    assert names == {"deleted"} and links == 0
    assert {"grant", "reserve"} <= kinds  # the books keep the free credits and the charge


def test_in_the_browser_sign_up_confirm_reset_and_delete(site: Site, browser: Browser) -> None:
    address = new_address()
    base = site.server.base_url
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(base + "/")
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    shot(page, "check-email-desktop")
    page.goto(link(site.mail.wait(address)[0]))
    expect(page.get_by_test_id("verified")).to_contain_text(f"balance is {FREE:,} credits")
    page.get_by_role("link", name="Sign in").click()

    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill(address)
    page.get_by_role("button", name="Email me a link").click()
    expect(page.get_by_test_id("forgot-sent")).to_contain_text("on its way")
    page.goto(link(site.mail.wait(address, 2)[-1]))
    page.get_by_label("New password").fill("my new password")
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("heading", name="Sign in to chatgate")).to_be_visible()
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password").fill("my new password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    expect(page.get_by_test_id("balance")).to_have_text(f"Balance: {FREE:,} credits.")

    page.get_by_role("link", name="Account").click()
    page.locator("form.danger-zone").get_by_label("Password").fill("my new password")
    page.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("heading", name="Sign in to chatgate")).to_be_visible()
    with httpx.Client(base_url=base) as http:
        assert (
            http.post("/api/login", json={"email": address, "password": "my new password"}).status_code == 401
        )
    context.close()

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = phone.new_page()
    page.goto(base + "/#/forgot")
    expect(page.get_by_role("heading", name="Forgot your password?")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    shot(page, "forgot-phone")
    phone.close()
