"""The ladder report renders the table and the charts a reader sees, from recorded results."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtests import analysis, report
from loadtests.ladder import sizes

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def results() -> list[dict[str, Any]]:
    return report.load_results(DATA)


def daily_stage() -> dict[str, Any]:
    """A stage-6 result with a compressed day: the fleet grows with the peak and shrinks."""
    points = []
    for i in range(30):
        users = 6 + int(54 * max(0.0, 1 - abs(i - 21) / 9))
        instances = 2 if users < 30 else 3 if users < 50 else 4
        points.append(
            {"t_s": 10.0 * i, "users": users, "instances": instances, "rps": users * 1.9,
             "p95_ms": 180.0 + 4 * users}
        )  # fmt: skip
    stage6: dict[str, Any] = json.loads((DATA / "stage-4.json").read_text())
    return stage6 | {"stage": 6, "name": "auto-scaling", "daily": points}


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width >= 600 and height >= 300


def test_the_report_has_one_row_per_stage_with_its_knee_bottleneck_and_cost(
    tmp_path: Path,
) -> None:
    written = report.write_report(results(), tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert tmp_path / "README.md" in written
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| # | stage | knee (requests/s)")
    assert rows[1].startswith(
        "| 2 | separate-db | 60 | - | 18 | 380 | app | app 0.50 of 0.5 CPU (100%) past the knee, "
        "94% at it"
    )
    assert rows[2].startswith("| 3 | horizontal | 95 | - | 24 | 420 | postgres | postgres 0.50")
    assert rows[3].startswith("| 4 | read-replicas | 100 | - | 24 | 260 | replica | replica 0.50")
    cost = {n: s["cost_per_hour_usd"] for n, s in sizes.load().items()}
    assert rows[1].endswith(f"| {cost[2]:.2f} |") and rows[3].endswith(f"| {cost[4]:.2f} |")
    assert "Stage 2 to 3: the knee rises from 60 to 95 requests/s here." in text
    assert "Stage 4: the bottleneck is replica, as STAGES.md predicts." in text
    assert "![Throughput and p95 against users, every stage](throughput.png)" in text
    assert "- Stage 3 (horizontal), past the knee (30 users, 97 requests/s, p95 1500 ms" in text


def test_the_charts_are_real_images_and_the_daily_one_needs_stage_6(tmp_path: Path) -> None:
    report.write_report(results(), tmp_path)
    assert_png(tmp_path / "throughput.png")
    assert_png(tmp_path / "cpu.png")
    assert_png(tmp_path / "projection.png")
    assert not (tmp_path / "daily.png").exists()

    report.write_report([*results(), daily_stage()], tmp_path)
    assert_png(tmp_path / "daily.png")
    assert "(daily.png)" in (tmp_path / "README.md").read_text()


def test_a_stage_that_could_not_run_says_why_and_the_story_says_what_is_missing(
    tmp_path: Path,
) -> None:
    missing = {"stage": 5, "name": "cache-cdn", "missing": "the CDN stand-in is not built yet"}
    report.write_report([*results(), missing], tmp_path)
    text = (tmp_path / "README.md").read_text()
    row = "| 5 | cache-cdn | - | - | - | - | - | not run: the CDN stand-in is not built yet |"
    assert row in text
    assert "Stage 4 to 5: not compared, a knee is missing" in text


def test_a_knee_that_does_not_rise_is_said_plainly(tmp_path: Path) -> None:
    flat = results()
    flat[1]["steps"] = flat[0]["steps"]  # stage 3 measured no better than stage 2
    report.write_report(flat, tmp_path)
    text = (tmp_path / "README.md").read_text()
    said = "Stage 2 to 3: the knee does NOT rise (60 to 60 requests/s here). Past the knee ("
    assert said in text
    # ... with the figures that say why: each component's share of its budget past the knee.
    [line] = [x for x in text.splitlines() if "Stage 2 to 3" in x]
    assert "of budget" in line and "app " in line


def test_knees_compare_at_the_stacks_sizes_when_the_runs_recorded_their_factor(
    tmp_path: Path,
) -> None:
    """Each stage runs at its own CPUs per vCPU: a knee that rises here can fall at the
    stacks' sizes, and the story and the table say the latter."""
    scaled = results()
    for result, factor in zip(scaled, (0.2, 0.1, 0.05), strict=True):
        result["cpus_per_vcpu"] = factor
    report.write_report(scaled, tmp_path)
    text = (tmp_path / "README.md").read_text()
    # 59.8 / 0.2 = 299, 94.9 / 0.1 = 949, 100 / 0.05 = 2,000.
    assert "Stage 2 to 3: the knee rises from 299 to 949 requests/s at the stacks' sizes." in text
    assert "| 4 | read-replicas | 100 | 2,000 | 24 |" in text
    scaled[1]["cpus_per_vcpu"] = 0.5  # 94.9 / 0.5 = 190: fewer than stage 2's 299
    report.write_report(scaled, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "Stage 2 to 3: the knee does NOT rise (299 to 190 requests/s at the stacks' sizes)" in (
        text
    )


def test_a_bottleneck_other_than_the_predicted_one_comes_with_the_figures_that_say_why(
    tmp_path: Path,
) -> None:
    other = results()
    other[2]["budgets"] = {**other[2]["budgets"], "replica": 5.0}  # the replica never fills
    report.write_report(other, tmp_path)
    [line] = [x for x in (tmp_path / "README.md").read_text().splitlines() if "Stage 4:" in x]
    assert "not replica as STAGES.md predicts. Past the knee (" in line
    assert "replica " in line.split("Past the knee")[1] and "of budget" in line


def test_bad_results_get_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "stage-3.json").write_text("{not json")
    (tmp_path / "stepless").mkdir()
    partial = json.loads((DATA / "stage-2.json").read_text())
    del partial["steps"][1]["p95_ms"]
    (tmp_path / "stepless" / "stage-2.json").write_text(json.dumps(partial))
    for folder, message in (
        (tmp_path / "nowhere", "is not a folder"),
        (empty, "holds no stage-<n>.json"),
        (tmp_path / "broken", "stage-3.json: not readable JSON"),
        (tmp_path / "stepless", "stage-2.json: step 1 lacks p95_ms"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "loadtests.report", str(folder), str(tmp_path / "out")],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2 and message in run.stderr
        assert "Traceback" not in run.stderr


def test_the_cli_writes_the_report_where_it_is_told(tmp_path: Path) -> None:
    source = tmp_path / "ladder-results"
    shutil.copytree(DATA, source)
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.report", str(source), str(tmp_path / "docs")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert {p.name for p in (tmp_path / "docs").iterdir()} == {
        "README.md",
        "throughput.png",
        "cpu.png",
        "projection.png",
        report.RAW,
    }


@pytest.mark.skipif(importlib.util.find_spec("aws_cdk") is None, reason="needs the infra extra")
def test_the_cost_per_hour_is_the_infra_catalogs() -> None:
    sys.path.insert(0, str(ROOT / "infra"))
    try:
        import cost  # infra/cost.py: imports aws_cdk, hence the export the report reads
    finally:
        sys.path.remove(str(ROOT / "infra"))
    catalog = {stage.number: round(cost.hourly(stage), 4) for stage in cost.STAGES}
    assert catalog == {n: s["cost_per_hour_usd"] for n, s in sizes.load().items()}


def test_the_report_keeps_its_raw_results_and_regenerates_the_same_page_from_them(
    tmp_path: Path,
) -> None:
    first = tmp_path / "first"
    report.write_report(results(), first)
    raw = sorted((first / report.RAW).glob("stage-*.json.gz"))
    assert [path.name for path in raw] == [f"stage-{r['stage']}.json.gz" for r in results()]
    again = tmp_path / "again"
    code = subprocess.run(
        [sys.executable, "-m", "loadtests.report", str(first / report.RAW), str(again)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert code.returncode == 0, code.stderr
    assert (again / "README.md").read_text() == (first / "README.md").read_text()
    assert [p.read_bytes() for p in sorted((again / report.RAW).iterdir())] == [
        p.read_bytes() for p in raw
    ]


def test_other_runs_of_the_write_heavy_stages_are_kept_and_found_again(tmp_path: Path) -> None:
    """`--repeat` folders join the comparison of stages 7 and 8 and are kept under
    raw/repeats/<n>/, where regenerating the page from raw finds them."""
    heavy = json.loads((DATA / "stage-3.json").read_text())
    writes = [
        dict(step, signals={**step.get("signals", {}), "orders_per_s": step["rps"] / 4})
        for step in heavy["steps"]
    ]
    seven = {**heavy, "stage": 7, "write_heavy": writes}
    eight = {**heavy, "stage": 8, "write_heavy": writes}
    main, other = tmp_path / "main", tmp_path / "other"
    for folder in (main, other):
        folder.mkdir()
        for result in (seven, eight):
            (folder / f"stage-{result['stage']}.json").write_text(json.dumps(result))
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "loadtests.report"]
    done = subprocess.run(
        [*cli, str(main), str(out), "--repeat", str(other)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = (out / "README.md").read_text()
    assert "2 runs of stages 7 and 8" in page
    kept = sorted(p.name for p in (out / report.RAW / report.REPEATS / "1").iterdir())
    assert kept == ["stage-7.json.gz", "stage-8.json.gz"]
    again = tmp_path / "again"
    done = subprocess.run(
        [*cli, str(out / report.RAW), str(again)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (again / "README.md").read_text() == page


def test_the_report_says_where_its_figures_come_from(tmp_path: Path) -> None:
    from loadtests.ladder.provenance import provenance

    stamped = results()
    stamped[0]["provenance"] = provenance()
    report.write_report(stamped, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "## Where these figures come from" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {stamped[0]['stage']} ("))
    assert stamped[0]["provenance"]["commit"] in row and stamped[0]["provenance"]["kernel"] in row
    assert "not recorded" in text  # the fixtures of older runs carry none, and it is said


def test_the_report_shows_each_routes_p95_at_the_knee_and_the_model_beside_the_peak() -> None:
    from loadtests import analysis

    found = results()
    page = report.markdown(found, charts=[])
    assert "## p95 per route at the knee" in page
    for result in found:
        steps = result["steps"]
        at = analysis.knee(steps, p95_ms=float(result["p95_objective_ms"]))
        if at is None:
            continue
        orders = steps[at]["by_name"]["POST /orders"]["p95_ms"]
        routes = next(
            line
            for line in page.split("## p95 per route at the knee")[1].splitlines()
            if line.startswith(f"| {result['stage']} | ")
        )
        assert f"| {orders:.0f} |" in routes
    assert "## The model: service demands and predicted capacity" in page
    assert "## Projected to AWS" in page


def test_the_readme_table_is_replaced_by_the_runs_and_nothing_else_moves(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before, after = "# Shop\n\nIntro.\n\n", "\n\n## Two commands\n"
    readme.write_text(f"{before}{report.README_BEGIN}\n| old |\n{report.README_END}{after}")
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.report", str(DATA), str(tmp_path / "out"),
         "--readme", str(readme)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after) and "| old |" not in text
    table = report.table([analysis.summarise(r) for r in results()])
    assert table in text and table in (tmp_path / "out" / "README.md").read_text()

    unmarked = tmp_path / "plain.md"
    unmarked.write_text("# Shop\n")
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.report", str(DATA), str(tmp_path / "out"),
         "--readme", str(unmarked)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "has no ladder table markers" in run.stderr
    assert unmarked.read_text() == "# Shop\n"


def test_stage_6_compares_its_day_on_the_autoscaled_and_the_fixed_fleet(tmp_path: Path) -> None:
    stage6 = daily_stage()
    for point in stage6["daily"]:
        point["seconds"] = 10.0
    # The fixed fleet of 2 serves the same day with its p95 over the objective at the peak.
    stage6["daily_fixed"] = [
        point | {"instances": 2, "p95_ms": 900.0 if point["users"] >= 40 else 200.0}
        for point in stage6["daily"]
    ]
    report.write_report([*results(), stage6], tmp_path)
    text = (tmp_path / "README.md").read_text()
    scaled = sum(10.0 * p["instances"] for p in stage6["daily"])
    over = sum(1 for p in stage6["daily_fixed"] if p["p95_ms"] >= 500)
    assert "## Stage 6: the same day, autoscaled and on a fixed fleet" in text
    assert f"would have used {4 * 300:,.0f}: the autoscaler saved {1 - scaled / 1200:.0%}" in text
    assert f"| autoscaled (target tracking at 60 % CPU) | {scaled:,.0f} |" in text
    assert f"| fixed at stage 5's 2 instances | {2 * 300:,.0f} |" in text
    assert f"| {over} of 30 | 900 |" in text

    del stage6["daily_fixed"]  # a run from before the fixed day: no section, no guess
    report.write_report([*results(), stage6], tmp_path)
    assert "the same day, autoscaled" not in (tmp_path / "README.md").read_text()


def test_the_committed_report_and_the_readme_table_come_from_the_committed_raw_results() -> None:
    """docs/ladder/README.md and the README's ladder table are what the report writes from
    docs/ladder/raw/: nobody edited a figure by hand, and both are from the same results."""
    folder = ROOT / "docs" / "ladder"
    committed = report.load_results(folder / report.RAW)
    charts = [name for name in report.CHARTS if (folder / name).is_file()]
    repeats = report.load_repeats(folder / report.RAW)
    page = report.markdown(committed, charts=charts, repeats=repeats)
    assert (folder / "README.md").read_text() == page + "\n"
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
        assert report.readme_block(committed) in page.read_text(), page
    # Every stage of the ladder once. Stages run again after a fix come from a later commit:
    # the report names each commit beside the stages it measured.
    assert [r["stage"] for r in committed] == list(range(1, 9))
    written = (folder / "README.md").read_text().split("## Where these figures come from")[1]
    for commit in {(r.get("provenance") or {}).get("commit") for r in committed}:
        assert commit and commit[:12] in written, commit


def test_stage_fives_popularity_probe_is_a_table_of_cache_hits_and_cdn_offload() -> None:
    stage5: dict[str, Any] = json.loads((DATA / "stage-4.json").read_text())
    budgets = {"app": 0.3, "postgres": 0.15}
    probe = [
        {"popularity": kind, "users": 50, "rps": rps, "p95_ms": p95, "requests": 1000,
         "failures": 0, "cpu": {"app": app},
         "signals": {"cache_hit_ratio": hits, "cdn_offload": offload}}
        for kind, rps, p95, app, hits, offload in (
            ("skew", 60.0, 180.0, 0.24, 0.35, 0.30),
            ("uniform", 52.0, 420.0, 0.29, 0.05, 0.12),
            ("zipf:1", 63.0, 150.0, 0.22, 0.55, 0.41),
        )
    ]  # fmt: skip
    stage5 |= {"stage": 5, "name": "cache-cdn", "budgets": budgets, "popularity": probe}
    lines = report.popularity_section([stage5])
    assert lines[0] == "## Stage 5: the cache and the CDN under three popularities"
    assert "The knee's 50 users held steady" in lines[2] and "s = 1" in lines[2]
    assert "| uniform | 52 | 420 | 5% | 12% | 97% | 0.0% |" in lines
    assert "| zipf:1 | 63 | 150 | 55% | 41% | 73% | 0.0% |" in lines
    assert report.popularity_section(results()) == []  # no stage ran the probe
