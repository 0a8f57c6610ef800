"""The versions the tests' measured margins assume: constraints.txt pins them, the Makefile installs from it, and the
environment running the tests has them (a mismatch is named here, not left to surface as a quality test's miss)."""

import re
from importlib import metadata

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)$")


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            match = PIN.match(line.strip())
            assert match, f"constraints.txt: not a name==version pin: {line!r}"
            pins[_normal(match.group(1))] = match.group(2)
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_dependency_of_the_project_is_pinned():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    names = {_normal(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0]) for requirement in required}
    assert names - set(_pins()) == set()


def test_the_makefile_installs_every_package_from_the_constraints():
    installs = [line for line in (ROOT / "Makefile").read_text().splitlines()
                if "$(PY) -m pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs


def test_this_environment_has_the_pinned_versions():
    """What the quality margins were measured with. Fix: `make setup` in a fresh venv (rm -r .venv), or, to move the
    pins on purpose, `make constraints` and re-measure (README, reliability)."""
    different = {}
    for name, pinned in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform's extra (a CUDA library on another machine, say) is not required
        if installed != pinned:
            different[name] = f"{installed} installed, {pinned} pinned"
    assert not different, different
