-- The audit log: append-only and hash-chained. omni_security/audit.py documents how each hash is
-- made (so that anyone can recompute it) and keeps the invariants; this file only stores them.

-- One row: the last record's seq and hash. Appends lock it (SELECT ... FOR UPDATE), so replicas
-- append one at a time and seq has no gaps; verify compares the chain's end with it.
CREATE TABLE audit_head (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq    bigint NOT NULL CHECK (last_seq >= 0),
    last_hash   text NOT NULL CHECK (last_hash ~ '^[0-9a-f]{64}$')
);
-- The genesis: no record yet, and the hash the first record chains to.
INSERT INTO audit_head (id, last_seq, last_hash) VALUES (true, 0, repeat('0', 64));

CREATE TABLE audit_log (
    seq             bigint PRIMARY KEY CHECK (seq > 0),
    at              timestamptz NOT NULL,
    prev_hash       text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash            text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    principal       text,
    principal_kind  text,
    tenant          text,
    -- "C" collation: byte order, so that a prefix (key.*) is an index range.
    action          text COLLATE "C" NOT NULL,
    resource        text,
    outcome         text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    -- Text, not inet: what is hashed must read back byte for byte.
    ip_address      text,
    user_agent      text,
    service         text,
    details         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object')
);
-- Listing is newest first (seq DESC) under any one of these filters.
CREATE INDEX audit_log_principal ON audit_log (principal, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_tenant ON audit_log (tenant, seq);
CREATE INDEX audit_log_at ON audit_log (at);

-- Records are never changed or removed, and the head is never removed: tampering takes disabling
-- these triggers first (and verify() finds it).
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_head_kept BEFORE DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
