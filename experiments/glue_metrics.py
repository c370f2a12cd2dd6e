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
over batches; correlations from the full vectors of predictions and labels.
"""

from collections.abc import Mapping

import numpy as np

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
  """[K, K] counts; rows are labels, columns predictions."""
  labels = np.asarray(labels, np.int64).reshape(-1)
  predictions = np.asarray(predictions, np.int64).reshape(-1)
  if weights is None:
    weights = np.ones_like(labels, np.float64)
  out = np.zeros((num_classes, num_classes), np.float64)
  np.add.at(out, (labels, predictions), np.asarray(weights, np.float64))
  return out


def accuracy(confusion) -> float:
  confusion = np.asarray(confusion, np.float64)
  total = confusion.sum()
  return float(np.trace(confusion) / total) if total else 0.0


def f1(confusion, positive: int = 1) -> float:
  """F1 of class `positive` (0 when it is never predicted nor present)."""
  confusion = np.asarray(confusion, np.float64)
  tp = confusion[positive, positive]
  fp = confusion[:, positive].sum() - tp
  fn = confusion[positive, :].sum() - tp
  denom = 2 * tp + fp + fn
  return float(2 * tp / denom) if denom else 0.0


def matthews_corr(confusion) -> float:
  """Matthews correlation from a K x K confusion matrix (Gorodkin's R_K).

  Equals the binary MCC for K = 2; 0 when a marginal is constant.
  """
  c = np.asarray(confusion, np.float64)
  t = c.sum(axis=1)  # true counts per class
  p = c.sum(axis=0)  # predicted counts per class
  n = c.sum()
  cov_ytyp = np.trace(c) * n - t @ p
  cov_ypyp = n * n - p @ p
  cov_ytyt = n * n - t @ t
  denom = np.sqrt(cov_ytyt * cov_ypyp)
  return float(cov_ytyp / denom) if denom else 0.0


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom else 0.0


def rankdata(x) -> np.ndarray:
  """Ranks from 1, ties getting their average rank (as scipy's default)."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind='mergesort')
  sorted_x = x[order]
  ranks = np.empty(len(x), np.float64)
  start = 0
  for end in range(1, len(x) + 1):
    if end == len(x) or sorted_x[end] != sorted_x[start]:
      ranks[order[start:end]] = 0.5 * (start + end - 1) + 1
      start = end
  return ranks


def spearman(x, y) -> float:
  return pearson(rankdata(x), rankdata(y))


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
