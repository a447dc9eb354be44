"""Two database roles: the owner migrates; web, workers and beat connect as the application role.

`database_secure()` (the `setup_database` command) runs as the owner after
`migrate`, every time: it creates or updates the application role, gives it
what the application needs on every table (and on tables later migrations
add, through default privileges), and takes back what would let it rewrite
history: UPDATE, DELETE and TRUNCATE on the audit tables, writes to the
migration record, DDL anywhere. Not owning the tables, the role can neither
alter them nor switch their triggers off; not a superuser, it cannot set
session_replication_role. It also stores, where only the owner can read it,
the archive key and the retention floor that warden_audit_archive_delete()
(migration audit 0007) checks before it deletes archived events.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from psycopg import sql

# Appended to, never changed: the application may INSERT and SELECT only.
APPEND_ONLY = ("audit_auditevent", "audit_checkpoint", "audit_archivesegment")
# The chain heads move forward (INSERT, UPDATE) but are never deleted.
NEVER_DELETED = ("audit_chainhead",)
# Only migrations write here.
READ_ONLY = ("django_migrations",)
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _run(cursor, statement: sql.Composable) -> None:
    cursor.execute(statement.as_string(cursor.connection))


def _tables(names) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


@transaction.atomic
def database_secure(*, app_user: str | None, app_password: str | None) -> list[str]:
    """Idempotent; returns what it did, line by line. Must run as the owner of Warden's tables."""
    from audit.verify import archive_key

    done = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_database()")
        owner, database = cursor.fetchone()
        cursor.execute(
            """
            INSERT INTO warden_private.setting (name, value) VALUES ('audit_archive_key', %s), ('audit_retention_floor_days', %s)
            ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
            """,
            [archive_key(), str(max(0, settings.WARDEN_AUDIT_RETENTION_DAYS))],
        )
        done.append(f"archive key and retention floor ({settings.WARDEN_AUDIT_RETENTION_DAYS} days) stored for the owner only")
        if not app_user:
            done.append("no application role given (WARDEN_APP_DATABASE_URL): the application connects as the owner")
            return done
        if not ROLE_NAME.match(app_user):
            raise ImproperlyConfigured(f"{app_user!r} is not a plain role name (lower-case letters, digits, _)")
        if app_user == owner:
            raise ImproperlyConfigured("the application role must not be the owner of the tables")
        role = sql.Identifier(app_user)
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [app_user])
        row = cursor.fetchone()
        attributes = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT")
        password = sql.SQL(" PASSWORD {}").format(sql.Literal(app_password)) if app_password else sql.SQL("")
        verb = "CREATE" if row is None else "ALTER"
        _run(cursor, sql.SQL("{} ROLE {} WITH {}{}").format(sql.SQL(verb), role, attributes, password))
        done.append(f"role {app_user} {'created' if row is None else 'updated'}")
        owner_role = sql.Identifier(owner)
        for statement in (
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(sql.Identifier(database), role),
            sql.SQL("REVOKE CREATE ON DATABASE {} FROM {}").format(sql.Identifier(database), role),
            sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role),
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(role),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(role),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role),
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}")
            .format(owner_role, role),
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}")
            .format(owner_role, role),
            sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(_tables(APPEND_ONLY), role),
            sql.SQL("REVOKE DELETE, TRUNCATE ON {} FROM {}").format(_tables(NEVER_DELETED), role),
            sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(_tables(READ_ONLY), role),
            sql.SQL("REVOKE ALL ON SCHEMA warden_private FROM {}").format(role),
            sql.SQL("GRANT EXECUTE ON FUNCTION warden_audit_archive_delete(bigint) TO {}").format(role),
        ):
            _run(cursor, statement)
        done.append(f"{app_user}: reads and writes Warden's tables; audit events, checkpoints and archive segments "
                    "append-only; no DDL, no trigger control, no deletes of audit events but through "
                    "warden_audit_archive_delete()")
    return done
