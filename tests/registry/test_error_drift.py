"""Streaming error drift: Page–Hinkley and ADWIN on streams with a known change point
(dtecho.registry.error_drift)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dtecho.registry.drift import ADWIN as ReexportedADWIN
from dtecho.registry.error_drift import ADWIN, ChangeDetector, PageHinkley

CHANGE = 5000  # index of the first value after the change


def squared_errors(seed: int, after: int, scale_after: float = math.sqrt(2.0)) -> np.ndarray:
    """Squared N(0, 1) errors (mean 1) for CHANGE steps, then N(0, scale_after²) ones."""
    rng = np.random.default_rng(seed)
    before = rng.normal(size=CHANGE) ** 2
    return np.concatenate([before, (scale_after * rng.normal(size=after)) ** 2])


def detections(detector: ChangeDetector, stream: np.ndarray) -> list[int]:
    return [i for i, x in enumerate(stream) if detector.update(float(x))]


# λ = 100, δ = 0.1 on squared errors (variance 2): a mean jump of 1 takes about
# λ / (1 − δ) ≈ 110 steps, while the mean run to a false alarm is about
# σ²/(2δ²) · exp(2δλ/σ²) ≈ 100 · e¹⁰ ≈ 2·10⁶ steps.
def page_hinkley() -> PageHinkley:
    return PageHinkley(delta=0.1, threshold=100.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_page_hinkley_detects_a_doubled_mean_error_soon_after_the_change(seed: int) -> None:
    found = detections(page_hinkley(), squared_errors(seed, after=2000))
    assert found, "no detection"
    assert CHANGE < found[0] <= CHANGE + 400


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_page_hinkley_is_silent_on_a_stationary_stream(seed: int) -> None:
    stream = np.random.default_rng(seed).normal(size=100_000) ** 2
    assert detections(page_hinkley(), stream) == []


def test_page_hinkley_ignores_a_decrease_of_the_mean() -> None:
    stream = squared_errors(5, after=20_000, scale_after=0.5)  # mean 1 → 0.25
    assert detections(page_hinkley(), stream) == []


def test_page_hinkley_resets_after_a_detection_and_follows_the_new_mean() -> None:
    test = page_hinkley()
    stream = squared_errors(6, after=5000)
    first = detections(test, stream[: CHANGE + 1000])
    assert len(first) == 1 and test.detections == 1
    after = CHANGE + 1000 - 1 - first[0]
    assert test.width == after
    assert test.mean == pytest.approx(stream[first[0] + 1 : CHANGE + 1000].mean(), rel=1e-12)
    assert test.mean == pytest.approx(2.0, abs=0.3)


def test_page_hinkley_waits_for_min_instances() -> None:
    test = PageHinkley(delta=0.0, threshold=1.0, min_instances=10)
    results = [test.update(1000.0 if i else 0.0) for i in range(12)]
    assert results.index(True) == 9  # the tenth value


def test_page_hinkley_continues_from_its_json_state() -> None:
    stream = squared_errors(7, after=3000)
    original = page_hinkley()
    for x in stream[:4000]:
        original.update(x)
    restored = PageHinkley.from_dict(json.loads(json.dumps(original.to_dict())))
    assert detections(restored, stream[4000:]) == detections(original, stream[4000:])
    assert restored.to_dict() == original.to_dict()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_adwin_detects_a_mean_jump_and_keeps_only_the_new_regime(seed: int) -> None:
    rng = np.random.default_rng(seed)
    stream = np.concatenate([rng.normal(1.0, 1.0, CHANGE), rng.normal(2.0, 1.0, 3000)])
    adwin = ADWIN()
    found = []
    for i, x in enumerate(stream):
        if adwin.update(x):
            found.append(i)
        if i in (CHANGE + 999, CHANGE + 2999):
            since = i + 1 - CHANGE
            # The window has shrunk to about the values since the change: it may keep part
            # of the bucket that straddles the change point, never the old regime.
            assert since - 64 <= adwin.width <= since + 0.05 * since + 64
            assert adwin.mean == pytest.approx(2.0, abs=0.15)
    assert found and CHANGE < found[0] <= CHANGE + 300


def test_adwin_detects_a_rise_of_the_error_rate() -> None:
    rng = np.random.default_rng(20)
    misses = np.concatenate([rng.uniform(size=CHANGE) < 0.1, rng.uniform(size=3000) < 0.3])
    found = detections(ADWIN(), misses.astype(float))
    assert found and CHANGE < found[0] <= CHANGE + 300


@pytest.mark.parametrize(
    ("draw", "delta"),
    [
        (lambda rng, n: rng.normal(size=n), 1e-5),
        (lambda rng, n: (rng.uniform(size=n) < 0.1).astype(float), 0.002),
    ],
    ids=["gaussian", "misses-default-delta"],
)
def test_adwin_keeps_its_whole_window_on_a_stationary_stream(draw, delta: float) -> None:
    # δ bounds the false-alarm probability of each check (one every 32 values): at the
    # default δ = 0.002 a Gaussian stream of 10⁵ values (3125 checks) may well see one
    # (test_adwin_false_alarms_stay_far_below_delta_per_check); at δ = 10⁻⁵ a cut needs
    # |μ0 − μ1| above 5.4 standard errors and none is expected. On 0/1 misses, the bounded
    # values ADWIN's bound is made for, the default is already far from its limit.
    n = 100_000
    stream = draw(np.random.default_rng(21), n)
    adwin = ADWIN(delta)
    assert detections(adwin, stream) == []
    assert adwin.width == n
    assert adwin.mean == pytest.approx(stream.mean(), rel=1e-9, abs=1e-12)
    assert adwin.variance == pytest.approx(stream.var(), rel=1e-9)
    # O(log n) memory: at most max_buckets buckets a row, one row per power of two.
    assert adwin.n_buckets <= adwin.max_buckets * (math.log2(n) + 1)


def test_adwin_false_alarms_stay_far_below_delta_per_check() -> None:
    # Bifet & Gavaldà's guarantee: each check shrinks a stationary window with probability
    # at most δ. Over 3 × 10⁵ skewed values that allows δ × 9375 checks ≈ 19 false alarms.
    alarms = checks = 0
    for seed in (30, 31, 32):
        adwin = ADWIN()
        alarms += len(detections(adwin, np.random.default_rng(seed).normal(size=100_000) ** 2))
        checks += 100_000 // adwin.clock
    assert alarms <= 0.25 * adwin.delta * checks


def test_adwin_continues_from_its_json_state() -> None:
    rng = np.random.default_rng(40)
    stream = np.concatenate([rng.normal(0.0, 1.0, 3000), rng.normal(1.0, 1.0, 3000)])
    original = ADWIN()
    for x in stream[:2500]:
        original.update(x)
    restored = ADWIN.from_dict(json.loads(json.dumps(original.to_dict())))
    assert (restored.width, restored.mean) == (original.width, original.mean)
    assert detections(restored, stream[2500:]) == detections(original, stream[2500:])
    assert restored.to_dict() == original.to_dict()


def test_both_detectors_share_the_change_detector_interface_and_reset() -> None:
    assert ReexportedADWIN is ADWIN
    for detector in (PageHinkley(), ADWIN()):
        assert isinstance(detector, ChangeDetector)
        for x in range(100):
            detector.update(float(x % 3))
        detector.reset()
        assert detector.width == 0 and detector.mean == 0.0


def test_detectors_refuse_non_finite_values_and_bad_parameters() -> None:
    for detector in (PageHinkley(), ADWIN()):
        with pytest.raises(ValueError, match="finite"):
            detector.update(math.nan)
    with pytest.raises(ValueError, match="delta"):
        ADWIN(delta=0.0)
    with pytest.raises(ValueError, match="threshold"):
        PageHinkley(threshold=0.0)
    with pytest.raises(ValueError, match="kind"):
        ADWIN.from_dict(PageHinkley().to_dict())
