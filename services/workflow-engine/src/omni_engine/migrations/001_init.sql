-- The workflow engine's schema: definitions, runs (a projection), run history, outbox.

-- Every version of every definition, content-addressed. Rows are never updated.
CREATE TABLE workflow_definitions (
    name        text        NOT NULL,
    hash        text        NOT NULL,
    version     text        NOT NULL,
    origin      text        NOT NULL,  -- the file it came from, or "api"
    definition  jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, hash)
);

-- The version new runs of a workflow start with.
CREATE TABLE workflows (
    name        text        PRIMARY KEY,
    hash        text        NOT NULL,
    trigger     text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (name, hash) REFERENCES workflow_definitions (name, hash)
);
CREATE INDEX workflows_by_trigger ON workflows (trigger);

-- A run's history: append-only. Appending with the expected next seq is the concurrency control.
CREATE TABLE run_events (
    run_id  text        NOT NULL,
    seq     integer     NOT NULL,
    type    text        NOT NULL,
    data    jsonb       NOT NULL,
    at      timestamptz NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- The projection of each run's history (its folded state as of last_seq), so one step's cost does
-- not grow with the length of the history. Updated in the same transaction as the events.
CREATE TABLE runs (
    run_id      text        PRIMARY KEY,
    workflow    text        NOT NULL,
    hash        text        NOT NULL,
    status      text        NOT NULL,
    last_seq    integer     NOT NULL,
    state       jsonb       NOT NULL,
    origin_key  text        UNIQUE,     -- what started it (a trigger event id), for idempotent starts
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX runs_by_created ON runs (created_at DESC, run_id DESC);
CREATE INDEX runs_by_workflow ON runs (workflow, created_at DESC, run_id DESC);
CREATE INDEX runs_by_status ON runs (status, created_at DESC, run_id DESC);

-- Messages to publish because of events, written in the same transaction as the events and
-- relayed to NATS with a deterministic Nats-Msg-Id.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    body        bytea       NOT NULL,
    traceparent text,
    durable     boolean     NOT NULL,  -- JetStream publish with ack, or a core NATS notice
    created_at  timestamptz NOT NULL DEFAULT now()
);
