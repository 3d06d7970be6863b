"""Hello world: three ops wired into a job, run every day at 10:00."""

import dagster as dg


@dg.op
def greeting(context: dg.OpExecutionContext) -> str:
    text = "Hello, Dagster"
    context.log.info("greeting: %s", text)
    return text


@dg.op
def shout(context: dg.OpExecutionContext, text: str) -> str:
    loud = text.upper() + "!"
    context.log.info("shout: %s", loud)
    return loud


@dg.op
def report(context: dg.OpExecutionContext, text: str) -> dict:
    result = {"message": text, "length": len(text)}
    context.log.info("report: %s", result)
    return result


# Three small steps: run in the run's own process, not one process each (the default
# multiprocess executor started three more Pythons per run, most of a run's cost).
@dg.job(description="Say hello, shout it, report it.", executor_def=dg.in_process_executor)
def hello_job():
    report(shout(greeting()))


hello_daily = dg.ScheduleDefinition(
    name="hello_daily",
    job=hello_job,
    cron_schedule="0 10 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

defs = dg.Definitions(jobs=[hello_job], schedules=[hello_daily])
