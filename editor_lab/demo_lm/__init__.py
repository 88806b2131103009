"""The demo LM: a small GPT-2 trained on the demo world, and the measurements it ships with."""
