"""Drift statistics on constructed samples: each test fires on a planted shift, false-alarms on about alpha of
same-distribution draws (within a binomial bound), and the edge cases (identical, constant, empty, tiny) give
plain numbers instead of errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunesmith.errors import DataError
from tunesmith.evaluate.drift import (
    PSI_LEVELS,
    categorical_test,
    classifier_test,
    feature_tests,
    holm,
    ks_test,
    mmd_test,
    psi,
    psi_level,
)

ALPHA = 0.05


def _bound(draws: int) -> float:
    """The most false alarms (as a share) a level-ALPHA test may show in `draws` null draws: 3 binomial sds."""
    return ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / draws)


def _labels(rng, n: int, p_a: float) -> list[str]:
    return list(np.where(rng.random(n) < p_a, "a", "b"))


def _embeddings(rng, n: int = 200, dims: int = 32, shift: float = 0.0) -> np.ndarray:
    """n vectors from N(0, I), the mean moved by `shift` along the first 4 dims."""
    x = rng.normal(size=(n, dims))
    x[:, :4] += shift
    return x


# ---------------------------------------------------------------- PSI


def test_psi_is_zero_for_identical_samples_and_grows_with_the_shift():
    x = np.random.default_rng(0).normal(size=2000)
    assert psi(x, x) == 0.0
    assert psi(list(x), x.copy()) == 0.0
    rng = np.random.default_rng(1)
    same = psi(rng.normal(size=2000), rng.normal(size=2000))
    small = psi(rng.normal(size=2000), rng.normal(0.25, 1, 2000))
    big = psi(rng.normal(size=2000), rng.normal(0.5, 1, 2000))
    assert same < PSI_LEVELS[0] and same < small < big
    assert psi_level(same) == "stable" and psi_level(big) in ("moderate", "major")
    assert psi_level(0.1) == "moderate" and psi_level(0.3) == "major"


def test_psi_is_roughly_symmetric_and_finite_with_empty_bins():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=3000), rng.normal(0.5, 1, 3000)
    forward, backward = psi(a, b), psi(b, a)
    assert forward > 0 and backward > 0
    assert abs(forward - backward) / max(forward, backward) < 0.3  # bins come from the reference only
    far = psi(a, a + 100)  # every current value in the top bin: empty bins are smoothed, not infinite
    assert np.isfinite(far) and far > 5


def test_psi_on_constant_and_discrete_features():
    assert psi([3.0] * 50, [3.0] * 20) == 0.0
    assert psi([3.0] * 50, [2.0] * 20) > 1 and psi([3.0] * 50, [4.0] * 20) > 1  # leaving the constant shows
    assert psi([0, 0, 0, 1] * 50, [0, 0, 0, 1] * 30) == pytest.approx(0.0)  # tied quantiles merge bins
    assert psi([0, 0, 0, 1] * 50, [0, 1] * 30) > 0.1
    assert psi([], [1.0, 2.0]) == 0.0 and psi([1.0, np.nan, 2.0], [1.0, 2.0]) == 0.0  # NaN is dropped


# ---------------------------------------------------------------- KS and categorical


def test_ks_fires_on_a_half_sd_mean_shift():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=500)
    shifted, same = ks_test(ref, rng.normal(0.5, 1, 500)), ks_test(ref, rng.normal(size=500))
    assert shifted["p"] < 0.01 and shifted["statistic"] > same["statistic"]
    assert set(shifted) == {"statistic", "p"}


def test_ks_false_alarm_rate_and_power():
    rng = np.random.default_rng(4)
    draws = 200
    null = [ks_test(rng.normal(size=300), rng.normal(size=300))["p"] for _ in range(draws)]
    power = [ks_test(rng.normal(size=300), rng.normal(0.5, 1, 300))["p"] for _ in range(draws)]
    assert np.mean(np.array(null) < ALPHA) <= _bound(draws)
    assert np.mean(np.array(power) < 0.01) >= 0.9


def test_categorical_fires_on_a_label_shift_with_shares_and_psi():
    rng = np.random.default_rng(5)
    ref, cur, same = _labels(rng, 400, 0.5), _labels(rng, 400, 0.7), _labels(rng, 400, 0.5)
    shifted, null = categorical_test(ref, cur), categorical_test(ref, same)
    assert shifted["p"] < 0.01 and shifted["psi"] > null["psi"]
    assert shifted["cur"]["a"] == pytest.approx(np.mean(np.array(cur) == "a"))
    assert sum(shifted["ref"].values()) == pytest.approx(1.0)
    json.dumps(shifted)  # plain floats and str keys


def test_categorical_false_alarm_rate_and_power():
    rng = np.random.default_rng(6)
    draws = 200
    null = [categorical_test(_labels(rng, 300, 0.5), _labels(rng, 300, 0.5))["p"] for _ in range(draws)]
    power = [categorical_test(_labels(rng, 300, 0.5), _labels(rng, 300, 0.7))["p"] for _ in range(draws)]
    assert np.mean(np.array(null) < ALPHA) <= _bound(draws)
    assert np.mean(np.array(power) < 0.01) >= 0.9


def test_categorical_with_fixed_categories_empty_and_single_ones():
    out = categorical_test([0, 1, 1, 0], [1, 1, 2, 0], categories=["1", "0", "9"])
    assert list(out["ref"]) == ["1", "0", "9", "2"]  # the given order, then values outside it
    assert out["ref"]["9"] == 0.0 and out["cur"]["2"] == 0.25 and np.isfinite(out["psi"])
    assert 0 < out["p"] <= 1  # the category absent from both ("9") left the table
    single = categorical_test(["x"] * 10, ["x"] * 5, categories=["x", "y"])
    assert single["p"] == 1.0 and single["chi2"] == 0.0 and single["psi"] == 0.0
    tiny = categorical_test(["a"], ["a", "b"])
    assert tiny["p"] == 1.0 and "note" in tiny


# ---------------------------------------------------------------- embeddings


def test_mmd_fires_on_a_mean_shift_of_a_few_dims():
    rng = np.random.default_rng(7)
    ref = _embeddings(rng)
    shifted = mmd_test(ref, _embeddings(rng, shift=0.5), permutations=200)
    same = mmd_test(ref, _embeddings(rng), permutations=200)
    assert shifted["p"] < 0.01 and shifted["mmd2"] > same["mmd2"]
    assert 0 < same["p"] <= 1 and shifted["p"] >= 1 / 201  # the observed labelling counts among the permutations
    assert shifted["n_ref"] == shifted["n_cur"] == 200 and shifted["bandwidth"] > 0


def test_mmd_is_deterministic_and_subsamples():
    rng = np.random.default_rng(8)
    x, y = _embeddings(rng, 300), _embeddings(rng, 250, shift=0.3)
    assert mmd_test(x, y, permutations=100, seed=1) == mmd_test(x, y, permutations=100, seed=1)
    small = mmd_test(x, y, permutations=50, max_n=100)
    assert small["n_ref"] == small["n_cur"] == 100


def test_mmd_false_alarm_rate_and_power():
    draws = 60
    null, power = [], []
    for i in range(draws):
        rng = np.random.default_rng(100 + i)
        null.append(mmd_test(_embeddings(rng), _embeddings(rng), permutations=100, seed=i)["p"])
        power.append(mmd_test(_embeddings(rng), _embeddings(rng, shift=0.5), permutations=100, seed=i)["p"])
    assert np.mean(np.array(null) < ALPHA) <= _bound(draws)
    assert np.mean(np.array(power) < 0.01) >= 0.9  # 100 permutations: the smallest p is 1/101


def test_classifier_fires_on_a_mean_shift_of_a_few_dims():
    rng = np.random.default_rng(9)
    ref = _embeddings(rng)
    shifted, same = classifier_test(ref, _embeddings(rng, shift=0.5)), classifier_test(ref, _embeddings(rng))
    assert shifted["p"] < 0.01 and shifted["auc"] > 0.6 > same["auc"] and shifted["auc_holdout"] > 0.6
    assert classifier_test(ref, ref + 0.0, seed=2) == classifier_test(ref, ref + 0.0, seed=2)


def test_classifier_false_alarm_rate_and_power():
    draws = 100  # enough to catch a Mann-Whitney test on pooled out-of-fold scores (~12% false alarms)
    null, power = [], []
    for i in range(draws):
        rng = np.random.default_rng(200 + i)
        null.append(classifier_test(_embeddings(rng), _embeddings(rng), seed=i)["p"])
        if i < 40:
            power.append(classifier_test(_embeddings(rng), _embeddings(rng, shift=0.5), seed=i)["p"])
    assert np.mean(np.array(null) < ALPHA) <= _bound(draws)
    assert np.mean(np.array(power) < 0.01) >= 0.9


def test_tiny_samples_give_p_one_and_a_note():
    one, many = [[0.0, 1.0]], np.zeros((5, 2))
    for out in (ks_test([1.0], [1.0, 2.0]), mmd_test(one, many), classifier_test(one, many), mmd_test([], [])):
        assert out["p"] == 1.0 and "note" in out
        json.dumps(out)
    assert classifier_test(np.zeros((3, 2)), np.ones((3, 2)), folds=5)["p"] <= 1.0  # folds shrink to 3
    with pytest.raises(DataError, match="dims"):
        mmd_test(np.zeros((5, 3)), np.zeros((5, 4)))


# ---------------------------------------------------------------- families


def test_feature_tests_report_every_shared_feature():
    rng = np.random.default_rng(10)
    ref = {"length": rng.normal(size=400), "score": rng.normal(size=400), "only_ref": [1.0, 2.0]}
    cur = {"length": rng.normal(0.5, 1, 400), "score": list(rng.normal(size=400)), "empty": []}
    out = feature_tests(ref, cur)
    assert list(out) == ["length", "score"]
    assert out["length"]["p"] < 0.01 and out["length"]["psi"] > out["score"]["psi"]
    assert out["length"]["cur_mean"] - out["length"]["ref_mean"] == pytest.approx(0.5, abs=0.15)
    assert set(out["score"]) == {"psi", "ks", "p", "ref_mean", "cur_mean"}
    json.dumps(out)
    empty = feature_tests({"f": [1.0, 2.0]}, {"f": []})["f"]
    assert empty["p"] == 1.0 and empty["cur_mean"] is None and "note" in empty


def test_holm_is_monotone_and_never_below_the_raw_p():
    raw = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5, "e": 0.001}
    adjusted = holm(raw)
    assert list(adjusted) == list(raw)
    assert all(adjusted[k] >= raw[k] for k in raw) and all(0 <= v <= 1 for v in adjusted.values())
    order = sorted(raw, key=raw.get)
    assert all(adjusted[a] <= adjusted[b] for a, b in zip(order, order[1:]))
    assert adjusted["e"] == pytest.approx(0.005) and adjusted["d"] == 0.5
    assert holm({}) == {}
