"""CPU smoke training: the loss falls, the saved model loads offline, runs are deterministic."""

from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from reference_testkit import SMOKE_STEPS, smoke_config, train_log
from kv_transition.cli import app
from kv_transition.engines.base import GenerationRequest
from kv_transition.errors import BadInput
from kv_transition.reference.train import CHECKPOINT, SUMMARY, train

QUIET = {"log": lambda _: None}


def _weights(out: Path) -> dict:
    return load_file(out / "model.safetensors")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_smoke_training_lowers_the_answer_loss(smoke_model):
    losses = [entry["loss"] for entry in train_log(smoke_model)]
    assert len(losses) == SMOKE_STEPS
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 1.0, losses


def test_saved_model_loads_offline_and_answers_through_the_engine(smoke_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    from kv_transition.engines.hf import HFEngine
    from kv_transition.settings import ModelConfig, PressConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(smoke_model, local_files_only=True)
    assert model.config.num_hidden_layers == 2 and model.config.max_position_embeddings == 8192
    assert not (smoke_model / CHECKPOINT).exists() and (smoke_model / SUMMARY).is_file()
    engine = HFEngine(ModelConfig(name=str(smoke_model), dtype="float32", device="cpu"),
                      PressConfig(), smoke_model.parent)
    result = engine.generate(GenerationRequest(
        context="The special magic number for koala is: 4985193.", max_tokens=6,
        question="What is the special magic number for koala mentioned in the provided text?"))
    assert result.completion_tokens >= 1 and result.prompt_tokens > 20


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, smoke_model):
    steps = 2
    a, b, c = (train(smoke_config(tmp_path / name, seed=seed, steps=steps), **QUIET)
               for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert a["done"] and b["done"] and c["done"]
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    steps = 3
    train(smoke_config(tmp_path / "whole", steps=steps), **QUIET)
    # max_minutes=0 stops after one step; the resumed leg uses a loader worker process
    first = train(smoke_config(tmp_path / "legs", steps=steps), max_minutes=0, **QUIET)
    assert first == {"done": False, "steps_done": 1}
    assert (tmp_path / "legs" / CHECKPOINT).is_file()
    with pytest.raises(BadInput, match="--resume"):
        train(smoke_config(tmp_path / "legs", steps=steps), **QUIET)
    with pytest.raises(BadInput, match="other training settings"):
        train(smoke_config(tmp_path / "legs", steps=steps, lr=1e-4), resume=True, **QUIET)
    done = train(smoke_config(tmp_path / "legs", steps=steps, workers=1), resume=True, **QUIET)
    assert done["done"] and done["steps_done"] == steps
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "legs"))


def test_train_command_and_its_bad_input(tmp_path):
    common = ["reference", "train", "--size", "smoke", "--steps", "2", "--tokens-per-step",
              "400", "--min-len", "96", "--max-len", "120", "--device", "cpu"]
    ok = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "m")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "m" / "config.json").is_file()
    for bad, word in ((["--device", "tpu"], "--device"), (["--min-len", "10"], "--min-len"),
                      (["--size", "huge"], "--size"), (["--save-dtype", "int3"], "--save-dtype"),
                      (["--binding-gate", "0.9,0.8,0.7"], "--binding-gate"),
                      (["--binding-gate", "1.5"], "--binding-gate"),
                      (["--binding-max-steps", "10,x"], "--binding-max-steps"),
                      (["--binding", "none", "--binding-max-steps", "5,5"],
                       "--binding-max-steps"),
                      (["--families", "niah_multikey:0"], "--families"),
                      (["--families", "riddles:1"], "--families"),
                      (["--family-lengths", "niah_multikey"], "--family-lengths"),
                      (["--family-lengths", "niah_multikey:100-500"], "--family-lengths"),
                      (["--family-length-draw", "cubic"], "--family-length-draw"),
                      (["--families", "niah_single", "--family-lengths",
                        "niah_multikey:100-110"], "--family-lengths"),
                      (["--init-from", str(tmp_path)], "--init-from")):
        result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "x"), *bad])
        assert result.exit_code == 2 and word in result.output, result.output


def test_install_resaves_the_same_weights_and_tokenizer(smoke_model, tmp_path):
    from kv_transition.reference.model import install

    install(smoke_model, tmp_path / "installed")
    assert _same(_weights(smoke_model), _weights(tmp_path / "installed"))
    assert (tmp_path / "installed" / "tokenizer.json").read_text() == \
        (smoke_model / "tokenizer.json").read_text()
    with pytest.raises(BadInput, match="config.json"):
        install(tmp_path / "nothing", tmp_path / "x")


def test_install_refuses_a_model_trained_on_other_token_ids(smoke_model, tmp_path):
    import json
    import shutil

    from kv_transition.reference.model import install

    copy = tmp_path / "copy"
    shutil.copytree(smoke_model, copy)
    summary = json.loads((copy / SUMMARY).read_text())
    assert summary["tokenizer_probe"][:1] == [1]  # <s>, then the probe text's ids
    summary["tokenizer_probe"][3] += 1
    (copy / SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(BadInput, match="tokenizer_probe"):
        install(copy, tmp_path / "x")


def test_init_from_starts_at_a_finished_runs_weights_and_records_them(smoke_model, tmp_path):
    import json

    import torch

    from kv_transition.reference.train import _new_state

    cfg = smoke_config(tmp_path / "second", steps=2, init_from=str(smoke_model))
    model, _, progress = _new_state(cfg, torch.device("cpu"))
    start = {k: v.half() for k, v in model.state_dict().items()}
    saved = _weights(smoke_model)
    assert progress["step"] == 0 and all((start[k] == saved[k]).all() for k in saved)
    fresh, _, _ = _new_state(smoke_config(tmp_path / "fresh"), torch.device("cpu"))
    assert not _same(saved, {k: v.half() for k, v in fresh.state_dict().items() if k in saved})
    assert train(cfg, **QUIET)["done"]
    summary = json.loads((tmp_path / "second" / SUMMARY).read_text())
    first = json.loads((smoke_model / SUMMARY).read_text())
    assert summary["init_from"]["steps_done"] == first["steps_done"]
    assert len(summary["init_from"]["sha256"]) == 64


def test_init_from_without_weights_or_of_another_shape_is_bad_input(smoke_model, tmp_path):
    with pytest.raises(BadInput, match="--init-from .*model.safetensors"):
        train(smoke_config(tmp_path / "a", init_from=str(tmp_path)), **QUIET)
    other_shape = smoke_config(tmp_path / "b", init_from=str(smoke_model))
    other_shape.size = "reference"
    with pytest.raises(BadInput, match="do not fit the 'reference' shape"):
        train(other_shape, **QUIET)
