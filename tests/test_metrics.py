import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medvlmoe_jax.eval.metrics import (
    bootstrap_ci,
    classification_report,
    fast_auc,
    format_table,
    mean_auc,
    per_class_auc,
)


def _data(n=300, c=5, seed=0, decimals=None):
    """Labels with class-dependent prevalence and informative, noisy scores."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < np.linspace(0.1, 0.5, c)).astype(np.float32)
    scores = labels * rng.uniform(0.3, 1.5, c) + rng.normal(size=(n, c))
    if decimals is not None:
        scores = np.round(scores, decimals)
    return labels, scores


def _sklearn_aucs(labels, scores, mask):
    return np.array([roc_auc_score(labels[mask[:, c], c], scores[mask[:, c], c]) for c in range(labels.shape[1])])


def test_per_class_auc_matches_sklearn():
    labels, scores = _data()
    expected = [roc_auc_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    np.testing.assert_allclose(per_class_auc(labels, scores), expected, rtol=0, atol=1e-12)
    assert mean_auc(per_class_auc(labels, scores)) == pytest.approx(np.mean(expected))


def test_single_outcome_class_is_nan_and_ignored_by_mean():
    labels, scores = _data()
    labels[:, 2] = 0
    labels[:, 4] = 1
    aucs = per_class_auc(labels, scores)
    assert np.isnan(aucs[2]) and np.isnan(aucs[4])
    assert np.all(np.isfinite(aucs[[0, 1, 3]]))
    assert mean_auc(aucs) == pytest.approx(aucs[[0, 1, 3]].mean())
    assert np.isnan(mean_auc([np.nan, np.nan]))


def test_mask_excludes_entries():
    labels, scores = _data(seed=1)
    rng = np.random.default_rng(1)
    mask = rng.random(labels.shape) < 0.6
    # Make the masked-out entries adversarial, so ignoring the mask would show.
    scores = np.where(mask, scores, -10.0 * labels)
    aucs = per_class_auc(labels, scores, mask)
    np.testing.assert_allclose(aucs, _sklearn_aucs(labels, scores, mask), rtol=0, atol=1e-12)
    assert np.all(np.abs(aucs - per_class_auc(labels, scores)) > 1e-3)


def test_mask_leaving_single_outcome_gives_nan():
    labels, scores = _data()
    mask = np.ones(labels.shape, bool)
    mask[:, 1] = labels[:, 1] == 1
    assert np.isnan(per_class_auc(labels, scores, mask)[1])
    assert np.isnan(fast_auc(labels, scores, mask=mask)[0, 1])


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_fast_auc_matches_sklearn_with_ties_and_mask(decimals):
    labels, scores = _data(n=400, c=6, seed=2, decimals=decimals)
    mask = np.random.default_rng(3).random(labels.shape) < 0.7
    if decimals is not None:
        assert len(np.unique(scores[:, 0])) < labels.shape[0] // 2  # ties really occur
    np.testing.assert_allclose(fast_auc(labels, scores)[0], per_class_auc(labels, scores), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast_auc(labels, scores, mask=mask)[0], _sklearn_aucs(labels, scores, mask), rtol=0, atol=1e-12)


def test_fast_auc_weights_equal_repeated_data():
    labels, scores = _data(n=150, c=4, seed=4, decimals=1)
    mask = np.random.default_rng(5).random(labels.shape) < 0.8
    weights = np.random.default_rng(6).integers(0, 4, size=(3, labels.shape[0]))
    got = fast_auc(labels, scores, weights, mask)
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(labels.shape[0]), w)
        np.testing.assert_allclose(got[b], _sklearn_aucs(labels[idx], scores[idx], mask[idx]), rtol=0, atol=1e-12)


def test_bootstrap_ci_basic_properties():
    labels, scores = _data(n=500, c=4, seed=7)
    point = mean_auc(per_class_auc(labels, scores))
    low, high = bootstrap_ci(labels, scores, n_boot=300, seed=0)
    assert low < point < high
    assert high - low < 0.2
    assert bootstrap_ci(labels, scores, n_boot=300, seed=0) == (low, high)
    assert bootstrap_ci(labels, scores, n_boot=300, seed=1) != (low, high)
    # A narrower level gives a narrower interval.
    low80, high80 = bootstrap_ci(labels, scores, n_boot=300, level=0.8, seed=0)
    assert low < low80 < high80 < high


def test_bootstrap_ci_honours_groups():
    base_labels, base_scores = _data(n=120, c=3, seed=8)
    k = 8
    labels, scores = np.tile(base_labels, (k, 1)), np.tile(base_scores, (k, 1))
    patient = np.tile(np.arange(120), k)  # every patient contributes k identical examples
    grouped = bootstrap_ci(labels, scores, groups=patient, n_boot=300, seed=0)
    ungrouped = bootstrap_ci(labels, scores, n_boot=300, seed=0)
    # Duplicates carry no new information: the cluster bootstrap must be as wide
    # as on the de-duplicated data, while example resampling is overconfident.
    assert grouped[1] - grouped[0] > 2 * (ungrouped[1] - ungrouped[0])
    np.testing.assert_allclose(grouped, bootstrap_ci(base_labels, base_scores, n_boot=300, seed=0), atol=1e-12)
    # Group ids may be any hashable, e.g. strings.
    assert bootstrap_ci(labels, scores, groups=[f"p{g}" for g in patient], n_boot=300, seed=0) == grouped


def test_classification_report_and_table():
    labels, scores = _data(n=200, c=3, seed=9)
    labels[:, 2] = 0
    names = ["Atelectasis", "Pleural Effusion", "Hernia"]
    report = classification_report(labels, scores, names, n_boot=100)
    json.loads(json.dumps(report, allow_nan=False))
    assert report["per_class_auc"]["Hernia"] is None
    assert report["num_classes_scored"] == 2 and report["num_examples"] == 200 and report["n_boot"] == 100
    low, high = report["mean_auc_ci95"]
    assert low < report["mean_auc"] < high
    table = format_table(report)
    for name in names:
        assert name in table
    assert "mean" in table and "n/a" in table
    assert f"{report['mean_auc']:.4f}" in table and f"[{low:.4f}, {high:.4f}]" in table


def test_one_vs_rest_auc_of_multiclass_scores():
    # One-vs-rest scoring with softmax-like scores.
    rng = np.random.default_rng(10)
    y = rng.integers(0, 4, 300)
    probs = rng.dirichlet(np.ones(4), 300) + 0.5 * np.eye(4)[y]
    aucs = per_class_auc(np.eye(4)[y], probs)
    np.testing.assert_allclose(aucs, [roc_auc_score(y == c, probs[:, c]) for c in range(4)], atol=1e-12)
