"""warden_gate_commit: the gate's hot-path write in one call (governance/hotpath.py).

It writes what `gate._judge_fast` decided, in the order the slow path and every other writer take their
locks (budget periods by budget, the Action, the agent row, the audit chain head), or raises SQLSTATE
WG001, caught at the end: nothing is written and the call answers NULL, when what the read saw no longer
holds. The audit event is chained here, under the chain head's lock: Python sends its canonical bytes but
for the link (the time, the previous hash, the sequence number), and the function hashes them with the link
it takes, so one agent's concurrent decisions queue on the lock instead of failing over to the slow path. SECURITY INVOKER: it runs with the
caller's (the application role's) privileges, so it can do nothing the gate's statements could not.
"""

from django.db import migrations, models

ACTION_COLUMNS = (
    "id", "agent_id", "key_id", "delegation_id", "action", "resource", "context", "cedar_context", "cedar_entities",
    "idempotency_key", "request_digest", "outcome", "reasons", "policy_ids", "observed", "policy_version",
    "delegation_chain", "estimated_cost_micros", "reserved_micros", "allowed_at", "status", "usage",
    "actual_cost_micros", "correlation_id", "created_at", "completed_at",
)
EVENT_COLUMNS = (
    "chain", "seq", "prev_hash", "occurred_at", "actor_type", "actor_id", "actor_name", "agent_id",
    "agent_name", "team", "delegation_chain", "action", "resource", "outcome", "reasons", "policy_ids",
    "policy_version", "cost_micros", "data_classification", "correlation_id", "trace_id", "payload", "hash",
)

SQL = f"""
CREATE OR REPLACE FUNCTION warden_gate_commit(
    p_action jsonb, p_event jsonb, p_head bytea, p_after_time bytea, p_after_prev bytea, p_tail bytea, p_agent uuid,
    p_team agents_agent.team_id%TYPE, p_key uuid, p_month date, p_budgets integer, p_reserve bigint,
    p_touch timestamptz, p_check_identity boolean
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_periods bigint[];
    v_fits boolean;
    v_event bigint;
    v_usable boolean;
    v_chain text := p_event ->> 'chain';
    v_seq bigint;
    v_prev text;
    v_at timestamptz;
    v_hash text;
BEGIN
  BEGIN  -- WG001 below: nothing this block wrote stays, and the caller gets NULL
    -- 1. Reserve at every covering budget's period this month, or at none (billing.reserve's rule).
    IF p_reserve > 0 AND p_budgets > 0 THEN
        SELECT array_agg(l.id), bool_and(l.fits) INTO v_periods, v_fits FROM (
            SELECT p.id, p.spent_micros + p.reserved_micros + p_reserve <= b.monthly_limit_micros AS fits
            FROM billing_budgetperiod p JOIN billing_budget b ON b.id = p.budget_id
            WHERE p.period_start = p_month AND b.active
              AND (b.scope = 'organisation' OR (b.scope = 'team' AND b.team_id = p_team)
                   OR (b.scope = 'agent' AND b.agent_id = p_agent))
            ORDER BY p.budget_id FOR UPDATE OF p
        ) l;
        IF coalesce(array_length(v_periods, 1), 0) <> p_budgets OR NOT v_fits THEN
            RAISE EXCEPTION 'budget periods changed or a limit would be exceeded' USING ERRCODE = 'WG001';
        END IF;
        UPDATE billing_budgetperiod SET reserved_micros = reserved_micros + p_reserve WHERE id = ANY(v_periods);
        INSERT INTO billing_reservationline (action_id, period_id, micros)
        SELECT (p_action ->> 'id')::uuid, period_id, p_reserve FROM unnest(v_periods) AS period_id;
    END IF;

    -- 2. The Action.
    INSERT INTO governance_action ({", ".join(ACTION_COLUMNS)})
    SELECT {", ".join(ACTION_COLUMNS)} FROM jsonb_populate_record(NULL::governance_action, p_action);

    -- 3. The agent row, then its audit chain head (as a suspension takes them), then the event.
    IF p_touch IS NOT NULL THEN
        UPDATE agents_agent SET last_seen_at = p_touch WHERE id = p_agent;
    END IF;
    -- The next link (as audit.services._claim_link takes it), and the event's hash over its canonical bytes
    -- (audit.services.canonical): what Python wrote around the two values only this lock knows.
    INSERT INTO audit_chainhead (chain, seq, hash) VALUES (v_chain, 1, repeat('0', 64))
    ON CONFLICT (chain) DO UPDATE SET seq = audit_chainhead.seq + 1
    RETURNING seq, hash INTO v_seq, v_prev;
    v_at := clock_timestamp();  -- after the lock, as the slow path stamps it: a chain's times follow its order
    v_hash := encode(sha256(p_head
                            || convert_to(to_char(v_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), 'UTF8')
                            || p_after_time || convert_to(v_prev, 'UTF8') || p_after_prev
                            || convert_to(v_seq::text, 'UTF8') || p_tail), 'hex');
    UPDATE audit_chainhead SET hash = v_hash WHERE chain = v_chain;
    INSERT INTO audit_auditevent ({", ".join(EVENT_COLUMNS)})
    SELECT {", ".join({"seq": "v_seq", "prev_hash": "v_prev", "occurred_at": "v_at", "hash": "v_hash"}.get(c, c)
                      for c in EVENT_COLUMNS)}
    FROM jsonb_populate_record(NULL::audit_auditevent, p_event)
    RETURNING id INTO v_event;

    -- 4. A suspension or key revocation that committed meanwhile wrote the chain head first: this read sees it.
    IF p_check_identity THEN
        SELECT a.status = 'active' AND (p_key IS NULL OR coalesce((
                   SELECT k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()) AND k.agent_id = a.id
                   FROM agents_agentkey k WHERE k.id = p_key), false))
        INTO v_usable FROM agents_agent a WHERE a.id = p_agent;
        IF NOT coalesce(v_usable, false) THEN
            RAISE EXCEPTION 'the agent or its key may no longer act' USING ERRCODE = 'WG001';
        END IF;
    END IF;
    RETURN v_event;
  EXCEPTION WHEN SQLSTATE 'WG001' THEN
    RETURN NULL;  -- (a failing call would also leave its prepared statement behind on the server)
  END;
END;
$$;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("governance", "0010_anomaly_alerts"),
        ("audit", "0007_least_privilege"),
        ("billing", "0003_approval_queue"),
        ("agents", "0006_mcp_registry"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="action",
            index=models.Index(fields=["agent", "resource", "-created_at"],
                               condition=models.Q(action="tool.call", outcome="allowed"),
                               name="action_tool_calls_idx"),
        ),
        migrations.RunSQL(SQL, reverse_sql="DROP FUNCTION IF EXISTS warden_gate_commit"),
    ]
