"""docs/objectives.md holds exactly the section rendered from the registries."""
from posttrain.objectives import POLICY_LOSSES
from posttrain.objectives.docs import BEGIN, DOCS_PATH, END, objectives_markdown, render


def test_committed_docs_match_the_registry():
    text = DOCS_PATH.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section.strip("\n") == objectives_markdown(), (
        "docs/objectives.md is stale: run `python -m posttrain.objectives.docs`")
    assert render(text) == text


def test_every_objective_is_listed_with_its_defaults_and_paper():
    md = objectives_markdown()
    for name, obj in POLICY_LOSSES.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` |"))
        assert obj.paper in row and f"`{obj.aggregation}`" in row
        for key, value in obj.defaults().items():
            assert f"`{key}={value!r}`" in row


def test_render_leaves_the_rest_of_the_file_alone():
    other = "<!-- advantages:begin -->\nA\n<!-- advantages:end -->\n"
    text = f"# T\n\nintro\n{BEGIN}\nSTALE TEXT\n{END}\n\n{other}"
    out = render(text)
    assert out.startswith("# T\n\nintro\n") and out.endswith(other)
    assert "STALE TEXT" not in out and objectives_markdown() in out


def test_every_distill_loss_is_listed_with_its_defaults():
    from posttrain.objectives import DISTILL_LOSSES
    md = objectives_markdown()
    for name, obj in DISTILL_LOSSES.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` |"))
        assert obj.paper in row and obj.formula in row
        for key, value in obj.defaults().items():
            assert f"`{key}={value!r}`" in row
