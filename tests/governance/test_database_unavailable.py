"""Which database errors are "PostgreSQL cannot be reached" (a 503, fail closed) and which are bugs (a 500).

The drill in tests/drills/test_faults.py crashes a real PostgreSQL; this pins the classification it relies
on, for errors a drill cannot easily make happen."""

import psycopg
import pytest
from django.db import InterfaceError, OperationalError

from governance.errors import database_unavailable


def django_error(cause):
    error = OperationalError(str(cause))
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("cause,unavailable", [
    (psycopg.errors.AdminShutdown(), True),  # 57P01: the server is shutting down
    (psycopg.errors.CrashShutdown(), True),  # 57P02
    (psycopg.errors.CannotConnectNow(), True),  # 57P03: starting up
    (psycopg.errors.ConnectionFailure(), True),  # 08006
    (psycopg.errors.LockNotAvailable(), False),  # 55P03: a lock timeout is a bug to see, not an outage
    (psycopg.errors.QueryCanceled(), False),  # 57014: a statement timeout
    (psycopg.errors.DiskFull(), False),  # 53100: answered by a server that is there
])
def test_only_a_server_that_is_not_there_is_unavailable(cause, unavailable):
    assert database_unavailable(django_error(cause)) is unavailable


@pytest.mark.django_db
def test_an_error_without_a_sqlstate_is_unavailable_only_when_the_connection_is_gone():
    from django.db import connection

    connection.ensure_connection()
    client_side = django_error(psycopg.OperationalError("number of parameters must be between 0 and 65535"))
    assert not database_unavailable(client_side)  # the connection is fine: a bug, a 500
    assert not database_unavailable(InterfaceError("cursor already closed"))
    assert not database_unavailable(ValueError("no")) and not database_unavailable(None)


def test_with_no_connection_made_an_error_without_a_sqlstate_is_unavailable(django_db_blocker):
    from django.db import connections

    with django_db_blocker.unblock():
        connections.close_all()  # as after the server refused the connection: none is open
    refused = django_error(psycopg.OperationalError("connection failed: Connection refused"))
    assert database_unavailable(refused)
