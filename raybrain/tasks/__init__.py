"""Tasks: one file per protocol, registered by name.

>>> import raybrain.tasks
>>> task = raybrain.tasks.get("b2m-memory")

Where tasks come from, loaded on first use:

- every module of this package (a new protocol is a new file here, nothing to list);
- every entry point of the group ``raybrain.tasks`` of the installed distributions, so a
  lab's own package registers its protocols without touching raybrain, and Ray workers
  (which import raybrain afresh) find them too. An entry point names a module (importing
  it registers its tasks with :func:`register`) or a :class:`Task` subclass (registered
  under the entry point's name)::

      [project.entry-points."raybrain.tasks"]
      my-protocol = "mylab.raybrain_tasks:MyProtocol"
"""

from __future__ import annotations

import importlib
import pkgutil

from raybrain.registry import Registry
from raybrain.tasks.base import (BRAIN_SOURCES, Param, RunGroup, Task, TaskRun, TorchRun,
                                 validation_metric)

TASKS: Registry[type[Task]] = Registry("task")
ENTRY_POINT_GROUP = "raybrain.tasks"
_loaded = False


def register(name: str):
    """Class decorator registering a :class:`Task` subclass under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)

    return deco


def get(name: str) -> Task:
    """An instance of the task registered under ``name``."""
    load_all()
    return TASKS.get(name)()


def names() -> list[str]:
    load_all()
    return TASKS.names()


def load_all() -> None:
    """Import the package's task modules and the ``raybrain.tasks`` entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    load_entry_points()


def load_entry_points() -> list[str]:
    """Load the ``raybrain.tasks`` entry points; returns the names they registered under.

    A broken entry point is an error naming it (a lab's task that silently vanished from
    the registry would be worse).
    """
    from importlib.metadata import entry_points

    from raybrain.errors import SpecError

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise SpecError(f"task entry point {ep.name!r} = {ep.value!r} (group "
                            f"{ENTRY_POINT_GROUP!r}) could not be loaded: "
                            f"{type(exc).__name__}: {exc}") from None
        if isinstance(obj, type) and issubclass(obj, Task):
            if ep.name not in TASKS:
                register(ep.name)(obj)
        loaded.append(ep.name)
    return loaded


__all__ = ["BRAIN_SOURCES", "ENTRY_POINT_GROUP", "Param", "RunGroup", "Task", "TaskRun", "TASKS",
           "TorchRun",
           "get", "load_all", "names", "register", "validation_metric"]
