-- Durable timers (retry back-off, step timeouts, run deadlines, wait timeouts) and waits for
-- outside events. Both are written in the same transaction as the events that set them, so a
-- crash never loses one; a fired timer is deleted in the transaction that records its effect.

CREATE TABLE timers (
    run_id        text        NOT NULL,
    name          text        NOT NULL,   -- e.g. retry:<step>:<attempt>, timeout:<step>:<attempt>, deadline
    fire_at       timestamptz NOT NULL,
    data          jsonb       NOT NULL,
    leased_until  timestamptz,            -- a replica is firing it until then
    PRIMARY KEY (run_id, name)
);
CREATE INDEX timers_due ON timers (fire_at);

CREATE TABLE waits (
    run_id   text        NOT NULL,
    step     text        NOT NULL,
    subject  text        NOT NULL,   -- the event subject waited for
    key      text        NOT NULL,   -- the value the event's field must have
    match    text        NOT NULL,   -- that field's path in the event data, dotted
    since    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step)
);
CREATE INDEX waits_by_subject ON waits (subject, key);

-- Idempotent starts: the hash of the request a key first came with.
ALTER TABLE runs ADD COLUMN origin_hash text;

-- Timers and waits to set and clear with an append, as one jsonb document (NULL: none):
-- {"timers": [{"name", "fire_at", "data"}], "cancel_timers": [name], "waits": [{"step",
--  "subject", "key", "match"}], "cancel_waits": [step], "clear_all": bool}
CREATE FUNCTION apply_effects(p_run_id text, p_effects jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_effects IS NULL THEN
        RETURN;
    END IF;
    -- Absent keys are skipped: most transitions touch one kind of row, or none.
    IF (p_effects->>'clear_all')::boolean THEN
        DELETE FROM timers WHERE run_id = p_run_id;
        DELETE FROM waits WHERE run_id = p_run_id;
    END IF;
    IF p_effects ? 'cancel_timers' THEN
        DELETE FROM timers WHERE run_id = p_run_id
           AND name IN (SELECT jsonb_array_elements_text(p_effects->'cancel_timers'));
    END IF;
    IF p_effects ? 'cancel_waits' THEN
        DELETE FROM waits WHERE run_id = p_run_id
           AND step IN (SELECT jsonb_array_elements_text(p_effects->'cancel_waits'));
    END IF;
    IF p_effects ? 'timers' THEN
        INSERT INTO timers (run_id, name, fire_at, data)
        SELECT p_run_id, t->>'name', (t->>'fire_at')::timestamptz, t->'data'
          FROM jsonb_array_elements(p_effects->'timers') AS t
            ON CONFLICT (run_id, name) DO UPDATE
           SET fire_at = EXCLUDED.fire_at, data = EXCLUDED.data, leased_until = NULL;
    END IF;
    IF p_effects ? 'waits' THEN
        INSERT INTO waits (run_id, step, subject, key, match)
        SELECT p_run_id, w->>'step', w->>'subject', w->>'key', w->>'match'
          FROM jsonb_array_elements(p_effects->'waits') AS w
            ON CONFLICT (run_id, step) DO UPDATE
           SET subject = EXCLUDED.subject, key = EXCLUDED.key, match = EXCLUDED.match, since = now();
    END IF;
END
$$;

DROP FUNCTION create_run(text, text, text, text, timestamptz, jsonb, jsonb, text, timestamptz,
                         text[], text[], bytea[], text[], boolean[]);
DROP FUNCTION append_run(text, integer, jsonb, jsonb, text, timestamptz,
                         text[], text[], bytea[], text[], boolean[]);

-- Appends events after p_expected, saves the projection (p_state NULL: keep the snapshot),
-- writes the outbox rows and applies the timer and wait changes.
-- Raises SQLSTATE 'OX001' when another writer appended first (the run's last_seq moved on).
CREATE FUNCTION append_run(
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
    p_durables boolean[],
    p_effects jsonb
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
    IF p_effects IS NOT NULL THEN
        PERFORM apply_effects(p_run_id, p_effects);
    END IF;
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
    p_origin_hash text,
    p_created_at timestamptz,
    p_events jsonb,
    p_state jsonb,
    p_status text,
    p_updated_at timestamptz,
    p_subjects text[],
    p_msg_ids text[],
    p_bodies bytea[],
    p_traceparents text[],
    p_durables boolean[],
    p_effects jsonb
) RETURNS bigint[] LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runs (run_id, workflow, hash, status, last_seq, state, origin_key, origin_hash,
                      created_at, updated_at)
    VALUES (p_run_id, p_workflow, p_hash, p_status, 0, p_state, p_origin_key, p_origin_hash,
            p_created_at, p_updated_at)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN append_run(p_run_id, 0, p_events, p_state, p_status, p_updated_at,
                      p_subjects, p_msg_ids, p_bodies, p_traceparents, p_durables, p_effects);
END
$$;
