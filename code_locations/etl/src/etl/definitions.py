"""Extract a CSV of orders, validate it, transform it into daily revenue, load it into
the warehouse database (an upsert, so re-running a day changes nothing)."""

from importlib import resources

import dagster as dg
import pandas as pd
import psycopg2
import psycopg2.extras

COLUMNS = {"order_id": "int64", "order_date": "object", "product": "object", "quantity": "int64",
           "unit_price": "float64"}
TABLE = "etl_daily_revenue"


class OrdersSource(dg.Config):
    """Where the orders come from: a CSV path; empty means the sample shipped with the package."""

    path: str = ""


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse database; the URL comes from the location's environment (WAREHOUSE_URL)."""

    url: str

    def connect(self):
        return psycopg2.connect(self.url)


@dg.asset(description="Orders as read from the CSV, unchanged.")
def raw_orders(context: dg.AssetExecutionContext, config: OrdersSource) -> pd.DataFrame:
    source = config.path or str(resources.files("etl") / "data" / "orders.csv")
    frame = pd.read_csv(source)
    context.add_output_metadata({"source": source, "rows": len(frame)})
    return frame


def validation_problems(frame: pd.DataFrame) -> dict[str, int]:
    """Rows breaking each rule, by rule; empty when the frame is valid."""
    missing = sorted(set(COLUMNS) - set(frame.columns))
    if missing:
        return {f"missing column {name}": len(frame) for name in missing}
    problems = {
        "null key or value": int(frame[list(COLUMNS)].isna().any(axis=1).sum()),
        "quantity not positive": int((pd.to_numeric(frame["quantity"], errors="coerce") <= 0).sum()),
        "unit_price negative": int((pd.to_numeric(frame["unit_price"], errors="coerce") < 0).sum()),
        "order_date not a date": int(pd.to_datetime(frame["order_date"], errors="coerce", format="%Y-%m-%d")
                                     .isna().sum() - frame["order_date"].isna().sum()),
        "duplicate order_id": int(frame["order_id"].duplicated().sum()),
    }
    return {rule: count for rule, count in problems.items() if count}


@dg.asset(description="Orders that pass the schema, null and range checks; any bad row fails the run.")
def valid_orders(context: dg.AssetExecutionContext, raw_orders: pd.DataFrame) -> pd.DataFrame:
    problems = validation_problems(raw_orders)
    if problems:
        summary = ", ".join(f"{rule}: {count}" for rule, count in problems.items())
        raise dg.Failure(
            description=f"{len(raw_orders)} rows read, validation failed ({summary})",
            metadata={rule: dg.MetadataValue.int(count) for rule, count in problems.items()},
        )
    frame = raw_orders.astype(COLUMNS)
    context.add_output_metadata({"rows": len(frame)})
    return frame


@dg.asset(description="Revenue and order count per day and product.")
def daily_revenue(valid_orders: pd.DataFrame) -> pd.DataFrame:
    frame = valid_orders.assign(revenue=valid_orders["quantity"] * valid_orders["unit_price"])
    return (frame.groupby(["order_date", "product"], as_index=False)
            .agg(orders=("order_id", "count"), revenue=("revenue", "sum"))
            .rename(columns={"order_date": "day"}))


@dg.asset(description=f"Daily revenue upserted into the warehouse table {TABLE}.")
def warehouse_daily_revenue(context: dg.AssetExecutionContext, daily_revenue: pd.DataFrame,
                            warehouse: WarehouseResource) -> dg.MaterializeResult:
    rows = [(r.day, r.product, int(r.orders), round(float(r.revenue), 2)) for r in daily_revenue.itertuples()]
    with warehouse.connect() as conn, conn.cursor() as cur:
        cur.execute(f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            day date NOT NULL, product text NOT NULL, orders integer NOT NULL,
            revenue numeric(12, 2) NOT NULL, PRIMARY KEY (day, product))""")
        psycopg2.extras.execute_values(cur, f"""
            INSERT INTO {TABLE} (day, product, orders, revenue) VALUES %s
            ON CONFLICT (day, product) DO UPDATE SET orders = EXCLUDED.orders, revenue = EXCLUDED.revenue""", rows)
        cur.execute(f"SELECT count(*) FROM {TABLE}")
        total = cur.fetchone()[0]
    context.log.info("upserted %d rows into %s (%d rows in the table)", len(rows), TABLE, total)
    return dg.MaterializeResult(metadata={"rows_upserted": len(rows), "table_rows": total})


etl_job = dg.define_asset_job("etl_job", selection=[raw_orders, valid_orders, daily_revenue,
                                                    warehouse_daily_revenue])

defs = dg.Definitions(
    assets=[raw_orders, valid_orders, daily_revenue, warehouse_daily_revenue],
    jobs=[etl_job],
    resources={"warehouse": WarehouseResource(url=dg.EnvVar("WAREHOUSE_URL"))},
)
