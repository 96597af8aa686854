-- 0009_ledger_answers: the answer the ledger gave under each legacy idempotency key, per route
-- (ledger-primary, ledger-only), so a retry with the same key gets the same answer, ids
-- included, as the legacy API gives it.
--
-- Guarantees (tests/integration/test_ledger_primary.py): one answer per route and key; the
-- first stored wins, and every later request with that key is answered with it.

CREATE TABLE ledger_answers (
    route       text NOT NULL,
    key         text NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 512),
    status      integer NOT NULL CHECK (status BETWEEN 200 AND 599),
    body        jsonb NOT NULL,
    answered_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (route, key)
);
