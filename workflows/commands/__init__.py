"""Commands: the ``breastseg`` CLI (``cli``) and what its sub-commands run (``demo``, ``crossval``,
``ablation``, ``compare`` with ``compare_cases``, ``paired_stats`` and ``nnunet_cases``, ``export-nnunet``'s
``nnunet_export``, ``bundle_runs``), and ``bundle``,
the glue bundle configs call (paths, datalists, settings checks). It may import every other role; no
module of another role imports it.
"""
