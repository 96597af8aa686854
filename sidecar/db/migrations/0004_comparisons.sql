-- 0004_comparisons: what the shadow applier found for each mirrored request, kept durably.
--
-- Guarantees (tests/contract/test_comparison_store.py):
-- - record_comparisons stores a group of comparisons and moves the comparing consumer's
--   offsets in one transaction: after a crash the applier redoes the whole group or none of it.
-- - A request is compared once: recording it again keeps the first record (the applier redoing
--   a group it had committed just before a crash).
-- - comparisons is append-only (triage, in a later migration, is a separate table).

CREATE TABLE comparisons (
    request_id   text COLLATE "C" PRIMARY KEY,
    seq          bigint NOT NULL CHECK (seq > 0),         -- the outcome's place in the stream
    intent_seq   bigint NOT NULL CHECK (intent_seq > 0),
    partition    integer NOT NULL CHECK (partition >= 0),
    route        text NOT NULL,
    operation    text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN
                     ('match', 'mismatch', 'legacy_error', 'ledger_error', 'skipped')),
    kinds        text[] NOT NULL DEFAULT '{}',
    monetary     boolean NOT NULL DEFAULT false,
    account_id   text,
    accounts     text[] NOT NULL DEFAULT '{}',             -- every account it touched
    differences  jsonb NOT NULL DEFAULT '[]',            -- both sides' values, field by field
    at_risk      jsonb NOT NULL DEFAULT '{}',            -- minor units per currency
    ledger_seq   bigint,                                 -- the ledger event that decided it
    trace_id     text,
    detail       text,
    compared_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX comparisons_seq ON comparisons (seq);
CREATE INDEX comparisons_divergent ON comparisons (account_id, seq) WHERE outcome = 'mismatch';
-- a divergence is listed under every account it touched (a payment's payee too)
CREATE INDEX comparisons_divergent_accounts ON comparisons USING gin (accounts)
    WHERE outcome = 'mismatch';

CREATE TRIGGER comparisons_append_only BEFORE UPDATE OR DELETE ON comparisons
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER comparisons_no_truncate BEFORE TRUNCATE ON comparisons
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE FUNCTION record_comparisons(
    p_rows       jsonb,        -- an array of comparison objects, keys as the columns
    p_consumers  text[],
    p_partitions integer[],
    p_seqs       bigint[]
) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT SET jit = off AS $$
DECLARE
    v_count integer;
BEGIN
    INSERT INTO comparisons (request_id, seq, intent_seq, partition, route, operation, outcome,
                             kinds, monetary, account_id, accounts, differences, at_risk,
                             ledger_seq, trace_id, detail)
    SELECT r.request_id, r.seq, r.intent_seq, r.partition, r.route, r.operation, r.outcome,
           coalesce(r.kinds, '{}'), coalesce(r.monetary, false), r.account_id,
           coalesce(r.accounts, '{}'), coalesce(r.differences, '[]'), coalesce(r.at_risk, '{}'),
           r.ledger_seq, r.trace_id, r.detail
    FROM jsonb_to_recordset(p_rows) AS r (
        request_id text, seq bigint, intent_seq bigint, partition integer, route text,
        operation text, outcome text, kinds text[], monetary boolean, account_id text,
        accounts text[], differences jsonb, at_risk jsonb, ledger_seq bigint, trace_id text,
        detail text)
    ON CONFLICT (request_id) DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    INSERT INTO mirror_offsets (consumer, partition, seq)
    SELECT c, p, max(s) FROM unnest(p_consumers, p_partitions, p_seqs) AS u (c, p, s)
    GROUP BY c, p
    ON CONFLICT (consumer, partition)
        DO UPDATE SET seq = GREATEST(mirror_offsets.seq, EXCLUDED.seq);
    RETURN v_count;
END $$;
