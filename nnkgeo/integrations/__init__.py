"""Integrations with users' tools, each an optional extra.

Importing ``nnkgeo`` or this package imports none of the third-party tools; each
submodule imports its tool only when one of its functions is called:

- ``nnkgeo.integrations.mlflow.log_report``: log a report's headline metrics and its
  JSON (and HTML) into an MLflow run (``pip install 'nnkgeo[mlflow]'``).
"""
