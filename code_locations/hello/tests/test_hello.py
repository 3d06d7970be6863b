from hello.definitions import defs, hello_daily, hello_job


def test_job_runs_every_op_in_order():
    result = hello_job.execute_in_process()
    assert result.success
    assert result.output_for_node("shout") == "HELLO, DAGSTER!"
    assert result.output_for_node("report") == {"message": "HELLO, DAGSTER!", "length": 15}


def test_job_runs_its_steps_in_the_run_process():
    assert hello_job.executor_def.name == "in_process"


def test_schedule_is_daily_at_ten():
    assert hello_daily.cron_schedule == "0 10 * * *"
    assert defs.resolve_job_def("hello_job") is not None
