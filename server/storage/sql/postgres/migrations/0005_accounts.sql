-- Users, workspaces (each user has a personal one), memberships with roles, and API tokens.
CREATE TABLE users (
    id          text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE workspaces (
    id          text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    personal_of text COLLATE "C" UNIQUE REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    workspace_id text COLLATE "C" NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      text COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'reader')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, workspace_id);

-- Only a SHA-256 of each token is kept; the token itself is shown once, when it is created.
CREATE TABLE tokens (
    id           text COLLATE "C" PRIMARY KEY,
    user_id      text COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    token_hash   text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- The implicit local user and their personal workspace: memories stored before teams existed are theirs.
INSERT INTO users (id, name) VALUES ('00000000-0000-7000-8000-000000000001', 'local');
INSERT INTO workspaces (id, name, personal_of)
VALUES ('00000000-0000-7000-8000-000000000002', '~local', '00000000-0000-7000-8000-000000000001');
INSERT INTO memberships (workspace_id, user_id, role)
VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 'owner');
