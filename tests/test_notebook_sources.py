"""Every committed notebook is what its one source in tools/notebooks/ generates.

The notebooks are generated into a temporary folder and compared cell by cell (type and
source); notebooks/ itself is never rewritten here. On a difference: `python tools/nb.py`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REGENERATE = "regenerate with: python tools/nb.py"


def _nb_tool():
    return load_script("tools/nb.py", "nb_tool")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generated_notebooks")
    _nb_tool().generate(out)
    return out


def _cells(path: Path) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nbformat.read(str(path), as_version=4).cells]


def test_every_notebook_has_exactly_one_source():
    described = _nb_tool().sources()  # raises if two sources describe one notebook
    assert sorted(described) == [p.stem for p in COMMITTED], (
        "notebooks/ and tools/notebooks/ disagree: each notebook needs one source, each source a committed notebook")


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_notebook_matches_its_source(path, generated):
    committed = nbformat.read(str(path), as_version=4)
    for i, cell in enumerate(committed.cells):
        assert not cell.get("outputs"), f"cell {i} of {path.name} has committed outputs"
    want, have = _cells(generated / path.name), _cells(path)
    for i, (w, h) in enumerate(zip(want, have, strict=False)):  # the first differing cell, then the counts
        assert h == w, f"{path.name} cell {i} differs from its source ({REGENERATE})"
    assert len(have) == len(want), f"{path.name} has {len(have)} cells, its source {len(want)} ({REGENERATE})"


def test_check_names_a_drifted_notebook(generated, tmp_path):
    """The tool's own check (`python tools/nb.py --check`) catches an edit and a missing file."""
    tool = _nb_tool()
    for p in generated.glob("*.ipynb"):
        (tmp_path / p.name).write_text(p.read_text())
    assert tool.differences(tmp_path) == []
    edited = tmp_path / "03_fit.ipynb"
    nb = json.loads(edited.read_text())
    nb["cells"][0]["source"] += "\nedited by hand"
    edited.write_text(json.dumps(nb, indent=1))
    (tmp_path / "08_room.ipynb").unlink()
    diffs = tool.differences(tmp_path)
    assert any(d.startswith("03_fit.ipynb: differs from nb03.py") for d in diffs), diffs
    assert any(d.startswith("08_room.ipynb: described by nb08.py") for d in diffs), diffs
    assert len(diffs) == 2, diffs
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "nb.py"), "--check", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1 and "03_fit.ipynb" in run.stdout and REGENERATE in run.stderr


def test_two_sources_for_one_notebook_is_an_error(tmp_path):
    for name in ("nb01.py", "nb01_again.py"):
        (tmp_path / name).write_text('NOTEBOOKS = {"01_x": [("md", "# x")]}\n')
    with pytest.raises(ValueError, match="01_x is described by both nb01.py and nb01_again.py"):
        _nb_tool().sources(tmp_path)
