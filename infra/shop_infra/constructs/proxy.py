"""The single box's reverse proxy (stages 1-2): Caddy in front of the app's container.

A single instance has no load balancer to hold an ACM certificate or a listener rule, so a small
proxy on the box does both jobs. It is the only thing listening on the public interface:

- with a hosted zone, it serves the stage's record name over HTTPS with a certificate it obtains
  from Let's Encrypt itself (automatic HTTPS: HTTP-01 / TLS-ALPN challenges on ports 80 and 443)
  and redirects HTTP to HTTPS; without one, it serves plain HTTP on port 80;
- it answers 404 for the app's Prometheus endpoint (`/metrics`, `/metrics/...`), which is for
  the instance itself (SSM port forwarding), never for the internet.

The app's container is published on the instance's loopback only (`127.0.0.1:8000`); the boot
script checks the app's health there, so the deploy does not wait for the certificate, which can
only be issued once the Elastic IP and the DNS record exist (after the instance has signalled).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..stages import APP_PORT, METRICS_PATH

CADDY_VERSION = "2.11.4"
CADDY_IMAGE = f"public.ecr.aws/docker/library/caddy:{CADDY_VERSION}"
"""The official `caddy` image (Docker Hub's library image, mirrored on ECR Public like the
PostgreSQL and Redis images, so no Docker Hub pull limit applies), pinned by version."""

CONTAINER = "proxy"
UNIT = "shop-proxy"
"""The systemd unit that runs the proxy's container (beside `shop`, the app's)."""
UPSTREAM = f"shop:{APP_PORT}"
"""The app's container, by name, on the `shop` docker network."""

CADDYFILE = "/etc/shop/Caddyfile"


@dataclass(frozen=True)
class ReverseProxy:
    domain: str | None = None
    """The record name to serve over HTTPS; None: plain HTTP on port 80, any host name."""

    @property
    def https(self) -> bool:
        return self.domain is not None

    @property
    def ports(self) -> tuple[int, ...]:
        """Host ports the proxy listens on (the security group opens exactly these)."""
        return (80, 443) if self.https else (80,)

    @property
    def site(self) -> str:
        # A bare host name turns on Caddy's automatic HTTPS (certificate, HTTP->HTTPS redirect);
        # `http://` is every host name on port 80, no TLS at all.
        return self.domain if self.domain is not None else "http://"

    def caddyfile(self) -> str:
        return f"""# Written by the boot script (infra/shop_infra/constructs/proxy.py).
{{
\tadmin off
\tservers {{
\t\tprotocols h1 h2
\t}}
}}

{self.site} {{
\t# Prometheus metrics are for the instance itself (SSM port forwarding to 127.0.0.1:{APP_PORT}).
\t@metrics path {METRICS_PATH} {METRICS_PATH}/*
\trespond @metrics 404

\treverse_proxy {UPSTREAM}
}}
"""
