#!/usr/bin/env python
"""Train MILAN's captioner p(d|E) and its prior p(d): ``milan-hf train`` as a script.

    python scripts/train_captioner.py --dataset corpus/ --output-dir milan-captioner \\
        --image-size 64 --hidden-size 256 --embedding-size 64

The recipe is ``milan_hf.training.train``; the options are ``milan_hf.commands.train``'s.
"""

from __future__ import annotations

import sys

from milan_hf.training import main

if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"train_captioner: error: {error}", file=sys.stderr)
        sys.exit(2)
