"""``python -m oodbench`` (also what ``torchrun -m oodbench extract ...`` runs)."""

from .cli import main

main()
