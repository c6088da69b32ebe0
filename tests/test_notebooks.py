"""The notebooks are tested like code: each is executed top to bottom with nbclient (kernel
python3) in a temporary working directory, with GLAE_NB_FAST=1 (smaller runs) and no
display. Skipped when nbclient, nbformat or ipykernel are not installed (the `test` extra
installs them). The committed files must have their outputs cleared."""
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ["01_quickstart.ipynb", "02_your_own_data.ipynb", "03_long_tail_analysis.ipynb"]
TIMEOUT = 300  # per cell, seconds; a fast run of a whole notebook takes well under a minute


def _read(name):
    return nbformat.read(os.path.join(NB_DIR, name), as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_valid_and_clear(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for c in code:
        assert c.outputs == [] and c.execution_count is None, \
            f"{name}: outputs must be cleared (python notebooks/make_notebooks.py rewrites them)"
    assert "GLAE_NB_FAST" in code[0].source  # the sizes the test makes smaller


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    nb = _read(name)
    # the kernel is a child process: it inherits this environment
    monkeypatch.setenv("GLAE_NB_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT] + [p for p in
                       os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks write under tempfile.mkdtemp()
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:  # show the failing cell's traceback
        pytest.fail(f"{name} failed:\n{e}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    # every figure cell produced a picture, and glae found itself from the checkout
    pngs = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)
    assert pngs >= {"01_quickstart.ipynb": 1, "02_your_own_data.ipynb": 0,
                    "03_long_tail_analysis.ipynb": 7}[name]
    first = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "fast=True" in first, first
    assert sys.executable  # the kernel is this interpreter's (ipykernel's python3 spec)
