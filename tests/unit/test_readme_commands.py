"""README's "On Kubernetes" commands agree with the chart and the repository (the e2e test
tests/e2e/test_readme.py runs them on a cluster; this catches drift without one)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers.names import CHART, ROOT
from tests.helpers.readme import README, commands, is_env_block, is_port_forward_block, option, section_blocks

pytestmark = pytest.mark.unit

BLOCKS = section_blocks("On Kubernetes")
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def test_the_section_starts_with_the_environment_line():
    assert is_env_block(BLOCKS[0]), BLOCKS[0]


def test_helm_install_names_the_chart_and_a_namespace():
    (install,) = [c for b in BLOCKS for c in commands(b) if c[:2] == ["helm", "install"]]
    assert (ROOT / install[3]).resolve() == CHART
    assert option(install, "--namespace", "-n") == "dmlt" and "--create-namespace" in install


def test_applied_files_exist():
    applied = [option(c, "-f") for b in BLOCKS for c in commands(b) if c[:2] == ["kubectl", "apply"]]
    assert applied == ["examples/ddp.yaml", "examples/tuning.yaml"]
    assert all((ROOT / path).is_file() for path in applied)


def test_port_forwards_reach_the_chart_services_on_their_ports():
    (block,) = [b for b in BLOCKS if is_port_forward_block(b)]
    forwards = {c[-2]: c[-1] for c in commands(block)}
    assert forwards == {
        "svc/dmlt-mlflow": str(VALUES["mlflow"]["port"]),
        "svc/dmlt-dashboard": str(VALUES["dashboard"]["port"]),
    }
    assert all(option(c, "-n") == "dmlt" for c in commands(block))


def test_screenshots_exist_and_are_small():
    section = README.read_text().split("## On Kubernetes", 1)[1].split("\n## ", 1)[0]
    images = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", section)
    assert len(images) == 2, images
    for image in images:
        path = ROOT / image
        assert path.is_file() and path.stat().st_size < 400_000, f"{image}: missing or over 400 kB"
