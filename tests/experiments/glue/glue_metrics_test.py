"""Tests for experiments.glue.metrics against scikit-learn and SciPy."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from scipy import stats
from sklearn import metrics as sk

from experiments.glue import metrics as task_metrics


def random_classes(seed, n=200, k=2, agreement=0.7):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  noise = rng.integers(0, k, n)
  predictions = np.where(rng.random(n) < agreement, labels, noise)
  return labels, predictions


class ClassificationTest(parameterized.TestCase):
  @parameterized.parameters(0, 1, 2)
  def test_binary_metrics_match_sklearn(self, seed):
    labels, predictions = random_classes(seed)
    confusion = task_metrics.confusion_matrix(labels, predictions, 2)
    self.assertAlmostEqual(
      task_metrics.accuracy(confusion), sk.accuracy_score(labels, predictions)
    )
    self.assertAlmostEqual(
      task_metrics.f1(confusion), sk.f1_score(labels, predictions)
    )
    self.assertAlmostEqual(
      task_metrics.matthews_corr(confusion),
      sk.matthews_corrcoef(labels, predictions),
    )

  def test_multiclass_matthews_matches_sklearn(self):
    labels, predictions = random_classes(3, k=3)
    confusion = task_metrics.confusion_matrix(labels, predictions, 3)
    self.assertAlmostEqual(
      task_metrics.matthews_corr(confusion),
      sk.matthews_corrcoef(labels, predictions),
    )

  def test_degenerate_predictions_score_zero(self):
    labels = np.array([0, 1, 1, 0])
    confusion = task_metrics.confusion_matrix(labels, np.zeros(4), 2)
    self.assertEqual(task_metrics.matthews_corr(confusion), 0.0)
    self.assertEqual(task_metrics.f1(confusion), 0.0)
    self.assertEqual(task_metrics.accuracy(confusion), 0.5)

  def test_multiclass_f1_and_confusion_match_sklearn(self):
    labels, predictions = random_classes(5, k=3)
    weights = np.random.default_rng(5).integers(0, 3, len(labels))
    confusion = task_metrics.confusion_matrix(labels, predictions, 3, weights)
    np.testing.assert_array_equal(
      confusion,
      sk.confusion_matrix(labels, predictions, sample_weight=weights),
    )
    for positive in range(3):
      self.assertAlmostEqual(
        task_metrics.f1(confusion, positive=positive),
        sk.f1_score(
          labels,
          predictions,
          labels=[positive],
          average=None,
          sample_weight=weights,
        )[0],
      )

  def test_no_examples_score_zero(self):
    # scikit-learn raises on empty input; an empty eval reads 0.
    confusion = task_metrics.confusion_matrix([], [], 2)
    np.testing.assert_array_equal(confusion, np.zeros((2, 2)))
    for metric in (
      task_metrics.accuracy,
      task_metrics.f1,
      task_metrics.matthews_corr,
    ):
      self.assertEqual(metric(confusion), 0.0)

  def test_out_of_range_class_is_named(self):
    with self.assertRaisesRegex(ValueError, r'labels hold classes 0\.\.2'):
      task_metrics.confusion_matrix([0, 2], [0, 1], 2)

  def test_weights_drop_padding(self):
    confusion = task_metrics.confusion_matrix(
      [1, 1, 0], [1, 0, 0], 2, weights=[1, 0, 1]
    )
    self.assertEqual(task_metrics.accuracy(confusion), 1.0)

  def test_metrics_per_task(self):
    labels, predictions = random_classes(4)
    confusion = task_metrics.confusion_matrix(labels, predictions, 2)
    self.assertEqual(
      set(task_metrics.classification_metrics('cola', confusion)),
      {'accuracy', 'matthews_corr'},
    )
    self.assertEqual(
      set(task_metrics.classification_metrics('mrpc', confusion)),
      {'accuracy', 'f1'},
    )
    self.assertEqual(
      set(task_metrics.classification_metrics('qqp', confusion)),
      {'accuracy', 'f1'},
    )
    self.assertEqual(
      set(task_metrics.classification_metrics('rte', confusion)), {'accuracy'}
    )


class CorrelationTest(parameterized.TestCase):
  @parameterized.parameters(0, 1)
  def test_match_scipy(self, seed):
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(0, 5, 300), 1)  # Many ties, as STS-B.
    predictions = labels + rng.normal(0, 1.5, 300)
    predictions[:20] = np.round(predictions[:20])
    out = task_metrics.regression_metrics(predictions, labels)
    self.assertAlmostEqual(
      out['pearson'], stats.pearsonr(predictions, labels)[0]
    )
    self.assertAlmostEqual(
      out['spearman'], stats.spearmanr(predictions, labels)[0]
    )

  def test_undefined_correlations_are_zero(self):
    # SciPy returns NaN (constant input) or raises (one point); we read 0.
    for x, y in (([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0], [2.0]), ([], [])):
      out = task_metrics.regression_metrics(x, y)
      self.assertEqual(out, {'pearson': 0.0, 'spearman': 0.0})

  def test_ranks_average_ties(self):
    np.testing.assert_array_equal(
      task_metrics.rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1]
    )


class AverageTest(absltest.TestCase):
  def test_task_scores(self):
    self.assertEqual(
      task_metrics.task_score('cola', {'matthews_corr': 0.5, 'accuracy': 0.9}),
      0.5,
    )
    self.assertEqual(
      task_metrics.task_score('stsb', {'pearson': 0.8, 'spearman': 0.7}), 0.8
    )
    self.assertAlmostEqual(
      task_metrics.task_score(
        'mnli', {'matched/accuracy': 0.8, 'mismatched/accuracy': 0.9}
      ),
      0.85,
    )

  def test_paper_average(self):
    # Perceiver IO (bytes) per task, PIO Table 14: average 80.95.
    scores = dict(
      cola=50.19,
      sst2=93.17,
      mrpc=87.24,
      qqp=90.12,
      stsb=86.81,
      mnli=(83.22 + 83.89) / 2,
      qnli=91.71,
      rte=64.84,
      wnli=10.0,
    )
    out = task_metrics.glue_average(scores)
    self.assertAlmostEqual(out['average'], 80.95, delta=0.01)
    self.assertEqual(out['num_tasks'], 8.0)
    self.assertEqual(out['complete'], 1.0)

  def test_partial_average(self):
    out = task_metrics.glue_average({'rte': 0.6, 'wnli': 0.1})
    self.assertEqual(out['average'], 0.6)
    self.assertEqual(out['complete'], 0.0)


if __name__ == '__main__':
  absltest.main()
