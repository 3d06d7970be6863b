import dagster as dg

from assets_quickstart.definitions import daily_orders, orders_not_negative, orders_summary


def test_assets_materialize_with_summary_metadata():
    result = dg.materialize([daily_orders, orders_summary])
    assert result.success
    mats = result.asset_materializations_for_node("orders_summary")
    assert mats[0].metadata["total"].value == 117.0
    assert mats[0].metadata["days"].value == 7.0


def test_check_fails_on_negative_counts():
    assert orders_not_negative(daily_orders=[1, -2, 3]).passed is False
    assert orders_not_negative(daily_orders=[1, 2, 3]).passed is True
