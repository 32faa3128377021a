"""/metrics stays off the internet at every stage, and the single box serves HTTPS with a zone.

Stages 3-7: every listener of the load balancer answers a fixed 404 for /metrics ahead of its
forward (or redirect). Stages 1-2: the box's reverse proxy (Caddy) does, and with a hosted zone
it also terminates TLS with a Let's Encrypt certificate. The boot scripts are walked with the
fakes of test_boot_path.py; the Caddyfile they write is checked by the real `caddy` binary when
one is installed (Debian's package: `apt-get install -y caddy`), and then also served: requests
go through it to a stand-in app.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from shop_infra.constructs.load_balancer import (
    ENCODED_METRICS_PRIORITY,
    ENCODED_METRICS_REGEX,
    PRIVATE_METRICS_PATTERNS,
    PRIVATE_METRICS_PRIORITY,
)
from shop_infra.constructs.proxy import CADDY_IMAGE
from shop_infra.stages import APP_PORT, STAGES

from .test_boot_path import Boot, boot_scripts, run

LOAD_BALANCED = [s.number for s in STAGES if s.load_balanced]
SINGLE_BOX = [s.number for s in STAGES if not s.load_balanced]
CADDY = shutil.which("caddy")
needs_caddy = pytest.mark.skipif(CADDY is None, reason="needs caddy (apt-get install -y caddy)")


# --- stages 3-7: listener rules ----------------------------------------------------------------


def _listeners(synth) -> dict[str, dict[str, Any]]:
    return synth.resources("AWS::ElasticLoadBalancingV2::Listener")


def _rules_of(synth, listener_id: str) -> list[dict[str, Any]]:
    return sorted(
        (
            rule["Properties"]
            for rule in synth.resources("AWS::ElasticLoadBalancingV2::ListenerRule").values()
            if rule["Properties"]["ListenerArn"] == {"Ref": listener_id}
        ),
        key=lambda rule: rule["Priority"],
    )


def _every_load_balanced_template(synthesized, with_hosted_zone) -> Iterator[tuple[str, Any]]:
    for number in LOAD_BALANCED:
        yield f"stage {number}", synthesized[number]
    for number in (3, 5):
        yield f"stage {number} with a zone", with_hosted_zone[number]


def _assert_not_found(actions: list[dict[str, Any]]) -> None:
    assert actions == [
        {
            "Type": "fixed-response",
            "FixedResponseConfig": {
                "StatusCode": "404",
                "ContentType": "text/plain",
                "MessageBody": "Not Found",
            },
        }
    ]


def test_every_listener_answers_404_for_metrics_before_it_forwards(synthesized, with_hosted_zone):
    seen = []
    for name, synth in _every_load_balanced_template(synthesized, with_hosted_zone):
        listeners = _listeners(synth)
        assert listeners, name
        for listener_id, listener in listeners.items():
            rules = _rules_of(synth, listener_id)
            assert [rule["Priority"] for rule in rules] == [
                PRIVATE_METRICS_PRIORITY,
                ENCODED_METRICS_PRIORITY,
            ], (name, listener_id)
            plain, encoded = rules
            assert plain["Conditions"] == [
                {
                    "Field": "path-pattern",
                    "PathPatternConfig": {"Values": ["/metrics", "/metrics/*"]},
                }
            ]
            assert encoded["Conditions"] == [
                {
                    "Field": "path-pattern",
                    "PathPatternConfig": {"RegexValues": [ENCODED_METRICS_REGEX]},
                }
            ]
            _assert_not_found(plain["Actions"])
            _assert_not_found(encoded["Actions"])
            # The rest of the traffic goes where it went before: the listener's default action.
            [default] = listener["Properties"]["DefaultActions"]
            assert default["Type"] in ("forward", "redirect")
            seen.append((name, listener["Properties"]["Port"], default["Type"]))
    # Both listeners of an HTTPS load balancer are covered: the forward and the redirect.
    assert ("stage 3 with a zone", 443, "forward") in seen
    assert ("stage 3 with a zone", 80, "redirect") in seen
    assert {name for name, _, _ in seen} >= {f"stage {n}" for n in LOAD_BALANCED}


@pytest.mark.parametrize("number", SINGLE_BOX)
def test_a_single_box_has_no_load_balancer_rule_its_proxy_does_that(synthesized, number):
    assert not synthesized[number].resources("AWS::ElasticLoadBalancingV2::ListenerRule")


def _alb_pattern(pattern: str) -> re.Pattern[str]:
    """An ALB path pattern (case-sensitive; `*` any characters, `?` one) as a regex."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    )


def _blocked(raw_path: str) -> bool:
    return any(
        _alb_pattern(pattern).fullmatch(raw_path) for pattern in PRIVATE_METRICS_PATTERNS
    ) or bool(re.search(ENCODED_METRICS_REGEX, raw_path))


def _spellings(text: str) -> Iterator[str]:
    """Every spelling of `text` with each character plain or percent-encoded (either hex case)."""
    options = [(c, f"%{ord(c):02x}", f"%{ord(c):02X}") for c in text]
    for choice in itertools.product(*options):
        yield "".join(choice)


def test_the_rules_catch_every_path_the_app_would_decode_to_metrics():
    # The app's server percent-decodes the path before routing: /%6Detrics is /metrics to it.
    # A listener rule compares the path as sent, so its rules must catch every spelling.
    assert len(ENCODED_METRICS_REGEX) <= 128  # the listener rule's limit per value
    suffixes = ["", "/", "/x", "%2Fx", "%2f", "/%2e%2e"]
    count = 0
    for letters in _spellings("metrics"):
        for suffix in suffixes:
            raw = f"/{letters}{suffix}"
            decoded = unquote(raw)
            assert decoded == "/metrics" or decoded.startswith("/metrics/")
            assert _blocked(raw), raw
            count += 1
    assert count == 3**7 * len(suffixes)


@pytest.mark.parametrize(
    "raw",
    ["/healthz", "/products/metrics", "/metricsx", "/metric", "/%256detrics", "/", "/docs"],
)
def test_the_rules_leave_every_other_path_to_the_app(raw):
    assert not _blocked(raw)


# --- stages 1-2: the box's reverse proxy ---------------------------------------------------------


def _box_script(synth) -> str:
    [script] = [v for k, v in boot_scripts(synth).items() if k.startswith("Instance1")]
    return script


def _boot_in(synth, folder: Path) -> Boot:
    folder.mkdir()
    boot = run(_box_script(synth), folder)
    assert boot.returncode == 0, boot.output
    return boot


def _unit_exec(boot: Boot, unit: str) -> str:
    text = (boot.root / "etc/systemd/system" / unit).read_text()
    [start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return start


def _caddyfile(boot: Boot) -> str:
    return (boot.root / "etc/shop/Caddyfile").read_text()


def _public_ports(synth) -> set[int]:
    ports = set()
    for group in synth.resources("AWS::EC2::SecurityGroup").values():
        for rule in group["Properties"].get("SecurityGroupIngress", []):
            if rule.get("CidrIp") == "0.0.0.0/0" or rule.get("CidrIpv6") == "::/0":
                assert rule["FromPort"] == rule["ToPort"]
                ports.add(rule["FromPort"])
    for rule in synth.resources("AWS::EC2::SecurityGroupIngress").values():
        if rule["Properties"].get("CidrIp") == "0.0.0.0/0":
            ports.add(rule["Properties"]["FromPort"])
    return ports


@pytest.mark.parametrize("number", SINGLE_BOX)
def test_without_a_zone_the_box_runs_caddy_on_plain_http_and_it_404s_metrics(
    synthesized, tmp_path, number
):
    synth = synthesized[number]
    boot = run(_box_script(synth), tmp_path)
    assert boot.returncode == 0, boot.output
    caddyfile = _caddyfile(boot)
    assert re.search(r"^http:// \{$", caddyfile, flags=re.MULTILINE)  # plain HTTP, any host
    assert "@metrics path /metrics /metrics/*\n\trespond @metrics 404" in caddyfile
    assert f"reverse_proxy shop:{APP_PORT}" in caddyfile
    proxy = _unit_exec(boot, "shop-proxy.service")
    assert "--name proxy --network shop -p 80:80 " in proxy
    assert "443" not in proxy
    assert "-v /etc/shop/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy
    assert "-v caddy-data:/data" in proxy  # certificates (with a zone) survive restarts
    assert proxy.endswith(CADDY_IMAGE)
    assert re.fullmatch(r"public\.ecr\.aws/docker/library/caddy:2\.\d+\.\d+", CADDY_IMAGE)
    assert _public_ports(synth) == {80}  # 443 stays closed without a certificate


@pytest.mark.parametrize("number", SINGLE_BOX)
def test_the_app_is_published_on_the_loopback_only(synthesized, tmp_path, number):
    boot = run(_box_script(synthesized[number]), tmp_path)
    app = _unit_exec(boot, "shop.service")
    assert re.findall(r"-p (\S+)", app) == [f"127.0.0.1:{APP_PORT}:{APP_PORT}"]


def test_behind_a_load_balancer_the_app_keeps_its_target_port_and_a_loopback_one(
    synthesized, tmp_path
):
    [script] = [v for k, v in boot_scripts(synthesized[3]).items() if k.startswith("WebGroup")]
    boot = run(script, tmp_path)
    app = _unit_exec(boot, "shop.service")
    assert re.findall(r"-p (\S+)", app) == [f"80:{APP_PORT}", f"127.0.0.1:{APP_PORT}:{APP_PORT}"]
    assert not (boot.root / "etc/shop/Caddyfile").exists()
    assert not boot.called(f"docker pull {CADDY_IMAGE}")


def test_with_a_zone_the_box_serves_its_record_over_https_and_opens_443(with_hosted_zone, tmp_path):
    synth = with_hosted_zone[1]
    boot = run(_box_script(synth), tmp_path)
    assert boot.returncode == 0, boot.output
    caddyfile = _caddyfile(boot)
    # A bare host name: Caddy's automatic HTTPS (Let's Encrypt) and HTTP->HTTPS redirect.
    assert re.search(r"^single-box\.shop\.example\.com \{$", caddyfile, flags=re.MULTILINE)
    assert "http://" not in caddyfile
    assert "@metrics path /metrics /metrics/*\n\trespond @metrics 404" in caddyfile
    proxy = _unit_exec(boot, "shop-proxy.service")
    assert "-p 80:80 -p 443:443 " in proxy
    assert _public_ports(synth) == {80, 443}


def test_with_a_zone_the_health_check_needs_no_certificate(with_hosted_zone, tmp_path):
    # The certificate can only be issued once the Elastic IP and the record exist, which is
    # after this instance has signalled: so the boot checks the app directly, then that the
    # proxy answers on port 80 (its redirect), never through HTTPS.
    [(logical_id, script)] = [
        (k, v) for k, v in boot_scripts(with_hosted_zone[1]).items() if k.startswith("Instance1")
    ]
    boot = run(script, tmp_path, FAIL_HEALTHZ="3")  # the app needs a few seconds to start
    assert boot.returncode == 0, boot.output
    checks = boot.called("curl")
    assert not any("https://" in check for check in checks)
    app = [c for c in checks if f"http://127.0.0.1:{APP_PORT}/healthz" in c]
    through_proxy = [c for c in checks if "http://127.0.0.1:80/healthz" in c]
    assert len(app) == 4 and len(through_proxy) == 1
    assert "-H Host: single-box.shop.example.com" in through_proxy[0]
    assert boot.calls.index("systemctl enable --now shop") < boot.calls.index(
        "systemctl enable --now shop-proxy"
    )
    assert boot.index("curl", last=True) < boot.index("cfn-signal")
    assert boot.signals == [
        f"cfn-signal --stack Shop-1-single-box --resource {logical_id} --region us-east-1 "
        "--exit-code 0"
    ]


def test_the_proxy_image_pull_is_retried_like_every_network_step(with_hosted_zone, tmp_path):
    boot = run(_box_script(with_hosted_zone[1]), tmp_path, FAIL_PULL="always")
    assert boot.returncode != 0
    [signal] = boot.signals
    assert re.search(r"--exit-code [1-9]", signal)
    assert "systemctl enable --now shop-proxy" not in boot.calls


def test_a_box_whose_app_never_answers_signals_failure_even_with_the_proxy(synthesized, tmp_path):
    boot = run(_box_script(synthesized[1]), tmp_path, FAIL_HEALTHZ="always")
    assert boot.returncode != 0
    [signal] = boot.signals
    assert re.search(r"--exit-code [1-9]", signal)
    assert "failed to wait for /healthz" in boot.output


# --- the real caddy: the Caddyfile validates, and it does hide /metrics ---------------------------


def _caddy_env(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PATH": "/usr/bin:/bin",
    }


def _validate(caddyfile: str, tmp_path: Path) -> str:
    config = tmp_path / "Caddyfile"
    config.write_text(caddyfile)
    assert CADDY is not None
    done = subprocess.run(
        [CADDY, "validate", "--config", str(config), "--adapter", "caddyfile"],
        env=_caddy_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_caddy
def test_caddy_accepts_the_plain_http_caddyfile(synthesized, tmp_path):
    boot = _boot_in(synthesized[1], tmp_path / "boot")
    log = _validate(_caddyfile(boot), tmp_path)
    assert "no automatic HTTPS" in log


@needs_caddy
def test_caddy_accepts_the_https_caddyfile_and_redirects_http(with_hosted_zone, tmp_path):
    boot = _boot_in(with_hosted_zone[1], tmp_path / "boot")
    log = _validate(_caddyfile(boot), tmp_path)
    assert "enabling automatic HTTP->HTTPS redirects" in log


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stand_in_app(seen: list[str]) -> type[http.server.BaseHTTPRequestHandler]:
    """The app's stand-in: 200 for every path, each recorded in `seen` as it arrived."""

    class App(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"app"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return App


def _request(
    port: int, raw_path: str, *, host: str = "127.0.0.1", tls: bool = False
) -> tuple[int, str]:
    """Status and Location of GET `raw_path`, sent as is (no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        stream: socket.socket = plain
        if tls:  # the test CA of `local_certs`, not a public one: no verification
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            stream = context.wrap_socket(plain, server_hostname=host)
        stream.sendall(
            f"GET {raw_path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := stream.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    location = next(
        (line.split(":", 1)[1].strip() for line in head if line.lower().startswith("location:")),
        "",
    )
    return int(head[0].split()[1]), location


@contextlib.contextmanager
def _served(caddyfile: str, tmp_path: Path, ports: dict[str, int]) -> Iterator[list[str]]:
    """Run the real caddy on `caddyfile` in front of a stand-in app (at `{app}` in the text);
    yield the paths the app received."""
    seen: list[str] = []
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _stand_in_app(seen))
    threading.Thread(target=app.serve_forever, daemon=True).start()
    config = tmp_path / "Caddyfile"
    config.write_text(caddyfile.replace(f"shop:{APP_PORT}", f"127.0.0.1:{app.server_port}"))
    assert CADDY is not None
    caddy = subprocess.Popen(
        [CADDY, "run", "--config", str(config), "--adapter", "caddyfile"],
        env=_caddy_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        for port in ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert caddy.poll() is None, caddy.stderr.read() if caddy.stderr else ""
                    assert time.monotonic() < deadline, "caddy did not start listening"
                    time.sleep(0.1)
        yield seen
    finally:
        caddy.terminate()
        caddy.wait(timeout=10)
        app.shutdown()


HIDDEN = [
    "/metrics",
    "/metrics/",
    "/metrics/x",
    "/%6Detrics",
    "/%6d%65trics",
    "/metric%73",
    "/metrics%2Fx",
    "/METRICS",
    "/metrics?format=text",
]
"""Spellings of /metrics that reach the app's metrics route (or would, in another case)."""


@needs_caddy
def test_caddy_serves_the_app_and_answers_404_for_every_spelling_of_metrics(synthesized, tmp_path):
    # The box's own Caddyfile, served by the real caddy in front of a stand-in app: only the
    # listening port and the upstream's address differ from the instance.
    boot = _boot_in(synthesized[1], tmp_path / "boot")
    port = _free_port()
    caddyfile = _caddyfile(boot).replace("http:// {", f"http://:{port} {{")
    with _served(caddyfile, tmp_path, {"http": port}) as seen:
        assert _request(port, "/healthz") == (200, "")
        for raw in HIDDEN:
            assert _request(port, raw)[0] == 404, raw
        assert _request(port, "/products/metrics")[0] == 200
        assert seen == ["/healthz", "/products/metrics"]  # no spelling of /metrics got through


@needs_caddy
def test_caddy_with_a_zone_redirects_to_https_and_hides_metrics_there_too(
    with_hosted_zone, tmp_path
):
    # The box's Caddyfile with a zone; for the test only, Caddy's own local CA stands in for
    # Let's Encrypt and the ports are free ones instead of 80 and 443.
    boot = _boot_in(with_hosted_zone[1], tmp_path / "boot")
    domain = "single-box.shop.example.com"
    ports = {"http": _free_port(), "https": _free_port()}
    caddyfile = _caddyfile(boot).replace(
        "\tadmin off\n",
        "\tadmin off\n\tlocal_certs\n\tskip_install_trust\n"
        f"\thttp_port {ports['http']}\n\thttps_port {ports['https']}\n",
    )
    with _served(caddyfile, tmp_path, ports) as seen:
        status, location = _request(ports["http"], "/products/1", host=domain)
        assert status in (301, 308) and location.startswith(f"https://{domain}")
        assert _request(ports["http"], "/metrics", host=domain)[0] in (301, 308)
        assert _request(ports["https"], "/healthz", host=domain, tls=True) == (200, "")
        for raw in HIDDEN:
            assert _request(ports["https"], raw, host=domain, tls=True)[0] == 404, raw
        assert seen == ["/healthz"]
