import pytest

from posttrain.config import ConfigError, SFTRecipe, apply_override, load_recipe


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_the_key_and_the_closest_valid_one(tmp_path):
    p = write(tmp_path, "train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(SFTRecipe, p)
    msg = str(e.value)
    assert "unknown key 'train.learning_rate'" in msg
    assert str(p) in msg
    with pytest.raises(ConfigError, match=r"override .train.max_step=3.: unknown key .train.max_step.; did you mean .train.max_steps.\?"):
        load_recipe(SFTRecipe, None, ["train.max_step=3"])


def test_unknown_section_suggests_the_section():
    with pytest.raises(ConfigError, match=r"unknown key 'adaptor'; did you mean 'adapter'\?"):
        load_recipe(SFTRecipe, None, ["adaptor.kind=lora"])


def test_wrong_type_names_key_expected_and_given():
    with pytest.raises(ConfigError, match=r"'train.max_steps' should be int, got 'many' \(str\)"):
        load_recipe(SFTRecipe, None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match=r"'adapter.kind' should be 'none' \| 'lora' \| 'dora' \| 'qlora', got 'ia3'"):
        load_recipe(SFTRecipe, None, ["adapter.kind=ia3"])
    with pytest.raises(ConfigError, match=r"'train.batch_size' should be int, got 2.5"):
        load_recipe(SFTRecipe, None, ["train.batch_size=2.5"])
    with pytest.raises(ConfigError, match=r"'model.trust_remote_code' should be bool"):
        load_recipe(SFTRecipe, None, ["model.trust_remote_code=1"])


def test_nested_list_of_sources_is_checked_with_its_index(tmp_path):
    p = write(tmp_path, "data:\n  train:\n    - {kind: jsonl, path: a.jsonl}\n    - {kind: csv, path: b}\n")
    with pytest.raises(ConfigError, match=r"'data.train\[1\].kind'"):
        load_recipe(SFTRecipe, p)
    p = write(tmp_path, "data:\n  train:\n    - {kind: jsonl, pth: a.jsonl}\n")
    with pytest.raises(ConfigError, match=r"did you mean 'data.train\[0\].path'"):
        load_recipe(SFTRecipe, p)


def test_overrides_parse_values_and_win_over_the_file(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1.0e-4\n  max_steps: 10\nmodel:\n  path: a\n")
    r = load_recipe(SFTRecipe, p, ["train.lr=3e-4", "model.path=some/dir", "train.betas=[0.9, 0.95]",
                                   "train.max_grad_norm=null", "train.progress=false"])
    assert r.train.lr == pytest.approx(3e-4)   # YAML reads "3e-4" as a string: coerced to float
    assert r.train.max_steps == 10
    assert r.model.path == "some/dir"
    assert r.train.betas == (0.9, 0.95)
    assert r.train.max_grad_norm is None
    assert r.train.progress is False


def test_ints_are_accepted_for_floats_and_defaults_fill_the_rest():
    r = load_recipe(SFTRecipe, None, ["train.lr=1", "data.train=[{kind: builtin, path: arithmetic, n: 5}]"])
    assert isinstance(r.train.lr, float) and r.train.lr == 1.0
    assert r.data.train[0].path == "arithmetic" and r.data.train[0].weight == 1.0
    assert r.adapter.kind == "none"


def test_malformed_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(SFTRecipe, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(SFTRecipe, write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="should be a mapping"):
        load_recipe(SFTRecipe, write(tmp_path, "train: 3\n"))
    with pytest.raises(ConfigError, match="is not key=value"):
        apply_override({}, "train.lr")


def test_recipe_changes_lists_dotted_keys():
    from posttrain.config import recipe_changes, to_dict
    a = to_dict(load_recipe(SFTRecipe, None, ["train.lr=1e-3"]))
    b = to_dict(load_recipe(SFTRecipe, None, ["train.lr=2e-3", "adapter.kind=lora"]))
    assert recipe_changes(a, b) == ["adapter.kind: 'none' -> 'lora'", "train.lr: 0.001 -> 0.002"]
    assert recipe_changes(a, a) == []
