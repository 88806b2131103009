"""The service itself: readiness, what it serves, and the tasks it edits."""

from __future__ import annotations

import asyncio

from editor_core.instructions import INSTRUCTION_FORMAT

from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import InfoOut, LogOut, ReadyOut, TaskOut


class SystemHandler:
    """What the service reports about itself."""

    def __init__(self, live: LiveService) -> None:
        self.live = live

    def ready(self) -> ReadyOut:
        """Ready, or 503 with the reason (store unavailable, catching up)."""
        live = self.live
        reason = live.not_ready()
        if reason is not None:
            raise ServiceError(503, *reason, {"lag": live.follower.lag})
        return ReadyOut(replayed=live.replayed, version=live.ledger.version)

    async def info(self) -> InfoOut:
        live = self.live
        digest = await asyncio.to_thread(live.ledger.live_digest)
        follower = live.follower
        with live.ledger.reading():
            version, active = live.ledger.version, len(live.ledger)
        return InfoOut(model=live.settings.model, editor=str(live.settings.editor),
                       trained_editor=live.settings.trained_editor,
                       editable=[w.name for w in live.editor.editable],
                       device=live.settings.device, dtype=live.settings.dtype,
                       combination=live.editor.combination.to_json(),
                       edit_basis=live.editor.basis,
                       edit_version=version, active_edits=active, fingerprint=live.fingerprint,
                       live_digest=digest, pristine_digest=live.pristine_digest,
                       log=LogOut(position=follower.position, applied_version=version,
                                  store_version=follower.store_version, lag=follower.lag,
                                  store_up=follower.store_up))

    def tasks(self) -> list[TaskOut]:
        return [TaskOut(name=t.name, title=t.title,
                        template=INSTRUCTION_FORMAT.replace("{task}", t.title),
                        default_description=t.training_descriptions()[0],
                        descriptions=t.training_descriptions())
                for t in self.live.editor.registry]
