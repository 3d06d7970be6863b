import importlib.util
from pathlib import Path

import dagster as dg

from file_example.definitions import file_job

DEFINITIONS = Path(__file__).parents[1] / "src" / "file_example" / "definitions.py"


def test_job_counts_nine_words():
    result = file_job.execute_in_process()
    assert result.success
    assert result.output_for_node("count_words") == 9


def test_file_imports_standalone_as_python_file_loading_does():
    spec = importlib.util.spec_from_file_location("standalone_definitions", DEFINITIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.defs, dg.Definitions)
    assert module.defs.resolve_job_def("file_job").name == "file_job"


def test_job_waits_for_its_gate_file(tmp_path):
    gate = tmp_path / "gate"
    config = {"ops": {"count_words": {"config": {"wait_for_file": str(gate), "wait_timeout_seconds": 0.5}}}}
    assert not file_job.execute_in_process(run_config=config, raise_on_error=False).success
    gate.touch()
    result = file_job.execute_in_process(run_config=config)
    assert result.success and result.output_for_node("count_words") == 9
