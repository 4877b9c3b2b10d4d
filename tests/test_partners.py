"""Partner mapping files: the examples, the schema, the error messages and partner matching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from gateway.partners import check_partner_directory, load_partner_directory, load_partner_file, partner_files
from translators.mapping import STANDARD, EdiIdentifier, Identifiers, PartnerDirectory, PartnerMapping
from translators.partners import (
    PartnerFileError,
    _Loader,
    check_directory_texts,
    mapping_json_schema,
    mapping_json_schema_text,
    parse_partner_text,
)

import yaml

PARTNERS = Path(__file__).resolve().parent.parent / "partners"
EXAMPLES = ["acme-fasteners.yaml", "northwind-retail.yaml", "europa-components.yaml"]


def error_of(text: str, source: str = "partners/test.yaml") -> PartnerFileError:
    with pytest.raises(PartnerFileError) as info:
        parse_partner_text(text, source)
    return info.value


# ---------------------------------------------------------------------------------------------
# The example partners


def test_the_examples_are_the_partner_files():
    assert [p.name for p in partner_files(PARTNERS)] == sorted(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_loads_and_is_short(name):
    partner = load_partner_file(PARTNERS / name)
    assert partner.id == name.removesuffix(".yaml")
    assert partner.active and partner.name
    keys = [ln for ln in (PARTNERS / name).read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(keys) <= 25, "an example partner file should stay short: the standard mapping does the rest"


def test_acme_fasteners_is_an_x12_invoice_supplier():
    p = load_partner_file(PARTNERS / "acme-fasteners.yaml")
    assert [(i.qualifier, i.id) for i in p.identifiers.x12] == [("ZZ", "ACMEFAST")]
    assert p.documents == ["invoice"] and p.versions == ["004010"]
    assert p.plex.supplier_code == "ACME01"
    assert (p.acknowledgments.send, p.acknowledgments.kind) == (True, "997")
    assert p.acknowledgments.outbound_folder == "/outbound/acme-fasteners"
    assert p.mapping == STANDARD  # nothing deviates


def test_northwind_retail_has_its_own_part_qualifiers_and_units():
    p = load_partner_file(PARTNERS / "northwind-retail.yaml")
    assert p.documents == ["purchase_order"]
    assert p.mapping.part_numbers.buyer == ["CB"] and p.mapping.part_numbers.supplier == ["VC"]
    assert p.mapping.part_numbers.gtin == STANDARD.part_numbers.gtin  # not set: the standard list
    assert set(p.mapping.part_numbers.supplier).isdisjoint(STANDARD.part_numbers.buyer)
    assert p.mapping.translations.uom == {"CA": "CS", "PC": "EA", "BX": "BOX"}
    assert p.plex.purchase_orders == "sales_order"
    assert p.mapping.dates == STANDARD.dates


def test_europa_components_is_an_edifact_partner():
    p = load_partner_file(PARTNERS / "europa-components.yaml")
    assert p.identifiers.x12 == []
    assert [(i.qualifier, i.id) for i in p.identifiers.edifact] == [("14", "4012345000009")]
    assert p.versions == ["D96A", "D01B"]
    assert set(p.documents) == {"purchase_order", "invoice"}
    assert p.mapping.defaults == {"currency": "EUR"}
    assert (p.acknowledgments.send, p.acknowledgments.kind) == (True, "CONTRL")


def test_the_example_directory_loads_and_checks_clean():
    directory = load_partner_directory(PARTNERS)
    assert sorted(p.id for p in directory) == ["acme-fasteners", "europa-components", "northwind-retail"]
    result = check_partner_directory(PARTNERS)
    assert result.ok, result.lines
    assert sum(line.startswith("ok ") for line in result.lines) == 3
    assert not any("schema.json" in line for line in result.lines)  # committed schema is current


def test_numbers_and_yes_no_stay_text():
    p = parse_partner_text(
        "id: x\nname: X\nversions: [004010]\nidentifiers:\n  x12: [{qualifier: 01, id: 012345678}]\n"
        "mapping:\n  translations:\n    uom: {NO: EA, 01: PC}\n", "t.yaml")
    assert p.versions == ["004010"]  # plain YAML 1.1 would give the octal number 2056
    assert (p.identifiers.x12[0].qualifier, p.identifiers.x12[0].id) == ("01", "012345678")
    assert p.mapping.translations.uom == {"NO": "EA", "01": "PC"}


# ---------------------------------------------------------------------------------------------
# The schema


def test_committed_schema_equals_the_generated_one():
    committed = (PARTNERS / "schema.json").read_text(encoding="utf-8")
    assert committed == mapping_json_schema_text(), (
        "partners/schema.json is stale: run  python -m gateway.partners schema partners")
    assert json.loads(committed) == mapping_json_schema()


def test_schema_is_usable_by_editors():
    schema = mapping_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] and schema["description"]
    assert schema["required"] == ["id", "name"]
    buyer = schema["$defs"]["PartNumberQualifiers"]["properties"]["buyer"]
    assert buyer["default"] == ["BP", "IN", "SK", "CB", "PI"] and buyer["description"]
    assert schema["properties"]["mapping"]["description"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_schema_validates_every_example(name):
    data = yaml.load((PARTNERS / name).read_text(), Loader=_Loader)
    jsonschema.validate(data, mapping_json_schema())
    # and plain YAML (what an editor sees) agrees, thanks to the quoted numbers in the examples
    jsonschema.validate(yaml.safe_load((PARTNERS / name).read_text()), mapping_json_schema())


def test_schema_rejects_what_the_model_rejects():
    validator = jsonschema.Draft202012Validator(mapping_json_schema())
    good = {"id": "acme", "name": "Acme"}
    assert validator.is_valid(good)
    for bad in (
        {**good, "mapping": {"part_numbers": {"buyr": ["BP"]}}},
        {**good, "id": "Acme Inc"},
        {**good, "identifiers": {"x12": [{"id": "A", "qualifier": "ZZZ"}]}},
        {**good, "mapping": {"required": ["lines.part"]}},
        {**good, "mapping": {"defaults": {"curency": "EUR"}}},
    ):
        assert not validator.is_valid(bad), bad
        with pytest.raises(PartnerFileError):
            parse_partner_text(yaml.safe_dump(bad), "t.yaml")


def test_readme_documents_every_key():
    readme = (PARTNERS / "README.md").read_text()

    def keys(model, prefix=""):
        from translators.partners import _model_in

        for name, field in model.model_fields.items():
            inner = _model_in(field.annotation)
            if inner is not None and name not in ("x12", "edifact"):
                yield from keys(inner, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    missing = [k for k in keys(PartnerMapping) if f"`{k}" not in readme]
    assert missing == []


# ---------------------------------------------------------------------------------------------
# Error messages: file, line, key path, problem


def test_yaml_syntax_error_names_line_and_column():
    e = error_of("id: acme\nname: Acme\nidentifiers:\n  x12:\n    - {id: ACME, qualifier: ZZ\n", "partners/acme.yaml")
    (problem,) = e.problems
    assert problem.source == "partners/acme.yaml"
    assert problem.line == 6 and problem.column == 1
    assert str(e).startswith("partners/acme.yaml:6:1: YAML syntax error: ")


def test_tab_indentation_is_explained():
    e = error_of("id: acme\nname: Acme\nplex:\n\tsupplier_code: X\n")
    assert e.problems[0].line == 4
    assert "spaces, not tabs" in str(e)


def test_unknown_key_is_named_with_a_suggestion():
    e = error_of("id: acme\nname: Acme\nmapping:\n  part_numbers:\n    buyr: [BP]\n", "partners/acme.yaml")
    assert str(e) == "partners/acme.yaml:5:5: mapping.part_numbers.buyr: unknown key 'buyr' (did you mean 'buyer'?)"


def test_unknown_key_without_a_close_match_lists_the_allowed_keys():
    e = error_of("id: acme\nname: Acme\nplex:\n  colour: blue\n")
    assert "plex.colour: unknown key 'colour'; allowed here: supplier_code, match_by" in str(e)


def test_wrong_type_at_a_nested_key_path():
    e = error_of("id: acme\nname: Acme\nmapping:\n  part_numbers:\n    buyer: [BP, IN, bp]\n", "partners/acme.yaml")
    (problem,) = e.problems
    assert problem.path == "mapping.part_numbers.buyer[2]"
    assert (problem.line, problem.column) == (5, 21)
    assert str(problem).startswith("partners/acme.yaml:5:21: mapping.part_numbers.buyer[2]: 'bp' is not")


def test_scalar_where_a_list_belongs():
    e = error_of("id: acme\nname: Acme\nversions: 004010\n")
    assert e.problems[0].path == "versions"
    assert "expected a list, got the text '004010'; write [004010]" in e.problems[0].message


def test_identifier_field_errors_name_the_item_and_field():
    e = error_of("id: acme\nname: Acme\nidentifiers:\n  x12:\n    - id: ACMEFASTENERSINCORPORATED\n"
                 "      qualifier: ZZZ\n", "partners/acme.yaml")
    assert {p.path for p in e.problems} == {"identifiers.x12[0].id", "identifiers.x12[0].qualifier"}
    assert "at most 15 characters (ISA06 is 15 characters)" in str(e)
    assert "partners/acme.yaml:6:18: identifiers.x12[0].qualifier: 'ZZZ' is not an ISA05 qualifier" in str(e)


def test_bad_partner_id():
    e = error_of("id: Acme Fasteners\nname: Acme\n", "partners/acme.yaml")
    assert str(e).startswith("partners/acme.yaml:1:5: id: 'Acme Fasteners' is not a partner id: lower-case letters")


def test_missing_name_and_bad_choice():
    e = error_of("id: acme\ndocuments: [invoices]\n")
    messages = {p.path: p.message for p in e.problems}
    assert messages["name"] == "required key 'name' is missing"
    assert messages["documents[0]"] == "'invoices' is not one of: purchase_order, invoice (did you mean 'invoice'?)"


def test_duplicate_key_in_one_file():
    e = error_of("id: acme\nname: Acme\nplex:\n  supplier_code: A\n  supplier_code: B\n")
    assert str(e).endswith(":5:3: plex.supplier_code: key 'supplier_code' appears twice (first on line 4)")


def test_required_paths_and_defaults_are_checked():
    e = error_of("id: acme\nname: Acme\nmapping:\n  required: [po_number, lines.buyer_prt]\n"
                 "  defaults: {currency: eur}\n")
    messages = {p.path: p.message for p in e.problems}
    assert "did you mean 'lines.buyer_part'" in messages["mapping.required[1]"]
    assert "ISO 4217" in messages["mapping.defaults.currency"]


def test_a_qualifier_in_two_part_number_lists():
    e = error_of("id: acme\nname: Acme\nmapping:\n  part_numbers:\n    buyer: [CB, VN]\n    supplier: [VC, VN]\n")
    (problem,) = e.problems
    assert problem.path == "mapping.part_numbers.supplier[1]" and problem.line == 6
    assert problem.message.startswith("'VN' is also in mapping.part_numbers.buyer;")
    # a list the file sets may take a code from a standard list it leaves alone
    assert parse_partner_text("id: a\nname: A\nmapping:\n  part_numbers:\n    buyer: [VN]\n", "a.yaml")


def test_acknowledgment_kind_must_fit_the_standard():
    e = error_of("id: eu\nname: EU\nidentifiers:\n  edifact: [{id: '4012345000009', qualifier: '14'}]\n"
                 "acknowledgments: {send: true, kind: '997'}\n")
    assert e.problems[0].path == "acknowledgments.kind" and "use CONTRL or auto" in e.problems[0].message


def test_all_problems_of_a_file_are_reported_at_once():
    e = error_of("id: Acme\nname: ''\nactive: maybe\n", "partners/acme.yaml")
    assert [p.path for p in e.problems] == ["id", "name", "active"]
    assert str(e).startswith("3 problems in partners/acme.yaml:\n")
    assert "active: expected true or false, got the text 'maybe'" in str(e)


def test_empty_file():
    assert "the file is empty" in str(error_of(""))


ACME = "id: acme\nname: Acme\nidentifiers:\n  x12: [{qualifier: ZZ, id: ACMEFAST}]\n"


def test_duplicate_ids_across_files():
    directory, problems = check_directory_texts([
        ("partners/acme.yaml", ACME),
        ("partners/acme-copy.yaml", "id: acme\nname: Acme copy\n"),
    ])
    assert [p.id for p in directory] == ["acme"] and directory.get("acme").name == "Acme"
    (problem,) = problems
    assert str(problem) == ("partners/acme-copy.yaml:1:5: id: partner id 'acme' is already used by "
                            "partners/acme.yaml; each partner needs its own id")


def test_duplicate_identifiers_across_files():
    directory, problems = check_directory_texts([
        ("partners/acme.yaml", ACME),
        ("partners/acme2.yaml", "id: acme2\nname: Acme 2\nidentifiers:\n  x12:\n    - {id: acmefast}\n"),
    ])
    assert [p.id for p in directory] == ["acme"]
    (problem,) = problems
    assert problem.source == "partners/acme2.yaml" and problem.path == "identifiers.x12[0]"
    assert "X12 sender acmefast is already claimed by partner 'acme' (partners/acme.yaml identifiers.x12[0])" in str(
        problem)


def test_identifiers_that_do_not_collide():
    directory, problems = check_directory_texts([
        ("a.yaml", ACME),
        ("b.yaml", "id: b\nname: B\nidentifiers:\n  x12: [{qualifier: '01', id: ACMEFAST}]\n"),  # other qualifier
        ("c.yaml", "id: c\nname: C\nidentifiers:\n  x12: [{qualifier: ZZ, id: ACMEFAST, group_id: DEPT3}]\n"),  # GS02
        ("d.yaml", "id: d\nname: D\nactive: false\nidentifiers:\n  x12: [{qualifier: ZZ, id: ACMEFAST}]\n"),
        ("e.yaml", "id: e\nname: E\nidentifiers:\n  edifact: [{qualifier: ZZ, id: ACMEFAST}]\n"),  # other standard
    ])
    assert problems == []
    assert len(directory) == 5


def test_load_partner_directory_lists_every_problem(tmp_path):
    (tmp_path / "a.yaml").write_text(ACME)
    (tmp_path / "b.yml").write_text("id: b\nname: B\nmaping: {}\n")
    (tmp_path / "c.yaml").write_text("id: acme\nname: C\n")
    (tmp_path / "notes.txt").write_text("not a partner file")
    (tmp_path / "d.yaml").write_bytes(b"id: d\nname: D\xe9\n")
    with pytest.raises(PartnerFileError) as info:
        load_partner_directory(tmp_path)
    text = str(info.value)
    assert text.startswith("3 problems in 3 partner files:")
    assert f"{tmp_path / 'b.yml'}:3:1: maping: unknown key 'maping' (did you mean 'mapping'?)" in text
    assert f"{tmp_path / 'c.yaml'}:1:5: id: partner id 'acme' is already used by {tmp_path / 'a.yaml'}" in text
    assert f"{tmp_path / 'd.yaml'}:2: the file is not UTF-8 text" in text

    result = check_partner_directory(tmp_path)
    assert not result.ok
    assert [line.split()[0] for line in result.lines] == ["ok", "FAIL", "FAIL", "FAIL", "4"]
    assert result.lines[-1] == f"4 partner files in {tmp_path}: 1 ok, 3 with problems (3 problems)"


def test_check_reports_a_missing_directory_and_a_stale_schema(tmp_path):
    missing = check_partner_directory(tmp_path / "nope")
    assert not missing.ok and "no such partner directory" in missing.lines[0]
    (tmp_path / "schema.json").write_text("{}")
    empty = check_partner_directory(tmp_path)
    assert empty.ok
    assert any(line.startswith("note ") and "schema.json" in line for line in empty.lines)
    with pytest.raises(PartnerFileError, match="no such partner directory"):
        load_partner_directory(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# Matching interchanges to partners


@pytest.fixture(scope="module")
def examples() -> PartnerDirectory:
    return load_partner_directory(PARTNERS)


def test_match_by_x12_id_and_qualifier(examples):
    assert examples.match("x12", "ACMEFAST       ", "ZZ").id == "acme-fasteners"  # ISA06 is space padded
    assert examples.match("x12", "acmefast", "ZZ").id == "acme-fasteners"
    assert examples.match("x12", "ACMEFAST", "01") is None  # same id, other qualifier: another company
    assert examples.match("edifact", "ACMEFAST", "ZZ") is None
    assert examples.match("x12", "SOMEONEELSE", "ZZ") is None


def test_match_by_edifact_id(examples):
    assert examples.match("edifact", "4012345000009", "14").id == "europa-components"
    assert examples.match("edifact", "4012345000009").id == "europa-components"
    assert examples.match("edifact", "4012345000009", "1") is None
    assert examples.match("x12", "4012345000009", "14") is None


def test_group_id_narrows_the_match(examples):
    assert examples.match("x12", "2065550147", "12", "NWRETAIL").id == "northwind-retail"
    assert examples.match("x12", "2065550147", "12", "NWLOGISTICS") is None
    assert examples.match("x12", "2065550147", "12") is None

    general = PartnerMapping(id="general", name="G", identifiers=Identifiers(x12=[EdiIdentifier(id="SAME")]))
    special = PartnerMapping(id="special", name="S",
                             identifiers=Identifiers(x12=[EdiIdentifier(id="SAME", group_id="DEPT9")]))
    directory = PartnerDirectory([general, special])
    assert directory.match("x12", "SAME", "ZZ", "DEPT9").id == "special"
    assert directory.match("x12", "SAME", "ZZ", "DEPT1").id == "general"
    assert directory.match("x12", "SAME", "ZZ").id == "general"


def test_inactive_partners_are_ignored():
    text = ACME.replace("name: Acme\n", "name: Acme\nactive: false\n")
    directory, problems = check_directory_texts([("acme.yaml", text)])
    assert problems == [] and directory.get("acme") is not None
    assert directory.match("x12", "ACMEFAST", "ZZ") is None
    live, _ = check_directory_texts([("acme.yaml", ACME)])
    assert live.match("x12", "ACMEFAST", "ZZ").id == "acme"


def test_plain_edi_identifiers_are_checked_as_x12():
    with pytest.raises(ValueError, match="qualifier"):
        PartnerMapping(id="x", name="X", identifiers=Identifiers(x12=[EdiIdentifier(id="A", qualifier="ZZZ")]))
    assert re.fullmatch(r"\d{6}", PartnerMapping(id="x", name="X", versions=["004010"]).versions[0])


# ---------------------------------------------------------------------------------------------
# validation: and delivery: (names only; the gateway's routing reads them)


def test_validation_and_delivery_keys_are_read_and_checked():
    p = parse_partner_text(
        "id: t\nname: T\nvalidation: {relax: [hash_total, segment_count]}\n"
        "delivery: {destinations: [plex], test: [anaplan]}\n", "t.yaml")
    assert p.validation.relax == ["hash_total", "segment_count"]
    assert (p.delivery.destinations, p.delivery.test) == (["plex"], ["anaplan"])
    standard = parse_partner_text("id: t\nname: T\n", "t.yaml")
    assert standard.validation.relax == [] and standard.delivery.destinations is None and standard.delivery.test == []

    (problem,) = error_of("id: t\nname: T\nvalidation: {relax: [hash_totl]}\n").problems
    assert problem.path == "validation.relax[0]" and "did you mean 'hash_total'" in problem.message
    (problem,) = error_of("id: t\nname: T\ndelivery: {test: [anaplan, anaplan]}\n").problems
    assert problem.path == "delivery.test" and "listed twice" in problem.message
    (problem,) = error_of("id: t\nname: T\ndelivery: {destinations: [{url: x}]}\n").problems
    assert problem.path == "delivery.destinations[0]" and "expected text" in problem.message
    (problem,) = error_of("id: t\nname: T\ndelivery: {plex_url: x}\n").problems
    assert problem.path == "delivery.plex_url" and "unknown key" in problem.message


def test_the_relaxable_checks_are_named_once():
    import typing

    from translators.mapping import RELAXABLE_CHECKS, RelaxableCheck

    assert list(typing.get_args(RelaxableCheck)) == list(RELAXABLE_CHECKS)
