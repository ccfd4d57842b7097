"""docs/architecture.md stays in step with the package: one line for every module file under
qwenkit/ and none for a module that is gone; the README shows the same diagram."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"
_DIAGRAM = re.compile(r"<!-- diagram:begin -->\n(.*?)<!-- diagram:end -->", re.S)


def _package_modules() -> set[str]:
    """Dotted names of every module file in the package (a package's __init__ as the package)."""
    names = set()
    for path in (ROOT / "qwenkit").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(parts))
    return names


def _documented_modules() -> list[str]:
    """The module each table row of docs/architecture.md names in its first cell."""
    return re.findall(r"^\| `(qwenkit(?:\.\w+)*)` \|", ARCHITECTURE.read_text(), re.M)


def test_every_module_has_one_line_in_architecture_md():
    documented = _documented_modules()
    modules = _package_modules()
    assert len(modules) > 40, f"found only {sorted(modules)}: is the package where this test looks?"
    missing = sorted(modules - set(documented))
    gone = sorted(set(documented) - modules)
    twice = sorted({m for m in documented if documented.count(m) > 1})
    assert not missing, f"add a line for each of these modules to docs/architecture.md: {missing}"
    assert not gone, f"docs/architecture.md names modules that do not exist (remove or rename): {gone}"
    assert not twice, f"docs/architecture.md has more than one line for: {twice}"


def test_readme_shows_the_architecture_diagram():
    doc = _DIAGRAM.search(ARCHITECTURE.read_text())
    readme = _DIAGRAM.search(README.read_text())
    assert doc and readme, "both docs/architecture.md and README.md keep the diagram between diagram markers"
    assert readme.group(1) == doc.group(1), "README's diagram differs from docs/architecture.md's: copy it over"
    assert "docs/architecture.md" in README.read_text()


# names of the notes beside the checkout that the project once read; the repo must not need them
_OUTSIDE = re.compile(r"\.\./shared\b|\b(?:FACTS|DESIGN)\.md\b")


def test_nothing_points_outside_the_repository():
    """The repository stands alone: no tracked text file refers to ../shared or its
    FACTS.md / DESIGN.md (their content lives in docs/facts.md and docs/design.md)."""
    import subprocess
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    text = {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".yaml", ".yml", ".ipynb"}
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix in text or name == "Makefile":
            if path.is_file() and path != Path(__file__).resolve():
                hits += [f"{name}:{i}" for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                         if _OUTSIDE.search(line)]
    assert not hits, f"references to notes outside the repository: {hits[:10]}"
