-- Audit trail of key changes, written in the same transaction as the change.
CREATE TABLE audit_events (
    id             bigserial   PRIMARY KEY,
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    space_id       text        NOT NULL,
    action         text        NOT NULL CHECK (action IN ('key.created', 'key.revoked')),
    key_id         uuid        NOT NULL,
    actor          text        NOT NULL,
    client_address text,
    request_id     text
);

-- The audit list: one space, newest first, paginated by id.
CREATE INDEX audit_events_space_id ON audit_events (space_id, id DESC);
