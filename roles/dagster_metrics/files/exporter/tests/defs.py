"""A tiny code location for the exporter's tests: one job that succeeds, one that fails."""

import dagster as dg


@dg.op
def succeed() -> int:
    return 1


@dg.op
def fail() -> None:
    raise dg.Failure(description="on purpose")


@dg.job
def ok_job():
    succeed()


@dg.job
def failing_job():
    fail()


defs = dg.Definitions(jobs=[ok_job, failing_job])
