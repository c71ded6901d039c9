"""The notebooks in ``notebooks/`` run top to bottom offline, and are committed without outputs.

Each notebook is executed by nbclient in a ``python3`` kernel started from this interpreter's
environment, with ``OPENAI_API_KEY`` removed (so every notebook takes its offline path) and the
Hugging Face hub offline (the embedding model is the packaged local one).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell; loading torch and the embedding model dominates

# Prepended to each notebook before it runs: the kernel must be this test's environment,
# not some other "python3" kernelspec found on the machine.
SAME_INTERPRETER = (
    "import sys as _sys\n"
    f"assert _sys.prefix == {sys.prefix!r}, "
    "f'the python3 kernel runs {_sys.executable}, not the test environment'\n"
    "del _sys"
)


def offline_env() -> dict[str, str]:
    """The test's environment without a model key: notebooks must say OFFLINE and not call out."""
    dropped = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MPLBACKEND")  # MPLBACKEND: keep inline plots
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_there_are_notebooks() -> None:
    """The five documented notebooks exist (a renamed one must not silently stop being run)."""
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs(path: Path) -> None:
    """Notebooks are stored clean: no outputs, no execution counts, the python3 kernel."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_offline(path: Path) -> None:
    """Every cell runs without an error; nothing is left behind in notebooks/."""
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SAME_INTERPRETER))
    before = sorted(NOTEBOOKS_DIR.rglob("*"))
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},  # the kernel's working directory
    )
    try:
        client.execute(env=offline_env())
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
    text = outputs_text(notebook)
    if "MODE:" in text:  # notebooks that could call a model say which mode runs
        assert "MODE: OFFLINE" in text and "MODE: LIVE" not in text
    assert sorted(NOTEBOOKS_DIR.rglob("*")) == before
