import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = sorted(Path(__file__).resolve().parents[1].joinpath("examples").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    p = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True,
                       cwd=SCRIPTS[0].parents[1])  # fmt: skip
    assert p.returncode == 0, p.stdout


def test_readme_opens_with_the_two_commands():
    readme = (SCRIPTS[0].parents[1] / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1 : readme.index("```bash") + 3]
    assert block[0].startswith("bash examples/quickstart.sh")
    assert "python -m pytest -q" in block[1]
    ci = (SCRIPTS[0].parents[1] / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci
