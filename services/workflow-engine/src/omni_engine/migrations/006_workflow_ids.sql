-- Workflows get a display name (free text) and an address, their id: the `id:` of the definition,
-- or else the slug of its name. Every name stored so far was already a valid id and is its own
-- slug, so the key columns are renamed in place and every stored workflow keeps its address.

ALTER TABLE workflow_definitions RENAME COLUMN name TO id;
ALTER TABLE workflows RENAME COLUMN name TO id;  -- the foreign key follows the renamed columns

-- The display name of each version, as its definition says.
ALTER TABLE workflow_definitions ADD COLUMN name text;
UPDATE workflow_definitions SET name = coalesce(definition ->> 'name', id);
ALTER TABLE workflow_definitions ALTER COLUMN name SET NOT NULL;

-- A version is immutable: (id, version) names one content. This is enforced when a definition is
-- saved (under a per-id advisory lock) rather than by a unique index, because databases written
-- before this migration may already hold two contents under one (id, version); those stay listed.
CREATE INDEX workflow_definitions_by_version ON workflow_definitions (id, version);
