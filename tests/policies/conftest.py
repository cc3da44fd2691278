"""The program's offline runs, shared with the infra tests."""

from tests.infra.conftest import run, run_changed, runs  # noqa: F401 (fixtures)
