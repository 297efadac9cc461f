#!/usr/bin/env python
"""Reproduce the captioner embedded in milan_hf (``milan_hf/resources/captioner``).

    python scripts/train_embedded_captioner.py --corpus data/probe_milannotations

The recipe is ``milan_hf.embedded_training`` (see its docstring for the steps).
"""

from __future__ import annotations

import sys

from milan_hf.embedded_training import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"train_embedded_captioner: error: {error}", file=sys.stderr)
        sys.exit(2)
