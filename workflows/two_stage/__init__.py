"""The two-stage pipeline of paper 002 (detect, then segment the detected region): the YOLOv3 detector
(``detection``), the pipeline itself (``pipeline``), its evaluation (``evaluation``) and inference
(``inference``). It may import ``errors``, ``data``, ``metrics``, ``engine``, ``tracking`` and
``evaluation``.
"""
