"""dagster-webserver whose pooled database connections are tested before each use.

The webserver keeps its PostgreSQL connections in a pool. After the database restarts
every pooled connection is dead, and the request that draws one fails (HTTP 500). A
ping when a connection leaves the pool (SQLAlchemy's pessimistic disconnect handling)
makes the pool replace a dead connection before the request uses it.
"""

import sys
from importlib.metadata import entry_points

from sqlalchemy import event, exc
from sqlalchemy.pool import Pool


@event.listens_for(Pool, "checkout")
def ping(dbapi_connection, connection_record, connection_proxy):
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:  # any failure means: do not hand this connection out
        raise exc.DisconnectionError(str(error)) from error


if __name__ == "__main__":
    sys.argv[0] = "dagster-webserver"
    (main,) = entry_points(group="console_scripts", name="dagster-webserver")
    sys.exit(main.load()())
