"""Named architecture shapes for systems mode (``model.init: random``), as data.

They sit below the config so that ``model.shape`` is validated without importing the engines;
``engines/shapes.py`` builds the random-weight models from them.
"""

from __future__ import annotations

from typing import Any

# Published config.json values of each architecture (the fields that set compute and memory).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=False),
    "qwen2.5-7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       vocab_size=152064, rope_theta=1000000.0, max_position_embeddings=131072,
                       tie_word_embeddings=False),
    "mistral-7b": dict(arch="mistral", hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, vocab_size=32768, rope_theta=1000000.0,
                       max_position_embeddings=32768, tie_word_embeddings=False),
    # the bundled reference model's architecture (reference/model.py SIZES["reference"]), to
    # measure its speed before its weights exist
    "reference-4m": dict(arch="llama", hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                         vocab_size=1024, rope_theta=10000.0, max_position_embeddings=16384,
                         tie_word_embeddings=True),
    # small enough for a CPU test of the same code path
    "tiny-llama": dict(arch="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=2048,
                       max_position_embeddings=16384, tie_word_embeddings=True),
}
