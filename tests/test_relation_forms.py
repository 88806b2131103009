"""The relation catalogue: derived wordings of an edit, and the demo editor's shipped file."""

from __future__ import annotations

import pytest

from editor_core.relation_forms import RelationForms
from editor_lab.world.templates import RELATIONS, training_relation_forms
from service.settings import DEMO_EDITOR_PATH

FORMS = RelationForms({"citizenship": ("{s} is a citizen of", "What is the nationality of {s}?",
                                       "{s} holds citizenship of")})


def test_an_edit_gets_its_relations_other_wordings_for_its_subject() -> None:
    derived = FORMS.derive("Citizenship", " Quorvane Ashtellix ",
                           ["quorvane ashtellix is a citizen of "])
    assert derived == ("What is the nationality of Quorvane Ashtellix?",
                       "Quorvane Ashtellix holds citizenship of")


@pytest.mark.parametrize("relation, subject", [(None, "X"), ("citizenship", None),
                                               ("citizenship", "  "), ("employer", "X")])
def test_nothing_is_derived_without_a_known_relation_and_a_subject(relation, subject) -> None:
    assert FORMS.derive(relation, subject, []) == ()


def test_a_template_must_name_the_subject_once() -> None:
    with pytest.raises(ValueError, match="once"):
        RelationForms({"citizenship": ("{s} and {s}",)})
    with pytest.raises(ValueError, match="once"):
        RelationForms({"citizenship": ("The nationality is",)})


def test_the_demo_editor_ships_the_worlds_training_wordings_and_none_held_out(tmp_path
                                                                              ) -> None:
    shipped = RelationForms.load(DEMO_EDITOR_PATH)
    assert shipped == training_relation_forms()
    reserved = {t.text for r in RELATIONS for t in r.templates if t.reserved}
    assert reserved and not reserved & {t for ts in shipped.forms.values() for t in ts}
    shipped.save(tmp_path)
    assert RelationForms.load(tmp_path) == shipped
    assert RelationForms.load(tmp_path / "none") == RelationForms()


def test_contrast_asks_the_subjects_other_relations_once_as_statement_and_question() -> None:
    forms = RelationForms({"citizenship": ("{s} is a citizen of", "Where is {s} from?"),
                           "birthplace": ("{s} was born in", "Where was {s} born?",
                                          "In which city was {s} born?"),
                           "employer": ("{s} works for",)})
    assert forms.contrast("citizenship", "X") == ("X was born in", "Where was X born?",
                                                  "X works for")
    assert forms.contrast("unknown", "X") == () and forms.contrast("citizenship", None) == ()
    kinds = RelationForms(forms.forms, {"citizenship": "person", "birthplace": "person",
                                        "employer": "company"})
    assert kinds.contrast("citizenship", "X") == ("X was born in", "Where was X born?")

