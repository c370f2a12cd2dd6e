"""Time-series forecasting: observation tokens in, quantiles at any times out.

`python -m experiments.forecasting` trains and evaluates; `.report` prints a
run's tables; `.forecast` forecasts a user's own CSV from a trained run.
"""
