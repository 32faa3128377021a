"""infra/ talks to the app only through its container and settings: it never imports `app`."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(source: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_neither_infra_nor_its_tests_import_the_app():
    sources = [*(ROOT / "infra").rglob("*.py"), *(ROOT / "tests" / "infra").rglob("*.py")]
    # cdk.out is synth output (git-ignored): its image asset is a copy of the app, not infra code;
    # node_modules (git-ignored) holds the CDK CLI, whose `cdk init` templates are not Python.
    ignored = {"cdk.out", "node_modules"}
    sources = [s for s in sources if not ignored & set(s.relative_to(ROOT).parts)]
    offenders = [str(s.relative_to(ROOT)) for s in sources if "app" in _imported_modules(s)]
    assert offenders == []
