"""KV novelty probes: which cache entries carry new information, and does compression keep them?

``capture`` records the real keys/values (or, as an explicit proxy, the hidden states entering
attention) of selected layers and heads for every position while a model generates; ``store``
streams them to per-layer ``.npz`` files or the database; ``metrics`` and ``temporal`` turn them
into novelty time series and their statistics; ``compression`` relates novelty to what each
eviction policy keeps. The command that drives it all, ``kv-transition novelty``, is
``novelty.py`` beside ``pipeline.py``.
"""
