-- 0005_comparison_accounts: every account a compared request touched, so a divergence is
-- listed under each of them (a payment that diverged shows on the payee's account too).

ALTER TABLE comparisons ADD COLUMN accounts text[] NOT NULL DEFAULT '{}';
CREATE INDEX comparisons_divergent_accounts ON comparisons USING gin (accounts)
    WHERE outcome = 'mismatch';

CREATE OR REPLACE FUNCTION record_comparisons(
    p_rows       jsonb,
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
