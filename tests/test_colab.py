"""The Colab notebook runs headless on the smoke config.

Its code cells are executed in order in one namespace, as a kernel would,
except shell and magic lines (clone, cd, pip), which the test environment has
already done; the cell tagged "parameters" is followed by SMOKE = True.
"""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_runs_the_smoke_reproduction(tmp_path, monkeypatch):
    pytest_display = []
    with open(os.path.join(ROOT, "launch", "colab.ipynb")) as f:
        notebook = json.load(f)
    monkeypatch.chdir(ROOT)
    namespace = {}
    for cell in notebook["cells"]:
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
    assert os.path.exists(tmp_path / "colab" / "report.md")
    assert any(
        "Bias onset" in str(getattr(x, "data", "")) or "Inconclusive" in str(getattr(x, "data", ""))
        for x in pytest_display
    )
