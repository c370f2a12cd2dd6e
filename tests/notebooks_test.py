"""Executes notebooks/tour.ipynb with nbclient; a failing cell fails."""

import os

import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read():
  return nbformat.read(
    os.path.join(ROOT, 'notebooks', 'tour.ipynb'), as_version=4
  )


def test_tour_notebook_is_stored_without_outputs():
  for cell in _read().cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, cell.source


def test_tour_notebook_runs():
  nb = _read()
  # The parameter cell: a tiny training run under test.
  for cell in nb.cells:
    if 'parameters' in cell.get('metadata', {}).get('tags', []):
      cell.source = 'NUM_STEPS = 4'
  client = nbclient.NotebookClient(
    nb,
    timeout=300,
    kernel_name='python3',
    resources={'metadata': {'path': ROOT}},
  )
  client.execute()
  images = [
    o
    for c in nb.cells
    if c.cell_type == 'code'
    for o in c.get('outputs', [])
    if 'image/png' in o.get('data', {})
  ]
  assert len(images) >= 3
