"""When scripts/wheelhouse builds tunelab's wheel without pip's isolated build environment: only when this
environment already has every [build-system] requirement at an allowed version (read here from
importlib.metadata, independently of the function)."""

from __future__ import annotations

import importlib.metadata

import pytest

from tunelab.wheelhouse.resolve import build_requirements_met

PACKAGING = importlib.metadata.version("packaging")  # installed in every environment that runs these tests
MAJOR = int(PACKAGING.split(".")[0])


@pytest.mark.parametrize(("requires", "met"), [
    ([f"packaging>={MAJOR}"], True),
    ([f"packaging=={PACKAGING}", "pytest"], True),
    ([f"packaging<{MAJOR}"], False),  # installed, but out of range
    ([f"packaging>={MAJOR}", "tunelab-no-such-backend"], False),  # one missing is enough
    (['tunelab-no-such-backend; python_version < "3"'], True),  # a marker false here: not needed here
    ([], True),
])
def test_build_requirements_are_met_only_by_installed_versions_in_range(tmp_path, requires, met):
    (tmp_path / "pyproject.toml").write_text(
        "[build-system]\nrequires = [" + ", ".join(f"'{r}'" for r in requires) + "]\n")
    assert build_requirements_met(tmp_path / "pyproject.toml") is met


def test_a_project_without_a_build_system_table_is_built_isolated(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert build_requirements_met(tmp_path / "pyproject.toml") is False
