import os

import dagster as dg
import pandas as pd
import psycopg2
import pytest

from etl.definitions import (TABLE, WarehouseResource, daily_revenue, raw_orders, valid_orders,
                             validation_problems, warehouse_daily_revenue)

WAREHOUSE_URL = os.environ.get("DAGSTER_TEST_WAREHOUSE_URL")


def test_sample_is_valid():
    frame = pd.read_csv(os.path.join(os.path.dirname(__file__), "..", "src", "etl", "data", "orders.csv"))
    assert validation_problems(frame) == {}


def test_bad_rows_are_counted_by_rule():
    frame = pd.DataFrame({
        "order_id": [1, 2, 2, 4], "order_date": ["2026-11-01", "2026-13-45", "2026-11-02", None],
        "product": ["pen", "pen", None, "pen"], "quantity": [1, 0, 2, 3], "unit_price": [1.0, -2.0, 1.0, 1.0],
    })
    assert validation_problems(frame) == {
        "null key or value": 2, "quantity not positive": 1, "unit_price negative": 1,
        "order_date not a date": 1, "duplicate order_id": 1,
    }


def test_validation_fails_the_run_loudly(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("order_id,order_date,product,quantity,unit_price\n1,2026-11-01,pen,-1,1.0\n2,2026-11-01,pen,1,1.0\n")
    result = dg.materialize([raw_orders, valid_orders], raise_on_error=False,
                            run_config={"ops": {"raw_orders": {"config": {"path": str(bad)}}}})
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "2 rows read, validation failed (quantity not positive: 1)" in str(failure.event_specific_data.error)


def test_transform_sums_revenue_per_day_and_product():
    frame = pd.DataFrame({"order_id": [1, 2, 3], "order_date": ["2026-11-01"] * 3, "product": ["pen", "pen", "ink"],
                          "quantity": [2, 3, 1], "unit_price": [1.5, 1.5, 4.0]})
    out = daily_revenue(frame).set_index("product")
    assert out.loc["pen", "orders"] == 2 and out.loc["pen", "revenue"] == pytest.approx(7.5)
    assert out.loc["ink", "revenue"] == pytest.approx(4.0)


def test_load_upserts_into_postgres():
    assert WAREHOUSE_URL, "run under files/test/warehouse-db.sh (make test does) for a real PostgreSQL"
    resources = {"warehouse": WarehouseResource(url=WAREHOUSE_URL)}
    assets = [raw_orders, valid_orders, daily_revenue, warehouse_daily_revenue]
    for _ in range(2):  # a second run replaces the same rows
        result = dg.materialize(assets, resources=resources)
        assert result.success
    with psycopg2.connect(WAREHOUSE_URL) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*), sum(orders), sum(revenue) FROM {TABLE}")
        rows, orders, revenue = cur.fetchone()
    assert (rows, orders) == (11, 12)
    assert float(revenue) == pytest.approx(3 * 4.5 + 10 * 1.2 + 1 * 4.5 + 39.9 + 25 * 1.1 + 2 * 4.5 + 12 + 5 * 1.2
                                           + 2 * 37.5 + 6 * 4.25 + 2 * 12 + 12 * 1.2)
    meta = result.asset_materializations_for_node("warehouse_daily_revenue")[0].metadata
    assert meta["rows_upserted"].value == 11 and meta["table_rows"].value == 11
