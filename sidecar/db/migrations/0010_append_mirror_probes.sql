-- 0010_append_mirror_probes: append_mirror looks for records already in the stream with one
-- index probe per record, whatever the table's statistics said when the plan was made.
--
-- Why: PL/pgSQL keeps a plan per statement per session. The check of 0006 joined the group
-- with mirror_events; planned while the stream was small (a fresh deployment, the first
-- minutes after a bootstrap), it hash-joined a sequential scan of the whole table, and that
-- plan stayed with the session as the stream grew: on one long-lived connection an append
-- went from 0.6 ms to 4 ms a call over 30,000 records, while a fresh connection stayed at
-- 0.4 ms (docs/benchmarks.md). Capture's writer holds its connection for good, so its appends
-- would have slowed without bound until an ANALYZE happened to replan them. The lateral
-- subqueries (OFFSET 0 keeps them apart) probe the unique index (request_id, kind) per record,
-- and the general path moves the head by what it inserted instead of counting the stream's
-- tail (a scan when planned on a small stream).
-- Same guarantees, same signature; tests/integration/test_capture.py checks the plan.

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
