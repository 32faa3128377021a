"""`python -m loadtests.ladder [--stages 3,4]`: build, load, measure and tear down each stage in
turn, write ladder-results/stage-<n>.json, then the report (docs/ladder/). With `--faults`: one
fault at a time under a steady load (loadtests/ladder/faults.py, report in docs/faults/); with
`--soak`: a long steady run on one stage (loadtests/ladder/soak.py)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from loadtests.ladder.components import ROOT, ComponentFailed
from loadtests.ladder.runner import LOCUSTFILE, Load, run_stage, say, write_missing
from loadtests.ladder.stages import parse_stages


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.ladder", description=__doc__)
    parser.add_argument(
        "--stages", default=os.environ.get("STAGES", ""), help="e.g. 3,4 or 2-5 (default: all)"
    )
    parser.add_argument("--step-s", type=float, default=12, help="seconds per step (12)")
    parser.add_argument("--steps", type=int, default=30, help="steps of the ramp, at most (30)")
    parser.add_argument(
        "--stop-after-missed",
        type=int,
        default=2,
        help="end a stage's ramp after this many steps in a row past the objective (2; 0: never)",
    )
    parser.add_argument("--step-users", type=int, default=10, help="users added per step (10)")
    parser.add_argument(
        "--fine-passes",
        type=int,
        default=3,
        help="passes of half steps around each step ramp's knee, for its spread (3; 0: none)",
    )
    parser.add_argument("--fine-steps", type=int, default=5, help="steps of a fine pass (5)")
    parser.add_argument("--fine-step-s", type=float, default=15, help="seconds per fine step (15)")
    parser.add_argument("--p95-ms", type=float, default=500, help="latency objective (500)")
    parser.add_argument("--warmup-s", type=float, default=10, help="discarded warm-up (10)")
    parser.add_argument("--daily-s", type=float, default=150, help="stage 6's day, seconds (150)")
    parser.add_argument(
        "--daily-peak-users",
        type=int,
        default=0,
        help="stage 6's busiest hour, users (default: 80 %% of the users at its ramp's knee)",
    )
    parser.add_argument(
        "--probe-s", type=float, default=20, help="stage 5's steady passes, seconds each (20)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "ladder-results")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "ladder")
    parser.add_argument("--locustfile", type=Path, default=LOCUSTFILE)
    parser.add_argument("--no-budgets", action="store_true", help="run without cgroup CPU quotas")
    parser.add_argument("--faults", action="store_true", help="faults under load (docs/faults/)")
    parser.add_argument("--soak", action="store_true", help="a long steady run (docs/faults/)")
    parser.add_argument("--fault", default="", help="with --faults: e.g. app-kill,primary-freeze")
    parser.add_argument(
        "--users", type=int, default=0, help="steady users (default: from the knee)"
    )
    parser.add_argument("--soak-min", type=float, default=30, help="the soak's minutes (30)")
    args = parser.parse_args(argv)
    if args.faults or args.soak:
        from loadtests.ladder import faults

        return faults.main(args)
    try:
        stages = parse_stages(args.stages)
    except ValueError as exc:
        parser.error(str(exc))
    if args.fine_passes < 0 or args.fine_steps < 1:
        parser.error("--fine-passes must be 0 or more and --fine-steps at least 1")
    for name in ("step_s", "warmup_s", "daily_s", "p95_ms", "fine_step_s", "probe_s"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.steps < 1 or args.step_users < 1:
        parser.error("--steps and --step-users must be at least 1")
    if args.daily_peak_users < 0:
        parser.error("--daily-peak-users must be 0 (from the knee) or more")
    if args.stop_after_missed < 0:
        parser.error("--stop-after-missed must be 0 or more")
    if not args.locustfile.is_file():
        parser.error(f"no Locust suite at {args.locustfile}")
    load = Load(
        step_s=args.step_s,
        steps=args.steps,
        step_users=args.step_users,
        stop_after_missed=args.stop_after_missed,
        p95_ms=args.p95_ms,
        warmup_s=args.warmup_s,
        daily_s=args.daily_s,
        daily_peak_users=args.daily_peak_users,
        locustfile=args.locustfile,
        fine_passes=args.fine_passes,
        fine_steps=args.fine_steps,
        fine_step_s=args.fine_step_s,
        probe_s=args.probe_s,
    )
    signal.signal(signal.SIGTERM, _interrupted)
    began = time.monotonic()
    failed = []
    for number, stage in enumerate(stages, 1):
        say(f"[{number}/{len(stages)}] stage {stage.number} {stage.name}")
        try:
            result = run_stage(stage, load, args.out, enforce=not args.no_budgets)
        except KeyboardInterrupt:
            say("interrupted: every component of the stage was stopped")
            return 130
        except (ComponentFailed, OSError, subprocess.SubprocessError) as exc:
            say(f"stage {stage.number} could not run: {exc}")
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            write_missing(stage, load, args.out, f"could not run here: {first_line}")
            failed.append(stage.number)
            continue
        if result["invariants"].get("ok"):
            verdict = "invariants hold"
        else:
            # Reported, not fatal: past the knee the suite loses answers to timeouts, and an
            # order it never heard of shows as a stock mismatch (loadtests/invariants.py).
            broken = [n for n, c in result["invariants"].get("checks", {}).items() if not c["ok"]]
            verdict = f"invariants BROKEN: {', '.join(broken)} (see {args.out})"
        say(f"  stage {stage.number} done: {len(result['steps'])} steps, {verdict}")
        if result["missing"]:
            failed.append(stage.number)
    say(f"ladder done in {(time.monotonic() - began) / 60:.1f} min; results in {args.out}")
    if (ROOT / "loadtests" / "report.py").is_file():
        command = [sys.executable, "-m", "loadtests.report", str(args.out), str(args.report)]
        if args.report.resolve() == (ROOT / "docs" / "ladder").resolve() and not args.stages:
            # A full run is the one the README and the docs site's home page show.
            for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
                command += ["--readme", str(page)]
        made = subprocess.run(command, cwd=ROOT)
        if made.returncode != 0:
            failed.append(0)
    else:
        say("no loadtests/report.py yet: the report is skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
