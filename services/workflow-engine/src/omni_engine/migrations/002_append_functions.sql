-- One round trip per transition: creating a run and appending to one are each a single function
-- call (one statement, so one implicit transaction) instead of a BEGIN, four statements and COMMIT.

-- Appends events after p_expected, saves the projection and writes the outbox rows.
-- Raises SQLSTATE 'OX001' when another writer appended first (the run's last_seq moved on).
CREATE FUNCTION append_run(
    p_run_id text,
    p_expected integer,
    p_events jsonb,          -- [{"type": ..., "data": {...}, "at": "<iso timestamp>"}, ...]
    p_state jsonb,
    p_status text,
    p_updated_at timestamptz,
    p_subjects text[],
    p_msg_ids text[],
    p_bodies bytea[],
    p_traceparents text[],
    p_durables boolean[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    UPDATE runs
       SET status = p_status,
           last_seq = p_expected + jsonb_array_length(p_events),
           state = p_state,
           updated_at = p_updated_at
     WHERE run_id = p_run_id AND last_seq = p_expected;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'append conflict on run %', p_run_id USING ERRCODE = 'OX001';
    END IF;
    INSERT INTO run_events (run_id, seq, type, data, at)
    SELECT p_run_id, p_expected + e.ord, e.value->>'type', e.value->'data', (e.value->>'at')::timestamptz
      FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e(value, ord);
    WITH inserted AS (
        INSERT INTO outbox (subject, msg_id, body, traceparent, durable)
        SELECT * FROM unnest(p_subjects, p_msg_ids, p_bodies, p_traceparents, p_durables)
        RETURNING id
    )
    SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO ids FROM inserted;
    RETURN ids;
END
$$;

-- Creates a run with its first events. Returns NULL when the run id or its origin key exists.
CREATE FUNCTION create_run(
    p_run_id text,
    p_workflow text,
    p_hash text,
    p_origin_key text,
    p_created_at timestamptz,
    p_events jsonb,
    p_state jsonb,
    p_status text,
    p_updated_at timestamptz,
    p_subjects text[],
    p_msg_ids text[],
    p_bodies bytea[],
    p_traceparents text[],
    p_durables boolean[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runs (run_id, workflow, hash, status, last_seq, state, origin_key, created_at, updated_at)
    VALUES (p_run_id, p_workflow, p_hash, p_status, 0, p_state, p_origin_key, p_created_at, p_updated_at)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN append_run(p_run_id, 0, p_events, p_state, p_status, p_updated_at,
                      p_subjects, p_msg_ids, p_bodies, p_traceparents, p_durables);
END
$$;
