-- Rolling a key (issue 18): the new key names the key it replaced, the old key its successor.
-- Keys are never deleted; SET NULL only keeps a manual clean-up from failing.
ALTER TABLE api_keys
    ADD COLUMN rolled_from uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    ADD COLUMN rolled_to   uuid REFERENCES api_keys (id) ON DELETE SET NULL;

-- The audit trail records rolls: key.rolled on the old key (its expiry lowered, its
-- successor named), key.created on the new one, in the same transaction.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check
    CHECK (action IN ('key.created', 'key.revoked', 'key.rolled'));
