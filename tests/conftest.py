"""Fixtures live in tests/fixtures_<area>.py, one module per area of the rack lab."""

import os

_here = os.path.dirname(__file__)
pytest_plugins = sorted(
    f"tests.{name[:-3]}" for name in os.listdir(_here) if name.startswith("fixtures_") and name.endswith(".py")
)
