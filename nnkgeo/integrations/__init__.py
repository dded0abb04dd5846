"""Integrations with users' tools, each an optional extra.

Importing ``nnkgeo`` or this package imports none of the third-party tools; each
submodule imports its tool only when one of its functions is called:

- ``nnkgeo.integrations.mlflow.log_report``: log a report's headline metrics and its
  JSON (and HTML) into an MLflow run (``pip install 'nnkgeo[mlflow]'``).
- ``nnkgeo.integrations.wandb.log_report``: log a report's headline metrics per set, the
  comparison across sets as line plots and the suspects as a table into a Weights &
  Biases run (``pip install 'nnkgeo[wandb]'``).
"""
