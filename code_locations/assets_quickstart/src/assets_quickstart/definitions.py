"""Two assets, one depending on the other, with an asset check and metadata."""

import statistics

import dagster as dg


@dg.asset(description="A fixed sample of daily order counts.")
def daily_orders() -> list[int]:
    return [12, 15, 9, 22, 18, 30, 11]


@dg.asset(description="Summary statistics of the daily orders.")
def orders_summary(daily_orders: list[int]) -> dg.MaterializeResult:
    summary = {
        "days": len(daily_orders),
        "total": sum(daily_orders),
        "mean": round(statistics.mean(daily_orders), 2),
        "max": max(daily_orders),
    }
    return dg.MaterializeResult(metadata={key: dg.MetadataValue.float(float(v)) for key, v in summary.items()})


@dg.asset_check(asset=daily_orders, description="Order counts are never negative.")
def orders_not_negative(daily_orders: list[int]) -> dg.AssetCheckResult:
    negative = [n for n in daily_orders if n < 0]
    return dg.AssetCheckResult(passed=not negative, metadata={"negative_days": len(negative)})


orders_job = dg.define_asset_job("orders_job", selection=[daily_orders, orders_summary])

defs = dg.Definitions(assets=[daily_orders, orders_summary], asset_checks=[orders_not_negative], jobs=[orders_job])
