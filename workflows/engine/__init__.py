"""The engine: what every bundle's training and validation run on. The harness builds the trainer and the
evaluator (``harness``), feeds them (``datasets``, ``quarantine``: the quarantine-guarded dataset), keeps
their numbers sound (``precision``, ``batch_norm``, ``loss_terms``, ``validation_loss``, ``postprocessing``),
saves and reads checkpoints (``checkpoints``, ``checkpoint_writer``, ``model_context``), resumes by stage
(``stages``) and orders an engine's handlers (``handler_lists``). It may import only ``errors``, ``data``,
``metrics`` and itself: tracking and reports plug into it as the handlers a config lists.
"""
