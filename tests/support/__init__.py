"""Test helpers shared by unit and kernel tests (real servers, no mocks)."""
