"""GLUE metrics (NumPy) and the GLUE average of the paper.

Shape letters: N examples, K classes.

Per task (Perceiver IO, App. F.4; GLUE's own choices for the extra ones):
  cola                   Matthews correlation (the score), accuracy
  sst2, qnli, rte, wnli  accuracy
  mrpc, qqp              F1 of class 1, accuracy (accuracy is the score)
  stsb                   Pearson (the score) and Spearman correlation
  mnli                   accuracy on validation_matched and _mismatched

The GLUE average (paper Table 1) is the mean of the task scores over CoLA,
SST-2, MRPC, QQP, STS-B, MNLI, QNLI and RTE, where MNLI counts once as the
mean of matched and mismatched and WNLI is left out.

Classification metrics are computed from a confusion matrix, which is a sum
over batches (made on device by `experiments.glue`); correlations from the
full vectors of predictions and labels. The metrics themselves are
scikit-learn's and SciPy's: a confusion matrix is handed to scikit-learn as
its K * K cells, each a (label, prediction) pair weighted by its count. Where
a library raises or returns NaN (no examples, a constant vector) we return 0.
"""

from collections.abc import Mapping

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

# Task -> (metric giving the task's score, its other metrics).
SCORE_METRIC = {
  'cola': 'matthews_corr',
  'sst2': 'accuracy',
  'mrpc': 'accuracy',
  'qqp': 'accuracy',
  'stsb': 'pearson',
  'mnli': 'accuracy',  # mean of matched and mismatched, see `task_score`
  'qnli': 'accuracy',
  'rte': 'accuracy',
  'wnli': 'accuracy',
}
AVERAGE_TASKS = ('cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte')


def confusion_matrix(labels, predictions, num_classes: int, weights=None):
  """Weighted counts of (label, prediction) pairs.

  Args:
    labels: [N] integer classes in [0, K).
    predictions: [N] integer classes in [0, K).
    num_classes: K.
    weights: [N] weight of each example (0 drops padding); 1 when None.

  Returns:
    [K, K] float64 counts; rows are labels, columns predictions. All zeros
    when N = 0 (scikit-learn raises on empty input).
  """
  labels = np.asarray(labels, np.int64).reshape(-1)
  predictions = np.asarray(predictions, np.int64).reshape(-1)
  if weights is None:
    weights = np.ones_like(labels, np.float64)
  weights = np.asarray(weights, np.float64).reshape(-1)
  for name, classes in (('labels', labels), ('predictions', predictions)):
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
      # scikit-learn would drop such pairs silently.
      raise ValueError(
        f'{name} hold classes {classes.min()}..{classes.max()}, outside '
        f"[0, num_classes={num_classes}); pass the task's num_classes."
      )
  if not labels.size:
    return np.zeros((num_classes, num_classes), np.float64)
  return sk_metrics.confusion_matrix(
    labels, predictions, labels=np.arange(num_classes), sample_weight=weights
  ).astype(np.float64)


def _cells(confusion):
  """A [K, K] confusion matrix as K * K weighted (label, prediction) pairs.

  Returns:
    ([K * K] labels, [K * K] predictions, [K * K] counts), or None when the
    matrix holds no examples (scikit-learn raises on all-zero weights).
  """
  confusion = np.asarray(confusion, np.float64)
  if not confusion.sum():
    return None
  labels, predictions = np.indices(confusion.shape)
  return labels.ravel(), predictions.ravel(), confusion.ravel()


def accuracy(confusion) -> float:
  """Accuracy from a [K, K] confusion matrix; 0 when it is empty."""
  cells = _cells(confusion)
  if cells is None:
    return 0.0
  labels, predictions, counts = cells
  return float(
    sk_metrics.accuracy_score(labels, predictions, sample_weight=counts)
  )


def f1(confusion, positive: int = 1) -> float:
  """F1 of class `positive` from a [K, K] confusion matrix.

  0 when the class is never predicted nor present, or the matrix is empty.
  """
  cells = _cells(confusion)
  if cells is None:
    return 0.0
  labels, predictions, counts = cells
  return float(
    sk_metrics.f1_score(
      labels,
      predictions,
      labels=[positive],
      average='micro',  # Over the one class `positive`: its own F1.
      sample_weight=counts,
      zero_division=0.0,
    )
  )


def matthews_corr(confusion) -> float:
  """Matthews correlation from a [K, K] confusion matrix (Gorodkin's R_K).

  Equals the binary MCC for K = 2; 0 when a marginal is constant (as
  scikit-learn returns) or the matrix is empty.
  """
  cells = _cells(confusion)
  if cells is None:
    return 0.0
  labels, predictions, counts = cells
  return float(
    sk_metrics.matthews_corrcoef(labels, predictions, sample_weight=counts)
  )


def _correlation(statistic, x, y) -> float:
  """`statistic(x, y).statistic`; 0 for fewer than 2 points or a constant."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    # SciPy raises below 2 points and warns and returns NaN on a constant.
    return 0.0
  return float(statistic(x, y).statistic)


def pearson(x, y) -> float:
  """Pearson correlation of two [N] vectors; 0 when it is undefined."""
  return _correlation(stats.pearsonr, x, y)


# Ranks from 1, ties getting their average rank.
rankdata = stats.rankdata


def spearman(x, y) -> float:
  """Spearman correlation of two [N] vectors; 0 when it is undefined."""
  return _correlation(stats.spearmanr, x, y)


def classification_metrics(task: str, confusion) -> dict[str, float]:
  """The metrics of a classification task from its confusion matrix."""
  out = {'accuracy': accuracy(confusion)}
  if task == 'cola':
    out['matthews_corr'] = matthews_corr(confusion)
  if task in ('mrpc', 'qqp'):
    out['f1'] = f1(confusion, positive=1)
  return out


def regression_metrics(predictions, labels) -> dict[str, float]:
  return {
    'pearson': pearson(predictions, labels),
    'spearman': spearman(predictions, labels),
  }


def task_score(task: str, metrics: Mapping[str, float]) -> float:
  """The one number a task adds to the GLUE average.

  For MNLI, `metrics` holds `matched/accuracy` and `mismatched/accuracy`.
  """
  if task == 'mnli':
    return 0.5 * (metrics['matched/accuracy'] + metrics['mismatched/accuracy'])
  return metrics[SCORE_METRIC[task]]


def glue_average(scores: Mapping[str, float]) -> dict[str, float]:
  """The paper's GLUE average of task scores (WNLI excluded).

  Args:
    scores: task -> score (from `task_score`), for any subset of tasks.

  Returns:
    {'average': mean over the average tasks present, 'num_tasks': how many,
     'complete': 1.0 if all eight were present}.
  """
  present = [t for t in AVERAGE_TASKS if t in scores]
  average = float(np.mean([scores[t] for t in present])) if present else 0.0
  return {
    'average': average,
    'num_tasks': float(len(present)),
    'complete': float(len(present) == len(AVERAGE_TASKS)),
  }
