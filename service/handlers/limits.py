"""Request limits that are counted in tokens."""

from __future__ import annotations

from ..errors import ServiceError


def check_tokens(tokenizer, text: str, limit: int, what: str) -> int:
    """The token count of ``text``; 422 ``{what}_too_long`` above ``limit``."""
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if n > limit:
        raise ServiceError(422, f"{what}_too_long",
                           f"the {what} is {n} tokens; at most {limit} are allowed",
                           {"tokens": n, "limit": limit})
    return n
