"""NYC TLC trips (yellow and green) into the warehouse database, one monthly partition
per source file.

Each month is read in chunks (memory stays bounded whatever the file's size), given a
deterministic row id (a hash of the columns that identify a trip), copied into a staging
table, and merged with INSERT ... ON CONFLICT DO NOTHING: re-running a month adds nothing.
"""

import csv
import hashlib
import io
import os
import resource
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing, contextmanager
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import psycopg2

# The CSV mirror the course reads (TLC itself now publishes parquet); ends at 2021-07.
PUBLIC_SOURCE = ("https://github.com/DataTalksClub/nyc-tlc-data/releases/download/"
                 "{colour}/{colour}_tripdata_{month}.csv.gz")


@dataclass(frozen=True)
class Column:
    source: str  # header in the TLC file
    name: str  # column in the warehouse
    sql_type: str


@dataclass(frozen=True)
class TripSchema:
    colour: str
    columns: tuple[Column, ...]
    # The columns that identify one trip; their raw text is hashed into row_id.
    identity: tuple[str, ...]

    @property
    def table(self) -> str:
        return f"{self.colour}_trips"


def _columns(*specs: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*spec) for spec in specs)


_FARES = (("fare_amount", "fare_amount", "numeric(10,2)"), ("extra", "extra", "numeric(10,2)"),
          ("mta_tax", "mta_tax", "numeric(10,2)"), ("tip_amount", "tip_amount", "numeric(10,2)"),
          ("tolls_amount", "tolls_amount", "numeric(10,2)"))
_IDENTITY = ("vendor_id", "pickup_datetime", "dropoff_datetime", "pu_location_id", "do_location_id",
             "passenger_count", "trip_distance", "fare_amount", "total_amount")

SCHEMAS = {
    "yellow": TripSchema("yellow", _columns(
        ("VendorID", "vendor_id", "smallint"),
        ("tpep_pickup_datetime", "pickup_datetime", "timestamp"),
        ("tpep_dropoff_datetime", "dropoff_datetime", "timestamp"),
        ("passenger_count", "passenger_count", "smallint"),
        ("trip_distance", "trip_distance", "numeric(10,2)"),
        ("RatecodeID", "ratecode_id", "smallint"),
        ("store_and_fwd_flag", "store_and_fwd_flag", "text"),
        ("PULocationID", "pu_location_id", "integer"),
        ("DOLocationID", "do_location_id", "integer"),
        ("payment_type", "payment_type", "smallint"),
        *_FARES,
        ("improvement_surcharge", "improvement_surcharge", "numeric(10,2)"),
        ("total_amount", "total_amount", "numeric(10,2)"),
        ("congestion_surcharge", "congestion_surcharge", "numeric(10,2)"),
    ), _IDENTITY),
    "green": TripSchema("green", _columns(
        ("VendorID", "vendor_id", "smallint"),
        ("lpep_pickup_datetime", "pickup_datetime", "timestamp"),
        ("lpep_dropoff_datetime", "dropoff_datetime", "timestamp"),
        ("store_and_fwd_flag", "store_and_fwd_flag", "text"),
        ("RatecodeID", "ratecode_id", "smallint"),
        ("PULocationID", "pu_location_id", "integer"),
        ("DOLocationID", "do_location_id", "integer"),
        ("passenger_count", "passenger_count", "smallint"),
        ("trip_distance", "trip_distance", "numeric(10,2)"),
        *_FARES,
        ("ehail_fee", "ehail_fee", "numeric(10,2)"),
        ("improvement_surcharge", "improvement_surcharge", "numeric(10,2)"),
        ("total_amount", "total_amount", "numeric(10,2)"),
        ("payment_type", "payment_type", "smallint"),
        ("trip_type", "trip_type", "smallint"),
        ("congestion_surcharge", "congestion_surcharge", "numeric(10,2)"),
    ), _IDENTITY),
}
# Key columns that must never be null in the warehouse (the null-keys check).
KEY_COLUMNS = ("row_id", "pickup_datetime", "dropoff_datetime", "pu_location_id", "do_location_id")

monthly = dg.MonthlyPartitionsDefinition(start_date="2019-01-01", end_offset=0)


class TaxiSource(dg.ConfigurableResource):
    """Where the monthly files come from: a URL template with {colour} and {month}
    (YYYY-MM); http(s)://, file:// or a local path."""

    url_template: str = PUBLIC_SOURCE
    timeout_seconds: float = 60.0
    chunk_rows: int = 100_000

    def url(self, colour: str, month: str) -> str:
        return self.url_template.format(colour=colour, month=month)

    @contextmanager
    def download(self, url: str):
        """The file at url as a local path (streamed to disk, never held in memory)."""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme in ("", "file"):
            path = urllib.parse.unquote(parsed.path) if parsed.scheme else url
            if not os.path.isfile(path):
                raise dg.Failure(description=f"source file {path} does not exist", metadata={"url": url})
            yield path
            return
        with tempfile.NamedTemporaryFile(suffix=".csv.gz") as target:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "dagster-platform"})
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    shutil.copyfileobj(response, target, 1 << 20)
            except urllib.error.HTTPError as error:
                # A 4xx (a month not published yet) stays so on retry; a 5xx may not.
                raise dg.Failure(description=f"GET {url} answered HTTP {error.code} {error.reason}",
                                 metadata={"url": url, "status": error.code},
                                 allow_retries=error.code >= 500) from error
            except (urllib.error.URLError, TimeoutError) as error:
                raise dg.Failure(description=f"GET {url} failed: {getattr(error, 'reason', error)}",
                                 metadata={"url": url}) from error
            target.flush()
            yield target.name


class Warehouse(dg.ConfigurableResource):
    """The warehouse database; the URL comes from the location's environment (WAREHOUSE_URL)."""

    url: str

    def connect(self):
        return psycopg2.connect(self.url)


def row_ids(chunk: pd.DataFrame, identity: tuple[str, ...]) -> list[str]:
    """md5 of the identifying columns' raw text: the same trip gets the same id on every run."""
    joined = chunk[list(identity)].fillna("").astype(str).agg("\x1f".join, axis=1)
    return [hashlib.md5(text.encode()).hexdigest() for text in joined]


def table_ddl(schema: TripSchema) -> str:
    columns = ",\n".join(f"{c.name} {c.sql_type}" for c in schema.columns)
    return f"""CREATE TABLE IF NOT EXISTS {schema.table} (
        row_id char(32) PRIMARY KEY,
        source_month date NOT NULL,
        {columns},
        loaded_at timestamptz NOT NULL DEFAULT now())"""


def staging_name(schema: TripSchema, month: str) -> str:
    return f"stg_{schema.table}_{month.replace('-', '_')}"


def merge_select(schema: TripSchema) -> str:
    """Typed columns from the staging table's text; '1.0' is a valid smallint there."""
    casts = ["row_id", "source_month::date"]
    for c in schema.columns:
        target = f"numeric::{c.sql_type}" if c.sql_type in ("smallint", "integer") else c.sql_type
        casts.append(f"NULLIF({c.name}, '')::{target}")
    return ", ".join(casts)


def load_month(schema: TripSchema, month: str, path: str, chunk_rows: int, conn, log=None) -> dict:
    """Stage the file chunk by chunk, merge it, return the counters. Commits on success."""
    staging = staging_name(schema, month)
    wanted = [c.source for c in schema.columns]
    staged_columns = ["row_id", "source_month", *(c.name for c in schema.columns)]
    rows_read = 0
    with conn.cursor() as cur:
        cur.execute(table_ddl(schema))
        cur.execute(f"DROP TABLE IF EXISTS {staging}")
        # Text columns: PostgreSQL does the typing in the merge, one place for bad values.
        cur.execute(f"CREATE UNLOGGED TABLE {staging} ({', '.join(f'{c} text' for c in staged_columns)})")
        # index_col=False: the mirror's files end data rows with a comma (one field more
        # than the header), which would otherwise turn the first column into the index.
        reader = pd.read_csv(path, chunksize=chunk_rows, dtype=str, keep_default_na=False, na_values=[""],
                             compression="infer", index_col=False)
        for number, chunk in enumerate(reader, start=1):
            missing = sorted(set(wanted) - set(chunk.columns))
            if missing:
                raise dg.Failure(description=f"{schema.colour} {month}: the file lacks columns {missing}")
            chunk = chunk[wanted].set_axis([c.name for c in schema.columns], axis=1)
            chunk.insert(0, "source_month", f"{month}-01")
            chunk.insert(0, "row_id", row_ids(chunk, schema.identity))
            buffer = io.StringIO()
            chunk.to_csv(buffer, index=False, header=False, quoting=csv.QUOTE_MINIMAL)
            buffer.seek(0)
            cur.copy_expert(f"COPY {staging} ({', '.join(staged_columns)}) FROM STDIN WITH (FORMAT csv)", buffer)
            rows_read += len(chunk)
            if log:
                log.info("%s %s: chunk %d staged, %d rows read so far", schema.colour, month, number, rows_read)
        cur.execute(f"""INSERT INTO {schema.table} ({', '.join(staged_columns)})
                        SELECT {merge_select(schema)} FROM {staging}
                        ON CONFLICT (row_id) DO NOTHING""")
        inserted = cur.rowcount
        cur.execute(f"SELECT count(DISTINCT row_id) FROM {staging}")
        distinct = cur.fetchone()[0]
        cur.execute(f"DROP TABLE {staging}")
    conn.commit()
    return {"rows_read": rows_read, "rows_inserted": inserted, "rows_already_loaded": distinct - inserted,
            "duplicate_rows_in_file": rows_read - distinct}


def month_checks(schema: TripSchema, month: str, conn) -> tuple[int, list[dg.AssetCheckResult]]:
    """The rows of a month in the warehouse, and the asset checks on them."""
    null_keys = " OR ".join(f"{c} IS NULL" for c in KEY_COLUMNS)
    with conn.cursor() as cur:
        cur.execute(f"""SELECT count(*), count(*) FILTER (WHERE {null_keys}), count(*) - count(DISTINCT row_id)
                        FROM {schema.table} WHERE source_month = %s""", (f"{month}-01",))
        rows, null_rows, duplicate_ids = cur.fetchone()
    return rows, [
        dg.AssetCheckResult(check_name="no_null_keys", passed=null_rows == 0,
                            metadata={"rows_with_null_keys": null_rows, "key_columns": ", ".join(KEY_COLUMNS)}),
        dg.AssetCheckResult(check_name="row_count_positive", passed=rows > 0, metadata={"rows": rows}),
        dg.AssetCheckResult(check_name="ids_unique", passed=duplicate_ids == 0,
                            metadata={"duplicate_row_ids": duplicate_ids}),
    ]


def peak_rss_mib() -> float:
    """Peak resident memory of this run's process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def trips_asset(colour: str) -> dg.AssetsDefinition:
    schema = SCHEMAS[colour]

    @dg.asset(
        name=schema.table,
        partitions_def=monthly,
        group_name="nyc_taxi",
        kinds={"pandas", "postgres"},
        description=f"NYC TLC {colour} taxi trips of a month, merged into the warehouse table {schema.table}.",
        retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
        check_specs=[
            dg.AssetCheckSpec("no_null_keys", asset=schema.table, description="No trip lacks its id, times or zones."),
            dg.AssetCheckSpec("row_count_positive", asset=schema.table, description="The month has trips."),
            dg.AssetCheckSpec("ids_unique", asset=schema.table, description="No row id appears twice."),
        ],
    )
    def trips(context: dg.AssetExecutionContext, taxi_source: TaxiSource, warehouse: Warehouse) -> dg.MaterializeResult:
        month = context.partition_key[:7]
        url = taxi_source.url(colour, month)
        started = time.monotonic()
        with taxi_source.download(url) as path, closing(warehouse.connect()) as conn:
            counts = load_month(schema, month, path, taxi_source.chunk_rows, conn, context.log)
            table_rows, checks = month_checks(schema, month, conn)
        context.log.info("%s %s: %s; %d rows for the month in %s", colour, month, counts, table_rows, schema.table)
        return dg.MaterializeResult(
            metadata={**counts, "rows_in_table_for_month": table_rows, "source_url": dg.MetadataValue.url(url),
                      "duration_seconds": round(time.monotonic() - started, 2), "peak_rss_mib": peak_rss_mib(),
                      "chunk_rows": taxi_source.chunk_rows, "table": schema.table},
            check_results=checks,
        )

    return trips


yellow_trips = trips_asset("yellow")
green_trips = trips_asset("green")

taxi_job = dg.define_asset_job("taxi_job", selection=[yellow_trips, green_trips],
                               description="Ingest one month of yellow and green trips.")

# TLC publishes a month a few weeks after it ends; the course's CSV mirror is frozen at
# 2021-07, so the schedule starts stopped: turn it on when the source keeps growing.
taxi_monthly = dg.build_schedule_from_partitioned_job(taxi_job, name="taxi_monthly", day_of_month=5, hour_of_day=6)

freshness_checks = dg.build_time_partition_freshness_checks(
    assets=[yellow_trips, green_trips], deadline_cron="0 9 5 * *", timezone="UTC")
freshness_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=freshness_checks, name="taxi_freshness", minimum_interval_seconds=3600)

defs = dg.Definitions(
    assets=[yellow_trips, green_trips],
    asset_checks=freshness_checks,
    jobs=[taxi_job],
    schedules=[taxi_monthly],
    sensors=[freshness_sensor],
    resources={
        "taxi_source": TaxiSource(url_template=os.environ.get("NYC_TAXI_SOURCE_URL_TEMPLATE") or PUBLIC_SOURCE),
        "warehouse": Warehouse(url=dg.EnvVar("WAREHOUSE_URL")),
    },
)
