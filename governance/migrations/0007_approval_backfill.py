"""Backfill what the approval queue adds to what existed before it.

Its own migration (own transaction): updating rows of governance_approval queues its deferred
foreign-key checks, and PostgreSQL will not build 0006's indexes on a table with pending trigger events.
"""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0006_approval_queue'),
    ]

    operations = [
        # What existed before: requests wait a day from when they were made and name their one group;
        # an allowed action's sweep clock starts when it was allowed, at the gate.
        migrations.RunSQL(
            """
            UPDATE governance_approval SET expires_at = created_at + interval '24 hours' WHERE expires_at IS NULL;
            UPDATE governance_approval SET groups = ARRAY["group"] WHERE groups = '{}';
            UPDATE governance_action SET allowed_at = created_at WHERE outcome = 'allowed' AND allowed_at IS NULL;
            """,
            migrations.RunSQL.noop,
        ),
    ]
