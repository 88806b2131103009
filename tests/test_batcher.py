"""Wave batching of generations: requests decoded together answer as they do alone, a
client that leaves stops only its own sequence, and a failure reaches every request."""

from __future__ import annotations

import asyncio

import pytest

from editor_core.generation import SamplingParams, TokenStream
from editor_core.ledger import WeightLedger
from editor_core.specs import resolve_editable
from service.batcher import Finished, GenerationBatcher

PROMPTS = ["Plyndti Brynta is a citizen of", "The capital of Veiistan is", "Hello"]


@pytest.fixture()
def batcher(demo_lm):
    model, _ = demo_lm
    running = GenerationBatcher(model, WeightLedger(model, resolve_editable(model)),
                                generation_batch_size=8, generation_batch_window_ms=50)
    yield running
    running.close()


def stream(demo_lm, prompt: str, n: int = 12) -> TokenStream:
    model, tokenizer = demo_lm
    return TokenStream(model, tokenizer, prompt, SamplingParams(max_new_tokens=n))


def test_concurrent_requests_answer_as_alone(demo_lm, batcher) -> None:
    alone = [stream(demo_lm, p) for p in PROMPTS]
    for s in alone:
        s.run()

    async def together() -> list[tuple[str, Finished]]:
        streams = [stream(demo_lm, p) for p in PROMPTS]
        done = await asyncio.gather(*(batcher.run(s) for s in streams))
        return [(s.text, d) for s, d in zip(streams, done)]

    results = asyncio.run(together())
    assert [text for text, _ in results] == [s.text for s in alone]
    assert {d.version for _, d in results} == {0}


def test_a_client_that_leaves_stops_only_its_own_sequence(demo_lm, batcher) -> None:
    async def run() -> tuple[TokenStream, TokenStream]:
        leaving, staying = stream(demo_lm, PROMPTS[0], 40), stream(demo_lm, PROMPTS[1], 40)
        stays = asyncio.create_task(batcher.run(staying))
        pieces = batcher.stream(leaving)
        await anext(pieces)  # the first piece, then the client goes away
        await pieces.aclose()
        await stays
        return leaving, staying

    leaving, staying = asyncio.run(run())
    assert leaving.finish_reason == "stop" and leaving.completion_tokens < 40
    assert staying.finish_reason == "length" and staying.completion_tokens == 40


def test_a_cancelled_whole_generation_stops_its_sequence_at_once(demo_lm, batcher) -> None:
    """A non-streamed request whose client left is cancelled (``until_disconnected``): its
    sequence leaves the wave then."""
    async def run() -> TokenStream:
        leaving = stream(demo_lm, PROMPTS[0], 200)
        task = asyncio.create_task(batcher.run(leaving))
        while not leaving.text:  # decoding has begun
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert leaving.finish_reason == "stop"  # stopped by the cancellation itself
        return leaving

    assert asyncio.run(run()).completion_tokens < 200


def test_a_failure_mid_wave_reaches_every_request(demo_lm, batcher, monkeypatch) -> None:
    model, _ = demo_lm

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    async def run() -> list:
        streams = [stream(demo_lm, p) for p in PROMPTS]
        return await asyncio.gather(*(batcher.run(s) for s in streams),
                                    return_exceptions=True)

    monkeypatch.setattr(model, "forward", broken)
    outcomes = asyncio.run(run())
    monkeypatch.undo()
    assert all(isinstance(o, RuntimeError) and "out of memory" in str(o) for o in outcomes)
    again = stream(demo_lm, PROMPTS[2])
    asyncio.run(batcher.run(again))  # the worker survived
    assert again.finish_reason == "length"
