-- Principals, their API keys, roles and role assignments. A principal belongs to one tenant;
-- roles are defined per tenant (the shipped ones are copied into each tenant on first use).

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE principals (
    id          text PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (id),
    kind        text NOT NULL CHECK (kind IN ('user', 'service', 'agent')),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text
);
CREATE INDEX principals_tenant ON principals (tenant, id);

-- The key itself is never stored: its SHA-256 (256 random bits need no slow hash) and its
-- visible prefix, by which it is found.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    prefix       text NOT NULL UNIQUE,
    digest       bytea NOT NULL,
    principal    text NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    tenant       text NOT NULL REFERENCES tenants (id),
    name         text NOT NULL DEFAULT '',
    scopes       text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text,
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_principal ON api_keys (principal);
CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at DESC);

CREATE TABLE roles (
    tenant       text NOT NULL REFERENCES tenants (id),
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    permissions  text[] NOT NULL,
    shipped      boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

CREATE TABLE assignments (
    principal   text NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    tenant      text NOT NULL,
    role        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, tenant, role),
    FOREIGN KEY (tenant, role) REFERENCES roles (tenant, name) ON DELETE CASCADE
);
