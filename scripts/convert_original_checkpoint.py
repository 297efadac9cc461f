#!/usr/bin/env python
"""Convert an original MILAN release checkpoint into a ``MilanCaptionerModel`` directory.

The code is :mod:`milan_hf.conversion`; see its docstring and ``--help``.

    python scripts/convert_original_checkpoint.py milan-base.pth --output-dir milan-base
"""

import sys

from milan_hf.conversion import main

if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"convert_original_checkpoint: error: {error}", file=sys.stderr)
        sys.exit(2)
