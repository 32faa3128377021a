"""Every stage synthesizes offline, and cdk-nag's AwsSolutions pack finds nothing unacknowledged."""

import ast
import json
from pathlib import Path

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_s3 as s3
from shop_infra.loadgen import STACK_ID as LOADGEN_STACK_ID
from shop_infra.nag import add_checks
from shop_infra.stack import IMAGE_EXCLUDES, REPO_ROOT
from shop_infra.stages import STAGES

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_every_stage_synthesizes_to_a_template(assembly: Path):
    manifest = json.loads((assembly / "manifest.json").read_text())
    stacks = {name for name, art in manifest["artifacts"].items() if art["type"].endswith("stack")}
    assert stacks == {stage.stack_id for stage in STAGES} | {LOADGEN_STACK_ID}


def test_cdk_nag_aws_solutions_passes_on_every_stage_and_the_load_generator(assembly: Path):
    # The synth raises on an unacknowledged finding; a clean run leaves no violation in the
    # report (a plugin whose only findings were acknowledged still lists itself).
    report = json.loads((assembly / "validation-report.json").read_text())
    assert [v for plugin in report["pluginReports"] for v in plugin["violations"]] == []


def test_the_nag_checks_do_fail_a_stack_that_breaks_a_rule(tmp_path: Path):
    app = App(outdir=str(tmp_path))
    stack = Stack(app, "Careless")
    s3.Bucket(stack, "Unlogged")
    add_checks(app)
    with pytest.raises(RuntimeError, match="AwsSolutions-S1"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    rules = {v["ruleName"] for p in report["pluginReports"] for v in p["violations"]}
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= rules


def _acknowledgements() -> list[ast.Call]:
    calls = []
    for source in (INFRA / "shop_infra").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "acknowledge":
                calls.append(node)
    return calls


def test_every_acknowledgement_names_one_aws_solutions_rule_with_a_reason():
    calls = _acknowledgements()
    assert len(calls) >= 10
    for call in calls:
        keywords = {kw.arg: kw.value for kw in call.keywords}
        assert set(keywords) == {"id", "reason"}, ast.unparse(call)
        rule = ast.unparse(keywords["id"])
        # AwsSolutions (cdk-nag), or one of the CloudFormation Validate plugin's (W9010: pinned AMI)
        assert "AwsSolutions-" in rule or rule == "'CloudFormation-Validate::W9010'", rule
        reason = ast.unparse(keywords["reason"])
        assert len(reason) > 80, f"{rule}: give a reason a reviewer would accept"


def test_the_image_is_built_from_the_repository_dockerfile_without_local_clutter():
    assert (REPO_ROOT / "Dockerfile").is_file()
    assert {".venv", ".git", "**/cdk.out"} <= set(IMAGE_EXCLUDES)
