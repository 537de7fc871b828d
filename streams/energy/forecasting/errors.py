"""Errors of the forecasting package, rooted in :mod:`citystream.errors`.

::

    CityStreamError
    └── ForecastDataError (ValueError)   a series or file cannot be forecast as given
"""

from __future__ import annotations

from citystream.errors import CityStreamError


class ForecastDataError(CityStreamError, ValueError):
    """The history (or a CSV file) is unusable: wrong columns, irregular, too short, ..."""
