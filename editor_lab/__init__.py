"""The lab around the method: the demo world and LM, meta-training and evaluation.

It uses ``editor_core``; nothing in ``editor_core`` or ``service`` imports it.
"""
