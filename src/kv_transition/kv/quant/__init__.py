"""KV-cache quantization: grouped asymmetric quantizers, the cache classes that hold quantized
keys and values inside a transformers model, and the byte accounting that reports what they
really store (codes + scales + zero-points + full-precision residual) against a 16-bit cache.

Modules: ``quantizers`` (pack, quantize, dequantize), ``policies`` (names, bit widths and
budgets), ``accounting`` (bytes and ratios), ``cache`` (uniform and KIVI caches, the prefill
hooks), ``adaptive`` (SmartKV-style per-token bit widths under a byte budget).
"""
