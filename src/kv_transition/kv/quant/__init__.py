"""KV-cache quantization: grouped asymmetric quantizers, the cache classes that hold quantized
keys and values inside a transformers model, and the byte accounting that reports what they
really store (codes + scales + zero-points + full-precision residual) against a 16-bit cache.

Modules: ``quantizers`` (pack, quantize, dequantize), ``cache`` (uniform and KIVI caches, the
prefill hooks), ``adaptive`` (SmartKV-style per-token bit widths under a byte budget),
``factory`` (the cache a policy names), ``accounting`` (bytes a real cache holds). The names,
bit widths and budget rules they follow, and the byte arithmetic, are policy types below
settings: ``policy/quant.py`` and ``policy/widths.py``.
"""
