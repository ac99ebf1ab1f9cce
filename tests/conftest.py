"""Shared test settings: in CI, property tests draw the same examples every run (reproducible results);
elsewhere they keep exploring new ones."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")



@pytest.fixture(autouse=True)
def _fresh_manifest_warnings() -> None:
    """Manifest warnings are once per process: each test starts with none given."""
    from ipftrace_exporter import manifest

    manifest._WARNED.clear()
