"""The audit tables refuse UPDATE, DELETE and TRUNCATE: history is appended, never edited.

Only a database superuser who disables the triggers can change a row; the hash
chains and signed checkpoints make such a change detectable (audit_verify).
"""

from django.db import migrations

SQL = """
CREATE OR REPLACE FUNCTION warden_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_event_no_update_delete BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION warden_audit_append_only();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION warden_audit_append_only();
CREATE TRIGGER audit_checkpoint_no_update_delete BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION warden_audit_append_only();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION warden_audit_append_only();
"""

REVERSE = """
DROP TRIGGER IF EXISTS audit_event_no_update_delete ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_checkpoint_no_update_delete ON audit_checkpoint;
DROP TRIGGER IF EXISTS audit_checkpoint_no_truncate ON audit_checkpoint;
DROP FUNCTION IF EXISTS warden_audit_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_checkpoint")]

    operations = [migrations.RunSQL(SQL, REVERSE)]
