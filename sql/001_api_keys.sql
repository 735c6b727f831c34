-- API keys: one row per key; the secret is stored only as an argon2id hash.
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    space_id     text        NOT NULL,
    name         text        NOT NULL,
    lookup_id    text        NOT NULL UNIQUE,
    prefix       text        NOT NULL,
    secret_hash  text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);

-- The admin list: one space's keys, newest first.
CREATE INDEX api_keys_space_created ON api_keys (space_id, created_at DESC, id DESC);
