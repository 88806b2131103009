"""InstructEdit as a library: the demo world, data loaders, the demo LM, and (soon) the editor."""
