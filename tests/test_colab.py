"""The Colab notebook runs headless on the smoke config.

Opened from a clone, its code cells are executed in order in one namespace, as
a kernel would, except shell and magic lines (pip), which the test environment
has already done. Copied out of the repository, it runs in a Jupyter kernel
(nbclient) and clones the repository itself. The cell tagged "parameters" is
followed by SMOKE = True.
"""

import json
import os
import subprocess

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "launch", "colab.ipynb")


def _without_magic(line):
    """A shell or magic line becomes `pass` at its indentation (it may be a block's body)."""
    stripped = line.lstrip()
    if stripped.startswith(("!", "%")):
        return line[: len(line) - len(stripped)] + "pass"
    return line


def test_notebook_runs_the_smoke_reproduction_and_every_cell_reruns(tmp_path, monkeypatch):
    pytest_display = []
    with open(NOTEBOOK) as f:
        notebook = json.load(f)
    # Opened from a clone: the notebook finds the repository from its folder, no clone.
    monkeypatch.chdir(os.path.join(ROOT, "launch"))
    namespace = {}
    # Run every cell, then every cell again (a user rerunning the notebook).
    for cell in notebook["cells"] * 2:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines = [_without_magic(ln) for ln in source.splitlines()]
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


def _is_git_clone(folder):
    done = subprocess.run(["git", "-C", folder, "rev-parse"], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _is_git_clone(ROOT), reason="the notebook clones the repository")
def test_notebook_copied_out_clones_the_repository_and_runs_twice_in_a_kernel(
    tmp_path, monkeypatch
):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    workdir = tmp_path / "colab"
    notebook.cells.insert(
        tagged[0] + 1, nbformat.v4.new_code_cell(f"SMOKE = True\nWORKDIR = {str(workdir)!r}")
    )
    alone = tmp_path / "alone"  # a folder outside any clone, as Colab's /content
    alone.mkdir()
    # Any address git clones: this checkout (its last commit) stands in for the public URL.
    monkeypatch.setenv("DIFFUSION_BIAS_REPO_URL", ROOT)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for run in range(2):  # the second run reuses the clone and the finished run
        client = nbclient.NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(alone)}},
        )
        client.execute()
        text = "\n".join(
            output.get("text", "") + str(output.get("data", {}).get("text/markdown", ""))
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.outputs
        )
        assert f"Repository: {alone / 'diffusion_bias_repo'}" in text, run
        assert "orbax" not in text.lower(), run
        assert "What each stopping rule would have cost" in text, run
    assert (workdir / "report.md").exists()
