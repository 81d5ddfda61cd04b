"""The Python package and the Java build must use the Beam versions recorded in one place."""

import re
from pathlib import Path

import apache_beam

ROOT = Path(__file__).resolve().parents[2]


def _gradle_property(name):
    text = (ROOT / "gradle.properties").read_text()
    return re.search(rf"^{name}=(\S+)$", text, re.MULTILINE).group(1)


def test_pyproject_pins_the_beam_version_of_gradle_properties():
    pyproject = (ROOT / "python" / "pyproject.toml").read_text()
    pinned = re.search(r'"apache-beam==([^"]+)"', pyproject).group(1)
    assert pinned == _gradle_property("beamPythonVersion")


def test_installed_beam_is_the_pinned_version():
    assert apache_beam.__version__ == _gradle_property("beamPythonVersion")
