"""Evaluation and reports: the evaluator's metric handlers and case report (``evaluate``), summaries and
plots (``reports``), the papers' tables (``paper_tables``, ``threshold_report``), inference on new images
(``inference``) and whole-image evaluation (``whole_image``). It may import ``errors``, ``data``,
``metrics``, ``engine`` and ``tracking``.
"""
