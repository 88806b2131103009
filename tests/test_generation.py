"""Token-by-token generation and target scoring on the shipped demo LM."""

from __future__ import annotations

import pytest
import torch

from editor_core.encoding import encode_batch, target_nll
from editor_core.generation import GenerationError, SamplingParams, TokenStream, generate_together
from editor_core.probing import score_targets
from editor_lab.decoding import greedy_continuations

PROMPTS = ["Plyndti Brynta is a citizen of", "The capital of Veiistan is", "Hello"]


def test_greedy_stream_matches_transformers_generate(demo_lm) -> None:
    model, tokenizer = demo_lm
    reference = greedy_continuations(model, tokenizer, PROMPTS, 20)
    for prompt, expected in zip(PROMPTS, reference):
        stream = TokenStream(model, tokenizer, prompt, SamplingParams(max_new_tokens=20))
        pieces = list(stream)
        assert "".join(pieces) == stream.text == expected
        assert stream.finish_reason == "length" and stream.completion_tokens == 20
        assert stream.prompt_tokens == len(tokenizer(prompt)["input_ids"])


def test_stop_strings_are_never_streamed(demo_lm) -> None:
    model, tokenizer = demo_lm
    full = TokenStream(model, tokenizer, PROMPTS[0], SamplingParams(max_new_tokens=20)).run()
    stop = "\nWhat"
    assert stop in full
    stream = TokenStream(model, tokenizer, PROMPTS[0],
                         SamplingParams(max_new_tokens=20, stop=(stop, "never there")))
    pieces = list(stream)
    assert stream.finish_reason == "stop" and stream.text == full[:full.index(stop)]
    assert "".join(pieces) == stream.text and all(stop not in p for p in pieces)


def test_seeded_sampling_is_repeatable_and_seed_dependent(demo_lm) -> None:
    model, tokenizer = demo_lm

    def sample(seed: int, **kw) -> str:
        params = SamplingParams(max_new_tokens=16, temperature=1.5, seed=seed, **kw)
        return TokenStream(model, tokenizer, "Hello", params).run()

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(6)}) > 1
    # top_k=1 keeps only the argmax: sampling collapses to greedy.
    greedy = TokenStream(model, tokenizer, "Hello", SamplingParams(max_new_tokens=16)).run()
    assert sample(3, top_k=1) == greedy


def test_prompt_longer_than_the_context_is_refused(demo_lm) -> None:
    model, tokenizer = demo_lm
    with pytest.raises(GenerationError, match="context"):
        TokenStream(model, tokenizer, "word " * 300, SamplingParams(max_new_tokens=4))


def test_score_targets_agrees_with_the_editing_loss(demo_lm) -> None:
    model, tokenizer = demo_lm
    prompts, targets = PROMPTS[:2], ["Veiistan", "Dreinddrerk"]
    scores = score_targets(model, tokenizer, prompts, targets, 256, batch_size=1)
    batch = encode_batch(tokenizer, prompts, targets, 256)
    with torch.no_grad():
        nll = target_nll(model(input_ids=batch.input_ids,
                               attention_mask=batch.attention_mask).logits, batch.labels)
    for score, mean_nll, n in zip(scores, nll, (batch.labels != -100).sum(1)):
        assert score.tokens == int(n)
        assert score.logprob == pytest.approx(-float(mean_nll) * int(n), rel=1e-4)
        assert 0.0 <= score.token_accuracy <= 1.0
    assert scores[1].token_accuracy == 1.0  # the demo LM knows Veiistan's capital


def test_a_vanishing_temperature_decodes_greedily(demo_lm) -> None:
    model, tokenizer = demo_lm
    greedy = TokenStream(model, tokenizer, "Hello", SamplingParams(max_new_tokens=8)).run()
    tiny = SamplingParams(max_new_tokens=8, temperature=5e-324, seed=0)
    assert TokenStream(model, tokenizer, "Hello", tiny).run() == greedy


def test_sequences_decoded_together_answer_as_they_do_alone(demo_lm) -> None:
    """Prompts of different lengths, greedy and seeded sampling, a stop string and
    different lengths of answer, in one batch: each as it is alone, streamed in order."""
    model, tokenizer = demo_lm
    params = [SamplingParams(max_new_tokens=20), SamplingParams(max_new_tokens=5),
              SamplingParams(max_new_tokens=20, stop=("\nWhat",)),
              SamplingParams(max_new_tokens=12, temperature=1.2, seed=4)]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2]]
    alone = [TokenStream(model, tokenizer, p, q) for p, q in zip(prompts, params)]
    for stream in alone:
        stream.run()
    together = [TokenStream(model, tokenizer, p, q) for p, q in zip(prompts, params)]
    pieces: dict[int, list[str]] = {i: [] for i in range(len(together))}
    for index, piece in generate_together(model, together):
        pieces[index].append(piece)
    for a, t, i in zip(alone, together, range(len(alone))):
        assert (t.text, t.finish_reason, t.completion_tokens) == (
            a.text, a.finish_reason, a.completion_tokens)
        assert "".join(pieces[i]) == t.text
    assert [t.finish_reason for t in together] == ["length", "length", "stop", "length"]


def test_ignore_eos_generates_exactly_max_new_tokens(demo_lm) -> None:
    model, tokenizer = demo_lm
    short = TokenStream(model, tokenizer, "Grirkfaen is a city in",
                        SamplingParams(max_new_tokens=60))
    short.run()
    assert short.finish_reason == "stop" and short.completion_tokens < 60  # it ends itself
    forced = TokenStream(model, tokenizer, "Grirkfaen is a city in",
                         SamplingParams(max_new_tokens=60, ignore_eos=True))
    forced.run()
    assert forced.finish_reason == "length" and forced.completion_tokens == 60
    assert forced.text.startswith(short.text)
