#!/usr/bin/env python
"""Train MILAN's captioner p(d|E) and its prior p(d): a thin wrapper of ``milan_hf.training``.

    python scripts/train_captioner.py --dataset corpus/ --output-dir milan-captioner \\
        --image-size 64 --hidden-size 256 --embedding-size 64
"""

from __future__ import annotations

import sys

from milan_hf.training import *  # noqa: F401,F403  (the library moved to milan_hf.training)
from milan_hf.training import main

if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"train_captioner: error: {error}", file=sys.stderr)
        sys.exit(2)
