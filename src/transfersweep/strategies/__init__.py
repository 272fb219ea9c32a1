"""Tuning strategies: what trains when, at which learning rate (`conf/freeze/`).

One module per strategy; each registers itself by name. `from_config(cfg.freeze)` builds the
configured one. See base.py for the questions a strategy answers, and
docs/strategies.md ("Add a strategy") for a complete example.
"""

import importlib

from transfersweep.strategies.base import (
    Choice,
    FloatRange,
    IntRange,
    Layout,
    Phase,
    Strategy,
)
from transfersweep.strategies.registry import create, from_config, get, names, register

# The built-in strategies register themselves on import. Registration order is the catalogue
# order (least to most trained), used for table columns.
BUILT_IN = (
    "last_layer", "bitfit", "norm", "lora", "surgical", "last_blocks", "gradual", "lp_ft", "full"
)  # fmt: skip
for _module in BUILT_IN:
    importlib.import_module(f"transfersweep.strategies.{_module}")

__all__ = [
    "Choice",
    "FloatRange",
    "IntRange",
    "Layout",
    "Phase",
    "Strategy",
    "create",
    "from_config",
    "get",
    "names",
    "register",
]
