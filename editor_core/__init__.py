"""InstructEdit as a library, the method alone: edit specs and instructions, the
hypernetwork and editor, deltas, the edit memory and other combinations, the weight ledger,
refinement and judging, routing calibration, checkpoints, and the edit data formats.

It imports nothing of the lab (``editor_lab``) or the service."""
