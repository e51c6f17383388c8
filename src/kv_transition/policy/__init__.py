"""Policy types, below settings: a policy name parsed once into what it means.

``spec`` (one ``PolicySpec`` per name: built-in eviction presses, quantized caches, their
compositions, and policies defined in the config from any kvpress press), ``quant``
(quantization names, bit widths and how a budget maps onto them), ``widths`` (what a width
costs in bytes). Pure Python: config validation (``settings.py``) asks these types without
importing torch; ``kv/`` builds from them the presses and caches the engine applies.
"""
