"""The docs pages work offline: everything they load comes from the shop itself."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
from httpx import AsyncClient

BASE = "http://shop.test"
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


def referenced_urls(html: str) -> set[str]:
    """Every URL the page names: in attributes (src, href, spec-url) and in its inline script."""
    attributes = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html)
    in_script = re.findall(r"""(?:url|oauth2RedirectUrl)\s*:\s*["']([^"']+)["']""", html)
    anywhere = re.findall(r"""(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s"'<>)]*""", html)
    return set(attributes) | set(in_script) | set(anywhere)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_page_loads_only_what_the_shop_serves(
    client: AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = referenced_urls(response.text)
    assert urls, "the page references its scripts and styles"
    foreign = {u for u in urls if urlsplit(urljoin(f"{BASE}{page}", u)).netloc != "shop.test"}
    assert foreign == set(), "no CDN, no web font, no validator badge"
    for url in urls:
        path = urlsplit(urljoin(f"{BASE}{page}", url)).path
        suffix = path[path.rfind(".") :] if "." in path.rsplit("/", 1)[-1] else ""
        if suffix not in CONTENT_TYPES:
            continue  # e.g. the OAuth2 redirect page, answered by the route below
        asset = await client.get(path)
        assert asset.status_code == 200, path
        media_type = asset.headers["content-type"].split(";")[0]
        assert media_type in CONTENT_TYPES[suffix], (path, media_type)
        assert len(asset.content) > 0


async def test_swagger_ui_loads_its_script_and_style_from_the_shop(client: AsyncClient) -> None:
    html = (await client.get("/docs")).text
    scripts = re.findall(r"""src\s*=\s*["']([^"']+\.js)["']""", html)
    styles = re.findall(r"""href\s*=\s*["']([^"']+\.css)["']""", html)
    assert len(scripts) == 1 and scripts[0].startswith("/")
    assert len(styles) == 1 and styles[0].startswith("/")
    script = await client.get(scripts[0])
    assert b"SwaggerUIBundle" in script.content


async def test_the_oauth2_redirect_page_of_swagger_ui_answers(client: AsyncClient) -> None:
    response = await client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "https://" not in response.text and "http://" not in response.text
