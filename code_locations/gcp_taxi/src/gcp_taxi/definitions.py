"""The course's GCP module: NYC TLC months uploaded to Cloud Storage, loaded into BigQuery,
and summarised with a query, one monthly partition per source file.

Re-running a month replaces it: the upload overwrites the object, and the load goes to a
staging table whose rows replace the month's rows of the trips table (DELETE and INSERT
in one transaction), so nothing is ever counted twice.
"""

import datetime as dt
import gzip
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
from dagster_gcp import BigQueryResource, GCSResource
from google.api_core import exceptions as google_errors
from google.auth import exceptions as auth_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery as bq

# The CSV mirror the course reads (TLC itself now publishes parquet); ends at 2021-07.
PUBLIC_SOURCE = ("https://github.com/DataTalksClub/nyc-tlc-data/releases/download/"
                 "{colour}/{colour}_tripdata_{month}.csv.gz")
# Placeholders, not anyone's account: set GCP_PROJECT (and GCS_BUCKET) for a real one.
DEFAULT_PROJECT = "gcp-taxi-local"
DEFAULT_DATASET = "nyc_taxi"
DEFAULT_LOCATION = "US"


@dataclass(frozen=True)
class Column:
    source: str  # header in the TLC file
    name: str  # column in BigQuery
    bq_type: str


@dataclass(frozen=True)
class TripSchema:
    colour: str
    columns: tuple[Column, ...]

    @property
    def table(self) -> str:
        return f"{self.colour}_trips"


def _columns(*specs: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*spec) for spec in specs)


_FARES = (("fare_amount", "fare_amount", "NUMERIC"), ("extra", "extra", "NUMERIC"),
          ("mta_tax", "mta_tax", "NUMERIC"), ("tip_amount", "tip_amount", "NUMERIC"),
          ("tolls_amount", "tolls_amount", "NUMERIC"))

SCHEMAS = {
    "yellow": TripSchema("yellow", _columns(
        ("VendorID", "vendor_id", "INT64"),
        ("tpep_pickup_datetime", "pickup_datetime", "DATETIME"),
        ("tpep_dropoff_datetime", "dropoff_datetime", "DATETIME"),
        ("passenger_count", "passenger_count", "INT64"),
        ("trip_distance", "trip_distance", "NUMERIC"),
        ("RatecodeID", "ratecode_id", "INT64"),
        ("store_and_fwd_flag", "store_and_fwd_flag", "STRING"),
        ("PULocationID", "pu_location_id", "INT64"),
        ("DOLocationID", "do_location_id", "INT64"),
        ("payment_type", "payment_type", "INT64"),
        *_FARES,
        ("improvement_surcharge", "improvement_surcharge", "NUMERIC"),
        ("total_amount", "total_amount", "NUMERIC"),
        ("congestion_surcharge", "congestion_surcharge", "NUMERIC"),
    )),
    "green": TripSchema("green", _columns(
        ("VendorID", "vendor_id", "INT64"),
        ("lpep_pickup_datetime", "pickup_datetime", "DATETIME"),
        ("lpep_dropoff_datetime", "dropoff_datetime", "DATETIME"),
        ("store_and_fwd_flag", "store_and_fwd_flag", "STRING"),
        ("RatecodeID", "ratecode_id", "INT64"),
        ("PULocationID", "pu_location_id", "INT64"),
        ("DOLocationID", "do_location_id", "INT64"),
        ("passenger_count", "passenger_count", "INT64"),
        ("trip_distance", "trip_distance", "NUMERIC"),
        *_FARES,
        ("ehail_fee", "ehail_fee", "NUMERIC"),
        ("improvement_surcharge", "improvement_surcharge", "NUMERIC"),
        ("total_amount", "total_amount", "NUMERIC"),
        ("payment_type", "payment_type", "INT64"),
        ("trip_type", "trip_type", "INT64"),
        ("congestion_surcharge", "congestion_surcharge", "NUMERIC"),
    )),
}
KEY_COLUMNS = ("pickup_datetime", "dropoff_datetime", "pu_location_id", "do_location_id")
SUMMARY_TABLE = "trips_monthly_summary"
PREFIX = "gcp_taxi"

monthly = dg.MonthlyPartitionsDefinition(start_date="2019-01-01", end_offset=0)


class TaxiSource(dg.ConfigurableResource):
    """Where the monthly files come from: a URL template with {colour} and {month}
    (YYYY-MM); http(s)://, file:// or a local path."""

    url_template: str = PUBLIC_SOURCE
    timeout_seconds: float = 60.0

    def url(self, colour: str, month: str) -> str:
        return self.url_template.format(colour=colour, month=month)

    @contextmanager
    def download(self, url: str):
        """The file at url as a local path (streamed to disk, never held in memory)."""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme in ("", "file"):
            path = urllib.parse.unquote(parsed.path) if parsed.scheme else url
            if not os.path.isfile(path):
                raise dg.Failure(description=f"source file {path} does not exist", metadata={"url": url},
                                 allow_retries=False)
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


class TaxiBigQueryResource(BigQueryResource):
    """dagster-gcp's BigQueryResource, plus an endpoint override for an emulator: with
    api_endpoint set the client talks to it with anonymous credentials."""

    api_endpoint: str | None = None

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    @contextmanager
    def get_client(self):
        if not self.api_endpoint:
            with super().get_client() as client:
                yield client
            return
        client = bq.Client(project=self.project, location=self.location, credentials=AnonymousCredentials(),
                           client_options={"api_endpoint": self.api_endpoint})
        try:
            yield client
        finally:
            client.close()


class GcpTaxiConfig(dg.ConfigurableResource):
    """Where the files and tables go."""

    bucket: str
    dataset: str = DEFAULT_DATASET
    location: str = DEFAULT_LOCATION
    prefix: str = "nyc_taxi"

    def object_name(self, colour: str, month: str) -> str:
        return f"{self.prefix}/{colour}/{colour}_tripdata_{month}.csv.gz"

    def gcs_uri(self, colour: str, month: str) -> str:
        return f"gs://{self.bucket}/{self.object_name(colour, month)}"


@contextmanager
def google_failures(what: str):
    """Google's errors as failures naming what was being done and what to fix."""
    try:
        yield
    except auth_errors.DefaultCredentialsError as error:
        raise dg.Failure(description=f"{what}: no Google credentials. Set GOOGLE_APPLICATION_CREDENTIALS to a "
                                     "service-account JSON file, or run where workload identity provides them "
                                     f"({error})", allow_retries=False) from error
    except (google_errors.Forbidden, google_errors.Unauthorized) as error:
        raise dg.Failure(description=f"{what}: refused ({error.code}): {error.message}",
                         allow_retries=False) from error
    except google_errors.NotFound as error:
        raise dg.Failure(description=f"{what}: not found: {error.message} (has gcp_setup_job run?)",
                         allow_retries=False) from error
    except google_errors.BadRequest as error:
        raise dg.Failure(description=f"{what}: rejected: {error.message}",
                         metadata={"errors": str(getattr(error, "errors", ""))[:2000]}, allow_retries=False) from error


def read_header_and_count(path: str) -> tuple[list[str], int]:
    """The file's header and its number of data rows, read as a stream."""
    with gzip.open(path, "rt", newline="") as source:
        header = source.readline().rstrip("\r\n").split(",")
        rows = sum(1 for line in source if line.strip())
    return [name.strip() for name in header], rows


def header_of(blob) -> list[str]:
    """The header of a gzip object from its first bytes (a partial stream inflates fine)."""
    head = zlib.decompressobj(wbits=31).decompress(blob.download_as_bytes(start=0, end=(64 << 10) - 1,
                                                                          checksum=None))
    return [name.strip() for name in head.split(b"\n", 1)[0].decode().rstrip("\r").split(",")]


def month_literal(month: str) -> str:
    """DATE 'YYYY-MM-01' for SQL; the month comes from the partition key, checked here."""
    dt.date.fromisoformat(f"{month}-01")
    return f"DATE '{month}-01'"


def staging_name(schema: TripSchema, month: str) -> str:
    return f"_stg_{schema.table}_{month.replace('-', '_')}"


def staging_schema(header: list[str]) -> list[bq.SchemaField]:
    """Every column as text: the typing happens in one place, the INSERT. A trailing
    empty name (a header ending with a comma) is no column."""
    names = list(header)
    while names and not names[-1]:
        names.pop()
    return [bq.SchemaField(name, "STRING") for name in names]


def missing_columns(schema: TripSchema, header: list[str]) -> list[str]:
    return sorted({c.source for c in schema.columns} - set(header))


def load_job_config() -> bq.LoadJobConfig:
    return bq.LoadJobConfig(
        source_format=bq.SourceFormat.CSV,
        skip_leading_rows=1,
        # The table was just created with the header's columns; an empty one is expected.
        write_disposition=bq.WriteDisposition.WRITE_EMPTY,
        create_disposition=bq.CreateDisposition.CREATE_NEVER,
        # The mirror's rows may end with one empty field more than the header.
        ignore_unknown_values=True,
        allow_jagged_rows=True,
        max_bad_records=0,
    )


def trips_table(schema: TripSchema, table_id: str) -> bq.Table:
    table = bq.Table(table_id, schema=[
        bq.SchemaField("source_month", "DATE", mode="REQUIRED"),
        *(bq.SchemaField(c.name, c.bq_type) for c in schema.columns),
        bq.SchemaField("loaded_at", "TIMESTAMP", mode="REQUIRED"),
    ])
    table.time_partitioning = bq.TimePartitioning(type_=bq.TimePartitioningType.MONTH, field="source_month")
    table.description = f"NYC TLC {schema.colour} taxi trips, one partition per source month."
    return table


def cast_expression(column: Column) -> str:
    value = f"NULLIF(TRIM(`{column.source}`), '')"
    if column.bq_type == "INT64":
        return f"CAST(CAST({value} AS NUMERIC) AS INT64)"  # '1.0' is a valid count in some months
    if column.bq_type == "STRING":
        return value
    return f"CAST({value} AS {column.bq_type})"


def replace_month_sql(schema: TripSchema, month: str, table_id: str, staging_id: str) -> str:
    """One transaction: the month's rows go, the staged ones come in typed. A failure
    anywhere leaves the month as it was."""
    names = ", ".join(["source_month", *(c.name for c in schema.columns), "loaded_at"])
    values = ",\n           ".join([month_literal(month), *(cast_expression(c) for c in schema.columns),
                                    "CURRENT_TIMESTAMP()"])
    return f"""BEGIN TRANSACTION;
DELETE FROM `{table_id}` WHERE source_month = {month_literal(month)};
INSERT INTO `{table_id}` ({names})
    SELECT {values}
    FROM `{staging_id}`;
COMMIT TRANSACTION;"""


def month_stats_sql(table_id: str, month: str) -> str:
    null_keys = " OR ".join(f"{c} IS NULL" for c in KEY_COLUMNS)
    return (f"SELECT COUNT(*) AS trip_rows, COUNTIF({null_keys}) AS null_key_rows "
            f"FROM `{table_id}` WHERE source_month = {month_literal(month)}")


def summary_sql(project: str, dataset: str, month: str) -> str:
    """Per colour: trips, money and distance of the month (the course's query)."""
    parts = [f"""SELECT {month_literal(month)} AS month, '{colour}' AS colour, COUNT(*) AS trips,
           ROUND(SUM(total_amount), 2) AS total_amount, ROUND(AVG(total_amount), 2) AS avg_total_amount,
           ROUND(AVG(trip_distance), 2) AS avg_trip_distance
    FROM `{project}.{dataset}.{schema.table}` WHERE source_month = {month_literal(month)}"""
             for colour, schema in SCHEMAS.items()]
    return "\nUNION ALL\n".join(parts)


def summary_table(table_id: str) -> bq.Table:
    table = bq.Table(table_id, schema=[
        bq.SchemaField("month", "DATE", mode="REQUIRED"),
        bq.SchemaField("colour", "STRING", mode="REQUIRED"),
        bq.SchemaField("trips", "INT64"),
        bq.SchemaField("total_amount", "NUMERIC"),
        bq.SchemaField("avg_total_amount", "NUMERIC"),
        bq.SchemaField("avg_trip_distance", "NUMERIC"),
    ])
    table.time_partitioning = bq.TimePartitioning(type_=bq.TimePartitioningType.MONTH, field="month")
    return table


def file_asset(colour: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=[PREFIX, f"{colour}_tripdata_file"],
        partitions_def=monthly,
        group_name=PREFIX,
        kinds={"gcs"},
        description=f"The month's NYC TLC {colour} CSV.gz, copied to Cloud Storage (the object is overwritten "
                    "on a re-run).",
        retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
    )
    def tripdata_file(context: dg.AssetExecutionContext, taxi_source: TaxiSource, gcs: GCSResource,
                      gcp: GcpTaxiConfig) -> dg.MaterializeResult:
        month = context.partition_key[:7]
        url = taxi_source.url(colour, month)
        started = time.monotonic()
        with taxi_source.download(url) as path:
            header, rows = read_header_and_count(path)
            missing = missing_columns(SCHEMAS[colour], header)
            if missing:
                raise dg.Failure(description=f"{colour} {month}: the file lacks columns {missing}",
                                 metadata={"url": url, "header": ", ".join(header)}, allow_retries=False)
            with google_failures(f"upload to {gcp.gcs_uri(colour, month)}"):
                blob = gcs.get_client().bucket(gcp.bucket).blob(gcp.object_name(colour, month))
                blob.chunk_size = 32 << 20  # resumable upload in 32 MiB pieces: bounded memory
                # The client checks the upload's CRC32C; a same-name upload replaces the object.
                blob.upload_from_filename(path, content_type="application/gzip", timeout=600)
        context.log.info("%s %s: %d rows, %d bytes to %s (generation %s)", colour, month, rows, blob.size,
                         gcp.gcs_uri(colour, month), blob.generation)
        return dg.MaterializeResult(metadata={
            "gcs_uri": gcp.gcs_uri(colour, month), "bytes": blob.size, "rows_in_file": rows,
            "generation": str(blob.generation), "crc32c": blob.crc32c, "source_url": dg.MetadataValue.url(url),
            "duration_seconds": round(time.monotonic() - started, 2)})

    return tripdata_file


def trips_asset(colour: str, upstream: dg.AssetsDefinition) -> dg.AssetsDefinition:
    schema = SCHEMAS[colour]
    key = dg.AssetKey([PREFIX, schema.table])

    @dg.asset(
        key=key,
        deps=[upstream],
        partitions_def=monthly,
        group_name=PREFIX,
        kinds={"bigquery"},
        description=f"NYC TLC {colour} trips of a month in the BigQuery table {schema.table} (partitioned by "
                    "source_month; a re-run replaces the month).",
        check_specs=[
            dg.AssetCheckSpec("rows_match_file", asset=key,
                              description="The month has exactly the rows of its file, no more."),
            dg.AssetCheckSpec("no_null_keys", asset=key, description="No trip lacks its times or zones."),
        ],
    )
    def trips(context: dg.AssetExecutionContext, bigquery: TaxiBigQueryResource, gcs: GCSResource,
              gcp: GcpTaxiConfig) -> dg.MaterializeResult:
        month = context.partition_key[:7]
        uri = gcp.gcs_uri(colour, month)
        started = time.monotonic()
        with google_failures(f"read {uri}"):
            blob = gcs.get_client().bucket(gcp.bucket).get_blob(gcp.object_name(colour, month))
            if blob is None:
                raise dg.Failure(description=f"{uri} does not exist: materialize {PREFIX}/{colour}_tripdata_file "
                                             "for this month first", allow_retries=False)
            # The header decides the staging columns.
            header = header_of(blob)
        missing = missing_columns(schema, header)
        if missing:
            raise dg.Failure(description=f"{uri} lacks columns {missing}", allow_retries=False)
        with google_failures(f"load {uri} into BigQuery"), bigquery.get_client() as client:
            project = client.project
            table_id = f"{project}.{gcp.dataset}.{schema.table}"
            staging_id = f"{project}.{gcp.dataset}.{staging_name(schema, month)}"
            client.create_table(trips_table(schema, table_id), exists_ok=True)
            client.delete_table(staging_id, not_found_ok=True)
            staging = bq.Table(staging_id, schema=staging_schema(header))
            # Left behind only by a crash; BigQuery drops it after a day.
            staging.expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
            client.create_table(staging)
            try:
                load = client.load_table_from_uri(uri, staging_id, job_config=load_job_config(),
                                                  job_id_prefix=f"{PREFIX}_{colour}_{month.replace('-', '_')}_")
                load.result()
                rows_loaded = load.output_rows
                client.query(replace_month_sql(schema, month, table_id, staging_id)).result()
            finally:
                client.delete_table(staging_id, not_found_ok=True)
            stats = next(iter(client.query(month_stats_sql(table_id, month)).result()))
        rows, null_rows = stats["trip_rows"], stats["null_key_rows"]
        context.log.info("%s %s: %d rows loaded from %s, %d in %s for the month", colour, month, rows_loaded, uri,
                         rows, table_id)
        return dg.MaterializeResult(
            metadata={"table": table_id, "gcs_uri": uri, "bytes": blob.size, "rows_loaded": rows_loaded,
                      "rows_in_table_for_month": rows, "dagster/row_count": rows, "load_job_id": load.job_id,
                      "duration_seconds": round(time.monotonic() - started, 2)},
            check_results=[
                dg.AssetCheckResult(check_name="rows_match_file", passed=rows == rows_loaded,
                                    metadata={"rows_loaded": rows_loaded, "rows_in_table_for_month": rows}),
                dg.AssetCheckResult(check_name="no_null_keys", passed=null_rows == 0,
                                    metadata={"rows_with_null_keys": null_rows,
                                              "key_columns": ", ".join(KEY_COLUMNS)}),
            ],
        )

    return trips


yellow_tripdata_file = file_asset("yellow")
green_tripdata_file = file_asset("green")
yellow_trips = trips_asset("yellow", yellow_tripdata_file)
green_trips = trips_asset("green", green_tripdata_file)


@dg.asset(
    key=[PREFIX, SUMMARY_TABLE],
    deps=[yellow_trips, green_trips],
    partitions_def=monthly,
    group_name=PREFIX,
    kinds={"bigquery"},
    description="A query over both trip tables: trips, takings and distance per colour for the month, kept in "
                f"the table {SUMMARY_TABLE} (a re-run replaces the month's rows).",
)
def trips_monthly_summary(context: dg.AssetExecutionContext, bigquery: TaxiBigQueryResource,
                          gcp: GcpTaxiConfig) -> dg.MaterializeResult:
    month = context.partition_key[:7]
    started = time.monotonic()
    with google_failures("summary query"), bigquery.get_client() as client:
        table_id = f"{client.project}.{gcp.dataset}.{SUMMARY_TABLE}"
        client.create_table(summary_table(table_id), exists_ok=True)
        query = summary_sql(client.project, gcp.dataset, month)
        client.query(f"""BEGIN TRANSACTION;
DELETE FROM `{table_id}` WHERE month = {month_literal(month)};
INSERT INTO `{table_id}` (month, colour, trips, total_amount, avg_total_amount, avg_trip_distance)
{query};
COMMIT TRANSACTION;""").result()
        rows = [dict(row.items()) for row in client.query(
            f"SELECT colour, trips, total_amount, avg_total_amount, avg_trip_distance FROM `{table_id}` "
            f"WHERE month = {month_literal(month)} ORDER BY colour").result()]
    table = "\n".join(["| colour | trips | total amount | avg total | avg distance |",
                       "| --- | --- | --- | --- | --- |",
                       *(f"| {r['colour']} | {r['trips']} | {r['total_amount']} | {r['avg_total_amount']} | "
                         f"{r['avg_trip_distance']} |" for r in rows)])
    return dg.MaterializeResult(metadata={
        "table": table_id, "summary": dg.MetadataValue.md(table), "query": dg.MetadataValue.md(f"```sql\n{query}\n```"),
        **{f"{r['colour']}_trips": r["trips"] for r in rows},
        "duration_seconds": round(time.monotonic() - started, 2)})


@dg.op(description="Create the bucket if it does not exist (an existing one is left as it is).")
def create_bucket(context: dg.OpExecutionContext, gcs: GCSResource, gcp: GcpTaxiConfig) -> str:
    with google_failures(f"create gs://{gcp.bucket}"):
        client = gcs.get_client()
        bucket = client.lookup_bucket(gcp.bucket)
        created = bucket is None
        if created:
            bucket = client.bucket(gcp.bucket)
            bucket.iam_configuration.uniform_bucket_level_access_enabled = True
            try:
                bucket = client.create_bucket(bucket, location=gcp.location)
            except google_errors.Conflict:
                # Made meanwhile by another run (someone else's bucket fails the lookup with 403).
                bucket = client.get_bucket(gcp.bucket)
                created = False
    context.log.info("gs://%s %s (location %s)", gcp.bucket, "created" if created else "already there",
                     bucket.location)
    context.add_output_metadata({"bucket": f"gs://{gcp.bucket}", "created": created,
                                 "location": str(bucket.location)})
    return gcp.bucket


@dg.op(description="Create the BigQuery dataset if it does not exist (exists_ok).")
def create_dataset(context: dg.OpExecutionContext, bigquery: TaxiBigQueryResource, gcp: GcpTaxiConfig) -> str:
    with google_failures(f"create dataset {gcp.dataset}"), bigquery.get_client() as client:
        dataset_id = f"{client.project}.{gcp.dataset}"
        existed = _dataset_exists(client, dataset_id)
        wanted = bigquery_dataset(dataset_id, gcp.location)
        dataset = client.create_dataset(wanted, exists_ok=True)
    if dataset.location and dataset.location.upper() != gcp.location.upper():
        context.log.warning("dataset %s is in %s, not in the configured %s", dataset_id, dataset.location, gcp.location)
    context.log.info("dataset %s %s", dataset_id, "already there" if existed else "created")
    context.add_output_metadata({"dataset": dataset_id, "created": not existed, "location": str(dataset.location)})
    return dataset_id


def bigquery_dataset(dataset_id: str, location: str) -> bq.Dataset:
    dataset = bq.Dataset(dataset_id)
    dataset.location = location
    dataset.description = "NYC TLC trips loaded by the gcp_taxi code location."
    return dataset


def _dataset_exists(client: bq.Client, dataset_id: str) -> bool:
    try:
        client.get_dataset(dataset_id)
        return True
    except google_errors.NotFound:
        return False


@dg.job(description="Create the Cloud Storage bucket and the BigQuery dataset; safe to run again.")
def gcp_setup_job():
    create_bucket()
    create_dataset()


gcp_data_pipeline_job = dg.define_asset_job(
    "gcp_data_pipeline_job",
    selection=[yellow_tripdata_file, green_tripdata_file, yellow_trips, green_trips, trips_monthly_summary],
    description="One month: upload the files to Cloud Storage, load them into BigQuery, run the summary query.",
)


# Daily, for the last complete month: TLC publishes a month weeks after it ends, and a
# re-run replaces rather than adds. Stopped by default: it needs a real project.
@dg.schedule(name="gcp_daily_schedule", job=gcp_data_pipeline_job, cron_schedule="0 7 * * *",
             execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every day at 07:00 UTC, the last complete month.")
def gcp_daily_schedule(context: dg.ScheduleEvaluationContext):
    now = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
    months = monthly.get_partition_keys(current_time=now)
    if not months:
        return dg.SkipReason(f"no complete month before {now:%Y-%m-%d}")
    month = months[-1]
    return dg.RunRequest(run_key=f"{month}@{now:%Y-%m-%d}", partition_key=month)


def _env(name: str, default: str | None = None) -> str | None:
    """An unset or empty variable both mean the default."""
    return os.environ.get(name) or default


def _bigquery_endpoint() -> str | None:
    endpoint = _env("BIGQUERY_API_ENDPOINT") or _env("BIGQUERY_EMULATOR_HOST")
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return endpoint


PROJECT = _env("GCP_PROJECT", DEFAULT_PROJECT)
LOCATION = _env("GCP_LOCATION", DEFAULT_LOCATION)

defs = dg.Definitions(
    assets=[yellow_tripdata_file, green_tripdata_file, yellow_trips, green_trips, trips_monthly_summary],
    jobs=[gcp_setup_job, gcp_data_pipeline_job],
    schedules=[gcp_daily_schedule],
    resources={
        "taxi_source": TaxiSource(url_template=_env("GCP_TAXI_SOURCE_URL_TEMPLATE", PUBLIC_SOURCE)),
        # Credentials: GOOGLE_APPLICATION_CREDENTIALS (a service-account JSON) or workload
        # identity; STORAGE_EMULATOR_HOST points the storage client at an emulator.
        "gcs": GCSResource(project=PROJECT),
        "bigquery": TaxiBigQueryResource(project=PROJECT, location=LOCATION, api_endpoint=_bigquery_endpoint()),
        "gcp": GcpTaxiConfig(bucket=_env("GCS_BUCKET", f"{PROJECT}-nyc-taxi"),
                             dataset=_env("BQ_DATASET", DEFAULT_DATASET), location=LOCATION),
    },
)
