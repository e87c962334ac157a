"""README.md's commands and code, and docs/monitor.md's, cannot drift from the package:
they are run from the files."""

import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _section_code(text, heading):
    """The first ```python block after the line `heading`."""
    section = text[text.index(f"\n{heading}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_own_data_snippet_runs_and_its_auc_is_the_mann_whitney_statistic():
    names = {}
    exec(compile(_section_code(_readme(), "## Your own data or model"), "README.md", "exec"), names)
    k, n, m = names["K"], names["n"], names["m"]
    assert names["samples"].shape == (k, 64, 8, 8, 1)
    assert names["similarity"].shape == (1, 64)
    assert names["nn"]["own_d1"].shape == (k, 64)
    assert 0.0 <= names["memorized"] <= 1.0
    member, nonmember = names["member_losses"], names["nonmember_losses"]
    assert member.shape == (n,) and nonmember.shape == (m,)
    # ROC AUC of "lower loss = member" is P(member loss < non-member loss), ties half.
    less = (member[:, None] < nonmember[None, :]).mean()
    ties = (member[:, None] == nonmember[None, :]).mean()
    np.testing.assert_allclose(names["auc"], less + 0.5 * ties, rtol=1e-12)


def test_ci_runs_the_readme_test_command_verbatim():
    command = next(
        line for line in _readme().splitlines() if line.endswith("python -m pytest -q tests")
    )
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert command in f.read().splitlines()
    assert "-c constraints.txt" in command


def test_readme_python_version_matches_setup():
    with open(os.path.join(ROOT, "setup.py")) as f:
        minimum = re.search(r'python_requires=">=(3\.\d+)"', f.read()).group(1)
    text = _readme()
    assert f"Python {minimum} or newer" in text
    assert not re.search(r"Python 3\.(\d+)\+", text)


def test_bias_monitor_snippet_runs_in_a_users_own_loop_and_its_rule_decides():
    names = {}
    with open(os.path.join(ROOT, "docs", "monitor.md")) as f:
        code = _section_code("\n" + f.read(), "# The bias monitor in your own training loop")
    exec(compile(code, "docs/monitor.md", "exec"), names)
    monitor, row = names["monitor"], names["row"]
    assert monitor.rows and monitor.rows[-1] == row
    assert [r["epoch"] for r in monitor.rows] == [25.0 * (i + 1) for i in range(len(monitor.rows))]
    for r in monitor.rows:
        assert 0.0 <= r["membership_auc"] <= 1.0 and -1.0 <= r["similarity"] <= 1.0
    if row["decision"] == "stop":  # the rule kept an earlier snapshot: the similarity peak
        peak = max(monitor.rows, key=lambda r: r["similarity"])
        assert row["kept_epoch"] == peak["epoch"] < row["epoch"]


def test_the_readme_is_a_manual_of_at_most_250_lines_linking_results_and_speed():
    readme = _readme()
    assert len(readme.splitlines()) <= 250
    assert "docs/results.md" in readme and "docs/speed.md" in readme
