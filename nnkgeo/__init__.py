"""nnkgeo: measure the geometry of deep-learning embeddings with NNK graphs.

``nnkgeo analyze`` runs the engine in-process; the service (``service``) and its
workers (``workers``) run the same engine behind a REST API.
"""

__version__ = "0.1.0"
