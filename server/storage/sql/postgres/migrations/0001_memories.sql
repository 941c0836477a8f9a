-- Memories, their keyword index, and tombstones for deletions.
CREATE TABLE memories (
    id           text COLLATE "C" PRIMARY KEY,
    content      text NOT NULL,
    content_hash text NOT NULL,
    kind         text NOT NULL,
    tags         jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(tags) = 'array'),
    project      text NOT NULL,
    importance   smallint NOT NULL CHECK (importance BETWEEN 0 AND 10),
    metadata     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    author       text NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    version      integer NOT NULL DEFAULT 1,
    deleted_at   timestamptz,
    -- to_tsvector(regconfig, jsonb) indexes only the string values, i.e. the tag words.
    search       tsvector GENERATED ALWAYS AS (
                     setweight(to_tsvector('english', content), 'A') ||
                     setweight(to_tsvector('english', tags), 'B')
                 ) STORED
);

CREATE UNIQUE INDEX memories_dedup ON memories (project, content_hash) WHERE deleted_at IS NULL;
CREATE INDEX memories_project_id ON memories (project, id) WHERE deleted_at IS NULL;
CREATE INDEX memories_live_id ON memories (id) WHERE deleted_at IS NULL;
CREATE INDEX memories_importance ON memories (project, importance DESC, updated_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX memories_search ON memories USING gin (search);
CREATE INDEX memories_tags ON memories USING gin (tags jsonb_path_ops);
