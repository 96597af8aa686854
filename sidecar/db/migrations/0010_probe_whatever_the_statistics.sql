-- 0010_probe_whatever_the_statistics: the statements that look rows up in the growing tables
-- (the mirror stream) from PL/pgSQL probe an index per row, whatever the table's statistics
-- said when the plan was made.
--
-- Why: PL/pgSQL keeps a plan per statement per session. Planned while a table was small (a
-- fresh deployment, the first minutes after a bootstrap), a join hash-joined a sequential scan
-- of the whole table, and that plan stayed with the session as the table grew:
-- - append_mirror's check of 0006 (is any record already in the stream?): on one long-lived
--   connection an append went from 0.6 ms to 4 ms a call over 30,000 records, while a fresh
--   connection stayed at 0.4 ms (docs/benchmarks.md). Capture's writer holds its connection
--   for good, so its appends, on the customer path, would have slowed without bound until an
--   ANALYZE happened to replan them. Its general path also counted the stream's tail to move
--   the head: it now moves it by what it inserted.
-- - the SLO trigger of 0007 (each comparison's outcome record, for freshness): a scan of
--   mirror_events in every applier transaction.
-- Lateral subqueries (OFFSET 0 keeps them apart) probe the unique indexes instead. Same
-- guarantees, same signatures; tests/integration/test_capture.py reads the plans.

CREATE OR REPLACE FUNCTION append_mirror(
    p_partitions  integer[],
    p_kinds       text[],
    p_request_ids text[],
    p_routes      text[],
    p_contents    jsonb[],
    p_trace_ids   text[]
) RETURNS bigint[]
LANGUAGE plpgsql SET search_path FROM CURRENT SET jit = off AS $$
DECLARE
    v_head bigint;
    v_n    integer := coalesce(cardinality(p_kinds), 0);
    v_seqs bigint[];
    v_added bigint;
BEGIN
    SELECT seq INTO v_head FROM mirror_head FOR UPDATE;
    IF NOT EXISTS (SELECT 1
                   FROM unnest(p_request_ids, p_kinds) AS u (request_id, kind)
                   CROSS JOIN LATERAL (
                       SELECT 1 FROM mirror_events e
                       WHERE e.request_id = u.request_id AND e.kind = u.kind OFFSET 0
                   ) e)
       AND (SELECT count(DISTINCT (u.request_id, u.kind))
            FROM unnest(p_request_ids, p_kinds) AS u (request_id, kind)) = v_n
    THEN
        INSERT INTO mirror_events (seq, partition, kind, request_id, route, content, trace_id)
        SELECT v_head + u.n, u.partition, u.kind, u.request_id, u.route, u.content, u.trace_id
        FROM unnest(p_partitions, p_kinds, p_request_ids, p_routes, p_contents, p_trace_ids)
             WITH ORDINALITY AS u (partition, kind, request_id, route, content, trace_id, n);
        UPDATE mirror_head SET seq = v_head + v_n;
        RETURN ARRAY(SELECT v_head + g FROM generate_series(1, v_n) AS g ORDER BY g);
    END IF;

    -- a record already appended (a retried capture) or twice in the group: keep its seq
    WITH input AS (
        SELECT u.*, e.seq AS existing,
               row_number() OVER (PARTITION BY u.request_id, u.kind ORDER BY u.n) AS copy
        FROM unnest(p_partitions, p_kinds, p_request_ids, p_routes, p_contents, p_trace_ids)
             WITH ORDINALITY AS u (partition, kind, request_id, route, content, trace_id, n)
        LEFT JOIN LATERAL (
            SELECT e.seq FROM mirror_events e
            WHERE e.request_id = u.request_id AND e.kind = u.kind OFFSET 0
        ) e ON true
    ), fresh AS (
        SELECT i.*, v_head + row_number() OVER (ORDER BY i.n) AS seq
        FROM input i WHERE i.existing IS NULL AND i.copy = 1
    ), inserted AS (
        INSERT INTO mirror_events (seq, partition, kind, request_id, route, content, trace_id)
        SELECT seq, partition, kind, request_id, route, content, trace_id FROM fresh
        RETURNING seq
    )
    SELECT array_agg(coalesce(i.existing, f.seq, first.seq) ORDER BY i.n),
           (SELECT count(*) FROM inserted)
    INTO v_seqs, v_added
    FROM input i
    LEFT JOIN fresh f ON f.n = i.n
    LEFT JOIN fresh first ON first.request_id = i.request_id AND first.kind = i.kind;
    UPDATE mirror_head SET seq = v_head + v_added;  -- what this call inserted (the head is ours)
    RETURN v_seqs;
END $$;

CREATE OR REPLACE FUNCTION comparisons_count_for_slos() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_fresh interval := make_interval(secs => coalesce(
        (SELECT seconds FROM slo_thresholds WHERE slo = 'shadow_freshness'), 30));
BEGIN
    INSERT INTO slo_minutes AS m (slo, minute, good, total)
    SELECT e.slo, date_trunc('minute', n.compared_at), count(*) FILTER (WHERE e.good), count(*)
    FROM new_rows n
    LEFT JOIN LATERAL (
        SELECT o.recorded_at FROM mirror_events o WHERE o.seq = n.seq OFFSET 0
    ) o ON true
    CROSS JOIN LATERAL (VALUES
        -- legacy's own errors and skipped requests say nothing of the ledger's consistency
        ('shadow_consistency', n.outcome IN ('match', 'mismatch', 'ledger_error'),
         n.outcome <> 'ledger_error' AND NOT n.monetary),
        ('shadow_freshness', o.recorded_at IS NOT NULL,
         n.compared_at - o.recorded_at <= v_fresh)
    ) AS e (slo, counted, good)
    WHERE e.counted
    GROUP BY e.slo, date_trunc('minute', n.compared_at)
    ON CONFLICT (slo, minute) DO UPDATE
        SET good = m.good + EXCLUDED.good, total = m.total + EXCLUDED.total;
    RETURN NULL;
END $$;
