"""The program's offline runs, shared with the infra tests."""

from tests.infra.conftest import run, runs  # noqa: F401 (fixtures)
