"""Benchmarks of InstructEdit Server: ``instructedit bench`` runs them all and writes
``RESULTS.md`` and ``results.json``. Every figure that is compared with a baseline is a ratio
measured in the same run, on the same model and input."""
