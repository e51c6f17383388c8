"""The bundled reference model: its answer formats, training data, training loop and evaluation.

A small Llama trained by the project on its own synthetic long-context tasks, so the offline
default has a model that really solves them at full cache (see
``assets/reference-model/MODEL_CARD.md``). Nothing here is imported by the pipeline; the
``hf`` engine loads the trained weights through ``builtin:reference``.
"""
