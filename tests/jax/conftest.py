"""The JAX tests: the examples folder is importable, for the moons example."""

from __future__ import annotations

import sys

from tests.examples.helpers import EXAMPLES

if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
