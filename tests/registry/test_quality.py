"""Data quality: the training reference and the screening of new rows
(dtecho.registry.reference, dtecho.registry.quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from dtecho.registry.quality import QualityReport, RangeRule, check_rows
from dtecho.registry.reference import Profile, Reference


def roundtrip(data: dict) -> dict:
    """Through real JSON, as the server's store would keep it."""
    return json.loads(json.dumps(data, allow_nan=False))


@pytest.fixture(scope="module")
def gaussian_reference() -> tuple[np.ndarray, np.ndarray, Reference]:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(10_000, 3))
    targets = rng.normal(size=10_000)
    return inputs, targets, Reference.fit(inputs, targets)


def test_profile_holds_the_per_column_statistics_of_the_training_data() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(loc=[0.0, 5.0, -3.0], scale=[1.0, 0.1, 10.0], size=(5000, 3))
    profile = Profile.fit(x, tail=0.001)
    assert profile.n_rows == 5000 and profile.width == 3 and profile.ndim == 2
    np.testing.assert_array_equal(profile.minimum, x.min(axis=0))
    np.testing.assert_array_equal(profile.maximum, x.max(axis=0))
    np.testing.assert_allclose(profile.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(profile.std, x.std(axis=0), rtol=1e-12)
    for level, got in ((0.001, profile.q_low), (0.25, profile.q25), (0.75, profile.q75)):
        np.testing.assert_allclose(got, np.quantile(x, level, axis=0), rtol=1e-12)
    np.testing.assert_allclose(profile.q_high, np.quantile(x, 0.999, axis=0), rtol=1e-12)
    np.testing.assert_allclose(profile.iqr, profile.q75 - profile.q25)


def test_drift_sample_is_a_deterministic_subsample_within_half_over_k_of_each_column() -> None:
    rng = np.random.default_rng(2)
    x = rng.lognormal(size=(20_000, 2))
    k = 500
    profile = Profile.fit(x, sample_size=k)
    again = Profile.fit(x, sample_size=k)
    assert profile.sample.shape == (k, 2)
    np.testing.assert_array_equal(profile.sample, again.sample)
    for j in range(2):
        column = profile.sample[:, j]
        assert np.all(np.diff(column) >= 0)
        assert np.isin(column, x[:, j]).all()  # real training values, not interpolations
        # Evenly spaced ranks: the sample's CDF is within 1/(2k) of the column's.
        distance = scipy.stats.ks_2samp(column, x[:, j]).statistic
        assert distance <= 0.5 / k + 1e-12


def test_a_small_training_set_is_kept_whole_as_the_sample() -> None:
    x = np.array([3.0, 1.0, 2.0])
    profile = Profile.fit(x, sample_size=2000)
    assert profile.ndim == 1 and profile.width == 1
    np.testing.assert_array_equal(profile.sample[:, 0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng, n: rng.normal(size=(n, 5)),
        lambda rng, n: rng.lognormal(size=(n, 5)),
        lambda rng, n: rng.standard_t(3, size=(n, 5)),
        lambda rng, n: rng.uniform(size=(n, 5)),
    ],
    ids=["normal", "lognormal", "student-t3", "uniform"],
)
def test_fresh_rows_from_the_training_distribution_are_rarely_quarantined(draw) -> None:
    # Distribution-free: a fresh value exceeds the extremes of T training values with
    # probability 2/(T+1) per column, so ≤ 5 × 2/10001 = 0.1% of rows even before the margin.
    rng = np.random.default_rng(3)
    reference = Reference.fit(draw(rng, 10_000))
    report = check_rows(reference, draw(rng, 20_000))
    assert len(report.anomalous) <= 0.005 * 20_000


def test_a_value_far_outside_the_training_range_is_quarantined_naming_its_column() -> None:
    reference = Reference.fit(np.array([[-1.2, 0.0], [1.4, 1.0], [0.0, 0.5], [0.2, 0.25]]))
    rows = np.array([[0.0, 0.5], [0.1, 0.4], [0.3, 0.6], [0.0, 812.0], [0.5, 0.5]])
    report = check_rows(reference, rows)
    assert report.anomalous == (3,)
    assert report.clean == (0, 1, 2, 4)
    np.testing.assert_array_equal(report.clean_mask(), [True, True, True, False, True])
    (issue,) = report.issues
    assert (issue.row, issue.field, issue.column, issue.kind) == (3, "inputs", 1, "out_of_range")
    iqr = np.quantile([0.0, 1.0, 0.5, 0.25], 0.75) - np.quantile([0.0, 1.0, 0.5, 0.25], 0.25)
    assert issue.message == (
        f"inputs[3][1]: 812 is outside the training range [0, 1] widened by 1.5 × IQR "
        f"({1.5 * iqr:.6g}) to [{-1.5 * iqr:.6g}, {1 + 1.5 * iqr:.6g}]"
    )
    assert report.reasons(3) == [issue.message] and report.reasons(0) == []


def test_the_margin_is_what_separates_a_flagged_value_from_a_kept_one() -> None:
    x = np.linspace(0.0, 1.0, 101)  # IQR 0.5: allowed [-0.75, 1.75] at the default 1.5
    reference = Reference.fit(x)
    report = check_rows(reference, [1.74, 1.76, -0.74, -0.76, 1.0, 0.0])
    assert report.anomalous == (1, 3)
    assert check_rows(reference, [1.0 + 1e-6], rule=RangeRule(margin=0.0)).anomalous == (0,)
    assert check_rows(reference, [1.0, 0.0], rule=RangeRule(margin=0.0)).ok
    lo, hi = RangeRule().limits(reference.inputs)
    np.testing.assert_allclose([lo[0], hi[0]], [-0.75, 1.75], atol=1e-8)


def test_the_quantile_basis_ignores_a_wild_training_value() -> None:
    x = np.concatenate([np.linspace(0.0, 1.0, 10_000), [1e6]])
    reference = Reference.fit(x)
    assert check_rows(reference, [5e5]).ok  # inside the raw training range
    report = check_rows(reference, [5e5, 0.5], rule=RangeRule(basis="quantiles"))
    assert report.anomalous == (0,)
    assert "training 0.1%–99.9% quantile range" in report.issues[0].message


def test_a_constant_column_flags_any_other_value_but_keeps_its_own() -> None:
    x = np.column_stack([np.ones(100), np.linspace(0, 1, 100)])
    reference = Reference.fit(x)
    report = check_rows(reference, [[1.0, 0.5], [1.0 + 1e-12, 0.5], [1.5, 0.5]])
    assert report.anomalous == (2,)
    assert "widened by 1.5 × range (0)" in report.issues[0].message


def test_schema_problems_are_reported_per_row_not_raised(gaussian_reference) -> None:
    _, _, reference = gaussian_reference
    rows = [
        [0.0, 0.1, 0.2],
        [0.0, 0.1],  # too short
        [0.0, "0.1", 0.2],  # a string
        None,  # not a row
        [0.0, None, 0.2],
        [True, 0.0, 0.0],  # a boolean is not a number here
        [0.0, 0.1, 0.2, 0.3],  # too long
        [float("nan"), 0.0, float("inf")],
        (0.5, 0.5, 0.5),
    ]
    report = check_rows(reference, rows)
    assert report.anomalous == (1, 2, 3, 4, 5, 6, 7)
    assert report.clean == (0, 8)
    messages = [issue.message for issue in report.issues]
    assert messages == [
        "inputs[1]: 2 values, the training data has 3 columns",
        "inputs[2][1]: '0.1' is not a number",
        "inputs[3]: None is not a row of 3 numbers",
        "inputs[4][1]: None is not a number",
        "inputs[5][0]: True is not a number",
        "inputs[6]: 4 values, the training data has 3 columns",
        "inputs[7][0]: nan is not finite",
        "inputs[7][2]: inf is not finite",
    ]
    kinds = [issue.kind for issue in report.issues]
    assert kinds == [
        "schema",
        "not_a_number",
        "schema",
        "not_a_number",
        "not_a_number",
        "schema",
        "non_finite",
        "non_finite",
    ]


def test_an_array_of_the_wrong_width_quarantines_every_row(gaussian_reference) -> None:
    _, _, reference = gaussian_reference
    report = check_rows(reference, np.zeros((4, 2)))
    assert report.anomalous == (0, 1, 2, 3)
    assert report.issues[0].message == "inputs[0]: 2 values, the training data has 3 columns"


def test_targets_are_checked_against_their_own_profile(gaussian_reference) -> None:
    inputs, targets, reference = gaussian_reference
    new_targets = targets[:5].copy()
    new_targets[2] = 99.0
    report = check_rows(reference, inputs[:5], new_targets)
    assert report.anomalous == (2,)
    assert report.issues[0].message.startswith("targets[2]: 99 is outside the training range")
    # Inputs before targets within a row.
    bad_inputs = inputs[:5].copy()
    bad_inputs[2, 0] = np.nan
    report = check_rows(reference, bad_inputs, new_targets)
    assert [i.field for i in report.issues] == ["inputs", "targets"]
    assert check_rows(reference, inputs[:5]).ok  # targets are optional


def test_a_one_column_reference_accepts_flat_and_column_rows() -> None:
    reference = Reference.fit(np.linspace(0.0, 1.0, 100))
    assert check_rows(reference, np.array([0.5, 0.6])).ok
    assert check_rows(reference, np.array([[0.5], [0.6]])).ok
    assert check_rows(reference, [0.5, [0.6]]).ok
    report = check_rows(reference, [0.5, [0.6, 0.7], "x"])
    assert [i.message for i in report.issues] == [
        "inputs[1]: 2 values, the training data has 1 column",
        "inputs[2]: 'x' is not a number",
    ]


def test_issues_beyond_max_issues_are_counted_not_listed(gaussian_reference) -> None:
    _, _, reference = gaussian_reference
    report = check_rows(reference, np.full((50, 3), 1e9), max_issues=10)
    assert len(report.anomalous) == 50
    assert len(report.issues) == 10 and report.issues_left_off == 140
    assert [i.row for i in report.issues] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    # The first by row, whatever the kind: schema, cell and target issues interleave.
    rows = [[1e9, 0.0, 0.0], [0.0], [0.0, 0.0, 0.0], [0.0, 1e9, 0.0], "x"]
    targets = [0.0, 0.0, 1e9, 0.0, 0.0]
    report = check_rows(reference, rows, targets, max_issues=4)
    assert [(i.row, i.field, i.kind) for i in report.issues] == [
        (0, "inputs", "out_of_range"),
        (1, "inputs", "schema"),
        (2, "targets", "out_of_range"),
        (3, "inputs", "out_of_range"),
    ]
    assert report.issues_left_off == 1 and report.anomalous == (0, 1, 2, 3, 4)


def test_no_rows_give_an_empty_clean_report(gaussian_reference) -> None:
    _, _, reference = gaussian_reference
    report = check_rows(reference, np.zeros((0, 3)))
    assert report.ok and report.n_rows == 0 and report.clean == ()


def test_reference_and_report_survive_json(gaussian_reference) -> None:
    inputs, targets, reference = gaussian_reference
    restored = Reference.from_dict(roundtrip(reference.to_dict()))
    assert restored.targets is not None and restored.targets.ndim == 1
    for field in ("minimum", "maximum", "mean", "std", "q_low", "q25", "q75", "q_high", "sample"):
        np.testing.assert_array_equal(
            getattr(restored.inputs, field), getattr(reference.inputs, field)
        )
    rows = inputs[:200] * 3.0
    report = check_rows(reference, rows, targets[:200])
    assert check_rows(restored, rows, targets[:200]) == report
    assert QualityReport.from_dict(roundtrip(report.to_dict())) == report
    assert roundtrip(report.to_dict())["clean"] == list(report.clean)
    rule = RangeRule(margin=3.0, basis="quantiles")
    assert RangeRule.from_dict(roundtrip(rule.to_dict())) == rule


def test_invalid_training_data_and_arguments_raise_value_error(gaussian_reference) -> None:
    inputs, targets, reference = gaussian_reference
    with pytest.raises(ValueError, match="non-finite values \\(first at row 1, column 0\\)"):
        Reference.fit(np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="empty"):
        Reference.fit(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="shape"):
        Reference.fit(np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="rows"):
        Reference.fit(inputs, targets[:10])
    with pytest.raises(ValueError, match="targets"):
        check_rows(reference, inputs[:5], targets[:4])
    with pytest.raises(ValueError, match="without targets"):
        check_rows(Reference.fit(inputs), inputs[:5], targets[:5])
    with pytest.raises(ValueError, match="margin"):
        RangeRule(margin=-1.0)
    with pytest.raises(ValueError, match="version"):
        Reference.from_dict({**reference.to_dict(), "version": 99})
