"""Fixtures shared by test folders: a throwaway PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from throwaway_pg import pg_bin, throwaway_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database on a throwaway server on loopback, for the whole test session.

    In CI (``CI=true``) a missing PostgreSQL is an error, not a skip: ``.ci/run`` installs it.
    """
    bindir = pg_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed; .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with throwaway_postgres(bindir) as url:
        yield url
