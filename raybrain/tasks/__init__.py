"""Tasks: one file per protocol, registered by name.

>>> import raybrain.tasks
>>> task = raybrain.tasks.get("b2m-memory")
"""

from __future__ import annotations

from raybrain.registry import Registry
from raybrain.tasks.base import BRAIN_SOURCES, Param, Task, TaskRun, TorchRun, validation_metric

TASKS: Registry[type[Task]] = Registry("task")


def register(name: str):
    """Class decorator registering a :class:`Task` subclass under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)

    return deco


def get(name: str) -> Task:
    """An instance of the task registered under ``name``."""
    _load_builtin()
    return TASKS.get(name)()


def names() -> list[str]:
    _load_builtin()
    return TASKS.names()


def _load_builtin() -> None:
    from raybrain.tasks import b2m_driving, b2m_memory  # noqa: F401


__all__ = ["BRAIN_SOURCES", "Param", "Task", "TaskRun", "TASKS", "TorchRun", "get", "names", "register",
           "validation_metric"]
