"""Abuse limits against a real server: sign-ups per address, sign-in delays, the bound on password
hashing, per-user limits across tokens, requests at once, live tokens, allow-lists and upload quotas.

The server trusts one proxy, 127.0.0.2: a test that plays a client at some address connects from
127.0.0.2 and names that address in X-Forwarded-For. Anything connecting from 127.0.0.1 is its own
client address, whatever it forwards.
"""

import asyncio
import io
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e import infra
from tests.e2e.conftest import admitted_until_the_limit, faulty_catalogue, well_inside_a_minute
from tests.e2e.infra import Server

PROXY = "127.0.0.2"
PASSWORD = "a long enough password"
QUOTA = 2600  # bytes of uploads per user: two of the test's images, not three
LIMITS = {
    "CHATGATE_TRUSTED_PROXIES": PROXY,
    "CHATGATE_SIGNUPS_PER_HOUR": "5",
    "CHATGATE_DEFAULT_CONCURRENCY": "2",
    "CHATGATE_TOKENS_PER_USER": "3",
    "CHATGATE_LOGIN_FREE_ATTEMPTS": "3",
    "CHATGATE_LOGIN_ADDRESS_FREE_ATTEMPTS": "6",
    "CHATGATE_PASSWORD_HASH_WORKERS": "1",
    "CHATGATE_PASSWORD_HASH_QUEUE": "2",
    "CHATGATE_FILES_USER_QUOTA_BYTES": str(QUOTA),
}


@pytest.fixture(scope="module")
def gate(faulty_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    catalogue = faulty_catalogue(faulty_port, aliases={"fast": ["quick"]}, fast="ok", held="hold")
    vectors = f'{{kind: openai_embeddings, base_url: "http://127.0.0.1:{faulty_port}/v1", model: ok}}'
    catalogue += f"  - name: vectors\n    deployment: {vectors}\n"  # an embedding model
    with infra.chatgate(tmp_path_factory.mktemp("abuse"), catalogue, **LIMITS) as server:
        yield server


_serial = 0


def address() -> str:
    """A client address of its own for each use (documentation range 198.18.0.0/15)."""
    global _serial
    _serial += 1
    return f"198.18.{_serial // 250}.{_serial % 250 + 1}"


def unique(name: str) -> str:
    return f"{name}-{time.time_ns()}@example.com"


def client_at(server: Server, at: str) -> httpx.Client:
    """A client at address ``at``, seen through the trusted proxy."""
    transport = httpx.HTTPTransport(local_address=PROXY)
    return httpx.Client(
        base_url=server.base_url, transport=transport, headers={"x-forwarded-for": at}, timeout=60
    )


class User:
    """A user signed up (from an address of its own) and signed in to the console."""

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.email = unique(name)
        self.http = client_at(server, address())
        response = self.http.post("/api/signup", json={"email": self.email, "password": PASSWORD})
        assert response.status_code == 201, response.text
        self.id: int = response.json()["user"]["id"]
        self.csrf: str = response.json()["csrf_token"]

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, headers={"x-csrf-token": self.csrf}, **kwargs)

    def token(self, **fields: Any) -> str:
        response = self.post("/api/tokens", json={"name": "t", **fields})
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    def limits(self, *options: str) -> str:
        """``chatgate users limits`` for this user: shows them, or sets them."""
        return self.server.cli("users", "limits", "--user", self.email, *options)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def users(gate: Server) -> Iterator[list[User]]:
    made: list[User] = []
    yield made
    for user in made:
        user.close()


def new_user(gate: Server, users: list[User], name: str) -> User:
    user = User(gate, name)
    users.append(user)
    return user


class Admin:
    """An administrator signed in to the console (from an address of its own)."""

    def __init__(self, server: Server) -> None:
        email = unique("admin")
        server.cli("admin", "create", "--email", email, "--password", PASSWORD)
        self.http = client_at(server, address())
        signed_in = self.http.post("/api/login", json={"email": email, "password": PASSWORD})
        assert signed_in.status_code == 200, signed_in.text
        self.csrf = signed_in.json()["csrf_token"]

    def set_limits(self, user: User, **limits: int | None) -> dict[str, Any]:
        response = self.http.post(
            f"/api/admin/users/{user.id}/limits", json=limits, headers={"x-csrf-token": self.csrf}
        )
        assert response.status_code == 200, response.text
        account: dict[str, Any] = response.json()
        return account


@pytest.fixture(scope="module")
def admin(gate: Server) -> Iterator[Admin]:
    signed_in = Admin(gate)
    yield signed_in
    signed_in.http.close()


def api(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=60)


FAST = {"model": "fast", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


# ---- sign-up ----------------------------------------------------------------------------------


def sign_ups(http: httpx.Client, count: int) -> list[httpx.Response]:
    return [
        http.post("/api/signup", json={"email": unique("burst"), "password": PASSWORD}) for _ in range(count)
    ]


def test_sign_ups_from_one_address_stop_at_five_an_hour(gate: Server) -> None:
    with client_at(gate, "203.0.113.10") as http:
        burst = sign_ups(http, 7)
    assert [r.status_code for r in burst] == [201] * 5 + [429] * 2
    refused = burst[-1]
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert "sign-ups from this address" in refused.json()["error"]["message"]
    assert 3500 < int(refused.headers["retry-after"]) <= 3600
    with client_at(gate, "203.0.113.11") as http:
        assert [r.status_code for r in sign_ups(http, 1)] == [201]  # another address has its own five


def test_an_ipv6_client_counts_by_its_64(gate: Server) -> None:
    codes = []
    for host in ("1", "2", "ffff:3", "4", "abcd:5", "6"):
        with client_at(gate, f"2001:db8:aa:1::{host}") as http:
            codes.append(sign_ups(http, 1)[0].status_code)
    assert codes == [201] * 5 + [429]
    with client_at(gate, "2001:db8:aa:2::1") as http:
        assert sign_ups(http, 1)[0].status_code == 201


def test_forwarded_for_from_an_untrusted_peer_is_not_believed(gate: Server) -> None:
    """Straight from 127.0.0.1 (not a trusted proxy): every sign-up counts against 127.0.0.1."""
    codes = []
    for n in range(6):
        with httpx.Client(
            base_url=gate.base_url, headers={"x-forwarded-for": f"203.0.113.{100 + n}"}
        ) as http:
            codes.append(sign_ups(http, 1)[0].status_code)
    assert codes == [201] * 5 + [429]


def test_bad_sign_ups_are_refused_before_they_count(gate: Server) -> None:
    with client_at(gate, "203.0.113.20") as http:
        for _ in range(6):
            bad = http.post("/api/signup", json={"email": "nope", "password": PASSWORD})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "email"
        assert sign_ups(http, 1)[0].status_code == 201
        assert http.get("/api/signup").json() == {"mode": "open"}


# ---- sign-in ----------------------------------------------------------------------------------


def test_sign_in_attempts_wait_longer_after_the_free_ones(gate: Server, users: list[User]) -> None:
    user = new_user(gate, users, "guessed")
    with client_at(gate, address()) as http:

        def log_in(password: str) -> httpx.Response:
            return http.post("/api/login", json={"email": user.email, "password": password})

        assert [log_in("wrong password").status_code for _ in range(3)] == [401] * 3
        throttled = log_in("wrong password")
        assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "too_many_requests"
        assert "sign-in attempts for this account" in throttled.json()["error"]["message"]
        wait = int(throttled.headers["retry-after"])
        assert wait >= 1
        assert log_in(PASSWORD).status_code == 429  # even the right password waits its turn
        time.sleep(wait + 0.2)
        assert log_in(PASSWORD).status_code == 200  # and, in time, gets in: the count starts again
    with client_at(gate, address()) as http:  # (this address has used its own free attempts)
        again = [
            http.post("/api/login", json={"email": user.email, "password": "wrong password"})
            for _ in range(4)
        ]
        assert [r.status_code for r in again] == [401, 401, 401, 429]


def test_sign_in_attempts_from_one_address_wait_whatever_accounts_they_try(
    gate: Server, users: list[User]
) -> None:
    office = new_user(gate, users, "office")
    with client_at(gate, address()) as http:  # many sign-ins that succeed, from one address: no guesses
        signed_in = [
            http.post("/api/login", json={"email": office.email, "password": PASSWORD}) for _ in range(8)
        ]
        assert [r.status_code for r in signed_in] == [200] * 8
    with client_at(gate, address()) as http:
        codes = [
            http.post("/api/login", json={"email": unique(f"nobody{n}"), "password": PASSWORD}).status_code
            for n in range(7)
        ]
        assert codes == [401] * 6 + [429]
        refused = http.post("/api/login", json={"email": unique("nobody"), "password": PASSWORD})
        assert "from this address" in refused.json()["error"]["message"]


def test_a_flood_of_sign_ins_is_refused_past_the_hash_queue_and_the_api_still_answers(
    gate: Server, users: list[User]
) -> None:
    """One password hash at a time and two waiting: the rest of 16 sign-ins at once get a 503 at
    once, and an API call in the middle of the flood is answered."""
    key = new_user(gate, users, "bystander").token()

    async def flood() -> tuple[list[httpx.Response], httpx.Response]:
        transport = httpx.AsyncHTTPTransport(local_address=PROXY)
        async with (
            httpx.AsyncClient(base_url=gate.base_url, transport=transport, timeout=120) as proxied,
            httpx.AsyncClient(base_url=gate.base_url, timeout=120) as plain,
        ):
            logins = [
                proxied.post(
                    "/api/login",
                    json={"email": unique(f"flood{n}"), "password": PASSWORD},
                    headers={"x-forwarded-for": address()},
                )
                for n in range(16)
            ]
            call = plain.get("/v1/models", headers={"authorization": f"Bearer {key}"})
            *answers, models = await asyncio.gather(*logins, call)
            return answers, models

    answers, models = asyncio.run(flood())
    assert models.status_code == 200
    codes = [r.status_code for r in answers]
    assert set(codes) == {401, 503}, codes
    busy = [r for r in answers if r.status_code == 503]
    assert all(r.json()["error"]["code"] == "server_busy" and r.headers["retry-after"] == "1" for r in busy)


# ---- per-user limits ----------------------------------------------------------------------------


def test_requests_per_minute_count_across_all_of_a_users_tokens_and_the_console(
    gate: Server, users: list[User], admin: Admin
) -> None:
    well_inside_a_minute()
    user = new_user(gate, users, "rpm")
    keys = [user.token(), user.token()]  # two console calls: they count too
    assert admin.set_limits(user, rpm_limit=5)["rpm_limit"] == 5
    audit = admin.http.get("/api/admin/audit", params={"action": "user.limits"}).json()["data"]
    assert any(e["target"] == f"user {user.id}" and e["detail"] == {"rpm_limit": 5} for e in audit)
    codes = []
    for n in range(5):
        with api(gate, keys[n % 2]) as http:
            codes.append(http.post("/v1/chat/completions", json=FAST).status_code)
    assert codes == [200, 200, 200, 429, 429]
    with api(gate, keys[0]) as http:
        refused = http.post("/v1/chat/completions", json=FAST)
    assert "requests per minute on this account" in refused.json()["error"]["message"]
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert "rpm=5 tpm=1000000 (default) concurrency=2 (default)" in user.limits()
    assert "rpm=600 (default)" in user.limits("--rpm", "default")


def test_tokens_per_minute_count_across_all_of_a_users_tokens(
    gate: Server, users: list[User], admin: Admin
) -> None:
    user = new_user(gate, users, "tpm")
    keys = [user.token(), user.token(), user.token()]
    admin.set_limits(user, tpm_limit=30)
    well_inside_a_minute()
    responses = []
    for n in range(6):
        with api(gate, keys[n % 3]) as http:
            responses.append(http.post("/v1/chat/completions", json=FAST))
    admitted_until_the_limit(responses, 30)
    assert "tokens per minute on this account" in responses[-1].json()["error"]["message"]


def test_requests_at_once_are_limited_per_user_on_every_route(gate: Server, users: list[User]) -> None:
    user = new_user(gate, users, "atonce")
    first, second = user.token(), user.token()
    body = {**FAST, "model": "held", "stream": True}
    with api(gate, first) as one, api(gate, second) as two:
        with (
            one.stream("POST", "/v1/chat/completions", json=body) as a,
            two.stream("POST", "/v1/chat/completions", json=body) as b,
        ):
            assert a.status_code == b.status_code == 200
            lines = [a.iter_lines(), b.iter_lines()]  # kept: an iterator let go closes its stream
            assert all(next(line).startswith("data: ") for line in lines)  # both running
            refused = one.get("/v1/models")
            assert refused.status_code == 429
            assert "at most 2 may run at a time" in refused.json()["error"]["message"]
            assert user.http.get("/api/tokens").status_code == 429  # the console counts too
            with httpx.Client(
                base_url=gate.base_url, headers={"authorization": f"Bearer {infra.API_KEY}"}
            ) as op:
                assert op.get("/v1/models").status_code == 200  # the master key is not limited
        # Both streams closed by the client: their slots come back once chatgate has seen them go.
        deadline = time.monotonic() + 20
        while (status := one.get("/v1/models").status_code) == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200


def test_every_authenticated_route_counts_against_the_users_requests_per_minute(
    gate: Server, users: list[User], admin: Admin
) -> None:
    well_inside_a_minute()
    user = new_user(gate, users, "routes")
    key = user.token()  # the first request of the minute
    admin.set_limits(user, rpm_limit=5)
    with api(gate, key) as http:
        codes = [
            http.get("/v1/models").status_code,
            http.get("/v1/models/fast").status_code,
            http.get("/v1/usage").status_code,
            http.get("/v1/files").status_code,
        ]
        assert codes == [200] * 4
        assert http.get("/v1/usage").status_code == 429
    assert user.http.get("/api/me").status_code == 429  # the console's calls are the same user's


def test_a_refused_request_costs_nothing_and_gives_its_slot_back(
    gate: Server, users: list[User], admin: Admin
) -> None:
    user = new_user(gate, users, "refused")
    key = user.token(quota_cap=3)  # less than any request's bound
    admin.set_limits(user, concurrency_limit=1)
    with api(gate, key) as http:
        for _ in range(5):
            refused = http.post("/v1/chat/completions", json=FAST)
            assert refused.json()["error"]["code"] == "insufficient_quota"
        report = http.get("/v1/usage").json()  # admitted: every refusal gave its slot back
    assert report["credits_used"] == 0 and report["credits_left"] == 3


def test_an_embeddings_request_takes_one_slot_and_its_model_may_be_allowed_by_name(
    gate: Server, users: list[User], admin: Admin
) -> None:
    user = new_user(gate, users, "vectors")
    admin.set_limits(user, concurrency_limit=1)  # admitted twice, a request would refuse itself
    key = user.token(allowed_models=["vectors"])
    with api(gate, key) as http:
        for _ in range(3):
            answer = http.post("/v1/embeddings", json={"model": "vectors", "input": "hi"})
            assert answer.status_code == 200, answer.text
        refused = http.post("/v1/chat/completions", json=FAST)
        assert refused.json()["error"]["code"] == "token_mismatched"  # not on the token's allow-list
        assert http.get("/v1/usage").json()["requests"] == 4


def test_admins_set_limits_within_the_shared_ranges(gate: Server, users: list[User], admin: Admin) -> None:
    user = new_user(gate, users, "ranged")
    headers = {"x-csrf-token": admin.csrf}
    for field, value in (("rpm_limit", 0), ("tpm_limit", 100_000_000_000), ("concurrency_limit", -1)):
        refused = admin.http.post(f"/api/admin/users/{user.id}/limits", json={field: value}, headers=headers)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field
    assert admin.set_limits(user, rpm_limit=7)["rpm_limit"] == 7
    assert admin.set_limits(user, rpm_limit=None)["rpm_limit"] is None  # the server's default again
    assert (
        user.http.post("/api/admin/users/1/limits", json={}, headers={"x-csrf-token": user.csrf}).status_code
        == 403
    )


# ---- tokens -------------------------------------------------------------------------------------


def test_a_user_holds_at_most_so_many_live_tokens(gate: Server, users: list[User]) -> None:
    user = new_user(gate, users, "hoarder")
    made = [user.post("/api/tokens", json={"name": f"t{n}"}) for n in range(4)]
    assert [r.status_code for r in made] == [201, 201, 201, 409]
    assert made[-1].json()["error"]["code"] == "too_many_tokens"
    revoked = user.http.delete(f"/api/tokens/{made[0].json()['id']}", headers={"x-csrf-token": user.csrf})
    assert revoked.status_code == 200
    assert user.post("/api/tokens", json={"name": "again"}).status_code == 201
    with pytest.raises(Exception) as refused:
        gate.cli("keys", "create", "--user", user.email)
    stderr = refused.value.stderr  # type: ignore[attr-defined]
    assert stderr.strip().splitlines() == [
        "chatgate: This account already has 3 live API tokens, the most it may hold; revoke one first."
    ]


def test_a_tokens_allow_list_holds_catalogue_names_only(gate: Server, users: list[User]) -> None:
    user = new_user(gate, users, "allow")
    unknown = user.post("/api/tokens", json={"name": "t", "allowed_models": ["fast", "gpt-9"]})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "allowed_models[1]"
    many = user.post("/api/tokens", json={"name": "t", "allowed_models": ["fast"] * 65})
    assert many.status_code == 400 and many.json()["error"]["param"] == "allowed_models"
    empty = user.post("/api/tokens", json={"name": "t", "allowed_models": []})
    assert empty.status_code == 400
    made = user.post("/api/tokens", json={"name": "t", "allowed_models": ["quick", "fast", "quick"]})
    assert made.status_code == 201 and made.json()["allowed_models"] == ["quick", "fast"]
    with api(gate, made.json()["key"]) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["fast"]


def test_console_bodies_and_parameters_are_bounded(gate: Server, users: list[User]) -> None:
    user = new_user(gate, users, "bounds")
    cases = [
        (user.post("/api/tokens", json={"name": "x" * 101}), "name"),
        (user.post("/api/tokens", json={"name": "t", "quota_cap": 10**20}), "quota_cap"),
        (user.post("/api/tokens", json={"name": "t", "quota_cap": -1}), "quota_cap"),
        (user.post("/api/tokens", json={"name": "t", "allowed_models": ["x" * 201]}), "allowed_models[0]"),
        (user.http.delete("/api/tokens/abc", headers={"x-csrf-token": user.csrf}), "token_id"),
        (user.http.delete(f"/api/tokens/{10**20}", headers={"x-csrf-token": user.csrf}), "token_id"),
        (user.http.get("/api/usage/requests", params={"model": "m" * 201}), "model"),
        (user.http.get("/api/usage/requests", params={"offset": 10**12}), "offset"),
        (
            user.post("/api/me/password", json={"current_password": PASSWORD, "new_password": "x" * 1025}),
            "new_password",
        ),
    ]
    for response, param in cases:
        assert response.status_code == 400, (param, response.text)
        assert response.json()["success"] is False and response.json()["error"]["param"] == param


# ---- files --------------------------------------------------------------------------------------


def png(seed: int) -> bytes:
    """A small image of noise: it hardly compresses, so its size is known (about 1,250 bytes)."""
    noise = random.Random(seed)
    out = io.BytesIO()
    Image.frombytes("L", (36, 32), bytes(noise.randrange(256) for _ in range(36 * 32))).save(out, "PNG")
    return out.getvalue()


def upload(http: httpx.Client, data: bytes) -> dict[str, Any]:
    response = http.post(
        "/v1/files", files={"file": ("a.png", data, "image/png")}, data={"purpose": "vision"}
    )
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def test_uploads_are_held_within_each_users_quota_and_deleted_by_their_owner(
    gate: Server, users: list[User]
) -> None:
    images = [png(seed) for seed in (1, 2, 3)]
    assert all(1000 < len(image) <= QUOTA // 2 for image in images), [len(i) for i in images]
    alice, bob = new_user(gate, users, "alice"), new_user(gate, users, "bob")
    with (
        api(gate, alice.token()) as mine,
        api(gate, bob.token()) as theirs,
        httpx.Client(base_url=gate.base_url) as anyone,
    ):
        bobs = upload(theirs, images[0])
        uploaded = [upload(mine, image) for image in images]
        assert anyone.get(f"/files/{uploaded[0]['id']}").status_code == 404  # alice's oldest made room
        assert anyone.get(f"/files/{bobs['id']}").status_code == 200  # never bob's
        listed = mine.get("/v1/files").json()
        assert [f["id"] for f in listed["data"]] == [uploaded[1]["id"], uploaded[2]["id"]]
        assert listed["bytes"] <= listed["quota_bytes"] == QUOTA

        assert theirs.delete(f"/v1/files/{uploaded[1]['id']}").status_code == 404  # not bob's to delete
        assert anyone.get(f"/files/{uploaded[1]['id']}").status_code == 200
        deleted = mine.delete(f"/v1/files/{uploaded[1]['id']}")
        assert deleted.status_code == 200 and deleted.json() == {
            "id": uploaded[1]["id"],
            "object": "file",
            "deleted": True,
        }
        assert anyone.get(f"/files/{uploaded[1]['id']}").status_code == 404
        assert mine.delete(f"/v1/files/{uploaded[1]['id']}").status_code == 404
        too_big = mine.post("/v1/files", files={"file": ("big.png", b"x" * (QUOTA + 1), "image/png")})
        assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "file"
