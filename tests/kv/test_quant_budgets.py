"""How budgets map onto quantization policies, and invalid combinations as clear errors."""

import pytest
from typer.testing import CliRunner

from kv_transition.cli import app
from kv_transition.errors import BadInput
from kv_transition.policy.quant import eviction_keep, parse_quant, resolve_widths
from kv_transition.policy.spec import policy_spec
from kv_transition.settings import QuantConfig, load_settings
from kvt_testkit import REPO, write_config

CFG = QuantConfig()  # groups of 32, residual 128


def _widths(name, budget, head_dim=128, cfg=CFG):
    spec, fits = resolve_widths(parse_quant(name, cfg), budget, cfg, head_dim)
    return (spec.key.bits, spec.value.bits), fits


@pytest.mark.parametrize("budget, bits", [(1.0, 8), (0.5625, 8), (0.5, 4), (0.3, 3),
                                          (0.25, 3), (0.2, 2)])
def test_int_picks_the_widest_width_whose_true_ratio_fits(budget, bits):
    # true ratios with float16 (scale, zero) per 32 values: 8 -> 0.5625, 4 -> 0.3125,
    # 3 -> 0.25, 2 -> 0.1875
    assert _widths("int", budget) == ((bits, bits), True)


@pytest.mark.parametrize("budget, bits", [(0.6, (8, 8)), (0.5, (4, 8)), (0.4, (4, 4)),
                                          (0.25, (2, 4)), (0.2, (2, 2))])
def test_kivi_picks_key_and_value_widths_from_the_budget(budget, bits):
    assert _widths("kivi", budget) == (bits, True)


def test_small_heads_change_what_fits():
    # head_dim 16 holds groups of 16 channels only: metadata doubles per value
    assert _widths("int", 0.25, head_dim=16) == ((2, 2), True)
    assert _widths("int", 0.2, head_dim=16) == ((2, 2), False)


def test_fixed_widths_come_from_the_name_or_the_config():
    assert _widths("int4", 0.5) == ((4, 4), True)  # a cap, not a target
    assert _widths("kivi-k2v4", 0.1875) == ((2, 4), True)
    cfg = QuantConfig(key_bits=4, value_bits=2)
    assert _widths("kivi", 0.2, cfg=cfg) == ((4, 2), True)
    assert parse_quant("kivi", cfg).bits_from == "config"


def test_eviction_keeps_what_the_widths_leave_of_the_budget():
    assert eviction_keep("int4", 0.125) == 0.5
    assert eviction_keep("kivi-k2v4", 0.09375) == 0.5
    assert eviction_keep("int4", 0.5) == 1.0
    spec = policy_spec("h2o+int8")
    assert spec.family == "eviction+quant" and spec.needs_attention_weights
    assert not spec.shared_prefill


def _kv(**kv):
    return load_settings(None, [f"kv.{k}={v}" for k, v in kv.items()])


def test_the_done_when_grid_is_valid():
    s = _kv(policies="[snapkv,int4,kivi,int,adaptive,snapkv+kivi-k2v4]", budgets="[1.0,0.5,0.25]")
    assert s.kv.quant.group_size == 32
    pinned = load_settings(REPO / "config" / "experiments" / "quant_vs_evict.yaml")
    assert "snapkv+int4" in pinned.kv.policies and pinned.kv.budgets == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("kv, message", [
    ({"policies": "[int4]", "budgets": "[1.0,0.2]"},
     "nominal budget of 0.25; it cannot run at budget 0.2"),
    ({"policies": "[kivi-k3v4]"}, "a width must divide 32: 3 bits"),
    ({"policies": "[kivi]", "quant.key_bits": 3, "quant.value_bits": 4}, "must divide 32"),
    ({"policies": "[kivi]", "quant.key_bits": 2}, "set both key_bits and value_bits"),
    ({"policies": "[int5]"}, "uniform widths are int8, int4, int3, int2"),
    ({"policies": "[int4+snapkv]"}, "write snapkv+int4"),
    ({"policies": "[snapkv+int]"}, "the quantization widths must be named"),
    ({"policies": "[full+int4]"}, "'full' is not an eviction policy"),
    ({"policies": "[snapkv+int4+int2]"}, "compose one eviction and one quantization"),
    ({"policies": "[kivi]", "quant.residual_length": 100}, "must be a multiple of"),
    ({"policies": "[int]", "budgets": "[0.15]"}, "narrowest widths already have a true ratio"),
    ({"policies": "[adaptive]", "budgets": "[0.15]"}, "with every token at 2 bits"),
    ({"quant.group_size": 12}, "must be a multiple of 8"),
])
def test_invalid_combinations_are_bad_input(kv, message):
    with pytest.raises(BadInput, match="kv") as info:
        _kv(**kv)
    assert message in str(info.value)


def test_residual_needs_no_group_multiple_without_kivi():
    assert _kv(policies="[int4]", budgets="[0.25]", **{"quant.residual_length": 100})


def test_cli_rejects_an_unrealisable_budget_before_touching_the_database(home, tmp_path):
    cfg = write_config(tmp_path / "q.yaml", kv={"policies": ["int8"], "budgets": [1.0, 0.25]})
    result = CliRunner().invoke(app, ["all", "-c", str(cfg), "--no-progress"])
    assert result.exit_code == 2 and "int8" in result.output and "Traceback" not in result.output
    assert not (home / "runs").exists()
