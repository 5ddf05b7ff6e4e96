"""``python -m pixcontrast`` runs the ``pixcontrast`` command."""

from pixcontrast.cli import main

if __name__ == "__main__":
    main()
