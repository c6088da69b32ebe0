"""The README's five-minute tour runs as written (with fewer images and epochs), and the
package docstring shows the same code."""
import re
import textwrap
from pathlib import Path

import glae

ROOT = Path(__file__).resolve().parents[1]


def tour():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no python block"
    return blocks[0]


def test_package_docstring_shows_the_readme_tour():
    doc = textwrap.dedent(glae.__doc__.split("Five-minute tour::\n", 1)[1])
    assert tour().strip() in doc


def test_readme_tour_runs(tmp_path, monkeypatch):
    code = tour()
    for old, new in (("synthetic_faces(2400, size=64)", "synthetic_faces(160, size=64)"),
                     ("stage1_epochs=6, stage2_epochs=2", "stage1_epochs=1, stage2_epochs=1"),
                     ("(images[va], ages[va]))", "(images[va], ages[va]), progress=False)")):
        assert old in code, f"the tour no longer has {old!r}: update this test"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    model, va = scope["model"], scope["va"]
    assert isinstance(model, glae.Model) and model.stage2_trained
    assert (tmp_path / "model.safetensors").exists()
    assert scope["report"]["mae"] > 0
    assert scope["pred"].shape == (len(va),)
