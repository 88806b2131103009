"""The edit engine with the shipped demo editor, a real Redis and a restart in between."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.checkpoint import load_editor
from editor_core.editor import EditRequest
from editor_core.encoding import EditInputError
from editor_core.ledger import WeightLedger
from editor_lab.decoding import greedy_continuations
from service.engine import EditEngine, EditSpec, as_edit
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.schemas import EditRecord
from service.store import EditStore, StoreError

from .conftest import DEMO_LM, REPO

DEMO_EDITOR = REPO / "checkpoints" / "demo-editor"
PROMPT = "Plyndti Brynta is a citizen of"  # a demo-world test edit
TARGET = "Veiistan"
REQUEST = EditRequest("counterfact", PROMPT, TARGET, subject="Plyndti Brynta")
RECORD = EditRecord(task="counterfact", prompt=PROMPT, target=TARGET, subject="Plyndti Brynta",
                    instruction=PROMPT, created_at="t", created_by="tester")
SPEC = EditSpec(REQUEST, RECORD.model_copy(update={
    "rephrases": ["What country is Plyndti Brynta a citizen of?"],
    "locality_prompts": ["Plyndti Brynta works in the field of"]}))


class Replica:
    """A freshly started process's model, editor and ledger (pristine weights)."""

    def __init__(self) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(DEMO_LM).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(DEMO_LM)
        self.editor = load_editor(DEMO_EDITOR, self.model, self.tokenizer)
        self.ledger = WeightLedger.for_editor(self.editor)
        self.pristine_digest = self.ledger.live_digest()

    def engine(self, socket: str) -> EditEngine:
        client = aioredis.Redis(unix_socket_path=socket)
        return EditEngine(self.editor, self.ledger, EditStore(client, "demo"), ServiceMetrics())

    def answer(self, prompt: str = PROMPT) -> str:
        return greedy_continuations(self.model, self.tokenizer, [prompt], 8)[0].strip()


@pytest.fixture()
def first() -> Replica:
    return Replica()


def test_edit_persists_replays_after_restart_and_rolls_back_exactly(redis_socket) -> None:
    first, second = Replica(), Replica()
    assert not first.answer().startswith(TARGET)

    async def edit_then_restart():
        added = (await first.engine(redis_socket).create([SPEC])).edits[0]
        replayed = await second.engine(redis_socket).replay()
        return added, replayed

    added, replayed = asyncio.run(edit_then_restart())
    assert added.version == 1 and first.ledger.version == 1
    quality = added.quality
    assert quality.prompt.after.probability > quality.prompt.before.probability
    assert quality.prompt.after.token_accuracy == 1.0
    assert len(quality.rephrases) == 1 and quality.locality[0].prompt.startswith("Ply")
    assert set(added.timings_ms) == {"aliases", "compute", "measure", "persist", "apply"}
    assert first.answer().startswith(TARGET)
    # The restarted replica rebuilds the same live weights from the store.
    assert replayed == 1 and second.ledger.live_digest() == first.ledger.live_digest()
    assert second.answer().startswith(TARGET)

    async def roll_back_twice():
        engine = first.engine(redis_socket)
        done = await engine.rollback(added.id, by="tester", at="t")
        with pytest.raises(StoreError) as again:
            await engine.rollback(added.id, by="tester", at="t")
        return done, again.value

    done, again = asyncio.run(roll_back_twice())
    assert done.status == "rolled_back" and again.code == "conflict"
    assert first.ledger.live_digest() == first.pristine_digest  # bit for bit
    assert len(first.ledger) == 0


def test_idempotency_key_applies_once(redis_socket, first: Replica) -> None:
    async def twice():
        engine = first.engine(redis_socket)
        a = await engine.create([SPEC], idempotency_key="same", request_hash="h")
        b = await engine.create([SPEC], idempotency_key="same", request_hash="h")
        with pytest.raises(ServiceError) as reused:
            await engine.create([SPEC], idempotency_key="same", request_hash="other")
        return a, b, reused.value, await engine.store.version()

    a, b, reused, version = asyncio.run(twice())
    assert not a.replayed and b.replayed and b.edits[0].id == a.edits[0].id
    assert reused.status == 409 and reused.code == "idempotency_key_reused"
    assert version == 1 and [e.edit_id for e in first.ledger.active] == [a.edits[0].id]


def test_rollback_after_version(redis_socket, first: Replica) -> None:
    prompts = [PROMPT, "Plyndti Brynta was born in", "Plyndti Brynta works for"]

    async def three_then_back():
        engine = first.engine(redis_socket)
        ids = []
        for prompt, target in zip(prompts, ("Veiistan", "Krexstan", "Boldrom Partners")):
            record = RECORD.model_copy(update={"prompt": prompt, "target": target})
            request = EditRequest("counterfact", prompt, target, subject=RECORD.subject)
            ids.append((await engine.create([EditSpec(request, record)])).edits[0].id)
        taken = await engine.rollback_after(1, by="tester", at="t")
        return ids, taken

    ids, taken = asyncio.run(three_then_back())
    assert [e.id for e in taken] == [ids[2], ids[1]]
    assert {e.rolled_back_version for e in taken} == {4} and first.ledger.version == 4
    assert [e.edit_id for e in first.ledger.active] == [ids[0]]


def test_a_new_edit_of_the_same_fact_replaces_the_old_one_in_one_change(
        redis_socket, first: Replica) -> None:
    async def twice():
        engine = first.engine(redis_socket)
        spec = EditSpec(REQUEST, RECORD.model_copy(update={"relation": "citizenship"}))
        old = (await engine.create([spec])).edits[0]
        request = EditRequest("counterfact", "Plyndti Brynta holds citizenship of", "Krexstan",
                              subject="Plyndti Brynta")
        new = await engine.create([EditSpec(request, RECORD.model_copy(update={
            "target": "Krexstan", "relation": "citizenship"}))])
        return old, new, await engine.store.get_many([old.id, new.edits[0].id])

    old, new, stored = asyncio.run(twice())
    # the answer is built from what the store step returned, not read back: the same edit
    assert new.edits[0] == as_edit(stored[1]) and not new.replayed
    assert stored[0].status == "rolled_back" and stored[0].superseded_by == new.edits[0].id
    assert [e.edit_id for e in first.ledger.active] == [new.edits[0].id]
    assert first.ledger.version == 2 and new.edits[0].superseded == [old.id]


def test_a_store_failure_leaves_the_weights_untouched(tmp_path, first: Replica) -> None:
    async def unreachable():
        client = aioredis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"))
        engine = EditEngine(first.editor, first.ledger, EditStore(client, "demo"),
                            ServiceMetrics())
        with pytest.raises(RedisConnectionError):
            await engine.create([SPEC])

    asyncio.run(unreachable())
    assert len(first.ledger) == 0 and first.ledger.live_digest() == first.pristine_digest
    assert not first.answer().startswith(TARGET)


def test_a_store_behind_the_weights_is_followed_by_rebuilding(first: Replica,
                                                               redis_socket) -> None:
    """A Redis restored from an older state (here: emptied, then one new edit) has fewer
    versions than the live weights: the follower rebuilds from the store, not from memory."""
    other = EditSpec(EditRequest("counterfact", "Plyndti Brynta works in the field of",
                                 "painting", subject="Plyndti Brynta"),
                     RECORD.model_copy(update={"prompt": "Plyndti Brynta works in the field of",
                                               "target": "painting"}))

    async def run() -> tuple[int, int, list[str]]:
        engine = first.engine(redis_socket)
        await engine.replay()
        await engine.create([SPEC])
        await engine.create([other])
        assert (first.ledger.version, len(first.ledger)) == (2, 2)
        await engine.store.client.flushall()  # the store loses both edits...
        made = await engine.create([SPEC])  # ...and takes a new one at version 1
        return first.ledger.version, len(first.ledger), [made.edits[0].id]

    version, active, made = asyncio.run(run())
    assert (version, active) == (1, 1)
    assert [e.edit_id for e in first.ledger.active] == made


def test_a_refused_edit_answers_only_once_the_measurement_beside_it_ended(
        redis_socket, first: Replica, monkeypatch) -> None:
    """The edit computation and the "before" measurement run side by side; when the first
    refuses, the request still waits for the second, so nothing reads the weights after
    the edit lock is let go."""
    ended = []

    def refuse(specs):
        raise EditInputError("the target produced no tokens")

    def slow_measure(specs, earlier):
        time.sleep(0.3)
        ended.append(time.monotonic())

    async def refused():
        engine = first.engine(redis_socket)
        monkeypatch.setattr(engine, "_compute", refuse)
        monkeypatch.setattr(engine, "_measure", slow_measure)
        with pytest.raises(ServiceError) as error:
            await engine.create([SPEC])
        return error.value, time.monotonic(), await engine.store.version()

    error, answered, version = asyncio.run(refused())
    assert error.status == 422 and error.code == "invalid_edit"
    assert ended and ended[0] <= answered
    assert version == 0 and len(first.ledger) == 0
    assert first.ledger.live_digest() == first.pristine_digest
