"""A location loaded by module name (workspace kind python_module), with a configured resource."""

import dagster as dg


class GreeterResource(dg.ConfigurableResource):
    """Who to greet comes from configuration, so each deployment can set its own."""

    audience: str = "world"

    def greet(self) -> str:
        return f"hello, {self.audience}"


@dg.asset(description="A greeting built by the configured resource.")
def greeting(greeter: GreeterResource) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"text": greeter.greet()})


module_job = dg.define_asset_job("module_job", selection=[greeting])

defs = dg.Definitions(
    assets=[greeting],
    jobs=[module_job],
    resources={"greeter": GreeterResource(audience=dg.EnvVar("GREETER_AUDIENCE").get_value("world"))},
)
