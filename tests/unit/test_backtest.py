"""Backtest metrics on hand-made numbers, the CSV loader's errors, and a short Taylor run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streams.energy import backtest as cli
from streams.energy.forecasting import ForecastDataError, load_csv, run_backtest
from streams.energy.forecasting.backtest import OURS, default_methods, score_arrays
from streams.energy.forecasting.metrics import coverage, mae, mape, mean_pinball, pinball


def test_metrics_on_hand_made_numbers() -> None:
    a = np.array([100.0, 200.0, 50.0, np.nan])
    p = np.array([110.0, 180.0, 50.0, 7.0])
    assert mape(a, p) == pytest.approx((10 + 10 + 0) / 3)
    assert mae(a, p) == pytest.approx((10 + 20 + 0) / 3)
    # q=0.9: under-forecast 100->110 is over (diff -10 -> 0.1*10=1), 200->180 under (0.9*20=18)
    assert pinball(a, p, 0.9) == pytest.approx((1 + 18 + 0) / 3)
    assert pinball(a, p, 0.1) == pytest.approx((9 + 2 + 0) / 3)
    lo, hi = np.array([90.0, 190.0, 60.0, 0.0]), np.array([120.0, 199.0, 70.0, 9.0])
    assert coverage(a, lo, hi) == pytest.approx(100 / 3)
    assert mean_pinball(a, [p, p, p]) == pytest.approx(
        np.mean([pinball(a, p, 0.1), pinball(a, p, 0.5), pinball(a, p, 0.9)])
    )
    s = score_arrays(a, lo, p, hi)
    assert s["mape"] == pytest.approx(20 / 3) and s["coverage"] == pytest.approx(100 / 3)


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "history.csv"
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "not a readable CSV"),
        ("timestamp\n2024-01-01\n", {}, "at least two columns"),
        ("ts,kw\n2024-01-01 00:00,1\nnot a time,2\n2024-01-01 01:00,3\n", {}, "not timestamps"),
        (
            "ts,kw\n2024-01-01 00:00,1\n2024-01-01 00:30,abc\n2024-01-01 01:00,3\n",
            {},
            "non-numeric",
        ),
        ("ts,kw\n2024-01-01 00:00,1\n2024-01-01 00:30,2\n", {}, "only 2 rows"),
        ("ts,kw\n2024-01-01 00:00,1\n", {"load_col": "load"}, "no load column 'load'"),
        (
            "ts,kw\n2024-01-01 00:00,1\n2024-01-01 00:07,2\n2024-01-01 00:14,3\n",
            {},
            "must divide a day",
        ),
    ],
)
def test_csv_loader_errors(tmp_path: Path, text: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ForecastDataError, match=message):
        load_csv(_write(tmp_path, text), **kwargs)


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ForecastDataError, match="not found"):
        load_csv(tmp_path / "nope.csv")


def test_csv_loader_reads_local_time_gaps_and_temperature(tmp_path: Path) -> None:
    text = "when,Demand,temp\n2024-01-01 07:00,1,20\n2024-01-01 07:15,2,21\n2024-01-01 07:45,4,22\n"
    d = load_csv(_write(tmp_path, text), time_col="when", tz="Asia/Ho_Chi_Minh")
    assert str(d.load.index[0]) == "2024-01-01 00:00:00+00:00"
    assert d.step == pd.Timedelta("15min")
    assert d.load.isna().sum() == 1 and d.temperature is not None


def test_backtest_on_a_weekly_series_scores_naive_perfectly() -> None:
    n = 24 * 7 * 4
    idx = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    t = np.arange(n)
    y = 100 + 10 * np.sin(2 * np.pi * t / 24) + 5 * ((t // 24) % 7 >= 5)
    methods = {"weekly_naive": default_methods()["weekly_naive"]}
    r = run_backtest(pd.Series(y, idx), days=3, methods=methods)
    assert len(r.origins) == 3 and r.horizon_steps == 24
    s = r.score("weekly_naive")
    assert s.mape == pytest.approx(0.0) and s.mae == pytest.approx(0.0)
    assert s.n_points == 72


def test_taylor_short_backtest_beats_weekly_naive() -> None:
    from streams.energy.forecasting import load_taylor

    d = load_taylor()
    all_methods = default_methods(d.tz, d.country)
    methods = {k: all_methods[k] for k in (OURS, "weekly_naive")}
    r = run_backtest(d.load, days=5, tz=d.tz, country=d.country, methods=methods)
    assert r.origins[-1].isoformat() == "2000-08-26T23:00:00+00:00"  # Sunday 27 Aug, local midnight
    assert r.score(OURS).mape < r.score("weekly_naive").mape


def test_cli_reports_bad_csv_and_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    rc = cli.run(parser.parse_args(["--csv", str(tmp_path / "missing.csv"), "--quiet"]))
    assert rc == 2 and "not found" in capsys.readouterr().err
    n = 24 * 7 * 3
    idx = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    y = 100 + 10 * np.sin(2 * np.pi * np.arange(n) / 24)
    f = tmp_path / "h.csv"
    pd.DataFrame({"timestamp": idx.strftime("%Y-%m-%dT%H:%M:%SZ"), "load": y}).to_csv(
        f, index=False
    )
    rc = cli.run(parser.parse_args(["--csv", str(f), "--days", "2", "--json", "--quiet"]))
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["days"] == 2
    assert [s["method"] for s in out["scores"]] == [
        OURS,
        "weekly_naive",
        "holt_winters",
        "mstl_ets",
    ]
