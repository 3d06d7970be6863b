import csv
import datetime as dt
import gzip
import uuid
from decimal import Decimal

import dagster as dg
import pytest
from dagster_gcp import GCSResource
from google.auth import exceptions as auth_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery as bq
from google.cloud import storage

from conftest import PROJECT, SAMPLE
from gcp_taxi.definitions import (SCHEMAS, GcpTaxiConfig, TaxiBigQueryResource, TaxiSource, defs,
                                  gcp_daily_schedule, gcp_data_pipeline_job, gcp_setup_job, google_failures,
                                  green_tripdata_file, green_trips, load_job_config, month_literal,
                                  replace_month_sql, staging_schema, trips_monthly_summary, yellow_tripdata_file,
                                  yellow_trips)

MONTH = "2019-01-01"
ASSETS = [yellow_tripdata_file, green_tripdata_file, yellow_trips, green_trips, trips_monthly_summary]


def sample(colour, month="2019-01"):
    return SAMPLE / colour / f"{colour}_tripdata_{month}.csv.gz"


def sample_rows(colour) -> list[dict]:
    """The sample's rows read with the csv module, apart from the code under test."""
    with gzip.open(sample(colour), "rt", newline="") as source:
        return list(csv.DictReader(source))


@pytest.fixture
def names():
    """A bucket and a dataset of this test's own on the shared servers."""
    suffix = uuid.uuid4().hex[:10]
    return f"taxi-{suffix}", f"taxi_{suffix}"


def make_resources(servers, names, template=str(SAMPLE) + "/{colour}/{colour}_tripdata_{month}.csv.gz"):
    bucket, dataset = names
    return {
        "taxi_source": TaxiSource(url_template=template),
        "gcs": GCSResource(project=PROJECT),
        "bigquery": TaxiBigQueryResource(project=PROJECT, location="US", api_endpoint=servers.bigquery_url),
        "gcp": GcpTaxiConfig(bucket=bucket, dataset=dataset, location="US"),
    }


def run_job(job, resources, **kwargs):
    test_defs = dg.Definitions(assets=ASSETS, jobs=[job], resources=resources)
    return test_defs.resolve_job_def(job.name).execute_in_process(raise_on_error=False, **kwargs)


def materialize(assets, resources, month=MONTH):
    return dg.materialize(assets, partition_key=month, resources=resources, raise_on_error=False)


def metadata(result, asset):
    node = asset.op.name
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[-1].metadata.items()}


def bq_client(servers):
    return bq.Client(project=PROJECT, credentials=AnonymousCredentials(),
                     client_options={"api_endpoint": servers.bigquery_url})


def query(servers, sql):
    return [tuple(row.values()) for row in bq_client(servers).query(sql).result()]


def mirror_to_bigquery_emulator(servers, bucket):
    """bqemulator reads gs:// from a local folder, not from a GCS server: copy what
    fake-gcs-server holds there, byte for byte, through the storage client."""
    for blob in storage.Client(project=PROJECT).list_blobs(bucket):
        target = servers.gcs_root / bucket / blob.name
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(target)


def setup(servers, names):
    result = run_job(gcp_setup_job, make_resources(servers, names))
    assert result.success
    return result


# ---- against the real servers


def test_setup_job_creates_the_bucket_and_dataset_and_a_rerun_changes_nothing(servers, names):
    bucket, dataset = names
    first = setup(servers, names)
    created = {e.step_key: e.event_specific_data.metadata["created"].value for e in first.all_events
               if e.event_type_value == "STEP_OUTPUT"}
    assert created == {"create_bucket": True, "create_dataset": True}
    assert storage.Client(project=PROJECT).lookup_bucket(bucket) is not None
    assert bq_client(servers).get_dataset(f"{PROJECT}.{dataset}").location == "US"

    second = setup(servers, names)
    created = {e.step_key: e.event_specific_data.metadata["created"].value for e in second.all_events
               if e.event_type_value == "STEP_OUTPUT"}
    assert created == {"create_bucket": False, "create_dataset": False}
    assert [b.name for b in storage.Client(project=PROJECT).list_buckets()].count(bucket) == 1
    assert [d.dataset_id for d in bq_client(servers).list_datasets()].count(dataset) == 1


def test_upload_puts_the_sample_bytes_and_a_rerun_overwrites(servers, names, http_source):
    bucket, _ = names
    setup(servers, names)
    # yellow over http://, green from a local path: both kinds of source.
    over_http = make_resources(servers, names, http_source + "/{colour}/{colour}_tripdata_{month}.csv.gz")
    first_yellow = materialize([yellow_tripdata_file], over_http)
    first_green = materialize([green_tripdata_file], make_resources(servers, names))
    assert first_yellow.success and first_green.success
    client = storage.Client(project=PROJECT)
    generations = {}
    for colour, result, asset in (("yellow", first_yellow, yellow_tripdata_file),
                                  ("green", first_green, green_tripdata_file)):
        name = f"nyc_taxi/{colour}/{colour}_tripdata_2019-01.csv.gz"
        blob = client.bucket(bucket).get_blob(name)
        assert blob.download_as_bytes() == sample(colour).read_bytes()
        meta = metadata(result, asset)
        assert meta["gcs_uri"] == f"gs://{bucket}/{name}"
        assert meta["bytes"] == sample(colour).stat().st_size == blob.size
        assert meta["rows_in_file"] == len(sample_rows(colour))
        assert meta["generation"] == str(blob.generation)
        generations[colour] = blob.generation
    assert metadata(first_green, green_tripdata_file)["rows_in_file"] == 5

    again = materialize([yellow_tripdata_file, green_tripdata_file], make_resources(servers, names))
    assert again.success
    blobs = list(client.list_blobs(bucket, versions=True))
    assert sorted(b.name for b in blobs) == ["nyc_taxi/green/green_tripdata_2019-01.csv.gz",
                                             "nyc_taxi/yellow/yellow_tripdata_2019-01.csv.gz"]
    for blob in blobs:
        colour = blob.name.split("/")[1]
        assert blob.download_as_bytes() == sample(colour).read_bytes()
        assert blob.generation != generations[colour]  # a new generation replaced the old one


def test_upload_without_setup_names_the_setup_job(servers, names):
    result = materialize([green_tripdata_file], make_resources(servers, names))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "gcp_setup_job" in failure.event_specific_data.error.message


def test_months_load_into_bigquery_and_a_rerun_replaces_only_its_month(servers, names):
    bucket, dataset = names
    setup(servers, names)
    # February from January's file: a second month to see that a rerun leaves it alone.
    any_month = make_resources(servers, names, str(SAMPLE) + "/{colour}/{colour}_tripdata_2019-01.csv.gz")
    for month in (MONTH, "2019-02-01"):
        assert materialize([yellow_tripdata_file, green_tripdata_file], any_month, month).success
    mirror_to_bigquery_emulator(servers, bucket)

    tables = [yellow_trips, green_trips, trips_monthly_summary]
    first = materialize(tables, any_month)
    assert first.success
    assert materialize(tables, any_month, "2019-02-01").success
    yellow_rows, green_rows = sample_rows("yellow"), sample_rows("green")
    for asset, rows in ((yellow_trips, yellow_rows), (green_trips, green_rows)):
        meta = metadata(first, asset)
        assert meta["rows_loaded"] == meta["rows_in_table_for_month"] == len(rows)
        assert meta["table"] == f"{PROJECT}.{dataset}.{asset.key.path[-1]}"
    assert all(check.passed for check in first.get_asset_check_evaluations())
    assert len(first.get_asset_check_evaluations()) == 4

    def counts(table):
        return dict(query(servers, f"SELECT source_month, COUNT(*) FROM `{PROJECT}.{dataset}.{table}` "
                                   "GROUP BY source_month"))

    jan, feb = dt.date(2019, 1, 1), dt.date(2019, 2, 1)
    assert counts("yellow_trips") == {jan: len(yellow_rows), feb: len(yellow_rows)}
    assert counts("green_trips") == {jan: len(green_rows), feb: len(green_rows)}

    second = materialize(tables, any_month)
    assert second.success
    assert counts("yellow_trips") == {jan: len(yellow_rows), feb: len(yellow_rows)}
    assert counts("green_trips") == {jan: len(green_rows), feb: len(green_rows)}
    assert metadata(second, yellow_trips)["rows_in_table_for_month"] == len(yellow_rows)

    # The values are typed as the file says: money to the cent, times as civil times.
    total, earliest, latest = query(servers, "SELECT SUM(total_amount), MIN(pickup_datetime), MAX(pickup_datetime) "
                                             f"FROM `{PROJECT}.{dataset}.yellow_trips` "
                                             "WHERE source_month = '2019-01-01'")[0]
    assert total == sum(Decimal(r["total_amount"]) for r in yellow_rows)
    pickups = sorted(r["tpep_pickup_datetime"] for r in yellow_rows)
    assert (str(earliest), str(latest)) == (pickups[0], pickups[-1])

    # The summary query: one row per colour and month, also after the rerun.
    summary = query(servers, f"SELECT month, colour, trips FROM `{PROJECT}.{dataset}.trips_monthly_summary` "
                             "ORDER BY month, colour")
    assert summary == [(jan, "green", len(green_rows)), (jan, "yellow", len(yellow_rows)),
                       (feb, "green", len(green_rows)), (feb, "yellow", len(yellow_rows))]
    meta = metadata(second, trips_monthly_summary)
    assert (meta["yellow_trips"], meta["green_trips"]) == (len(yellow_rows), len(green_rows))
    # No staging table is left behind.
    assert sorted(t.table_id for t in bq_client(servers).list_tables(f"{PROJECT}.{dataset}")) == [
        "green_trips", "trips_monthly_summary", "yellow_trips"]


def test_the_pipeline_job_runs_a_month_end_to_end(servers, names):
    bucket, dataset = names
    setup(servers, names)
    resources = make_resources(servers, names)
    # bqemulator cannot read from fake-gcs-server mid-run: upload once and mirror, then
    # the job uploads the same bytes again and loads them.
    assert materialize([yellow_tripdata_file, green_tripdata_file], resources).success
    mirror_to_bigquery_emulator(servers, bucket)
    result = run_job(gcp_data_pipeline_job, resources, partition_key=MONTH)
    assert result.success
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert done == {a.key.to_user_string() for a in ASSETS}
    assert query(servers, f"SELECT colour, trips FROM `{PROJECT}.{dataset}.trips_monthly_summary` ORDER BY colour") == [
        ("green", len(sample_rows("green"))), ("yellow", len(sample_rows("yellow")))]


def test_a_file_lacking_columns_fails_before_anything_is_uploaded(servers, names, tmp_path):
    bucket, _ = names
    setup(servers, names)
    (tmp_path / "green").mkdir()
    with gzip.open(tmp_path / "green" / "green_tripdata_2019-01.csv.gz", "wt") as broken:
        broken.write("VendorID,lpep_pickup_datetime\n1,2019-01-01 00:00:00\n")
    result = materialize([green_tripdata_file], make_resources(
        servers, names, str(tmp_path) + "/{colour}/{colour}_tripdata_{month}.csv.gz"))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "lacks columns" in failure.event_specific_data.error.message and "total_amount" in \
        failure.event_specific_data.error.message
    assert list(storage.Client(project=PROJECT).list_blobs(bucket)) == []


def test_a_month_not_published_fails_without_retries(servers, names, http_source):
    setup(servers, names)
    result = materialize([yellow_tripdata_file], make_resources(
        servers, names, http_source + "/{colour}/{colour}_tripdata_{month}.csv.gz"), "2019-03-01")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "HTTP 404" in failure.event_specific_data.error.message
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


# ---- what is built, without a server


def test_the_location_loads_with_its_jobs_and_a_stopped_daily_schedule():
    assert {job.name for job in defs.jobs} >= {"gcp_setup_job", "gcp_data_pipeline_job"}
    schedule = defs.resolve_schedule_def("gcp_daily_schedule")
    assert schedule.cron_schedule == "0 7 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.job_name == "gcp_data_pipeline_job"


def test_the_schedule_asks_for_the_last_complete_month():
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2019, 3, 10, 7, tzinfo=dt.timezone.utc))
    request = gcp_daily_schedule(context)
    assert request.partition_key == "2019-02-01"
    assert request.run_key == "2019-02-01@2019-03-10"
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2019, 1, 20, 7, tzinfo=dt.timezone.utc))
    assert isinstance(gcp_daily_schedule(context), dg.SkipReason)


def test_the_load_goes_to_an_empty_staging_table_from_the_header_as_text():
    config = load_job_config()
    assert (config.source_format, config.skip_leading_rows, config.write_disposition, config.create_disposition) == (
        "CSV", 1, "WRITE_EMPTY", "CREATE_NEVER")
    assert config.ignore_unknown_values and config.max_bad_records == 0
    with gzip.open(sample("green"), "rt") as source:
        header = source.readline().strip().split(",")
    fields = staging_schema(header + [""])  # a trailing empty header name is no column
    assert [f.name for f in fields] == header and {f.field_type for f in fields} == {"STRING"}


def test_the_month_is_replaced_in_one_transaction():
    sql = replace_month_sql(SCHEMAS["green"], "2019-01", "p.d.green_trips", "p.d._stg_green_trips_2019_01")
    lines = [line.strip() for line in sql.splitlines()]
    assert lines[0] == "BEGIN TRANSACTION;" and lines[-1] == "COMMIT TRANSACTION;"
    assert lines[1] == "DELETE FROM `p.d.green_trips` WHERE source_month = DATE '2019-01-01';"
    assert "FROM `p.d._stg_green_trips_2019_01`;" in lines
    assert "CAST(CAST(NULLIF(TRIM(`VendorID`), '') AS NUMERIC) AS INT64)," in lines
    with pytest.raises(ValueError):
        month_literal("2019-13")


def test_missing_credentials_become_a_sentence_naming_the_variable():
    with pytest.raises(dg.Failure, match="GOOGLE_APPLICATION_CREDENTIALS"):
        with google_failures("upload"):
            raise auth_errors.DefaultCredentialsError("Could not automatically determine credentials.")
