"""Call a JSON HTTP API and return a structured result, with retries and clear failures."""

import json
import os
import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone

import dagster as dg

# pypistats' recent downloads of a package; any API answering {"data": {"last_day": N}} works.
# PACKAGE_STATS_URL in the location's environment changes the default (the lab's stand-in).
PUBLIC_URL = "https://pypistats.org/api/packages/dagster/recent"
DEFAULT_URL = os.environ.get("PACKAGE_STATS_URL") or PUBLIC_URL


class StatsApi(dg.Config):
    url: str = DEFAULT_URL
    timeout_seconds: float = 10.0


def fetch_json(url: str, timeout: float) -> dict:
    """GET url as JSON; every failure says which URL and what went wrong."""
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "dagster-platform"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise dg.Failure(description=f"GET {url} answered HTTP {error.code} {error.reason}",
                         metadata={"url": url, "status": error.code}) from error
    except (TimeoutError, socket.timeout) as error:
        raise dg.Failure(description=f"GET {url} timed out after {timeout:g}s", metadata={"url": url}) from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise dg.Failure(description=f"GET {url} timed out after {timeout:g}s", metadata={"url": url}) from error
        raise dg.Failure(description=f"GET {url} failed: {error.reason}", metadata={"url": url}) from error
    except json.JSONDecodeError as error:
        raise dg.Failure(description=f"GET {url} did not answer JSON: {error}", metadata={"url": url}) from error


@dg.op(retry_policy=dg.RetryPolicy(max_retries=2, delay=1, backoff=dg.Backoff.EXPONENTIAL))
def fetch_download_stats(context: dg.OpExecutionContext, config: StatsApi) -> dict:
    body = fetch_json(config.url, config.timeout_seconds)
    try:
        count = int(body["data"]["last_day"])
    except (KeyError, TypeError, ValueError) as error:
        raise dg.Failure(description=f"GET {config.url} answered JSON without data.last_day: {str(body)[:200]}") from error
    result = {"url": config.url, "count": count, "timestamp": datetime.now(timezone.utc).isoformat()}
    context.log.info("fetched %s", result)
    return result


@dg.job(description="Fetch yesterday's download count of a package from a JSON API.")
def http_job():
    fetch_download_stats()


defs = dg.Definitions(jobs=[http_job])
