"""The command line starts without torch, transformers or datasets; the package still registers
its models and pipeline with transformers whenever they are used."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "timm")


def run_python(code: str) -> str:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def loaded_heavy_modules(code: str) -> list[str]:
    listing = f"import sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    return run_python(f"{code}\n{listing}")


def test_building_the_parser_imports_no_heavy_library():
    assert loaded_heavy_modules("import milan_hf.cli\nmilan_hf.cli.build_parser()") == "[]"


def test_help_and_argument_errors_import_no_heavy_library():
    # --help exits with SystemExit(0), an argument error with SystemExit(2): check both, then
    # look at sys.modules in the same process.
    code = """
import sys
import milan_hf.cli
for argv in (["--help"], ["exemplars", "--help"], ["describe", "--k", "many"], ["evaluate"]):
    try:
        milan_hf.cli.main(argv)
    except SystemExit as exit:
        assert exit.code in (0, 2), (argv, exit.code)
    else:
        raise AssertionError(f"{argv} did not exit")
"""
    assert loaded_heavy_modules(code).splitlines()[-1] == "[]"


def test_help_runs_as_a_subprocess_without_heavy_libraries():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['milan-hf', '--help']\n"
        "try:\n"
        "    runpy.run_module('milan_hf.cli', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    output = run_python(code)
    assert "describe" in output and "exemplars" in output  # the help text itself
    assert output.splitlines()[-1] == "[]"


def test_schema_column_names_need_no_datasets():
    code = "from milan_hf import schema\nschema.MASKS, schema.DEFAULT_K"
    assert loaded_heavy_modules(code) == "[]"


REGISTERED = """
from transformers import AutoConfig, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY
config = AutoConfig.for_model("milan_captioner", vocab_size=12)
model_class = AutoModel._model_mapping[type(config)]
print(type(config).__name__, model_class.__name__,
      "neuron-description" in PIPELINE_REGISTRY.get_supported_tasks())
"""


@pytest.mark.parametrize(
    "imports",
    [
        "import milan_hf",  # transformers imported afterwards
        "import transformers\nimport milan_hf",  # transformers imported first
        "from milan_hf import MilanCaptionerModel",
        "import milan_hf.describer",  # a module that itself imports transformers
    ],
)
def test_auto_classes_and_pipeline_are_registered(imports):
    output = run_python(imports + "\n" + REGISTERED)
    assert output.splitlines()[-1] == "MilanCaptionerConfig MilanCaptionerModel True"


def test_lazy_names_resolve_and_unknown_names_fail():
    output = run_python(
        "import milan_hf\n"
        "print(milan_hf.MilanCaptionerModel.__name__, milan_hf.load_exemplars.__name__,"
        " milan_hf.schema.__name__)\n"
        "try:\n"
        "    milan_hf.no_such_name\n"
        "except AttributeError as error:\n"
        "    print(error)"
    )
    assert output.splitlines() == [
        "MilanCaptionerModel load_exemplars milan_hf.schema",
        "module 'milan_hf' has no attribute 'no_such_name'",
    ]
