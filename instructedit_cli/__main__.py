"""``python -m instructedit_cli`` (e.g. under torchrun)."""

from . import main

main()
