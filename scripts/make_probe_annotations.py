"""Build the automatically annotated probe-world corpus in the original MILANNOTATIONS layout.

    python scripts/make_probe_annotations.py --output data/probe_milannotations
    python scripts/make_probe_annotations.py --output /tmp/tiny_corpus --tiny   # seconds

Trains the probe networks on first use (cached under ~/.cache/milan_hf/probe_models), extracts
exemplars on probe-world scenes, annotates every unit by concept-mask IoU (3 descriptions per
unit) and writes ``<output>/<network>/probeworld/`` per network plus ``<output>/corpus.json``.
Read it back with ``milan_hf.milannotations.load_milannotations("all", data_dir=<output>)``.
The code is :mod:`milan_hf.probe_world.corpus` (``main`` is this CLI).
"""

import sys

from milan_hf.probe_world.corpus import main

if __name__ == "__main__":
    sys.exit(main())
