"""Old module paths kept importable: each alias module warns once, then *is* the module that replaced it."""
from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make `import old` give module `new` (every name, private ones too), with a DeprecationWarning."""
    warnings.warn(f'{old} is deprecated: use {new}', DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
