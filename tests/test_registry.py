import pytest

from posttrain.registry import Registry, UnknownName


def test_registry_rejects_duplicates_and_lists_names_on_a_miss():
    reg = Registry("objective")
    reg.register("grpo", 1)

    @reg.register("dapo")
    def dapo():
        return 2

    assert reg.names() == ["grpo", "dapo"] and reg.get("dapo") is dapo and "grpo" in reg
    with pytest.raises(ValueError, match="objective 'grpo' is already registered"):
        reg.register("grpo", 3)
    with pytest.raises(UnknownName) as e:
        reg.get("gspo")
    assert str(e.value) == "unknown objective 'gspo'; known: grpo, dapo"
