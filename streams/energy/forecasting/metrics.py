"""Forecast accuracy metrics over aligned arrays (NaN actuals are ignored)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: The quantiles every forecaster in this package produces.
QUANTILES: tuple[float, float, float] = (0.1, 0.5, 0.9)


def _valid(actual: FloatArray, *others: FloatArray) -> npt.NDArray[np.bool_]:
    mask = np.isfinite(actual)
    for o in others:
        mask &= np.isfinite(o)
    return mask


def mape(actual: FloatArray, predicted: FloatArray) -> float:
    """Mean absolute percentage error in percent; zero actuals are skipped."""
    m = _valid(actual, predicted) & (actual != 0)
    if not m.any():
        return float("nan")
    return float(np.mean(np.abs((actual[m] - predicted[m]) / actual[m])) * 100.0)


def mae(actual: FloatArray, predicted: FloatArray) -> float:
    """Mean absolute error, in the units of the series."""
    m = _valid(actual, predicted)
    if not m.any():
        return float("nan")
    return float(np.mean(np.abs(actual[m] - predicted[m])))


def pinball(actual: FloatArray, predicted: FloatArray, q: float) -> float:
    """Mean pinball (quantile) loss of one quantile ``q``."""
    m = _valid(actual, predicted)
    if not m.any():
        return float("nan")
    diff = actual[m] - predicted[m]
    return float(np.mean(np.maximum(q * diff, (q - 1.0) * diff)))


def mean_pinball(
    actual: FloatArray,
    quantile_preds: Sequence[FloatArray],
    quantiles: Sequence[float] = QUANTILES,
) -> float:
    """Pinball loss averaged over the quantiles (P10, P50, P90 by default)."""
    if len(quantile_preds) != len(quantiles):
        raise ValueError("one prediction array per quantile is required")
    return float(
        np.mean([pinball(actual, p, q) for p, q in zip(quantile_preds, quantiles, strict=True)])
    )


def coverage(actual: FloatArray, lower: FloatArray, upper: FloatArray) -> float:
    """Share of actuals inside ``[lower, upper]``, in percent."""
    m = _valid(actual, lower, upper)
    if not m.any():
        return float("nan")
    inside = (actual[m] >= lower[m]) & (actual[m] <= upper[m])
    return float(np.mean(inside) * 100.0)
