"""StructEval-T scoring: perfect, partial and broken outputs per format on real records
(hand-worked fractions), extraction, each reference quirk in the default and corrected
modes, aggregation, a sweep that builds a perfect document for every sample record, and
adversarial inputs stopped at a named limit. The extraction rules and the path tokens on
their own: test_structeval_parse.py, test_structeval_paths.py."""

import json
import re
from pathlib import Path

import pytest
import yaml

from posttrain.data.formats import to_toml
from posttrain.eval import structeval as SE
from posttrain.eval.structeval import parse as SP
from posttrain.eval.structeval import load_structeval, score, score_example, score_records, tokenize
from posttrain.rewards.structured import MAX_DEPTH, MAX_NODES

SAMPLE = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "structeval_t"
          / "nonrenderable_sample.json")

# The scoring fields of real records from the sample (checked against the file below).
RECORDS = {r["task_id"]: r for r in [
    {"task_id": "000500", "task_name": "Text to JSON", "input_type": "Text", "output_type": "JSON",
     "raw_output_metric": [
         "novel.title", "novel.author.name", "novel.author.birth_year", "novel.publication.year",
         "novel.publication.publisher", "novel.genres", "novel.characters[0].name",
         "novel.characters[0].role", "novel.characters[0].traits", "novel.characters[1].name",
         "novel.characters[1].role", "novel.characters[1].traits", "novel.chapters[0].title",
         "novel.chapters[0].word_count", "novel.chapters[0].events", "novel.chapters[1].title",
         "novel.chapters[1].word_count"]},
    {"task_id": "171801", "task_name": "XML to YAML", "input_type": "XML", "output_type": "YAML",
     "raw_output_metric": ["galaxy.name", "galaxy.star_systems[0].name",
                           "galaxy.star_systems[0].planets[0].name",
                           "galaxy.star_systems[0].planets[0].inhabitants[0]"]},
    {"task_id": "001011", "task_name": "Text to TOML", "input_type": "Text", "output_type": "TOML",
     "raw_output_metric": [
         "artifact.title", "artifact.creator.name", "artifact.creator.affiliation", "artifact.year_created",
         "artifact.dimensions.height_cm", "artifact.dimensions.width_cm", "artifact.dimensions.depth_cm",
         "artifact.materials", "artifact.origin.country", "artifact.origin.city",
         "artifact.exhibition_history[0].location", "artifact.exhibition_history[0].year",
         "artifact.exhibition_history[0].curator", "artifact.provenance.previous_owners.*.name",
         "artifact.provenance.previous_owners.*.acquisition_date"]},
    {"task_id": "001716", "task_name": "Text to XML", "input_type": "Text", "output_type": "XML",
     "raw_output_metric": [
         "recipe.title", "recipe.author.name", "recipe.author.contact.email", "recipe.author.contact.phone",
         "recipe.ingredients.*.name", "recipe.ingredients.*.quantity", "recipe.ingredients.*.unit",
         "recipe.instructions.*.stepNumber", "recipe.instructions.*.description",
         "recipe.instructions.*.timer.duration", "recipe.nutrition.calories", "recipe.nutrition.fat",
         "recipe.nutrition.protein", "recipe.tags.*.label", "recipe.metadata.createdDate"]},
    {"task_id": "050234", "task_name": "JSON to CSV", "input_type": "JSON", "output_type": "CSV",
     "raw_output_metric": ["csv::planet_name", "csv::discovery_year", "csv::gravity_m_s2",
                           "csv::dominant_gas", "csv::average_temperature_c", "csv::first_explorer"]},
    {"task_id": "051706", "task_name": "JSON to XML", "input_type": "JSON", "output_type": "XML",
     "raw_output_metric": ["spaceZoo.galaxies.galaxy.name", "spaceZoo.galaxies.galaxy.planets.planet.name",
                           "spaceZoo.galaxies.galaxy.planets.planet.creatures.creature"]},
    {"task_id": "021745", "task_name": "CSV to XML", "input_type": "CSV", "output_type": "XML",
     "raw_output_metric": [
         "csv::planet_name", "csv::system", "csv::distance_from_earth_ly", "csv::discovery.year",
         "csv::discovery.method", "csv::discovery.team_lead", "csv::atmosphere.composition",
         "csv::atmosphere.pressure_atm", "csv::moons", "csv::inhabitants.species",
         "csv::inhabitants.population", "csv::inhabitants.language"]},
]}


def rec(task_id, paths=None):
    r = dict(RECORDS[task_id])
    return r if paths is None else {**r, "raw_output_metric": paths}


def fence(body, tag=""):
    return f"Here it is:\n```{tag}\n{body}\n```\nDone."


def both(record, generation):
    """(default final, corrected final)."""
    return score(record, generation)["final_score"], score(record, generation, corrected=True)["final_score"]


NOVEL = {"novel": {
    "title": "The Glass Orchard", "author": {"name": "Mara Quill", "birth_year": 1971},
    "publication": {"year": 2019, "publisher": "Lantern House"}, "genres": ["fantasy", "mystery"],
    "characters": [{"name": "Ivo", "role": "protagonist", "traits": ["curious"]},
                   {"name": "Sel", "role": "antagonist", "traits": ["proud", "clever"]}],
    "chapters": [{"title": "Seeds", "word_count": 4200, "events": ["arrival"]},
                 {"title": "Frost", "word_count": 3900, "events": ["theft"]}]}}
GALAXY_YAML = """galaxy:
  name: Andromeda
  star_systems:
    - name: Alpha Centauri
      planets:
        - name: Proxima b
          inhabitants:
            - Microbial life
            - Alien explorers"""
ARTIFACT_TOML = """[artifact]
title = "Sunstone Astrolabe"
year_created = 1543
materials = ["brass", "quartz"]

[artifact.creator]
name = "Ibn Yusuf"
affiliation = "Toledo Workshop"

[artifact.dimensions]
height_cm = 21.5
width_cm = 18.0
depth_cm = 3.2

[artifact.origin]
country = "Spain"
city = "Toledo"

[[artifact.exhibition_history]]
location = "Madrid"
year = 1992
curator = "L. Ortega"

[[artifact.provenance.previous_owners]]
name = "Duke of Alba"
acquisition_date = 1701-03-04"""
RECIPE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<recipe>
  <title>Lemon Tart</title>
  <author><name>A. Baker</name><contact><email>a@b.example</email><phone>555-0100</phone></contact></author>
  <ingredients><name>flour</name><quantity>200</quantity><unit>g</unit></ingredients>
  <ingredients><name>lemon</name><quantity>3</quantity><unit>pcs</unit></ingredients>
  <instructions><stepNumber>1</stepNumber><description>Mix</description>
    <timer><duration>5</duration></timer></instructions>
  <instructions><stepNumber>2</stepNumber><description>Bake</description>
    <timer><duration>30</duration></timer></instructions>
  <nutrition><calories>320</calories><fat>14</fat><protein>5</protein></nutrition>
  <tags><label>dessert</label></tags>
  <tags><label>citrus</label></tags>
  <metadata><createdDate>2024-05-01</createdDate></metadata>
</recipe>"""
PLANETS_CSV = """planet_name,discovery_year,gravity_m_s2,dominant_gas,average_temperature_c,first_explorer
Zyphora,2129,14.8,Methane,-120,Dr. Linh Voss
Krellis,2097,7.3,Ammonia,-85,Commander Raju Patel"""
PERFECT = {"000500": (json.dumps(NOVEL, indent=2), "json"), "171801": (GALAXY_YAML, "yaml"),
           "001011": (ARTIFACT_TOML, "toml"), "001716": (RECIPE_XML, "xml"), "050234": (PLANETS_CSV, "csv")}


# --------------------------------------------------------------------------- the records are real


def test_embedded_records_match_the_sample_file():
    if not SAMPLE.is_file():
        pytest.skip(f"StructEval-T sample not found at {SAMPLE} (the shared data folder is absent)")
    by_id = {r["task_id"]: r for r in load_structeval(SAMPLE)}
    for tid, r in RECORDS.items():
        assert {k: by_id[tid][k] for k in r} == r


# --------------------------------------------------------------------------- per format


@pytest.mark.parametrize("tid", sorted(PERFECT))
@pytest.mark.parametrize("corrected", [False, True])
def test_perfect_outputs_score_one_fenced_and_unfenced(tid, corrected):
    body, tag = PERFECT[tid]
    for gen in (fence(body, tag), fence(body), body, f"<|BEGIN_CODE|>\n{body}\n<|END_CODE|> bye"):
        assert score(rec(tid), gen, corrected) == {"render_score": 1, "key_validation_score": 1.0,
                                                   "final_score": 1.0}, gen[:40]


@pytest.mark.parametrize("tid, drop, n_found, final", [
    # 15 of 17 paths: 0.2 + 0.8 * 15/17 = 0.9059 -> 0.91 (chapters[1].title, .word_count gone)
    ("000500", lambda t: json.dumps({"novel": {**NOVEL["novel"],
                                               "chapters": NOVEL["novel"]["chapters"][:1]}}), (15, 17), 0.91),
    # 3 of 4: 0.2 + 0.6 = 0.8 (the inhabitants list gone)
    ("171801", lambda t: t.split("          inhabitants:")[0], (3, 4), 0.8),
    # 13 of 15: 0.2 + 0.8 * 13/15 = 0.8933 -> 0.89 (previous_owners gone: both * paths)
    ("001011", lambda t: t.split("[[artifact.provenance")[0], (13, 15), 0.89),
    # 14 of 15: 0.2 + 0.8 * 14/15 = 0.9467 -> 0.95 (tags gone)
    ("001716", lambda t: re.sub(r"\s*<tags>.*?</tags>", "", t), (14, 15), 0.95),
    # 4 of 6: 0.2 + 0.8 * 4/6 = 0.7333 -> 0.73 (two columns gone)
    ("050234", lambda t: "\n".join(",".join(line.split(",")[:4]) for line in t.splitlines()), (4, 6), 0.73),
])
def test_missing_paths_lower_key_validation_proportionally(tid, drop, n_found, final):
    body, tag = PERFECT[tid]
    partial = drop(body)
    assert partial != body
    r = score_example(rec(tid), fence(partial, tag))
    assert r.render_score == 1 and r.reason == "missing_paths"
    assert r.key_validation_score == pytest.approx(n_found[0] / n_found[1])
    assert r.final_score == final
    assert len(r.missing_paths) == n_found[1] - n_found[0]


@pytest.mark.parametrize("tid, broken", [
    ("000500", '{"novel": {"title": "x",}}'),           # trailing comma
    ("171801", "galaxy: [Andromeda, Milky"),            # unclosed flow sequence
    ("001011", "[artifact]\ntitle = "),                 # no value
    ("001716", "<recipe><title>x</recipe>"),            # mismatched tag
    ("050234", ""),                                     # an empty fence: nothing extracted
    ("000500", "{}"),                                   # parses, but falsy
])
@pytest.mark.parametrize("corrected", [False, True])
def test_unparsable_outputs_score_zero(tid, broken, corrected):
    r = score_example(rec(tid), f"```\n{broken}\n```", corrected)
    assert (r.render_score, r.key_validation_score, r.final_score) == (0, 0.0, 0.0)
    assert r.reason in ("parse_error", "no_payload", "empty")


# --------------------------------------------------------------------------- extraction


def test_prose_around_an_unfenced_payload_fails_and_the_first_fence_wins():
    body = json.dumps(NOVEL)
    assert score(rec("000500"), f"Sure! {body} Hope it helps.")["final_score"] == 0.0
    draft = fence('{"novel": {"title": "draft"}}', "json")
    two_fences = draft + "\nFinal:\n" + fence(body, "json")
    assert score(rec("000500"), two_fences)["final_score"] == round(0.2 + 0.8 / 17, 2)  # title only


# --------------------------------------------------------------------------- quirks: default vs corrected


def test_q1_unicode_escape_breaks_escaped_json():
    doc = {"novel": {**NOVEL["novel"], "title": 'The "Glass"\nOrchard'}}
    gen = fence(json.dumps(doc), "json")  # valid JSON holding \" and \n
    default = score_example(rec("000500"), gen)
    assert default.reason == "parse_error" and "unicode_escape_changed_text" in default.notes
    assert both(rec("000500"), gen) == (0.0, 1.0)


def test_q1_unicode_escape_garbles_non_ascii():
    r = rec("000500", ["café.name", "café.city"])
    gen = fence(json.dumps({"café": {"name": "Zoë", "city": "Köln"}}, ensure_ascii=False), "json")
    default = score_example(r, gen)
    assert "cafÃ©" in default.payload and default.render_score == 1
    assert both(r, gen) == (0.2, 1.0)
    assert "café" in score_example(r, gen, corrected=True).payload


def test_q1_corrected_keeps_the_cleaning_as_a_fallback_for_double_escaped_answers():
    gen = '{\\n  \\"galaxy\\": {\\"name\\": \\"Andrómeda\\"}\\n}'  # literal backslash escapes
    r = rec("000500", ["galaxy.name"])
    assert score(r, gen)["final_score"] == 1.0
    fixed = score_example(r, gen, corrected=True)
    assert fixed.final_score == 1.0 and "cleaning_fallback" in fixed.notes
    assert "Andrómeda" in fixed.payload


def test_q2_csv_renders_without_being_read():
    prose = "I am sorry, but I cannot convert that."
    default = score_example(rec("050234"), prose)
    assert default.render_score == 1 and "csv_not_read" in default.notes
    assert both(rec("050234"), prose) == (0.2, 0.0)
    ragged = PLANETS_CSV + ",extra,cells"
    assert both(rec("050234"), ragged) == (1.0, 0.0)
    # header cells are exact in the reference: " discovery_year" is not "discovery_year"
    spaced = PLANETS_CSV.replace(",", ", ")
    assert both(rec("050234"), spaced) == (round(0.2 + 0.8 / 6, 2), 1.0)


def test_q3_unclosed_bracket_in_a_path_never_crashes():
    r = rec("000500", ["novel.title", "novel.characters[0"])
    body = fence(json.dumps(NOVEL), "json")
    default = score_example(r, body)
    assert default.key_validation_score == 0.5 and default.final_score == 0.6
    assert "malformed_path" in default.notes and default.missing_paths == ("novel.characters[0",)
    fixed = score_example(r, body, corrected=True)
    assert fixed.final_score == 1.0 and fixed.excluded_paths == ("novel.characters[0",)
    with pytest.raises(SE.MalformedPath):
        tokenize("a[0")


def test_q4_html_unescape_breaks_escaped_xml():
    r = rec("001716", ["recipe.title"])
    gen = fence("<recipe><title>Tarts &lt; pies &amp; cakes</title></recipe>", "xml")
    assert both(r, gen) == (0.0, 1.0)
    assert "html_unescape" in score_example(r, gen).notes


def test_q5_a_fence_inside_the_think_block_is_scored_by_default():
    gen = ("<think>\nA draft:\n```json\n{\"novel\": {}}\n```\nNo, fuller.\n</think>\n\n"
           + fence(json.dumps(NOVEL), "json"))
    default = score_example(rec("000500"), gen)
    assert default.final_score == 0.2 and "think_block_kept" in default.notes
    assert score(rec("000500"), gen, corrected=True)["final_score"] == 1.0
    # the one think block the reference does remove: an empty one
    assert score(rec("000500"), "<think>\n\n</think>\n\n" + fence(json.dumps(NOVEL)))["final_score"] == 1.0


@pytest.mark.parametrize("tid, gen", [("171801", "Here is the YAML you asked for."),
                                      ("000500", '"just a string"'), ("000500", "42")])
def test_q6_scalar_documents_render(tid, gen):
    default = score_example(rec(tid), gen)
    assert default.render_score == 1 and "scalar_document" in default.notes
    assert both(rec(tid), gen) == (0.2, 0.0)


def test_q7_xml_list_or_dict_ambiguity():
    two = """<spaceZoo><galaxies>
      <galaxy><name>Andromeda</name><planets><planet><name>Xenon</name>
        <creatures><creature>Glowbeast</creature><creature>Stardust Fox</creature></creatures>
      </planet></planets></galaxy>
      <galaxy><name>MilkyWay</name><planets><planet><name>Terra</name>
        <creatures><creature>Lunar Owl</creature></creatures></planet></planets></galaxy>
    </galaxies></spaceZoo>"""
    default = score_example(rec("051706"), two)  # a faithful conversion: two <galaxy>, a list
    assert default.final_score == 0.2 and "xml_list_or_attribute" in default.notes
    assert score(rec("051706"), two, corrected=True)["final_score"] == 1.0
    # one <ingredients> / <instructions> / <tags> each: the 7 '*' paths need a list; 8 of 15 found
    lone = re.sub(r"\s*<(ingredients|instructions|tags)>(?:(?!</\1>).)*</\1>(?=\s*<\1>)", "", RECIPE_XML,
                  flags=re.S)
    assert lone.count("<ingredients>") == 1 and lone.count("<tags>") == 1
    assert both(rec("001716"), lone) == (round(0.2 + 0.8 * 8 / 15, 2), 1.0)  # 0.63


def test_q8_yaml_11_keys_load_as_non_strings():
    r = rec("171801", ["schedule.on", "schedule.off", "ports.8080", "flags.yes"])
    gen = "schedule:\n  on: daily\n  off: never\nports:\n  8080: web\nflags:\n  yes: 1\n"
    default = score_example(r, gen)
    assert default.key_validation_score == 0.0 and "yaml_nonstring_key" in default.notes
    assert both(r, gen) == (0.2, 1.0)
    assert score(r, gen.replace("on:", '"on":').replace("off:", '"off":').replace("8080:", '"8080":')
                 .replace("yes:", "'yes':"))["final_score"] == 1.0  # quoted keys are strings


def test_q9_csv_paths_on_xml_output():
    xml = "<planet><planet_name>Zyphora</planet_name><system>Alpha Centauri</system></planet>"
    default = score_example(rec("021745"), xml)
    assert default.final_score == 0.2 and "unmatchable_path" in default.notes
    fixed = score_example(rec("021745"), xml, corrected=True)
    assert fixed.final_score == 1.0 and fixed.reason == "no_checkable_paths"
    assert len(fixed.excluded_paths) == 12
    mixed = rec("021745", RECORDS["021745"]["raw_output_metric"] + ["planet.system"])
    assert both(mixed, xml) == (round(0.2 + 0.8 / 13, 2), 1.0)
    # a non-csv:: path on CSV output cannot match either
    assert both(rec("050234", ["csv::planet_name", "planet_name"]), PLANETS_CSV) == (0.6, 1.0)


def test_q10_attribute_for_a_plain_path_and_the_at_fallback():
    attr = RECIPE_XML.replace("<instructions><stepNumber>1</stepNumber>", '<instructions stepNumber="1">') \
                     .replace("<instructions><stepNumber>2</stepNumber>", '<instructions stepNumber="2">')
    assert both(rec("001716"), attr) == (round(0.2 + 0.8 * 14 / 15, 2), 1.0)
    at = rec("001716", ["recipe.@lang", "recipe.@title"])  # '@x' falls back to a child <x>
    assert both(at, '<recipe lang="en"><title>t</title></recipe>') == (1.0, 1.0)


# --------------------------------------------------------------------------- records, aggregation


def test_bad_records_and_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="raw_output_metric"):
        score({"task_id": "000500", "raw_output_metric": []}, "{}")
    with pytest.raises(ValueError, match="unknown output format"):
        score({"task_id": "001900", "output_type": "HTML", "raw_output_metric": ["a"]}, "x")
    with pytest.raises(FileNotFoundError, match="nonrenderable.json"):
        load_structeval(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([RECORDS["000500"], {"task_id": "000501"}]))
    with pytest.raises(ValueError, match=r"row 1 \(task_id '000501'\): raw_output_metric"):
        load_structeval(bad)
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS.values()))
    assert [r["task_id"] for r in load_structeval(jsonl)] == list(RECORDS)
    assert score(RECORDS["000500"], None)["final_score"] == 0.0


def test_score_records_aggregates_by_format_and_task_type():
    recs = [rec("000500"), rec("000500"), rec("050234"), rec("171801")]
    gens = [fence(json.dumps(NOVEL)), "nope", "I cannot.", GALAXY_YAML]
    out = score_records(recs, gens)
    m = out["metrics"]
    # finals 1.0, 0.0, 0.2 (Q2), 1.0
    assert m["final_score"] == pytest.approx(2.2 / 4) and m["render_score"] == 0.75 and m["n_records"] == 4
    assert m["by_format"]["json"] == {"final_score": 0.5, "render_score": 0.5,
                                      "key_validation_score": 0.5, "n": 2}
    assert m["by_task_type"]["generation"]["n"] == 2 and m["by_task_type"]["conversion"]["final_score"] == 0.6
    assert m["by_task_name"]["JSON to CSV"]["final_score"] == 0.2
    assert m["notes"] == {"csv_not_read": 1} and m["mode"] == "reference"
    assert [r["reason"] for r in out["records"]] == ["ok", "parse_error", "missing_paths", "ok"]
    assert out["records"][2]["payload"] == "I cannot." and out["records"][0]["extracted_from"] == "fence"
    fixed = score_records(recs, dict(zip(["000500", "050234", "171801"], gens[1:])), corrected=True)
    assert fixed["metrics"]["mode"] == "corrected" and fixed["metrics"]["final_score"] == 0.25
    with pytest.raises(ValueError, match="4 records but 3 generations"):
        score_records(recs, gens[:3])


# --------------------------------------------------------------------------- every sample record


def _perfect_tree(paths, xml):
    """A document holding every path ("x" leaves), or None where the paths disagree on a
    node's shape. XML lists get two elements, so xmltodict reads them as lists."""
    root: dict = {}
    for p in paths:
        toks = tokenize(p)
        node = root
        for k, (kind, val) in enumerate(toks):
            nxt = toks[k + 1][0] if k + 1 < len(toks) else None
            want = None if nxt is None else (list if nxt in ("index", "any") else dict)
            if kind == "key":
                if not isinstance(node, dict):
                    return None
                slot, key = node, val
            else:
                if not isinstance(node, list):
                    return None
                i = 0 if kind == "any" else val
                node.extend(["x"] * (max(i + 1, 2 if xml else 1) - len(node)))
                slot, key = node, i
            cur = slot.get(key, "x") if isinstance(slot, dict) else slot[key]
            if want is not None and not isinstance(cur, want):
                if cur != "x":
                    return None
                cur = want()
            slot[key] = cur
            node = cur
    return root


def _to_xml(name, value):
    if isinstance(value, list):
        if any(isinstance(v, list) for v in value):
            raise ValueError("a list in a list has no XML form")
        return "".join(_to_xml(name, v) for v in value)
    if isinstance(value, dict):
        return f"<{name}>{''.join(_to_xml(k, v) for k, v in value.items())}</{name}>"
    return f"<{name}>{value}</{name}>"


def _perfect_output(record):
    fmt = SE.task_of(record).fmt
    paths = record["raw_output_metric"]
    if fmt == "csv":
        names = [p[5:] for p in paths]
        return ",".join(names) + "\n" + ",".join("x" for _ in names)
    try:
        tree = _perfect_tree(paths, fmt == "xml")
    except SE.MalformedPath:
        return None
    if tree is None:
        return None
    if fmt == "xml":
        if len(tree) != 1:
            return None
        try:
            return _to_xml(*next(iter(tree.items())))
        except ValueError:
            return None
    return {"json": json.dumps, "yaml": yaml.safe_dump, "toml": to_toml}[fmt](tree)


def test_every_sample_record_scores_one_on_a_document_holding_its_paths():
    if not SAMPLE.is_file():
        pytest.skip(f"StructEval-T sample not found at {SAMPLE}")
    records = load_structeval(SAMPLE)
    built = [(r, _perfect_output(r)) for r in records]
    skipped = sorted(r["task_id"] for r, out in built if out is None)
    # paths that cannot all hold at once: csv:: on XML (021739, 021745), no common XML root
    assert skipped == ["021739", "021742", "021743", "021745", "021746", "021748"]
    for r, out in built:
        if out is not None:
            for corrected in (False, True):
                got = score_example(r, fence(out), corrected)
                assert got.final_score == 1.0, (r["task_id"], corrected, got.detail)
    # scoring 188 generations in both modes, notes and aggregates included
    gens = [out or "" for _, out in built]
    assert score_records(records, gens)["metrics"]["n_records"] == len(records) == 188


# --------------------------------------------------------------------------- adversarial


# No wall-clock bounds here (they fail on a loaded machine; speed lives in benchmarks/):
# each case asserts the limit that stops the work, by its reason and detail.
_NODE_CAP = f"more than {MAX_NODES} nodes"


def test_yaml_bomb_is_refused_by_the_node_cap():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, (prev, cur) in enumerate(zip("abcdefgh", "bcdefghi")):
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    for corrected in (False, True):
        r = score_example(rec("171801", ["i.*.*"]), "\n".join(lines), corrected)
        assert (r.render_score, r.reason) == (0, "too_many_nodes") and _NODE_CAP in r.detail, r


def test_xml_entities_are_never_expanded_nor_fetched():
    ents = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">'
                                          for i in range(1, 10))
    r = rec("001716", ["a.b"])
    text_bomb = f'<?xml version="1.0"?><!DOCTYPE a [{ents}]><a><b>&l9;</b></a>'
    got = score_example(r, text_bomb)
    assert got.final_score == 1.0, got  # like xmltodict: the reference is dropped, not expanded
    assert SE.xml_to_dict(text_bomb) == {"a": {"b": None}}
    got = score_example(r, f'<?xml version="1.0"?><!DOCTYPE a [{ents}]><a b="&l9;"/>')
    if SP._EXPAT_GUARDED:  # attribute values are expanded by expat, which stops the bomb
        assert got.reason == "parse_error" and "amplification" in got.detail, got
    else:  # an old expat: any entity declaration is refused
        assert got.reason == "unsafe", got
    assert got.render_score == 0
    xxe = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a><b>&x;</b></a>'
    assert SE.xml_to_dict(xxe) == {"a": {"b": None}}


@pytest.mark.parametrize("make, where", [
    (lambda n: "x" * n, "whole"),
    (lambda n: "`" * n, "whole"),                                # backticks, no newline: no fence
    (lambda n: "```json\n" + "[" * n, "fence"),                  # deep nesting, over the payload cap
    (lambda n: "```json\n{\"a\": \"" + "y" * n + "\"}\n```", "fence"),
    (lambda n: "\\" * n, "whole"),                               # unicode_escape on a run of backslashes
    (lambda n: "<|BEGIN_CODE|>" * (n // 14), "markers"),
    (lambda n: "a:\n" + "  - b\n" * (n // 6), "whole"),
], ids=["letters", "backticks", "deep_fence", "long_string", "backslashes", "markers", "yaml_list"])
@pytest.mark.parametrize("tid", ["000500", "171801", "001716", "050234", "001011"])
def test_one_megabyte_generations_stop_at_the_payload_cap(make, where, tid, monkeypatch):
    """Extraction is linear (str.find), and no loader ever sees the megabyte."""
    def no_parse(*args, **kwargs):
        raise AssertionError("a payload over MAX_PAYLOAD_CHARS reached a parser")
    assert SE.load is SP.load  # the parsers are looked up in .parse, where load lives
    for name in ("_load_yaml", "xml_to_dict", "parse_payload"):
        monkeypatch.setattr(SP, name, no_parse)
    monkeypatch.setattr(SP.json, "loads", no_parse)  # the json module itself, restored after
    gen = make(1_000_000)
    for corrected in (False, True):
        r = score_example(rec(tid), gen, corrected)
        assert (r.reason, r.extracted_from, r.final_score) == ("payload_too_large", where, 0.0), r
        assert f"> {SP.MAX_PAYLOAD_CHARS}" in r.detail


def test_deep_nesting_is_a_render_failure_at_a_named_limit():
    for tid, body, reason, detail in [
            ("000500", "[" * 50_000 + "]" * 50_000, "too_deep", "ran out of recursion"),  # json.loads
            ("171801", "[" * 50_000, "too_deep", f"deeper than {MAX_DEPTH}"),
            ("001716", "<a>" * 20_000 + "</a>" * 20_000, "payload_too_large", f"> {SP.MAX_PAYLOAD_CHARS}"),
            ("001011", "a = " + "[" * 30_000, "too_deep", "ran out of recursion")]:   # tomllib
        r = score_example(rec(tid), body)
        assert (r.render_score, r.final_score, r.reason) == (0, 0.0, reason) and detail in r.detail, (tid, r)
    # XML under the payload cap has no depth limit (xmltodict has none): it renders, and the
    # path walk is iterative, so 14,000 levels are no RecursionError
    r = score_example(rec("001716", ["a.a.a", "b"]), "<a>" * 14_000 + "</a>" * 14_000)
    assert (r.render_score, r.reason, r.missing_paths) == (1, "missing_paths", ("b",)), r
    assert score(rec("000500"), None) == {"render_score": 0, "key_validation_score": 0.0, "final_score": 0.0}
    assert score(rec("000500"), "x" * (SE.MAX_GENERATION_CHARS + 1))["final_score"] == 0.0
