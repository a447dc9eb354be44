"""Least privilege: the application role appends audit events; only the owner's checked function deletes.

Web, workers and beat connect as an application role (`manage.py
setup_database`, run by the owner after `migrate`, creates it and its grants):
it may insert audit events, checkpoints and archive segments and move chain
heads, and may not update, delete or truncate them, alter the tables or
switch their triggers off.

Retention still has to delete what it archived. It does so through
`warden_audit_archive_delete(segment)`, a SECURITY DEFINER function owned by
the owner, which deletes only when

- the segment's signature checks out against the archive key kept in
  `warden_private.setting` (a schema the application role cannot read; the
  key is derived from the audit signing key by `setup_database`),
- the segment's cutoff is at least the retention floor (also kept there) in
  the past, and every event it deletes is older than that cutoff,
- every chain range is the oldest run left of that chain, complete, and its
  two ends carry the hashes the signed manifest names.

What each check is for: the signature keeps out anyone who holds only the
database credentials (not the application's signing key); the application
itself knows the key, so what keeps even the application role from deleting
recent events is the retention floor (on the database's clock) and the range
checks. The append-only trigger (0005) stays as a guard for the owner itself.
"""

from django.db import migrations

SQL = r"""
CREATE SCHEMA IF NOT EXISTS warden_private;
REVOKE ALL ON SCHEMA warden_private FROM PUBLIC;
CREATE TABLE IF NOT EXISTS warden_private.setting (name text PRIMARY KEY, value text NOT NULL);
REVOKE ALL ON warden_private.setting FROM PUBLIC;

CREATE OR REPLACE FUNCTION warden_hmac_sha256(key bytea, message bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    block bytea := CASE WHEN length(key) > 64 THEN sha256(key) ELSE key END;
    inner_pad bytea;
    outer_pad bytea;
BEGIN
    block := block || decode(repeat('00', 64 - length(block)), 'hex');
    inner_pad := block;
    outer_pad := block;
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(block, i) # 54);   -- 0x36
        outer_pad := set_byte(outer_pad, i, get_byte(block, i) # 92);   -- 0x5c
    END LOOP;
    RETURN encode(sha256(outer_pad || sha256(inner_pad || message)), 'hex');
END;
$$;

-- The text an archive segment's signature covers; audit.verify.archive_manifest writes the same.
CREATE OR REPLACE FUNCTION warden_archive_manifest(segment audit_archivesegment) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT concat_ws(E'\n', 'warden-archive-v2', segment.file_name, segment.sha256, segment.events::text,
                     to_char(segment.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                     to_char(segment.cutoff AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                     (SELECT string_agg(concat_ws(' ', r.key, r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3),
                                        E'\n' ORDER BY r.key COLLATE "C")
                      FROM jsonb_each(segment.chains) r))
$$;

CREATE OR REPLACE FUNCTION warden_audit_archive_delete(segment_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    segment audit_archivesegment;
    archive_key text;
    floor_days integer;
    chain_range record;
    first_seq bigint;
    last_seq bigint;
    present bigint;
    all_older boolean;
    deleted bigint := 0;
    removed bigint;
BEGIN
    SELECT * INTO segment FROM audit_archivesegment WHERE id = segment_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'archive refused: segment % does not exist', segment_id USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT value INTO archive_key FROM warden_private.setting WHERE name = 'audit_archive_key';
    SELECT value::integer INTO floor_days FROM warden_private.setting WHERE name = 'audit_retention_floor_days';
    IF archive_key IS NULL OR floor_days IS NULL THEN
        RAISE EXCEPTION 'archive refused: the database owner has not run manage.py setup_database'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF warden_hmac_sha256(convert_to(archive_key, 'UTF8'), convert_to(warden_archive_manifest(segment), 'UTF8'))
       IS DISTINCT FROM segment.signature THEN
        RAISE EXCEPTION 'archive refused: the signature of segment % does not match', segment_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF floor_days <= 0 OR segment.cutoff > clock_timestamp() - make_interval(days => floor_days) THEN
        RAISE EXCEPTION 'archive refused: cutoff % is not at least % days ago', segment.cutoff, floor_days
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    FOR chain_range IN SELECT key AS chain, value FROM jsonb_each(segment.chains) ORDER BY key COLLATE "C" LOOP
        first_seq := (chain_range.value ->> 0)::bigint;
        last_seq := (chain_range.value ->> 1)::bigint;
        IF EXISTS (SELECT 1 FROM audit_auditevent WHERE chain = chain_range.chain AND seq < first_seq) THEN
            RAISE EXCEPTION 'archive refused: % has events before seq %', chain_range.chain, first_seq
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        SELECT count(*), coalesce(bool_and(occurred_at < segment.cutoff), false) INTO present, all_older
        FROM audit_auditevent WHERE chain = chain_range.chain AND seq BETWEEN first_seq AND last_seq;
        IF present <> last_seq - first_seq + 1 OR NOT all_older THEN
            RAISE EXCEPTION 'archive refused: % seq %..% is not a complete run older than the cutoff',
                chain_range.chain, first_seq, last_seq USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF (SELECT prev_hash FROM audit_auditevent WHERE chain = chain_range.chain AND seq = first_seq)
               IS DISTINCT FROM chain_range.value ->> 2
           OR (SELECT hash FROM audit_auditevent WHERE chain = chain_range.chain AND seq = last_seq)
               IS DISTINCT FROM chain_range.value ->> 3 THEN
            RAISE EXCEPTION 'archive refused: the ends of % do not carry the hashes the manifest names', chain_range.chain
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        PERFORM set_config('warden.audit_archive_segment', segment_id::text, true);
        DELETE FROM audit_auditevent WHERE chain = chain_range.chain AND seq BETWEEN first_seq AND last_seq;
        GET DIAGNOSTICS removed = ROW_COUNT;
        deleted := deleted + removed;
    END LOOP;
    PERFORM set_config('warden.audit_archive_segment', '', true);
    IF deleted <> segment.events THEN
        RAISE EXCEPTION 'archive refused: % events deleted but the segment names %', deleted, segment.events
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN deleted;
END;
$$;
REVOKE ALL ON FUNCTION warden_audit_archive_delete(bigint) FROM PUBLIC;
"""

REVERSE = """
DROP FUNCTION IF EXISTS warden_audit_archive_delete(bigint);
DROP FUNCTION IF EXISTS warden_archive_manifest(audit_archivesegment);
DROP FUNCTION IF EXISTS warden_hmac_sha256(bytea, bytea);
DROP TABLE IF EXISTS warden_private.setting;
DROP SCHEMA IF EXISTS warden_private;
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0006_export_jobs")]

    operations = [migrations.RunSQL(SQL, REVERSE)]
