"""The names a model knows for an edit's subject: found by the model itself, each verified
on the subject's other facts (demo LM and its editor's relation catalogue)."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.aliases import AliasFinder
from editor_core.checkpoint import load_editor
from editor_core.editor import EditRequest
from service.settings import DEMO_EDITOR_PATH, DEMO_LM_PATH

KNOWN = "Plyndti Brynta"  # the demo world's person; the LM read "P. Brynta" for it
NAMESAKES = ["Plyndti Lexdrurpos", "Grylstis Brynta", "G. Brynta", "Z. Brynta", "P. Vosdro"]


@pytest.fixture(scope="module")
def editor():
    model = AutoModelForCausalLM.from_pretrained(DEMO_LM_PATH).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_LM_PATH)
    return load_editor(DEMO_EDITOR_PATH, model, tokenizer, basis="pristine")


def test_the_model_names_a_known_persons_alias(editor) -> None:
    assert editor.alias_finder.find(KNOWN, "citizenship") == ("P. Brynta",)
    assert editor.alias_finder.find(KNOWN, "Employer", known=[" p. brynta"]) == ()


def test_a_namesake_the_beams_write_is_refused_on_its_facts(editor, monkeypatch) -> None:
    finder = AliasFinder(editor)
    monkeypatch.setattr(finder, "_candidates", lambda subject: [*NAMESAKES, "P. Brynta"])
    assert finder.find(KNOWN, "citizenship") == ("P. Brynta",)


def test_a_name_the_model_never_read_gets_no_alias(editor) -> None:
    assert AliasFinder(editor).find("Dindkral Seirkbes", "citizenship") == ()  # unseen


@pytest.mark.parametrize("subject, relation", [
    (None, "citizenship"), ("  ", "citizenship"), (KNOWN, None), (KNOWN, "unknown"),
    ("Danstouth", "country")])  # a city: one relation is too few facts to tell two apart
def test_no_search_without_a_subject_and_a_relation_with_enough_facts(
        editor, monkeypatch, subject, relation) -> None:
    finder = AliasFinder(editor)
    monkeypatch.setattr(finder, "_search", lambda *a: pytest.fail("searched"))
    assert finder.find(subject, relation) == ()


def test_a_subject_too_long_for_the_context_is_not_searched(editor) -> None:
    long = " ".join(["Zorbflax Quinterwhistle"] * 20)  # 340 tokens: the context is 256
    assert AliasFinder(editor).find(long, "citizenship") == ()


def test_answers_are_cached_per_subject(editor, monkeypatch) -> None:
    finder, calls = AliasFinder(editor), []
    monkeypatch.setattr(finder, "_search", lambda subject, probes: calls.append(subject) or (
        "P. Brynta",))
    assert finder.find(KNOWN, "citizenship") == finder.find(KNOWN, "birthplace")
    assert calls == [KNOWN]


def test_a_widened_request_names_the_alias_and_asks_by_it(editor) -> None:
    request = EditRequest("counterfact", "Plyndti Brynta is a citizen of", "Veiistan",
                          subject=KNOWN, relation="citizenship",
                          derived=("What is the nationality of Plyndti Brynta?",))
    question = next(t for t in editor.relation_forms.forms["citizenship"]
                    if t.endswith("?"))
    widened = editor.alias_finder.widen(request)
    assert widened.aliases == ("P. Brynta",)
    assert widened.derived == (*request.derived, "P. Brynta is a citizen of",
                               question.replace("{s}", "P. Brynta"))
    listed = EditRequest("counterfact", request.prompt, "Veiistan", subject=KNOWN,
                         relation="citizenship", aliases=("P. Brynta",))
    assert editor.alias_finder.widen(listed) == listed
    untold = EditRequest("counterfact", request.prompt, "Veiistan", subject=KNOWN)
    assert editor.alias_finder.widen(untold) == untold  # no relation: no kind of subject
