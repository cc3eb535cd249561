"""``python -m forgetbench.train.mitigations {wise,merge} ...`` (docs/mitigations.md)."""

from forgetbench.train.mitigations.cli import main

if __name__ == "__main__":
    main()
