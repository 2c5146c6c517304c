"""``python -m scaler.cli``: the command line (local workers start this way)."""

from scaler.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
