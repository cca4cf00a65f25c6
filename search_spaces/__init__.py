"""The stages users type as study names, and the registry that finds them.

A stage of your own needs no change to this package: put a module defining ``STAGE = Stage(...)``
(see ``search_spaces/_stage.py``) anywhere importable and name it with ``--space my_pkg.my_stage``
or list it in the environment variable ``HPO_STAGES`` (comma-separated module names), or add a
``search_spaces/<name>.py`` file to a checkout.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from hpo.errors import HpoError
from search_spaces._stage import DEFAULTS, Stage

__all__ = ["DEFAULTS", "Stage", "all_stages", "get_stage"]


def _load(module_name: str) -> Stage:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise HpoError(f"cannot import stage module {module_name!r}: {e}") from None
    stage = getattr(module, "STAGE", None)
    if not isinstance(stage, Stage):
        raise HpoError(f"module {module_name!r} defines no STAGE = Stage(...)")
    return stage


def all_stages() -> dict[str, Stage]:
    """Built-in stages in order, then any listed in HPO_STAGES."""
    names = [f"search_spaces.{m.name}" for m in pkgutil.iter_modules(__path__)
             if not m.name.startswith("_")]
    names += [n.strip() for n in os.environ.get("HPO_STAGES", "").split(",") if n.strip()]
    stages = [_load(n) for n in names]
    return {s.name: s for s in sorted(stages, key=lambda s: (s.name == "joint", s.name))}


def get_stage(name: str) -> Stage:
    """A registered stage by name, or any importable module path holding a STAGE."""
    stages = all_stages()
    if name in stages:
        return stages[name]
    if "." in name:
        return _load(name)
    raise HpoError(f"unknown stage {name!r}; known: {', '.join(stages)}")
