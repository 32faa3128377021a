"""The two trace settings: where the endpoint comes from, and a bad sampling ratio refused at
start by both commands, with the setting's name and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import test_settings

SHOP = str(Path(sys.executable).parent / "shop")


def test_tracing_is_off_unless_an_endpoint_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("SHOP_OTLP_ENDPOINT", raising=False)
    assert test_settings().otlp_endpoint is None


def test_the_standard_otlp_variable_is_honoured_and_the_shops_own_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.delenv("SHOP_OTLP_ENDPOINT", raising=False)
    assert test_settings().otlp_endpoint == "http://collector:4318"
    monkeypatch.setenv("SHOP_OTLP_ENDPOINT", "http://jaeger:4318")
    assert test_settings().otlp_endpoint == "http://jaeger:4318"
    monkeypatch.setenv("SHOP_OTLP_ENDPOINT", "")  # set empty: off, whatever OTEL_... says
    assert not test_settings().otlp_endpoint


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("variable", "value"),
    [("SHOP_TRACE_SAMPLE_RATIO", "1.5"), ("SHOP_OTLP_ENDPOINT", "127.0.0.1:4318")],
)
def test_a_bad_trace_setting_stops_the_command_at_start_with_its_name(
    command: str, variable: str, value: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_", "OTEL_"))}
    env.update({"SHOP_WORKER_METRICS_PORT": "0", variable: value})
    ran = subprocess.run([SHOP, command], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0
    name = variable.removeprefix("SHOP_").lower()
    assert name in ran.stderr or variable in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
