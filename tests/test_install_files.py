"""requirements*.txt and environment.yml pin the same versions; .ci/run runs the README's
test command."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip().lstrip("- ").strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_environment_yml_matches_requirements():
    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    req |= _pins((REPO / "requirements-dev.txt").read_text().splitlines())
    env = _pins((REPO / "environment.yml").read_text().splitlines())
    assert req and req == env
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"
    assert "cupy-cuda13x" in req  # torch 2.14.1 from PyPI is a CUDA 13 build
    assert "python=3.11" in (REPO / "environment.yml").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    m = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert m, "README must mark its test command with <!-- test-command -->"
    command = m.group(1).strip()
    assert command in (REPO / ".ci" / "run").read_text()
