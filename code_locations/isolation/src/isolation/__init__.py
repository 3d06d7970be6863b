"""python_package locations load this package and look for a Definitions object in it."""

from isolation.definitions import defs

__all__ = ["defs"]
