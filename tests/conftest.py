"""Shared test settings: in CI, property tests draw the same examples every run (reproducible results);
elsewhere they keep exploring new ones."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
