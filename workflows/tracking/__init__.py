"""Tracking: MLflow runs of every training and evaluation (``runs``: the resilient handler, run names, the
store, loggable parameters), the model registry (``registry``: register the best checkpoint, tag it
with its evaluation, promote it) and the registered models' MLflow classes (``serving``: DICOM/PNG in, masks out). It may import ``errors``, ``data``, ``metrics`` and ``engine``; the
engine never imports it (trackers are handlers).
"""
