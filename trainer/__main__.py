"""``python -m trainer --manifest ID ...`` (also ``nst train`` and under ``torchrun``)."""

from trainer.cli import main

main()
