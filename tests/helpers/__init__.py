"""Shared test helpers, one module per kind (the fixtures themselves are in conftest.py)."""
