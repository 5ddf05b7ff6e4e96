"""Shared test set-up: the fixture writers of tests/data (official dataset layouts) are importable everywhere."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "data"))
