-- Per-key request rate override (requests per second); NULL means the configured default.
ALTER TABLE api_keys
    ADD COLUMN rate_limit_per_second double precision
    CHECK (rate_limit_per_second > 0 AND rate_limit_per_second <= 1000000);
