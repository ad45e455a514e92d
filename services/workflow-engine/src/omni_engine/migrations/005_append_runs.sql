-- Appends to many runs in one statement and one transaction (one round trip, one WAL flush),
-- for the transitions of different runs that are ready at the same moment.
--
-- Item k appends p_events[k] to run p_runs[k] after p_expected[k], exactly as append_run does,
-- with the outbox rows p_subjects[o+1 .. o+p_counts[k]] (o: the rows of the items before it).
-- A run whose last_seq moved on is not an error here: its item returns ids NULL (a conflict) and
-- the other items are written. The caller sorts the items by run id, so that two replicas'
-- batches lock the runs rows in one order and cannot deadlock.
CREATE FUNCTION append_runs(
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
            INSERT INTO run_events (run_id, seq, type, data, at)
            SELECT p_runs[k], p_expected[k] + e.ord, e.value->>'type', e.value->'data',
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
