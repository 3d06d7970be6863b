import dagster as dg

from module_example.definitions import GreeterResource, greeting


def test_greeting_uses_the_configured_audience():
    result = dg.materialize([greeting], resources={"greeter": GreeterResource(audience="platform")})
    assert result.success
    mats = result.asset_materializations_for_node("greeting")
    assert mats[0].metadata["text"].value == "hello, platform"


def test_definitions_module_loads_by_name():
    from module_example import definitions

    assert definitions.defs.resolve_job_def("module_job").name == "module_job"
