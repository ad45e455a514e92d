-- Each history event is stored with the version of its payload's shape (omni_contract.history):
-- a column beside type, not a key in data, so that data stays exactly the payload the API serves,
-- and a reader picks the decoder (or the upcasters of an older version) before it parses data.
-- Every row written before this migration is version 1: adding a column with a constant default
-- does not rewrite the table.
ALTER TABLE run_events ADD COLUMN v smallint NOT NULL DEFAULT 1;

-- The append functions take each event as {"type", "v", "data", "at"}. An event without "v" is
-- version 1: that is what an engine older than this migration sends during a rolling upgrade,
-- and what it writes is version 1.
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
    INSERT INTO run_events (run_id, seq, type, v, data, at)
    SELECT p_run_id, p_expected + e.ord, e.value->>'type', coalesce((e.value->>'v')::smallint, 1),
           e.value->'data', (e.value->>'at')::timestamptz
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

CREATE OR REPLACE FUNCTION append_runs(
    p_runs text[],
    p_expected integer[],
    p_events text[],
    p_states text[],
    p_statuses text[],
    p_updated_at timestamptz[],
    p_counts integer[],
    p_subjects text[],
    p_msg_ids text[],
    p_bodies bytea[],
    p_traceparents text[],
    p_durables boolean[],
    p_effects text[]
) RETURNS TABLE (item integer, ids bigint[]) LANGUAGE plpgsql AS $$
DECLARE
    k integer;
    lo integer := 0;
    events jsonb;
    new_seq integer;
BEGIN
    FOR k IN 1 .. coalesce(array_length(p_runs, 1), 0) LOOP
        events := p_events[k]::jsonb;
        new_seq := p_expected[k] + jsonb_array_length(events);
        item := k;
        UPDATE runs
           SET status = p_statuses[k],
               last_seq = new_seq,
               state = coalesce(p_states[k]::jsonb, state),
               snapshot_seq = CASE WHEN p_states[k] IS NULL THEN snapshot_seq ELSE new_seq END,
               updated_at = p_updated_at[k]
         WHERE run_id = p_runs[k] AND last_seq = p_expected[k];
        IF NOT FOUND THEN
            ids := NULL;
        ELSE
            INSERT INTO run_events (run_id, seq, type, v, data, at)
            SELECT p_runs[k], p_expected[k] + e.ord, e.value->>'type',
                   coalesce((e.value->>'v')::smallint, 1), e.value->'data',
                   (e.value->>'at')::timestamptz
              FROM jsonb_array_elements(events) WITH ORDINALITY AS e(value, ord);
            IF p_effects[k] IS NOT NULL THEN
                PERFORM apply_effects(p_runs[k], p_effects[k]::jsonb);
            END IF;
            WITH inserted AS (
                INSERT INTO outbox (subject, msg_id, body, traceparent, durable)
                SELECT * FROM unnest(p_subjects[lo + 1 : lo + p_counts[k]],
                                     p_msg_ids[lo + 1 : lo + p_counts[k]],
                                     p_bodies[lo + 1 : lo + p_counts[k]],
                                     p_traceparents[lo + 1 : lo + p_counts[k]],
                                     p_durables[lo + 1 : lo + p_counts[k]])
                RETURNING id
            )
            SELECT coalesce(array_agg(inserted.id ORDER BY inserted.id), '{}') INTO ids FROM inserted;
        END IF;
        lo := lo + p_counts[k];
        RETURN NEXT;
    END LOOP;
END
$$;
