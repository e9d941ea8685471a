"""The forecaster's contenders, committee and conformal band, on small synthetic series with known
answers: the batched ETS equals statsmodels' own smoothing, the committee leans per series on the
contender that forecasts it better, the conformal band covers 80% where the noise is known, and
the served family survives a round trip through its metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

T0 = 1793577600.0  # 2026-11-02T00:00Z, a Monday
STEP = 900.0
DAY = 96


def grid_of(raw: np.ndarray, fit_until: int | None = None):
    from nightshift_models.forecaster import SeriesGrid

    return SeriesGrid.robust([f"s{i}" for i in range(len(raw))], T0 + STEP * np.arange(raw.shape[1]), raw, fit_until)


def test_batched_ets_equals_statsmodels_smoothing(monkeypatch):
    """With the Huber clip out of the way, `ets_forecast` is statsmodels' ETS(A,Ad,N) smoothing from the same start."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    from nightshift_models import forecast_contenders as fc

    monkeypatch.setattr(fc, "HUBER_K", 1e9)
    rng = np.random.default_rng(0)
    past = np.cumsum(rng.normal(0, 0.1, (3, 96)), axis=1) + rng.normal(0, 0.5, (3, 96))
    params = np.array([[0.3, 0.05, 0.9], [0.8, 0.0, 0.0], [0.05, 0.01, 0.98]])
    ours = fc.ets_forecast(past, params, 4)
    for i, (alpha, beta, phi) in enumerate(params):
        model = ETSModel(past[i], error="add", trend="add", damped_trend=True, initialization_method="known",
                         initial_level=float(np.median(past[i])), initial_trend=0.0)
        np.testing.assert_allclose(ours[i], model.smooth([alpha, beta, phi]).forecast(4), rtol=1e-9, atol=1e-9)
    # a gap leaves the state to its own dynamics: a lookback that ends in gaps forecasts like its observed part
    gappy = past[:1].copy()
    gappy[0, -10:] = np.nan
    flat = np.array([[0.3, 0.0, 0.0]])
    np.testing.assert_allclose(fc.ets_forecast(gappy, flat, 2), fc.ets_forecast(past[:1, :-10], flat, 2))
    assert np.isfinite(fc.ets_forecast(np.full((1, 8), np.nan), flat, 2)).all()


def test_a_spike_barely_moves_the_robust_level():
    from nightshift_models.forecast_contenders import ets_forecast

    rng = np.random.default_rng(1)
    past = rng.normal(0, 0.3, (1, 96))
    spiked = past.copy()
    spiked[0, -1] = 40.0  # one scrape of an incident
    params = np.array([[0.5, 0.0, 0.0]])
    moved = ets_forecast(spiked, params, 1)[0, 0] - ets_forecast(past, params, 1)[0, 0]
    assert 0 < moved < 1.0  # unclipped it would move by 0.5 * 40 = 20


def test_weighted_median_and_inverse_mae_weights():
    from nightshift_models.forecast_contenders import inverse_mae_weights, weighted_median

    forecasts = np.array([[[1.0]], [[2.0]], [[10.0]]])  # K=3 contenders, B=1, H=1
    assert weighted_median(forecasts, np.array([[1 / 3, 1 / 3, 1 / 3]]))[0, 0] == 2.0
    assert weighted_median(forecasts, np.array([[0.1, 0.1, 0.8]]))[0, 0] == 10.0
    assert weighted_median(forecasts, np.array([[0.6, 0.3, 0.1]]))[0, 0] == 1.0
    weights = inverse_mae_weights(np.array([[1.0, np.nan], [3.0, np.nan]]))  # (K=2, S=2); series 1 has no validation target
    np.testing.assert_allclose(weights, [[0.75, 0.25], [0.5, 0.5]])


def test_committee_leans_on_the_better_contender_per_series():
    """Series 0 is a random walk (the last value is the best forecast), series 1 is noise around a
    level (the lookback's median is): each gets most weight on its own winner, and the committee is
    at least as good as either contender alone on held-back windows."""
    from nightshift_models.forecast_contenders import StatParams, build_committee, per_series_mae
    from nightshift_models.forecaster import targets
    from pipelines.tasks.metric_forecast import windows_ending

    rng = np.random.default_rng(2)
    n, lookback, horizon = 1400, 48, 4
    raw = np.stack([np.cumsum(rng.normal(0, 1.0, n)), 5 + rng.normal(0, 1.0, n)])
    grid = grid_of(raw, 800)
    val = windows_ending(np.isfinite(raw), np.arange(800, 1100, 2), horizon)
    test = windows_ending(np.isfinite(raw), np.arange(1100, n - horizon), horizon)
    names = ("naive", "lookback_median")
    params = StatParams.pooled(StatParams(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 0))), 2)

    def target(w):
        return targets(grid, w.rows, w.ends, horizon)[0].numpy().astype(np.float64)

    committee = build_committee(grid, val.rows, val.ends, target(val), names, params, lookback, horizon, STEP, 0)
    assert committee.weights[0, 0] > 0.6 and committee.weights[1, 1] > 0.55, committee.weights  # noise: naive errs by sqrt(2) x, not more
    out = committee.forecast(grid, test.rows, test.ends, families=("committee",) + names)
    mae = {f: per_series_mae(p[..., 1], target(test), test.rows, 2) for f, p in out.items()}
    assert mae["committee"][0] <= mae["naive"][0] * 1.02 and mae["committee"][1] <= mae["lookback_median"][1] * 1.02, mae
    assert mae["committee"].mean() < min(mae["naive"].mean(), mae["lookback_median"].mean())
    assert committee.family == "committee"


def test_conformal_band_covers_eighty_percent_where_the_noise_is_known():
    """Targets are the point forecast plus Gaussian noise whose size follows each window's lookback
    spread (two regimes, 1x and 5x): calibrated on one half, the band covers 80% of the other half,
    overall and in each regime, and is about as wide as the true p10..p90."""
    from nightshift_models.forecast_contenders import conformal_band, with_band

    rng = np.random.default_rng(3)
    n, horizon = 8000, 3
    spread = np.where(rng.random(n) < 0.5, 1.0, 5.0)
    point = rng.normal(0, 3, (n, horizon))
    noise = rng.normal(0, 1, (n, horizon)) * spread[:, None] * np.sqrt(np.arange(1, horizon + 1))  # wider further ahead
    target = point + noise
    cal, new = slice(0, n // 2), slice(n // 2, n)
    band = conformal_band(point[cal], target[cal], spread[cal])
    np.testing.assert_allclose(band[1], 1.2816 * np.sqrt(np.arange(1, horizon + 1)), rtol=0.08)  # the true 90% quantile
    q = with_band(point[new], spread[new], band)
    inside = (target[new] >= q[..., 0]) & (target[new] <= q[..., 2])
    assert abs(inside.mean() - 0.8) < 0.02
    for regime in (1.0, 5.0):
        assert abs(inside[spread[new] == regime].mean() - 0.8) < 0.03
    assert (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()


def test_statistical_fit_finds_the_daily_profile():
    """A series busy from 08:00 to 18:00 every day: STL-ETS, with the profile fitted on the training
    days, sees the morning jump and the evening drop coming; ETS on a 6-hour lookback cannot."""
    from nightshift_models.forecast_contenders import contender_forecasts, fit_statistical
    from nightshift_models.forecaster import targets
    from pipelines.tasks.metric_forecast import windows_ending

    rng = np.random.default_rng(4)
    n = 6 * DAY
    t = np.arange(n)
    busy = ((t % DAY) >= 32) & ((t % DAY) < 72)
    raw = np.stack([2 + 8 * busy + rng.normal(0, 0.5, n), 3 + rng.normal(0, 1.0, n)])
    raw[0, 100:110] = np.nan  # a gap in training
    grid = grid_of(raw, 4 * DAY)
    params = fit_statistical(grid, 4 * DAY, STEP, DAY)
    assert params.profile.shape == (2, DAY) and np.ptp(params.profile[0]) > 1.5 and not params.profile[1].any()  # noise has no cycle
    held = windows_ending(np.isfinite(raw), np.arange(4 * DAY, n - 8), 8)
    out = contender_forecasts(grid, held.rows, held.ends, 24, 8, STEP, DAY, params.rows(held.rows), ("ets", "stl_ets"))
    y = targets(grid, held.rows, held.ends, 8)[0].numpy()
    first = held.rows == 0
    assert np.abs(out["stl_ets"][first] - y[first]).mean() < 0.5 * np.abs(out["ets"][first] - y[first]).mean()


def test_committee_round_trips_through_its_metadata_and_serves_unseen_series():
    from nightshift_models.forecast_contenders import Committee, StatParams

    params = StatParams(np.array([[0.2, 0.0, 0.0], [0.6, 0.1, 0.9]]), np.array([[0.3, 0.0, 0.0], [0.5, 0.0, 0.0]]), np.arange(2 * DAY, dtype=float).reshape(2, DAY))
    committee = Committee("committee", ("ets", "stl_ets", "naive"), ["a", "b"], np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]), params,
                          {"committee": np.array([[-1.0] * 4, [1.0] * 4]), "ets": np.zeros((2, 4)), "stl_ets": np.zeros((2, 4)), "naive": np.zeros((2, 4))},
                          lookback=DAY, horizon=4, step=STEP, season=DAY, validation={"committee": {"mae": 0.5}})
    again = Committee.from_meta(json.loads(json.dumps(committee.to_meta())))
    assert again.family == "committee" and again.names == committee.names and again.ids == ["a", "b"]
    np.testing.assert_allclose(again.weights, committee.weights)
    np.testing.assert_allclose(again.params.profile, params.profile)
    weights, resolved = again.resolve(["b", "new"])
    np.testing.assert_allclose(weights, [[0.1, 0.1, 0.8], [0.3, 0.2, 0.5]])  # unseen: the mean of the weights
    assert resolved.profile[1].sum() == 0 and resolved.ets[1].tolist() == pytest.approx([0.4, 0.05, 0.45])

    rng = np.random.default_rng(5)
    grid = grid_of(rng.normal(0, 1, (2, DAY + 10)))
    grid.ids = ["b", "new"]
    out = again.forecast(grid, np.array([0, 1]), np.array([DAY + 9, DAY + 9]))["committee"]
    assert out.shape == (2, 4, 3) and np.isfinite(out).all() and (out[..., 0] < out[..., 1]).all() and (out[..., 1] < out[..., 2]).all()
