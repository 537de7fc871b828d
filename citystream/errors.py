"""The exception tree of CityStream.

::

    CityStreamError
    ├── SchemaError (ValueError)        a payload does not match its contract
    ├── ConfigError (ValueError)        settings or calibration files are wrong
    ├── StackError (RuntimeError)       a local service cannot be installed/started/stopped
    └── SinkError (RuntimeError)        a write to an external system failed

Every error carries a message that says what was wrong and, where it helps, what to do.
"""

from __future__ import annotations


class CityStreamError(Exception):
    """Root of all CityStream errors."""


class SchemaError(CityStreamError, ValueError):
    """A message failed to decode or validate against its schema."""


class ConfigError(CityStreamError, ValueError):
    """Configuration is missing or inconsistent."""


class StackError(CityStreamError, RuntimeError):
    """A service of the local stack could not be managed."""


class SinkError(CityStreamError, RuntimeError):
    """Writing to an external system failed."""
