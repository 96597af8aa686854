-- 0003_applier: a ledger batch and the stream offsets it consumed, in one transaction.
--
-- Guarantees (tests/contract/test_ledger_store.py, checkpoint cases):
-- - post_batch_at commits the batch exactly as post_batch does and moves each named consumer's
--   offset on each named partition to the given seq in the same transaction; a refused batch
--   moves no offset. An offset never moves back (GREATEST, and mirror_offsets' trigger).

CREATE FUNCTION post_batch_at(
    p_events          text[],
    p_account_ids     text[],
    p_balances_before bigint[],
    p_balances_after  bigint[],
    p_consumers       text[],     -- one entry per (consumer, partition) consumed
    p_partitions      integer[],
    p_seqs            bigint[]
) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT SET jit = off AS $$
DECLARE
    v_first bigint;
BEGIN
    v_first := post_batch(p_events, p_account_ids, p_balances_before, p_balances_after);
    INSERT INTO mirror_offsets (consumer, partition, seq)
    SELECT c, p, max(s) FROM unnest(p_consumers, p_partitions, p_seqs) AS u (c, p, s)
    GROUP BY c, p
    ON CONFLICT (consumer, partition)
        DO UPDATE SET seq = GREATEST(mirror_offsets.seq, EXCLUDED.seq);
    RETURN v_first;
END $$;
