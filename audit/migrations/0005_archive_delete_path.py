"""The one sanctioned way an event leaves the table: archived first, then deleted.

The append-only trigger now lets a DELETE of an event through only when the
deleting transaction names an archive segment (SET LOCAL
warden.audit_archive_segment) whose recorded range covers that event. Segments
are written, signed, before the delete and are themselves append-only, so no
event can disappear without a signed record of where it went. UPDATE and
TRUNCATE stay refused on every audit table.
"""

from django.db import migrations

SQL = """
CREATE OR REPLACE FUNCTION warden_audit_event_guard() RETURNS trigger AS $$
DECLARE
    segment_id bigint := nullif(current_setting('warden.audit_archive_segment', true), '')::bigint;
BEGIN
    IF TG_OP = 'DELETE' AND segment_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM audit_archivesegment s
        WHERE s.id = segment_id
          AND s.chains ? OLD.chain
          AND OLD.seq BETWEEN (s.chains -> OLD.chain ->> 0)::bigint AND (s.chains -> OLD.chain ->> 1)::bigint
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER audit_event_no_update_delete ON audit_auditevent;
CREATE TRIGGER audit_event_no_update_delete BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION warden_audit_event_guard();
CREATE TRIGGER audit_archive_no_update_delete BEFORE UPDATE OR DELETE ON audit_archivesegment
    FOR EACH ROW EXECUTE FUNCTION warden_audit_append_only();
CREATE TRIGGER audit_archive_no_truncate BEFORE TRUNCATE ON audit_archivesegment
    FOR EACH STATEMENT EXECUTE FUNCTION warden_audit_append_only();
"""

REVERSE = """
DROP TRIGGER IF EXISTS audit_archive_no_update_delete ON audit_archivesegment;
DROP TRIGGER IF EXISTS audit_archive_no_truncate ON audit_archivesegment;
DROP TRIGGER audit_event_no_update_delete ON audit_auditevent;
CREATE TRIGGER audit_event_no_update_delete BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION warden_audit_append_only();
DROP FUNCTION IF EXISTS warden_audit_event_guard();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_archive_and_filter_indexes")]

    operations = [migrations.RunSQL(SQL, REVERSE)]
