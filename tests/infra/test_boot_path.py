"""The boot path as AWS runs it: the user data of each instance, executed by bash.

Each boot script is taken from the synthesized template (CloudFormation references filled in as
CloudFormation would), and run with the commands that reach AWS or the machine (dnf, systemctl,
docker, aws, curl, cfn-signal, sleep) replaced by small fakes on PATH that log their arguments
and fail on demand. Files the script writes land under a scratch folder (SHOP_BOOT_ROOT). The
tests then read what CloudFormation would have been told, and when.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from shop_infra.constructs.agent import (
    AGENT_CONFIG,
    HOST_ADDRESS,
    PROMETHEUS_CONFIG,
    TRACE_SAMPLE_RATIO,
)
from shop_infra.constructs.compute import (
    BOOT_ATTEMPTS,
    HEALTH_CHECKS,
    HOST_PORT,
    WORKER_METRICS_PORT,
    WORKER_SILENT_CHECKS,
)
from shop_infra.stages import STAGES

ACCOUNT = "123456789012"
REGION = "us-east-1"
INSTANCE_ID = "i-0123456789abcdef0"
FAKES = (
    "dnf",
    "systemctl",
    "docker",
    "aws",
    "curl",
    "cfn-signal",
    "sleep",
    "amazon-cloudwatch-agent-ctl",
)

# One fake for every command: log the call, then behave as the FAIL_* variables say.
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
  "dnf install")
    case "$*" in
      *amazon-cloudwatch-agent*) fail agent-install "${FAIL_AGENT_INSTALL:-0}" ;;
      *) fail dnf "${FAIL_DNF:-0}" ;;
    esac ;;
  "amazon-cloudwatch-agent-ctl -a") fail agent-start "${FAIL_AGENT_START:-0}" ;;
  "docker pull") fail pull "${FAIL_PULL:-0}" ;;
  "docker login") cat > /dev/null ;;
  "docker network") [ "$2" != inspect ] || [ "${NETWORK_EXISTS:-no}" = yes ] || exit 1 ;;
  "aws ecr") echo registry-password ;;
  "aws secretsmanager") echo '{"password": "from-secrets-manager"}' ;;
  "systemctl is-failed") [ "${UNIT_FAILED:-no}" = yes ] || exit 1 ;;
  curl\ *)
    case "$*" in
      *healthz*) fail healthz "${FAIL_HEALTHZ:-0}" ;;
      *:9102/metrics*) fail metrics "${FAIL_METRICS:-0}" ;;
      *api/token*) echo metadata-token ;;
      *instance-id*) echo "$INSTANCE_ID" ;;
    esac ;;
esac
exit 0
"""


def _resolve(value: Any, stack: str) -> str:
    """A CloudFormation value as the deployed stack would see it (other resources: by name)."""
    if isinstance(value, str):
        return value
    [(function, argument)] = value.items()
    pseudo = {
        "AWS::Region": REGION,
        "AWS::StackName": stack,
        "AWS::AccountId": ACCOUNT,
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::Partition": "aws",
    }
    if function == "Ref":
        return pseudo.get(argument, f"ref-{argument}")
    if function == "Fn::GetAtt":
        return f"{argument[0]}.{argument[1]}"
    if function == "Fn::Join":
        return argument[0].join(_resolve(part, stack) for part in argument[1])
    if function == "Fn::Sub":
        return re.sub(r"\$\{([^}]+)\}", lambda m: pseudo.get(m[1], f"ref-{m[1]}"), argument)
    if function == "Fn::If":  # a blue/green image: the branch that runs this deploy's build
        return _resolve(argument[1], stack)
    raise AssertionError(f"no stand-in for {function}")


def boot_scripts(synth) -> dict[str, str]:
    """Logical id of each instance or Auto Scaling group -> its boot script, resolved.

    Every boot script is in a launch template; the instance or group launched from it is the
    resource that script has to signal.
    """
    templates = synth.resources("AWS::EC2::LaunchTemplate")
    users = {}
    for kind, spec in (
        ("AWS::EC2::Instance", "LaunchTemplate"),
        ("AWS::AutoScaling::AutoScalingGroup", "LaunchTemplate"),
    ):
        for logical_id, resource in synth.resources(kind).items():
            users[resource["Properties"][spec]["LaunchTemplateId"]["Ref"]] = logical_id
    assert not any(
        "UserData" in r["Properties"] for r in synth.resources("AWS::EC2::Instance").values()
    )
    return {
        users[template_id]: _resolve(
            template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"],
            synth.stage.stack_id,
        )
        for template_id, template in templates.items()
    }


@dataclass
class Boot:
    returncode: int
    calls: list[str]
    root: Path
    output: str

    def called(self, prefix: str) -> list[str]:
        return [call for call in self.calls if call.startswith(prefix)]

    def index(self, prefix: str, *, last: bool = False) -> int:
        found = [i for i, call in enumerate(self.calls) if call.startswith(prefix)]
        assert found, f"{prefix!r} was never called; calls: {self.calls}"
        return found[-1] if last else found[0]

    @property
    def signals(self) -> list[str]:
        return self.called("cfn-signal")

    @property
    def sleeps(self) -> list[int]:
        return [int(call.split()[1]) for call in self.called("sleep")]


def run(script: str, tmp_path: Path, **fail: str) -> Boot:
    """Run `script` under bash as cloud-init would, with the fakes first on PATH."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name in FAKES:
        (fakes / name).write_text(FAKE)
        (fakes / name).chmod(0o755)
    (tmp_path / "state").mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "boot.sh").write_text(script)
    log = tmp_path / "calls.log"
    log.touch()
    env = {
        "PATH": f"{fakes}:/usr/bin:/bin",
        "FAKE_LOG": str(log),
        "FAKE_STATE": str(tmp_path / "state"),
        "INSTANCE_ID": INSTANCE_ID,
        "SHOP_BOOT_ROOT": str(tmp_path / "root"),
        **fail,
    }
    done = subprocess.run(
        ["bash", str(tmp_path / "boot.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Boot(
        done.returncode, log.read_text().splitlines(), tmp_path / "root", done.stderr + done.stdout
    )


def _web_instance(synthesized, number: int) -> tuple[str, str]:
    [(logical_id, script)] = [
        (k, v)
        for k, v in boot_scripts(synthesized[number]).items()
        if k.startswith(("Instance1", "WebGroup"))  # the box (1-2), the fixed group (3-5)
    ]
    return logical_id, script


def _worker_template(synthesized) -> str:
    [script] = [v for k, v in boot_scripts(synthesized[7]).items() if k.startswith("WorkerGroup")]
    return script


# --- the happy path ------------------------------------------------------------------------


def test_a_web_instance_signals_success_only_after_healthz_answers(synthesized, tmp_path):
    logical_id, script = _web_instance(synthesized, 3)
    boot = run(script, tmp_path, FAIL_HEALTHZ="3")  # the app needs a few seconds to start
    assert boot.returncode == 0, boot.output
    assert boot.signals == [
        f"cfn-signal --stack Shop-3-horizontal --resource {logical_id} --region {REGION} "
        "--exit-code 0"
    ]
    healthz = boot.called("curl")
    assert len(healthz) == 4 and all(f"127.0.0.1:{HOST_PORT}/healthz" in c for c in healthz)
    # In order: the app is started, /healthz answers (the 4th try), then the signal.
    started = boot.index("systemctl enable --now shop")
    answered = boot.index("curl", last=True)
    assert started < boot.index("curl") and answered < boot.index("cfn-signal")


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_every_boot_script_signals_the_resource_whose_policy_waits_for_it(synthesized, stage):
    synth = synthesized[stage.number]
    resources = synth.template["Resources"]
    scripts = boot_scripts(synth)
    launched = synth.resources("AWS::EC2::Instance") | synth.resources(
        "AWS::AutoScaling::AutoScalingGroup"
    )
    assert set(scripts) == set(launched)
    for logical_id, script in scripts.items():
        [signalled] = re.findall(r"^RESOURCE='([^']+)'$", script, flags=re.MULTILINE)
        assert signalled == logical_id
        policy = resources[signalled]["CreationPolicy"]["ResourceSignal"]
        assert policy["Timeout"] == "PT15M"
        # CloudFormation evaluates no intrinsic function in a creation policy.
        assert isinstance(policy["Count"], int) and policy["Count"] >= 1


@pytest.mark.parametrize(
    "each", [s for s in STAGES if s.fleet.auto_scaling], ids=lambda s: s.stack_id
)
def test_rolling_updates_replace_one_instance_at_a_time_and_wait_for_its_signal(synthesized, each):
    for group in synthesized[each.number].resources("AWS::AutoScaling::AutoScalingGroup").values():
        rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
        assert rolling["WaitOnResourceSignals"] is True
        assert rolling["PauseTime"] == "PT15M"
        assert rolling["MaxBatchSize"] == 1 and rolling["MinInstancesInService"] >= 1


def test_the_single_box_starts_its_own_database_with_the_password_from_secrets_manager(
    synthesized, tmp_path
):
    _, script = _web_instance(synthesized, 1)
    boot = run(script, tmp_path)
    assert boot.returncode == 0, boot.output
    assert (boot.root / "etc/shop/pgpass").read_text() == "from-secrets-manager"
    postgres = boot.index("docker run -d --name postgres")
    assert boot.index("docker exec postgres pg_isready") > postgres
    assert boot.index("systemctl enable --now shop") < boot.index("cfn-signal")
    assert boot.signals[-1].endswith("--exit-code 0")


# --- retries and failure ---------------------------------------------------------------------


def test_a_failing_pull_is_retried_with_backoff_and_the_boot_goes_on(synthesized, tmp_path):
    _, script = _web_instance(synthesized, 3)
    boot = run(script, tmp_path, FAIL_PULL="2")  # the registry fails twice, then answers
    assert boot.returncode == 0, boot.output
    assert len(boot.called("docker pull")) == 3
    assert boot.sleeps[:2] == [5, 10]
    assert [s.split()[-1] for s in boot.signals] == ["0"]


def test_a_pull_that_keeps_failing_is_retried_then_signals_failure(synthesized, tmp_path):
    _, script = _web_instance(synthesized, 3)
    boot = run(script, tmp_path, FAIL_PULL="always")
    assert boot.returncode != 0
    assert len(boot.called("docker pull")) == BOOT_ATTEMPTS
    assert boot.sleeps == [5, 10, 20, 40]  # bounded, backing off
    [signal] = boot.signals
    assert "--exit-code 0" not in signal and re.search(r"--exit-code [1-9]", signal)
    # Nothing after the failed step ran: no app, no health check.
    assert not boot.called("systemctl enable --now shop")
    assert not boot.called("curl")
    assert "failed to pull the app image" in boot.output


def test_a_package_install_that_fails_once_is_retried(synthesized, tmp_path):
    _, script = _web_instance(synthesized, 2)
    boot = run(script, tmp_path, FAIL_DNF="1")
    assert boot.returncode == 0, boot.output
    assert len(boot.called("dnf install -y docker")) == 2
    assert boot.signals[-1].endswith("--exit-code 0")


def test_an_app_that_never_answers_healthz_signals_failure(synthesized, tmp_path):
    _, script = _web_instance(synthesized, 3)
    boot = run(script, tmp_path, FAIL_HEALTHZ="always")
    assert boot.returncode != 0
    assert len(boot.called("curl")) == HEALTH_CHECKS
    [signal] = boot.signals
    assert re.search(r"--exit-code [1-9]", signal)
    assert "failed to wait for /healthz" in boot.output


@pytest.mark.parametrize("number", [6, 7], ids=["web group", "worker group"])
def test_scripts_in_auto_scaling_groups_fail_the_same_way(synthesized, tmp_path, number):
    scripts = boot_scripts(synthesized[number])
    script = next(
        v for k, v in scripts.items() if k.startswith("BlueGroup" if number == 6 else "WorkerGroup")
    )
    boot = run(script, tmp_path, FAIL_PULL="always")
    assert boot.returncode != 0
    assert len(boot.called("docker pull")) == BOOT_ATTEMPTS
    [signal] = boot.signals
    assert re.search(r"--exit-code [1-9]", signal)


# --- what the instance runs --------------------------------------------------------------------


def _unit(boot: Boot) -> str:
    return (boot.root / "etc/systemd/system/shop.service").read_text()


def test_the_container_logs_without_blocking_the_app(synthesized, tmp_path):
    _, script = _web_instance(synthesized, 3)
    unit = _unit(run(script, tmp_path))
    [start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert "--log-driver awslogs" in start
    assert "--log-opt mode=non-blocking" in start
    assert re.search(r"--log-opt max-buffer-size=\d+m", start)


# --- the CloudWatch agent: useful when it starts, harmless when it does not ----------------------


def _agent_started(boot: Boot) -> None:
    config = boot.root / AGENT_CONFIG.lstrip("/")
    assert boot.called("amazon-cloudwatch-agent-ctl") == [
        f"amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c file:{config}"
    ]
    assert json.loads(config.read_text())["traces"]["traces_collected"]["otlp"]
    assert json.loads((boot.root / PROMETHEUS_CONFIG.lstrip("/")).read_text())["scrape_configs"]
    assert "boot: CloudWatch agent started" in boot.output


@pytest.mark.parametrize("number", [1, 3, 7], ids=["box", "web group", "worker group"])
def test_the_agent_starts_before_the_app_which_is_told_where_to_send_its_traces(
    synthesized, tmp_path, number
):
    if number == 7:
        script = _worker_template(synthesized)
    else:
        _, script = _web_instance(synthesized, number)
    boot = run(script, tmp_path)
    assert boot.returncode == 0, boot.output
    _agent_started(boot)
    # The network the app's container joins has the agent's address as its gateway ...
    [network] = boot.called("docker network create")
    assert f"--gateway {HOST_ADDRESS} " in network
    assert boot.index("docker network create") < boot.index("amazon-cloudwatch-agent-ctl")
    # ... the agent listens there, and is up before the app starts sending to it.
    assert boot.index("amazon-cloudwatch-agent-ctl") < boot.index("systemctl enable --now shop")
    settings = (boot.root / "etc/shop/app.env").read_text().splitlines()
    assert f"SHOP_OTLP_ENDPOINT=http://{HOST_ADDRESS}:4318" in settings
    assert f"SHOP_TRACE_SAMPLE_RATIO={TRACE_SAMPLE_RATIO}" in settings
    assert "--env-file /etc/shop/app.env" in _unit(boot)
    assert boot.signals[-1].endswith("--exit-code 0")


@pytest.mark.parametrize(
    ("failure", "attempts", "started"),
    [("FAIL_AGENT_INSTALL", BOOT_ATTEMPTS, 0), ("FAIL_AGENT_START", 1, 1)],
    ids=["install", "start"],
)
def test_an_agent_that_fails_is_logged_and_the_app_still_starts_and_signals(
    synthesized, tmp_path, failure, attempts, started
):
    _, script = _web_instance(synthesized, 3)
    boot = run(script, tmp_path, **{failure: "always"})
    assert boot.returncode == 0, boot.output
    assert len(boot.called("dnf install -y amazon-cloudwatch-agent")) == attempts
    assert len(boot.called("amazon-cloudwatch-agent-ctl")) == started
    assert "boot: WARNING: the CloudWatch agent did not start" in boot.output
    assert boot.called("systemctl enable --now shop")
    [signal] = boot.signals
    assert signal.endswith("--exit-code 0")


def test_a_worker_whose_agent_fails_still_signals_and_reports_no_unhealthy_instance(
    synthesized, tmp_path
):
    boot = run(_worker_template(synthesized), tmp_path, FAIL_AGENT_INSTALL="always")
    assert boot.returncode == 0, boot.output
    assert "the CloudWatch agent did not start" in boot.output
    assert not boot.called("aws autoscaling set-instance-health")
    assert boot.signals[-1].endswith("--exit-code 0")


# --- workers: a crashing process is noticed ----------------------------------------------------


def test_a_worker_that_stops_answering_reports_itself_unhealthy(synthesized, tmp_path):
    boot = run(_worker_template(synthesized), tmp_path)
    assert boot.returncode == 0, boot.output
    assert "shop worker" in _unit(boot)
    # The check starts once the worker has answered: a boot that waits is not a worker that
    # stopped, and a boot that fails reports itself (see below).
    assert boot.index("curl", last=True) < boot.index("systemctl enable --now shop-health.timer")
    timer = (boot.root / "etc/systemd/system/shop-health.timer").read_text()
    assert "OnUnitActiveSec=1min" in timer

    # The timer's check, run once a minute: silent metrics count, an answer starts over ...
    check = (boot.root / "usr/local/sbin/shop-health").read_text()
    state = tmp_path / "instance"
    state.mkdir()

    def minute(index: int, **fail: str) -> Boot:
        folder = tmp_path / f"minute-{index}"
        folder.mkdir()
        return run(check, folder, SHOP_BOOT_ROOT=str(state), **fail)

    for index in range(WORKER_SILENT_CHECKS - 1):
        silent = minute(index, FAIL_METRICS="always")
        assert silent.returncode == 0 and not silent.called("aws"), silent.output
    assert not minute(100).called("aws")  # it answered: the count starts over
    for index in range(WORKER_SILENT_CHECKS - 1):
        assert not minute(200 + index, FAIL_METRICS="always").called("aws")
    # ... and a worker silent for that many checks in a row is reported, and replaced.
    stopped = minute(300, FAIL_METRICS="always")
    assert stopped.called("aws autoscaling set-instance-health") == [
        f"aws autoscaling set-instance-health --region {REGION} --instance-id {INSTANCE_ID} "
        "--health-status Unhealthy --no-should-respect-grace-period"
    ]


def test_a_worker_waits_for_its_schema_instead_of_giving_up(synthesized, tmp_path):
    """A worker exits while its database has no schema yet; systemd restarts it for as long as
    it takes (no start limit), and the boot waits for its metrics up to its usual limit."""
    boot = run(_worker_template(synthesized), tmp_path, FAIL_METRICS=str(HEALTH_CHECKS - 1))
    assert boot.returncode == 0, boot.output
    unit = _unit(boot)
    assert "Restart=always" in unit and "StartLimitIntervalSec=0" in unit
    assert "StartLimitBurst" not in unit
    [signal] = boot.signals
    assert "--exit-code 0" in signal


def test_stage_7_workers_start_after_a_web_instance_has_migrated_the_schema(synthesized):
    """Each web group's creation (and rolling update) waits for an instance that ran
    `shop migrate` and answers /healthz; the worker group is created (and updated) after both."""
    synth = synthesized[7]
    groups = synth.resources("AWS::AutoScaling::AutoScalingGroup")
    [worker] = [group for logical_id, group in groups.items() if "Worker" in logical_id]
    web = {logical_id: group for logical_id, group in groups.items() if "Worker" not in logical_id}
    assert len(web) == 2
    assert set(web) <= set(worker.get("DependsOn", []))
    scripts = boot_scripts(synth)
    for logical_id, group in web.items():
        assert int(group["CreationPolicy"]["ResourceSignal"]["Count"]) >= 1
        assert group["UpdatePolicy"]["AutoScalingRollingUpdate"]["WaitOnResourceSignals"] is True
        script = scripts[logical_id]
        assert "shop migrate && " in script
        assert script.index("shop migrate") < script.index("wait for /healthz")


def test_a_worker_signals_success_only_once_its_metrics_answer(synthesized, tmp_path):
    """The worker opens its metrics port after its database passed the schema check: the
    boot script waits for it (published on the instance's loopback only) before signalling."""
    boot = run(_worker_template(synthesized), tmp_path, FAIL_METRICS="2")
    assert boot.returncode == 0, boot.output
    probes = boot.called("curl")
    probes = [c for c in probes if "/metrics" in c]
    assert len(probes) == 3 and all(f"127.0.0.1:{WORKER_METRICS_PORT}/metrics" in c for c in probes)
    assert boot.index("systemctl enable --now shop") < boot.index("curl", last=True)
    assert boot.index("curl", last=True) < boot.index("cfn-signal")
    assert f"-p 127.0.0.1:{WORKER_METRICS_PORT}:{WORKER_METRICS_PORT} " in _unit(boot)


def test_a_worker_whose_metrics_never_answer_signals_failure(synthesized, tmp_path):
    boot = run(_worker_template(synthesized), tmp_path, FAIL_METRICS="always")
    assert boot.returncode != 0
    [signal] = boot.signals
    assert re.search(r"--exit-code [1-9]", signal)
    assert "failed to wait for the worker" in boot.output


def test_a_worker_whose_boot_fails_reports_itself_unhealthy_too(synthesized, tmp_path):
    boot = run(_worker_template(synthesized), tmp_path, FAIL_PULL="always")
    assert boot.returncode != 0
    assert boot.called("aws autoscaling set-instance-health")
    assert boot.index("cfn-signal") < boot.index("aws autoscaling set-instance-health")


def _run_check(check: Path, folder: Path, **env: str) -> Boot:
    folder.mkdir()
    return run(check.read_text(), folder, **env)


def test_the_worker_role_may_mark_only_its_own_group_unhealthy(synthesized):
    synth = synthesized[7]
    [group_id] = [k for k in synth.resources("AWS::AutoScaling::AutoScalingGroup") if "Worker" in k]
    statements = [
        statement
        for policy in synth.resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Action"] == "autoscaling:SetInstanceHealth"
    ]
    [statement] = statements
    condition = statement["Condition"]["StringEquals"]
    assert condition["autoscaling:ResourceTag/aws:cloudformation:logical-id"] == group_id
    assert condition["autoscaling:ResourceTag/aws:cloudformation:stack-id"] == {
        "Ref": "AWS::StackId"
    }


def test_the_worker_group_has_no_load_balancer_check_so_it_relies_on_the_report(synthesized):
    groups = synthesized[7].resources("AWS::AutoScaling::AutoScalingGroup")
    [worker] = [g for k, g in groups.items() if "Worker" in k]
    assert worker["Properties"]["HealthCheckType"] == "EC2"
    assert "TargetGroupARNs" not in worker["Properties"]


def test_no_fake_is_left_unused_by_the_web_boot(synthesized, tmp_path):
    # Guards the fakes themselves: a command renamed in the script would silently bypass them.
    _, script = _web_instance(synthesized, 3)
    boot = run(script, tmp_path)
    used = {call.split()[0] for call in boot.calls}
    assert used == set(FAKES) - {"sleep"}


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.parametrize("number", [1, 3, 7])
def test_the_units_the_boot_script_writes_are_ones_systemd_accepts(synthesized, tmp_path, number):
    scripts = boot_scripts(synthesized[number])
    script = next(
        v for k, v in scripts.items() if k.startswith(("Instance1", "WebGroup", "WorkerGroup"))
    )
    boot = run(script, tmp_path)
    units = sorted((boot.root / "etc/systemd/system").iterdir())
    assert units
    checked = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        check=False,
    )

    # docker is not installed here, and what the script installs is under its scratch root;
    # everything else systemd would object to is a finding.
    def installed(line: str) -> bool:
        command = re.search(r"Command (\S+) is not executable", line)
        return bool(command) and (boot.root / command[1].lstrip("/")).is_file()

    findings = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if line.strip() and "docker" not in line and not installed(line)
    ]
    assert findings == []
