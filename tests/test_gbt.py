"""gbt.fit against scikit-learn's GradientBoostingClassifier: the same trees
(split for split, leaf value for leaf value), hence the same raw scores and
predictions, and the same feature_importances_.

Labels depend on the features plus noise.  scikit-learn breaks exact ties
between splits through its random_state; gbt replays that, so the comparison
holds for any seed, also on data with many equal feature values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import gbt  # noqa: E402


def _data(n, d, k, seed, decimals=None, labels=None):
    """Train and test sets (x (n, d), y (n,)) with k classes: y = argmax of
    random linear scores plus noise; features rounded to decimals if given
    (many equal values), labels relabelled by labels[y] if given."""
    rng = np.random.RandomState(seed)
    x = rng.randn(2 * n, d)
    if decimals is not None:
        x = np.round(x, decimals)
    y = (x @ rng.randn(d, k) + 0.5 * rng.randn(2 * n, k)).argmax(axis=1)
    if labels is not None:
        y = np.asarray(labels)[y]
    return x[:n], y[:n], x[n:], y[n:]


def _assert_same_model(ours, ref, x, x_test, importance_rtol=0.0):
    """Same classes, trees, raw scores, predictions and importances."""
    np.testing.assert_array_equal(ours.classes_, ref.classes_)
    n_stages, k = ref.estimators_.shape
    assert ours.node_count.shape == (n_stages, k)
    for i in range(n_stages):
        for j in range(k):
            tree, nodes = ref.estimators_[i, j].tree_, ours.node_count[i, j]
            split = tree.children_left != -1
            assert nodes == tree.node_count, (i, j)
            np.testing.assert_array_equal(ours.trees.left[i, j, :nodes], tree.children_left)
            np.testing.assert_array_equal(ours.trees.right[i, j, :nodes], tree.children_right)
            np.testing.assert_array_equal(ours.trees.feature[i, j, :nodes][split], tree.feature[split])
            np.testing.assert_array_equal(ours.trees.threshold[i, j, :nodes][split], tree.threshold[split])
            np.testing.assert_array_equal(ours.trees.value[i, j, :nodes][~split], tree.value[~split, 0, 0])
    for data in (x, x_test):
        np.testing.assert_array_equal(ours.decision_function(data), ref.decision_function(data))
        np.testing.assert_array_equal(ours.predict(data), ref.predict(data))
    np.testing.assert_array_equal(ours.train_raw_, ref.decision_function(x))
    np.testing.assert_allclose(ours.feature_importances_, ref.feature_importances_, rtol=importance_rtol, atol=0)


@pytest.mark.parametrize(("k", "n_estimators", "seed"), [(2, 100, 0), (3, 30, 1), (7, 15, 2)])
def test_matches_sklearn_on_continuous_data(k, n_estimators, seed):
    x, y, x_test, _ = _data(2000, 6, k, seed)
    ref = GradientBoostingClassifier(n_estimators=n_estimators, random_state=0).fit(x, y)
    ours = gbt.fit(x, y, n_estimators=n_estimators, random_state=0)
    # Without equal feature values every sum is taken in sklearn's order: bit for bit.
    _assert_same_model(ours, ref, x, x_test)


@pytest.mark.parametrize(("decimals", "k", "seed"), [(1, 3, 3), (0, 5, 4)])
def test_matches_sklearn_with_equal_feature_values(decimals, k, seed):
    """Rounded features: the splitter skips positions between equal values,
    sklearn's sort order among them shapes its sums (replayed by gbt), and
    exact ties between splits are frequent (broken by random_state)."""
    x, y, x_test, _ = _data(1500, 5, k, seed, decimals=decimals)
    ref = GradientBoostingClassifier(n_estimators=25, random_state=seed).fit(x, y)
    ours = gbt.fit(x, y, n_estimators=25, random_state=seed)
    # Impurities may be summed in another order than sklearn's (never a split).
    _assert_same_model(ours, ref, x, x_test, importance_rtol=1e-12)


def test_matches_sklearn_on_float32_codes():
    """DCI's case: float32 codes (a few exactly equal values per column),
    labels from the ground-truth factors, 100 stages, integer labels that
    are not 0..K-1."""
    rng = np.random.RandomState(7)
    factors = rng.randint(3, size=(2500, 2))
    codes = np.concatenate([factors / 3 + 0.01 * rng.randn(2500, 2), rng.randn(2500, 2)], axis=1)
    codes = codes.astype(np.float32)
    assert (np.diff(np.sort(codes, axis=0), axis=0) == 0).any()  # some equal values, as in real codes
    y = np.array([-3, 7, 42])[factors[:, 0]]
    ref = GradientBoostingClassifier(random_state=11).fit(codes, y)
    ours = gbt.fit(codes, y, random_state=11)
    _assert_same_model(ours, ref, codes, codes[::-1] + np.float32(1e-3), importance_rtol=1e-12)


def test_matches_sklearn_with_repeated_samples():
    """DCI's codes of images drawn with replacement: repeated rows (interchangeable samples, whose
    order gbt need not replay), equal rows with different labels (symmetric sprites), and equal
    values across different rows in a few columns (ties whose order sklearn's sorts decide)."""
    rng = np.random.RandomState(12)
    factors = rng.randint(6, size=(1200, 2))
    pool = np.concatenate([factors / 6 + 0.02 * rng.randn(1200, 2), rng.randn(1200, 3)], axis=1)
    pool[:, 4] = np.round(pool[:, 4], 1)  # an uninformative column with many equal values
    pool = pool.astype(np.float32)
    draw = rng.randint(1200, size=3000)  # about 700 repeats, as when sampling images
    codes, y = pool[draw], factors[draw, 0]
    codes[1::50] = codes[::50][: len(codes[1::50])]  # equal rows ...
    y[1::50] = (y[::50][: len(y[1::50])] + 1) % 6  # ... with other labels
    assert len(np.unique(codes, axis=0)) < len(codes) - 500
    ref = GradientBoostingClassifier(n_estimators=30, random_state=5).fit(codes, y)
    ours = gbt.fit(codes, y, n_estimators=30, random_state=5)
    _assert_same_model(ours, ref, codes, pool, importance_rtol=1e-12)


def test_pair_certification():
    """gbt._pair_ok, the test that a speculative split beats another whatever sklearn's node sum st is
    (within delta of ours): a mirrored split of three samples ({a} | {b, c} against {b, c} | {a}) ties
    in exact arithmetic, so some st within a few ulps flips it; a clear gap, an exactly known st, or
    the same partition found twice is certain; inexact sums need their margins."""
    w, st = 3.0, 1.0
    sl_w, sl_c = 0.3, 0.7  # the winner's sum_left (one sample), the mirrored candidate's (two)
    best, proxy = gbt._proxy(sl_w, st, 1, w), gbt._proxy(sl_c, st, 2, w)
    if proxy > best:  # name the larger one the winner, as the scan would
        (best, sl_w, nl_w), (proxy, sl_c, nl_c) = (proxy, sl_c, 2), (best, sl_w, 1)
    else:
        nl_w, nl_c = 1, 2
    assert abs(best - proxy) < 1e-15
    delta = 4 * np.spacing(st)

    def ok(proxy, nl, sl, delta, exact=True, u=0.0, first=False):
        return gbt._pair_ok(best, nl_w, sl_w, exact, u, proxy, nl, sl, exact, u, first, st, w, delta)

    assert not ok(proxy, nl_c, sl_c, delta)  # a tie that st's last bits decide
    assert ok(proxy, nl_c, sl_c, 0.0)  # st known: computed exactly as sklearn does
    assert ok(best, nl_w, sl_w, delta)  # the same partition from another feature, drawn later
    assert ok(best - 1e-3, nl_c, sl_c, delta)  # a clear gap
    assert not ok(best - 1e-3, nl_c, sl_c, delta, exact=False, u=1e-3)  # inexact sums: margins u
    assert ok(best - 1e-3, nl_c, sl_c, delta, exact=False, u=1e-4)


def test_threads_and_seeds():
    x, y, x_test, _ = _data(800, 4, 4, 6)
    one = gbt.fit(x, y, n_estimators=10, random_state=3)
    two = gbt.fit(x, y, n_estimators=10, random_state=np.random.RandomState(3), n_threads=2)
    np.testing.assert_array_equal(one.feature_importances_, two.feature_importances_)
    np.testing.assert_array_equal(one.decision_function(x_test), two.decision_function(x_test))
    other = gbt.fit(x, y, n_estimators=10, random_state=4)
    ref = GradientBoostingClassifier(n_estimators=10, random_state=4).fit(x, y)
    _assert_same_model(other, ref, x, x_test)


def test_degenerate_inputs():
    x, y, _, _ = _data(100, 3, 2, 7)
    with pytest.raises(ValueError, match="class"):
        gbt.fit(x, np.zeros(100, int))
    with pytest.raises(ValueError, match="NaN"):
        gbt.fit(np.where(x > 1, np.nan, x), y)
    with pytest.raises(ValueError):
        gbt.fit(x, y[:50])
    # A constant feature and a pure split: the model still matches sklearn (one run of equal
    # values: impurities may be summed in another order, as with rounded features).
    x[:, 1] = 0.5
    ref = GradientBoostingClassifier(n_estimators=5, random_state=0).fit(x, y)
    _assert_same_model(gbt.fit(x, y, n_estimators=5, random_state=0), ref, x, x, importance_rtol=1e-12)


def test_warm_up_leaves_fits_unchanged():
    """gbt.warm_up (the README's way to compile the kernels ahead of time) runs, and a fit after it
    still matches scikit-learn."""
    gbt.warm_up()
    x, y, x_test, _ = _data(300, 3, 3, 8)
    ref = GradientBoostingClassifier(n_estimators=5, random_state=1).fit(x, y)
    _assert_same_model(gbt.fit(x, y, n_estimators=5, random_state=1), ref, x, x_test)
