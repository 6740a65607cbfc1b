"""The test run's throwaway homes (tests/conftest.py): a process a test starts keeps its parent's homes, and
the outermost test process removes every home of the run when it exits, its workers' included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import HOME_OWNER, TEST_ROOT

REPO_ROOT = Path(__file__).resolve().parent.parent
HOMES = ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "FINEFLOW_DATA_DIR")
# A child imports the test package's conftest (as a Dask worker does when it unpickles a test's function)
# and reports the homes it then has.
IMPORT_CONFTEST = (
    "import json, os, tests.conftest; "
    f"print(json.dumps({{name: os.environ[name] for name in {HOMES + (TEST_ROOT,)!r}}}))"
)


def _child_homes(env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CONFTEST],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_process_a_test_starts_keeps_its_parents_homes_and_makes_none():
    root = Path(os.environ[TEST_ROOT])
    before = sorted(root.iterdir())

    homes = _child_homes(dict(os.environ))

    assert homes == {name: os.environ[name] for name in (*HOMES, TEST_ROOT)}
    assert sorted(root.iterdir()) == before
    assert all(Path(os.environ[name]).is_relative_to(root) for name in HOMES)


def test_the_outermost_process_removes_the_run_root_with_every_home_in_it_when_it_exits():
    env = {name: value for name, value in os.environ.items() if name not in (TEST_ROOT, HOME_OWNER)}
    env.pop("PYTEST_XDIST_WORKER", None)

    homes = _child_homes(env)

    assert homes[TEST_ROOT] != os.environ[TEST_ROOT]
    assert all(Path(homes[name]).is_relative_to(homes[TEST_ROOT]) for name in HOMES)
    assert not Path(homes[TEST_ROOT]).exists()
