"""The Colab notebook runs headless on the smoke config.

Its code cells are executed in order in one namespace, as a kernel would,
except shell and magic lines (clone, cd, pip), which the test environment has
already done; the cell tagged "parameters" is followed by SMOKE = True.
"""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_runs_the_smoke_reproduction_and_every_cell_reruns(tmp_path, monkeypatch):
    pytest_display = []
    with open(os.path.join(ROOT, "launch", "colab.ipynb")) as f:
        notebook = json.load(f)
    # Opened from a clone: the notebook finds the repository from its folder, no clone.
    monkeypatch.chdir(os.path.join(ROOT, "launch"))
    namespace = {}
    # Run every cell, then every cell again (a user rerunning the notebook).
    for cell in notebook["cells"] * 2:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("!", "%"))]
        exec(compile("\n".join(lines), "colab.ipynb", "exec"), namespace)
        if "parameters" in cell["metadata"].get("tags", []):
            namespace.update(SMOKE=True, WORKDIR=str(tmp_path / "colab"))
            # display() would need a notebook front end: record what is shown.
            import IPython.display

            monkeypatch.setattr(IPython.display, "display", pytest_display.append)
    assert namespace["ROOT"] == ROOT and os.getcwd() == ROOT
    assert os.path.exists(tmp_path / "colab" / "report.md")
    shown = [str(getattr(x, "data", "")) for x in pytest_display]
    assert sum("What each stopping rule would have cost" in text for text in shown) == 2
    assert any(
        "Bias onset" in str(getattr(x, "data", "")) or "Inconclusive" in str(getattr(x, "data", ""))
        for x in pytest_display
    )
