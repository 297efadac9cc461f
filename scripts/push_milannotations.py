"""Convert MILANNOTATIONS to parquet and push it to the Hugging Face Hub with a dataset card.

The code is :mod:`milan_hf.milannotations_hub`; see its docstring and ``--help``.

    python scripts/push_milannotations.py my-org/milannotations \\
        --data-dir ~/milannotations --imagenet-dir ~/imagenet/val
"""

import sys

from milan_hf.milannotations_hub import main

if __name__ == "__main__":
    sys.exit(main())
