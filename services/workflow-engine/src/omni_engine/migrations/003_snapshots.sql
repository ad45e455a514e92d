-- The projection's full state is saved every so many events (a snapshot), not on every
-- transition: rewriting a thousand-step run's state at each step made a step's cost grow with
-- the run. Readers fold the events after snapshot_seq onto the snapshot. status and last_seq
-- stay current on every append.
ALTER TABLE runs ADD COLUMN snapshot_seq integer NOT NULL DEFAULT 0;
UPDATE runs SET snapshot_seq = last_seq;

-- p_state NULL: keep the previous snapshot.
CREATE OR REPLACE FUNCTION append_run(
    p_run_id text,
    p_expected integer,
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
DECLARE
    ids bigint[];
    new_seq integer := p_expected + jsonb_array_length(p_events);
BEGIN
    UPDATE runs
       SET status = p_status,
           last_seq = new_seq,
           state = coalesce(p_state, state),
           snapshot_seq = CASE WHEN p_state IS NULL THEN snapshot_seq ELSE new_seq END,
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
