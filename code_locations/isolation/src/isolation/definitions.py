"""An asset that records which interpreter and host ran it: proof of per-location venvs."""

import platform
import socket
import sys

import dagster as dg
import tabulate


@dg.asset(description="Records the Python executable, venv and host that materialized it.")
def interpreter(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    facts = {
        "sys_executable": sys.executable,
        "sys_prefix": sys.prefix,
        "hostname": socket.gethostname(),
        "python_version": platform.python_version(),
        "dagster_version": dg.__version__,
    }
    context.log.info("\n%s", tabulate.tabulate(facts.items(), headers=["fact", "value"]))
    return dg.MaterializeResult(metadata={key: dg.MetadataValue.text(value) for key, value in facts.items()})


isolation_job = dg.define_asset_job("isolation_job", selection=[interpreter])

defs = dg.Definitions(assets=[interpreter], jobs=[isolation_job])
