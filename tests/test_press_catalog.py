"""The press catalog agrees with the installed kvpress, and policy definitions validate at load."""

import inspect

import kvpress
import pytest

from kv_transition.errors import BadInput
from kv_transition.press_catalog import ABSTRACT, PRESSES
from kv_transition.settings import load_settings


def _init_params(cls) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters
            if p != "self" and not p.startswith("_")]


def test_every_kvpress_press_is_in_the_catalog():
    shipped = {n for n in dir(kvpress) if n.endswith("Press")} - set(ABSTRACT)
    assert shipped == set(PRESSES)


@pytest.mark.parametrize("name", sorted(PRESSES))
def test_catalog_parameters_match_kvpress(name):
    info = PRESSES[name]
    assert sorted(_init_params(getattr(kvpress, name))) == sorted((*info.params, *info.inner))
    assert info.budget is None or info.budget in info.params


def _load(tmp_path, policies_yaml: str):
    path = tmp_path / "c.yaml"
    path.write_text("kv:\n  budgets: [1.0, 0.5]\n  policies:\n" + policies_yaml)
    return load_settings(path)


def test_a_mapping_defines_a_policy_by_press_params_and_inner(tmp_path):
    s = _load(tmp_path, "    - snapkv\n"
                        "    - name: ada_snap\n      press: AdaKVPress\n"
                        "      params: {alpha_safeguard: 0.1}\n"
                        "      inner: {press: SnapKVPress, params: {window_size: 8}}\n")
    assert s.kv.all_policies() == ["snapkv", "ada_snap"]
    definition = s.kv.press.custom["ada_snap"]
    assert definition.press == "AdaKVPress" and definition.inner.params == {"window_size": 8}
    # the snapshot written to the database loads back to the same definition
    again = tmp_path / "again.yaml"
    again.write_text(s.snapshot_yaml())
    assert load_settings(again).kv.press.custom == s.kv.press.custom


@pytest.mark.parametrize("entry, message", [
    ("press: SnapPress", r"unknown press 'SnapPress'; allowed: .*SnapKVPress"),
    ("press: SnapKVPress\n      params: {windw: 3}",
     r"SnapKVPress: unknown parameter\(s\) windw; allowed: compression_ratio, window_size"),
    ("press: AdaKVPress", r"AdaKVPress wraps a press: give it as 'inner'"),
    ("press: KnormPress\n      inner: {press: SnapKVPress}", r"KnormPress wraps no press"),
    ("press: ComposedPress\n      inner: {press: SnapKVPress}", r"'inner' must be a list"),
    ("press: PrefillDecodingPress\n      inner: {press: KnormPress}", r"list of 2 presses"),
    ("press: KVzipPress", r"KVzipPress cannot run here: it needs kvpress's own pipeline"),
    ("press: SimLayerKVPress", r"no press in it takes a budget"),
    ("press: DMSPress\n      params: {threshold: 0.1}\n      inner: {press: KnormPress}",
     r"no press in it takes a budget"),
    ("press: KnormPress\n      params: {compression_ratio: 0.3}", r"no press in it takes a budget"),
])
def test_bad_definitions_exit_2_naming_what_is_allowed(tmp_path, entry, message):
    with pytest.raises(BadInput, match=message):
        _load(tmp_path, f"    - name: mine\n      {entry}\n")


def test_a_definition_cannot_take_a_built_in_name(tmp_path):
    with pytest.raises(BadInput, match="taken by a built-in policy"):
        _load(tmp_path, "    - name: snapkv\n      press: KnormPress\n")


def test_the_readme_press_table_is_the_catalog():
    from kvt_testkit import REPO

    from kv_transition.press_catalog import markdown_table

    assert markdown_table() in (REPO / "README.md").read_text()


def test_the_readme_example_loads():
    import yaml
    from kvt_testkit import REPO

    from kv_transition.settings import Settings

    text = (REPO / "README.md").read_text().split("## Every kvpress press")[1]
    cfg = Settings.model_validate(yaml.safe_load(text.split("```yaml")[1].split("```")[0]))
    assert cfg.kv.all_policies() == ["snapkv", "ada_snapkv", "snap_then_knorm"]
