"""Signing in with JSON or with the OAuth2 password form (the Authorize button of /docs), and
what a bearer token does on a private route."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient

from tests.integration.conftest import User

PASSWORD = "correct-horse-42"  # make_user's


def assert_is_a_token(answer: dict[str, Any]) -> None:
    assert set(answer) == {"access_token", "token_type", "expires_in"}
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] > 0


async def test_signing_in_with_json_gives_a_bearer_token(client: AsyncClient, alice: User) -> None:
    response = await client.post("/auth/token", json={"email": alice.email, "password": PASSWORD})
    assert response.status_code == 200
    assert_is_a_token(response.json())


async def test_the_oauth2_password_form_signs_in_as_the_docs_do(
    client: AsyncClient, alice: User
) -> None:
    # What Swagger UI's Authorize sends for the password flow.
    form = {"grant_type": "password", "username": alice.email, "password": PASSWORD, "scope": ""}
    response = await client.post("/auth/token", data=form)
    assert response.status_code == 200
    token = response.json()
    assert_is_a_token(token)
    me = await client.get(
        "/customers/me", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["email"] == alice.email


async def test_the_form_with_a_wrong_password_answers_401(client: AsyncClient, alice: User) -> None:
    response = await client.post(
        "/auth/token", data={"username": alice.email, "password": "not-the-password"}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"password": PASSWORD}, "username"),
        ({"username": "alice@example.com"}, "password"),
        ({"username": "not an e-mail", "password": PASSWORD}, "username"),
        ({"username": "alice@example.com", "password": "x" * 500}, "password"),
        ({"username": "alice@example.com", "password": PASSWORD, "grant_type": "magic"}, None),
    ],
)
async def test_a_bad_form_answers_422_naming_the_field(
    client: AsyncClient, alice: User, form: dict[str, str], field: str | None
) -> None:
    response = await client.post("/auth/token", data=form)
    assert response.status_code == 422
    locations = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert locations == [("body", field or "grant_type")]
    assert PASSWORD not in response.text  # never echoed back


@pytest.mark.parametrize(
    "raw",
    [b"username=%ff%fe&password=x", "username=é".encode(), b"&" * 5000, b"a=1&" * 100, b""],
)
async def test_a_malformed_form_answers_422_not_500(client: AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/auth/token",
        content=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "alice@example.com"}, "password"),
        ({"email": "alice@example.com", "password": PASSWORD, "username": "x"}, "username"),
    ],
)
async def test_json_sign_in_stays_strict(
    client: AsyncClient, body: dict[str, str], field: str
) -> None:
    response = await client.post("/auth/token", json=body)
    assert response.status_code == 422
    assert [tuple(e["loc"]) for e in response.json()["detail"]] == [("body", field)]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic YWxpY2U6cHc=", "bearer not-a-token", "Token abc"],
)
async def test_a_missing_or_bad_bearer_token_answers_401(
    client: AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.get("/customers/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_the_bearer_scheme_is_case_insensitive(client: AsyncClient, alice: User) -> None:
    token = alice.headers["Authorization"].split(" ", 1)[1]
    response = await client.get("/customers/me", headers={"Authorization": f"bEaReR {token}"})
    assert response.status_code == 200
