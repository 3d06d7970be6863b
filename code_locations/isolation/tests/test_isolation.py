import socket
import sys

import dagster as dg

from isolation.definitions import interpreter


def test_asset_records_this_interpreter_and_host():
    result = dg.materialize([interpreter])
    assert result.success
    meta = result.asset_materializations_for_node("interpreter")[0].metadata
    assert meta["sys_executable"].value == sys.executable
    assert meta["hostname"].value == socket.gethostname()
    assert meta["dagster_version"].value == dg.__version__


def test_package_exposes_definitions_at_top_level():
    import isolation

    assert isolation.defs.resolve_job_def("isolation_job").name == "isolation_job"
