-- Users, workspaces (each user has a personal one), memberships with roles, and API tokens.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    disabled_at TEXT
);

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    personal_of TEXT UNIQUE REFERENCES users (id),
    created_at  TEXT NOT NULL
);

CREATE TABLE memberships (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'reader')),
    created_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, workspace_id);

-- Only a SHA-256 of each token is kept; the token itself is shown once, when it is created.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT
);

-- The implicit local user and their personal workspace: memories stored before teams existed are theirs.
INSERT INTO users (id, name, created_at)
VALUES ('00000000-0000-7000-8000-000000000001', 'local', strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
INSERT INTO workspaces (id, name, personal_of, created_at)
VALUES ('00000000-0000-7000-8000-000000000002', '~local', '00000000-0000-7000-8000-000000000001',
        strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
INSERT INTO memberships (workspace_id, user_id, role, created_at)
VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 'owner',
        strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
