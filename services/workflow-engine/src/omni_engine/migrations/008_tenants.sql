-- Tenants (see omni_engine/tenants.py).
--
-- A run belongs to one tenant. Every run stored before this migration belongs to the default
-- tenant, 'default' (omni_contract.security.DEFAULT_TENANT): Omni had one tenant then, and its
-- callers are that tenant's now. The history says the same without being rewritten: a run.started
-- event without a tenant is the default tenant's. Adding a column with a constant default does
-- not rewrite the table.
ALTER TABLE runs ADD COLUMN tenant text NOT NULL DEFAULT 'default';
-- A tenant's runs, newest first (runs.list with a tenant; the keyset cursor is (created_at, run_id)).
CREATE INDEX runs_by_tenant ON runs (tenant, created_at DESC, run_id DESC);

-- A workflow (its id, all its versions) is shared (owner NULL: loaded from a file, every tenant sees
-- it) or owned by the tenant that registered it over the API. A workflow that ever had a version
-- from a file is shared; one only ever registered over the API was registered by the one tenant
-- there was: it is the default tenant's.
ALTER TABLE workflows ADD COLUMN owner text;
UPDATE workflows w SET owner = 'default'
 WHERE NOT EXISTS (SELECT 1 FROM workflow_definitions d WHERE d.id = w.id AND d.origin <> 'api');

-- create_run takes the run's tenant (NULL: the default tenant). It is a parameter with a default,
-- so an engine older than this migration (during a rolling upgrade) calls it as before and its
-- runs are the default tenant's.
DROP FUNCTION create_run(text, text, text, text, text, timestamptz, jsonb, jsonb, text, timestamptz,
                         text[], text[], bytea[], text[], boolean[], jsonb);

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
    p_effects jsonb,
    p_tenant text DEFAULT NULL
) RETURNS bigint[] LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runs (run_id, workflow, hash, status, last_seq, state, origin_key, origin_hash,
                      created_at, updated_at, tenant)
    VALUES (p_run_id, p_workflow, p_hash, p_status, 0, p_state, p_origin_key, p_origin_hash,
            p_created_at, p_updated_at, coalesce(p_tenant, 'default'))
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN append_run(p_run_id, 0, p_events, p_state, p_status, p_updated_at,
                      p_subjects, p_msg_ids, p_bodies, p_traceparents, p_durables, p_effects);
END
$$;
