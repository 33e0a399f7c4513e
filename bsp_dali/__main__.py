"""``python3 -m bsp_dali`` runs the CLI (works from a source tree with PYTHONPATH, no install)."""

from .cli import main

if __name__ == "__main__":
    main()
