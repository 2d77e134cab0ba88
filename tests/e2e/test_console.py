"""The web console in a real browser (Debian's Chromium, driven by Playwright) against a real server."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e import infra
from tests.e2e.conftest import SMALL
from tests.e2e.infra import ROOT, Server

# Every run saves its screenshots under build/ (ignored by git); `make screenshots` points this at
# docs/screenshots, the ones the README shows, so a test run never rewrites tracked files.
SHOTS = ROOT / os.environ.get("CHATGATE_SCREENSHOTS", "build/screenshots")
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
SKETCH = "sketch-image"
CATALOGUE = f"""
models:
  - name: {SMALL}
    deployment: {{kind: local, asset: smollm2-135m-instruct-q4_1, context_length: 2048, instances: 2}}
  - name: {SKETCH}
    deployment:
      kind: image_generation
      base: {SMALL}
      backend: {{backend: sketch, max_shapes: 4}}
      sizes: ["256x256"]
"""
ADMIN = ("admin@example.com", "admin password 1")
# How long a reply may take to arrive: a bound for a machine shared with other test runs, not a target.
GENERATION_MS = 300_000


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (ROOT / "src/chatgate/console/static/index.html").is_file():
        pytest.fail("the console is not built: run `make test` (it runs npm ci && npm run build)")
    with infra.chatgate(tmp_path_factory.mktemp("console"), CATALOGUE) as running:
        running.cli("admin", "create", "--email", ADMIN[0], "--password", ADMIN[1])
        yield running


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_up(page: Page, base: str, email: str) -> None:
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Sign in to chatgate")).to_be_visible()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()


def sign_in_as_admin(page: Page, base: str) -> None:
    page.goto(base + "/")
    page.get_by_label("Email").fill(ADMIN[0])
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Sign in").click()


def test_sign_up_acquire_try_run_the_code_see_usage_revoke(
    console_server: Server, browser: Browser, tmp_path: Path
) -> None:
    base = console_server.base_url
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    missing: list[str] = []
    page.on("response", lambda response: response.status == 404 and missing.append(response.url))
    page.goto(base + "/")
    page.wait_for_load_state("networkidle")
    icon = page.evaluate("fetch(document.querySelector('link[rel=icon]').href).then((r) => r.status)")
    assert icon == 200
    assert missing == []  # no /favicon.ico, nor anything else, answered 404
    shot(page, "login-desktop")
    sign_up(page, base, "journey@example.com")

    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Acquire").click()
    key = page.get_by_test_id("new-key").inner_text()
    assert key.startswith("sk-")
    expect(page.get_by_role("cell", name="laptop", exact=True)).to_be_visible()
    shot(page, "tokens-desktop")

    page.get_by_role("link", name="Playground").click()
    expect(page.get_by_label("Model")).to_have_value(SMALL)
    page.get_by_label("Max tokens").fill("16")
    page.get_by_role("button", name="Try").click()
    expect(page.get_by_test_id("usage")).to_contain_text(
        "completion", timeout=GENERATION_MS
    )  # the stream ended with its usage
    assert page.get_by_test_id("reply").inner_text().strip()
    page.get_by_role("tab", name="Python (openai)").click()
    code = page.get_by_test_id("code").inner_text()
    assert key in code and base in code
    shot(page, "playground-desktop")

    script = tmp_path / "generated.py"
    script.write_text(code)
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()  # the generated program prints the model's reply

    for language in ("curl", "Python (requests)", "JavaScript (fetch)", "Java (OkHttp)"):
        page.get_by_role("tab", name=language).click()
        assert key in page.get_by_test_id("code").inner_text()

    page.get_by_role("link", name="Usage").click()
    log = page.get_by_test_id("request-log")
    expect(log.get_by_role("row")).to_have_count(3)  # the header, the playground's request, the script's
    expect(log).to_contain_text(SMALL)
    # One day of data: the time axis spans the days either side of it, not years.
    (day,) = [d["date"] for d in page.evaluate("fetch('/api/usage').then((r) => r.json())")["daily"]]
    noon = datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() + 43_200
    chart = page.get_by_role("img", name="Tokens per day")
    low, high = (float(chart.get_attribute(f"data-{end}") or "nan") for end in ("from", "to"))
    assert low < noon < high and high - low <= 3 * 86_400
    credits_left = page.get_by_test_id("credits-left").inner_text()
    shot(page, "usage-desktop")

    page.get_by_role("link", name="Account").click()
    shot(page, "account-desktop")

    page.get_by_role("link", name="Tokens").click()
    # The balance is read afresh, after the playground's and the script's requests spent credits.
    expect(page.get_by_test_id("balance")).to_have_text(f"Balance: {credits_left} credits.")
    expect(page.get_by_role("cell", name=f"{credits_left} left (balance)", exact=False)).to_be_visible()
    page.get_by_role("button", name="Revoke laptop").click()
    expect(page.get_by_text("revoked", exact=True)).to_be_visible()
    with httpx.Client(base_url=base) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": SMALL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers={"authorization": f"Bearer {key}"},
        )
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"
    context.close()


def test_admin_page_and_phone_sized_pages(console_server: Server, browser: Browser) -> None:
    base = console_server.base_url
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in_as_admin(page, base)
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("cell", name="journey@example.com", exact=True)).to_be_visible()
    shot(page, "admin-desktop")
    page.get_by_role("link", name="Deployments").click()
    expect(page.get_by_test_id("deployments")).to_contain_text(SMALL)
    context.close()

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = phone.new_page()
    page.goto(base + "/")
    shot(page, "login-phone")
    sign_up(page, base, "phone@example.com")
    page.get_by_role("button", name="Acquire").click()
    shot(page, "tokens-phone")
    for name in ("Playground", "Usage", "Account"):
        page.get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, f"{name} scrolls sideways on a phone ({width}px)"
        shot(page, f"{name.lower()}-phone")
    phone.close()

    admin_phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = admin_phone.new_page()
    sign_in_as_admin(page, base)
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    shot(page, "admin-phone")
    admin_phone.close()


def test_keyboard_only_sign_in(console_server: Server, browser: Browser) -> None:
    page = browser.new_page(viewport=DESKTOP)
    page.goto(console_server.base_url + "/")
    page.get_by_label("Email").focus()
    page.keyboard.type(ADMIN[0])
    page.keyboard.press("Tab")
    page.keyboard.type(ADMIN[1])
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    page.close()


def test_the_playground_shows_a_drawing_model_s_picture(console_server: Server, browser: Browser) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_up(page, console_server.base_url, "painter@example.com")
    page.get_by_label("Name").fill("easel")
    page.get_by_role("button", name="Acquire").click()
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Model").select_option(SKETCH)
    page.locator("textarea").nth(1).fill("Draw a red car on a grey road under a blue sky.")
    page.get_by_role("button", name="Try").click()
    picture = page.get_by_test_id("reply-media").get_by_role("img")
    expect(picture).to_be_visible(timeout=GENERATION_MS)
    expect(page.get_by_test_id("reply-media").get_by_role("link", name="Download⏬")).to_be_visible()
    assert picture.evaluate("img => img.complete && img.naturalWidth") == 256
    assert "```json" in page.get_by_test_id("reply").inner_text()
    shot(page, "playground-drawing-desktop")

    # Signing out forgets the acquired secret: it was shown only once, and the next session must paste it.
    assert "sk-" in page.evaluate("localStorage.getItem('chatgate.keys')")
    page.get_by_role("link", name="Account").click()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to chatgate")).to_be_visible()
    assert page.evaluate("localStorage.getItem('chatgate.keys')") is None
    page.get_by_label("Email").fill("painter@example.com")
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    page.get_by_role("link", name="Playground").click()
    expect(page.get_by_label("Authorization").locator("option")).to_have_text(["Paste a token…"])
    expect(page.get_by_label("Token", exact=True)).to_be_visible()
    context.close()


def test_the_playground_with_a_wrong_token_and_no_messages(console_server: Server, browser: Browser) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_up(page, console_server.base_url, "paster@example.com")
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Token", exact=True).fill("sk-wrong-token-123")
    page.get_by_label("Token", exact=True).press("Tab")
    expect(page.locator("#toast")).to_have_text("Incorrect API key provided.")  # the server's own message

    remove = page.get_by_role("button", name="Remove message")
    while remove.count():
        remove.first.click()
    for language in ("Python (openai)", "Python (requests)"):
        page.get_by_role("tab", name=language).click()
        code = page.get_by_test_id("code").inner_text()
        assert "sk-wrong-token-123" in code
        compile(code, language, "exec")  # valid Python even with no messages
    page.get_by_role("tab", name="Python (openai)").click()
    assert "messages=[]," in page.get_by_test_id("code").inner_text()
    context.close()


def test_the_playground_speaks_each_api_and_its_code_runs(
    console_server: Server, browser: Browser, tmp_path: Path
) -> None:
    base = console_server.base_url
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_up(page, base, f"apis-{datetime.now(UTC).strftime('%H%M%S%f')}@example.com")
    page.get_by_role("button", name="Acquire").click()
    key = page.get_by_test_id("new-key").inner_text()
    page.get_by_role("link", name="Playground").click()
    expect(page.get_by_label("Model")).to_have_value(SMALL)
    page.get_by_label("Max tokens").fill("16")
    for api, sdk, streamed in (
        ("Responses", "Python (openai)", True),
        ("Messages", "Python (anthropic)", False),
    ):
        page.get_by_label("API").select_option(label=api)
        page.get_by_label("Stream").set_checked(streamed)
        page.get_by_role("button", name="Try").click()
        expect(page.get_by_test_id("usage")).to_contain_text("completion", timeout=GENERATION_MS)
        assert page.get_by_test_id("reply").inner_text().strip()
        for language in ("curl", "Python (requests)", "JavaScript (fetch)", "Java (OkHttp)", sdk):
            page.get_by_role("tab", name=language).click()
            assert key in page.get_by_test_id("code").inner_text()
        # What it cost, read from the answer's usage in this API's shape (a code tab picked since
        # does not bring the estimate back).
        expect(page.get_by_test_id("cost")).to_have_text(re.compile(r"This request cost \d+ credits\."))
        script = tmp_path / f"{api}.py"
        script.write_text(page.get_by_test_id("code").inner_text())
        run = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=dict(os.environ)
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip()
        page.get_by_role("tab", name="Python (requests)").click()
        compile(
            page.get_by_test_id("code").inner_text(), "requests sample", "exec"
        )  # no requests here to run it
    shot(page, "playground-messages-desktop")
    page.get_by_role("link", name="Usage").click()
    per_api = page.get_by_test_id("per-api")
    expect(per_api).to_contain_text("Responses")
    expect(per_api).to_contain_text("Messages")
    expect(per_api).to_contain_text("2 requests")  # the playground's and the SDK script's, for each API
    expect(page.get_by_test_id("request-log")).to_contain_text("Messages")
    context.close()


# Every Content-Security-Policy violation on the page, kept where the test can read it.
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


def test_the_console_keeps_to_its_content_security_policy(console_server: Server, browser: Browser) -> None:
    """Every page, with data in it, under the policy the server sends: nothing is refused, nothing
    loads from elsewhere, and the console cannot be framed."""
    base = console_server.base_url
    with httpx.Client(base_url=base) as http:
        policy = http.get("/").headers["content-security-policy"]
        assert http.get("/").headers["x-frame-options"] == "DENY"
        assert http.get("/assets/app.js").headers["content-security-policy"] == policy
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["frame-ancestors"] == "'none'" and directives["default-src"] == "'self'"
    assert directives["img-src"].startswith("'self' data:") and "'unsafe-inline'" not in policy

    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    refused: list[str] = []
    page.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
    email = f"policy-{datetime.now(UTC).timestamp()}@example.com"
    sign_up(page, base, email)
    page.get_by_role("button", name="Acquire").click()
    key = page.get_by_test_id("new-key").inner_text()
    with httpx.Client(base_url=base, timeout=120) as http:
        answer = http.post(
            "/v1/chat/completions",
            json={"model": SMALL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers={"authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 200
    page.get_by_role("link", name="Usage").click()
    # The per-model and the per-API bar, sized through the CSSOM (a style attribute would be refused).
    expect(page.locator(".bar .fill")).to_have_count(2)
    assert page.locator(".bar .fill").evaluate_all("els => els.map((el) => el.style.width)") == ["100%"] * 2
    expect(page.locator(".chart canvas")).to_have_count(1)
    for name in ("Playground", "Account", "Tokens"):
        page.get_by_role("link", name=name).click()
        heading = name if name != "Tokens" else "API tokens"
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        if name == "Account":
            expect(page.get_by_test_id("limits")).to_contain_text("requests a minute")

    page.get_by_role("link", name="Account").click()
    page.get_by_role("button", name="Sign out").click()
    sign_in_as_admin(page, base)
    page.get_by_role("link", name="Admin").click()
    page.get_by_label("Note").fill("for a friend")
    page.get_by_role("button", name="Create invite code").click()
    assert page.get_by_test_id("new-invite").inner_text().startswith("inv-")
    expect(page.get_by_role("cell", name="for a friend")).to_be_visible()
    page.get_by_role("button", name="Withdraw").first.click()
    expect(page.get_by_role("cell", name="withdrawn").first).to_be_visible()

    assert page.evaluate("window.__violations") == [] and refused == []
    blocked = page.evaluate(
        """new Promise((done) => {
             document.addEventListener("securitypolicyviolation", (e) => done(e.blockedURI), { once: true });
             const image = new Image();
             image.src = "https://tracker.example/pixel.png";
             document.body.append(image);
           })"""
    )
    assert blocked == "https://tracker.example/pixel.png"  # a third-party image is not loaded
    context.close()
