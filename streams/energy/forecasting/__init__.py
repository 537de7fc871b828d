"""Load forecasting: features, the LightGBM quantile model, baselines and the backtest.

Pure domain logic (numpy/pandas/LightGBM/statsmodels): no broker or DB imports.  The
stream app fits a :class:`LoadForecaster` per feeder/district on its history, calls
:meth:`~LoadForecaster.predict` and converts with :func:`to_forecast`.
"""

from streams.energy.forecasting.backtest import BacktestResult, MethodScore, run_backtest
from streams.energy.forecasting.base import Forecaster, QuantilePoint, non_crossing, to_forecast
from streams.energy.forecasting.baselines import MSTLETS, HoltWinters, SeasonalNaive
from streams.energy.forecasting.data import Dataset, load_csv, load_taylor, simulated_dataset
from streams.energy.forecasting.errors import ForecastDataError
from streams.energy.forecasting.gbm import GBMConfig, LoadForecaster

__all__ = [
    "MSTLETS",
    "BacktestResult",
    "Dataset",
    "ForecastDataError",
    "Forecaster",
    "GBMConfig",
    "HoltWinters",
    "LoadForecaster",
    "MethodScore",
    "QuantilePoint",
    "SeasonalNaive",
    "load_csv",
    "load_taylor",
    "non_crossing",
    "run_backtest",
    "simulated_dataset",
    "to_forecast",
]
