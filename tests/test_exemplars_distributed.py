"""A 2-process run (accelerate.debug_launcher, gloo on the CPU) equals the 1-process run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from accelerate import Accelerator

from milan_hf import schema
from milan_hf.exemplar_storage import load_exemplars, save_exemplars
from milan_hf.exemplars import extract_exemplars

from .test_exemplars import SIZE, TinyNet, write_images

LAYERS = ["conv1", "conv2", "fc"]


def extract(folder: str, accelerator: Accelerator | None = None):
    return extract_exemplars(
        TinyNet(),
        LAYERS,
        folder,
        k=4,
        quantile=0.95,
        input_size=SIZE,
        batch_size=4,
        progress=False,
        accelerator=accelerator,
    )


def extract_in_process(folder: str, output: str) -> None:
    """Runs in each of the launched processes."""
    accelerator = Accelerator(cpu=True)
    exemplars = extract(folder, accelerator)
    assert accelerator.num_processes == 2
    if accelerator.is_main_process:
        save_exemplars(exemplars, output)
    else:
        assert exemplars is None


def test_two_processes_equal_one(tmp_path):
    folder = str(write_images(tmp_path / "probe", 21))  # odd: shards of unequal size
    # debug_launcher forks; a pytest process that already ran torch's thread pool can hang in
    # a forked child, so launch from a fresh interpreter.
    launcher = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from accelerate import debug_launcher
        from tests.test_exemplars_distributed import extract_in_process
        debug_launcher(extract_in_process, args=({folder!r}, {str(tmp_path / "two")!r}),
                       num_processes=2)
    """)
    result = subprocess.run(
        [sys.executable, "-c", launcher], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    single = extract(folder)
    two = load_exemplars(tmp_path / "two")
    assert len(two) == len(single)
    assert two[schema.LAYER] == single[schema.LAYER]
    assert two[schema.IDS] == single[schema.IDS]
    np.testing.assert_allclose(two[schema.ACTIVATIONS], single[schema.ACTIVATIONS], rtol=1e-5)
    # Histograms merge by addition: the thresholds are the same numbers, not just close.
    np.testing.assert_allclose(two[schema.THRESHOLD], single[schema.THRESHOLD], rtol=1e-6)
    for a, b in zip(two[schema.MASKS], single[schema.MASKS]):
        assert (np.asarray(a) != np.asarray(b)).mean() < 1e-3
