"""Synthesizes every stage once per test session, offline, with cdk-nag attached.

One App holds every stage's stack, so there is one synth (one Node process, ~10 s) for the whole
session; the templates are then read from the cloud assembly. The image build context is a stub
folder so that synth does not copy the repository into cdk.out for every test run.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

INFRA = Path(__file__).resolve().parents[2] / "infra"
sys.path.insert(0, str(INFRA))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402
from shop_infra.loadgen import STACK_ID as LOADGEN_STACK_ID  # noqa: E402
from shop_infra.loadgen import LoadGenStack  # noqa: E402
from shop_infra.nag import add_checks  # noqa: E402
from shop_infra.stack import DEFAULT_REGION, ShopStack  # noqa: E402
from shop_infra.stages import STAGES, Stage  # noqa: E402

ZONE = "shop.example.com"
MAIL_SENDER = "orders@shop-ladder.dev"
"""Stage 7's SES sender in the tests: a domain SES could verify (example.com never can)."""
ACCOUNT = "123456789012"


@dataclass(frozen=True)
class Synthesized:
    stage: Stage
    template: dict[str, Any]
    path: Path

    @property
    def assertions(self) -> Template:
        return Template.from_json(self.template)

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == type_}

    def type_counts(self) -> Counter[str]:
        return Counter(resource["Type"] for resource in self.template["Resources"].values())


def _context() -> dict[str, Any]:
    return json.loads((INFRA / "cdk.json").read_text())["context"]


def _synth(
    outdir: Path, image: Path, stages: list[Stage], *, loadgen: bool = False, **options: Any
) -> Path:
    app = cdk.App(outdir=str(outdir), context={**_context(), **options.pop("context", {})})
    for stage in stages:
        ShopStack(app, stage=stage, image_directory=image, **options)
    if loadgen:  # in the same app: one synth (one Node process) for all of them
        LoadGenStack(app, env=options["env"])
    add_checks(app)
    app.synth()  # raises when cdk-nag (or CloudFormation validation) reports a violation
    return outdir


@pytest.fixture(scope="session")
def image_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("image")
    (folder / "Dockerfile").write_text("FROM scratch\n")
    return folder


@pytest.fixture(scope="session")
def assembly(tmp_path_factory: pytest.TempPathFactory, image_context: Path) -> Path:
    return _synth(
        tmp_path_factory.mktemp("cdk.out"),
        image_context,
        list(STAGES),
        loadgen=True,
        env=cdk.Environment(region=DEFAULT_REGION),
        mail_sender=MAIL_SENDER,
    )


@pytest.fixture(scope="session")
def synthesized(assembly: Path) -> dict[int, Synthesized]:
    result = {}
    for stage in STAGES:
        path = assembly / f"{stage.stack_id}.template.json"
        result[stage.number] = Synthesized(stage, json.loads(path.read_text()), path)
    return result


@pytest.fixture(scope="session")
def loadgen(assembly: Path) -> dict[str, Any]:
    """The Shop-LoadGen template, synthesized in the same app as the stages."""
    return json.loads((assembly / f"{LOADGEN_STACK_ID}.template.json").read_text())


@pytest.fixture(scope="session")
def with_hosted_zone(
    tmp_path_factory: pytest.TempPathFactory, image_context: Path
) -> dict[int, Synthesized]:
    """Stages 1, 3 and 5 again, with a hosted zone given (its lookup answered from context)."""
    chosen = [stage for stage in STAGES if stage.number in (1, 3, 5)]
    lookup = f"hosted-zone:account={ACCOUNT}:domainName={ZONE}:region={DEFAULT_REGION}"
    outdir = _synth(
        tmp_path_factory.mktemp("cdk.out.zone"),
        image_context,
        chosen,
        env=cdk.Environment(account=ACCOUNT, region=DEFAULT_REGION),
        hosted_zone=ZONE,
        context={lookup: {"Id": "/hostedzone/Z0000000000000000000", "Name": f"{ZONE}."}},
    )
    return {
        stage.number: Synthesized(
            stage,
            json.loads((outdir / f"{stage.stack_id}.template.json").read_text()),
            outdir / f"{stage.stack_id}.template.json",
        )
        for stage in chosen
    }
