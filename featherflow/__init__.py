"""Featherflow: an ultra-light workflow orchestrator.

Importing the package is cheap on purpose: the `_mark` fast path imports
`featherflow.states` on every task transition, so nothing heavy happens here.
"""

__version__ = "0.1.0"

__all__ = ["Featherflow", "__version__"]


def __getattr__(name):
    # Lazy, so that `import featherflow` does not pull in peewee.
    if name == "Featherflow":
        from featherflow.api import Featherflow

        return Featherflow
    if name == "scheduler":
        import importlib

        return importlib.import_module("featherflow.scheduler")
    raise AttributeError(name)
