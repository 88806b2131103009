"""The demo knowledge world: generation, LM training text, and KnowEdit-format exports."""

from .generate import WorldConfig, build_world
from .schema import Entity, Fact, QAPair, Topic, World

__all__ = ["Entity", "Fact", "QAPair", "Topic", "World", "WorldConfig", "build_world"]
