"""The committed reference weights load and answer: a broken tokenizer, loader or file fails here.

Only the weights in ``assets/reference-model/`` are used (``builtin:reference``), through the
same evaluation code as the model card's tables, on examples from a seed the card does not use.
"""

import json

from kv_transition.engines import builtin
from kv_transition.reference import evaluate as ev
from kv_transition.reference.model import probe_ids, word_tokenizer


def test_committed_weights_are_float16_and_small():
    weights = builtin.REFERENCE_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 20 * 2**20
    config = json.loads((builtin.REFERENCE_DIR / "config.json").read_text())
    assert config["dtype"] == "float16" or config.get("torch_dtype") == "float16"


def test_committed_tokenizer_is_the_one_the_model_was_trained_with():
    summary = json.loads((builtin.REFERENCE_DIR / "training.json").read_text())
    assert summary["tokenizer_probe"] == probe_ids(word_tokenizer())


def test_full_cache_answers_needles_at_1024_tokens(home):
    plan = ev.EvalPlan(model="builtin:reference", lengths=[1024], n=20, seed=11,
                       formats=["text"], tasks=["niah_single", "niah_multikey"])
    cells = ev.evaluate(plan, home / "data" / "models", log=lambda _: None)
    assert [c.n for c in cells] == [20, 20]
    assert all(c.acc >= 0.9 for c in cells), [(c.task, c.acc) for c in cells]
