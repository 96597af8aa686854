-- 0006_append_mirror_fast_path: append_mirror takes a short path in the usual case, every
-- record of the group new and in it once. The general path (0002) joins, numbers and de-duplicates;
-- on the customer path, where durable capture waits for this commit twice per request, it
-- cost about twice a plain insert (docs/benchmarks.md). Same guarantees, same signature.

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
BEGIN
    SELECT seq INTO v_head FROM mirror_head FOR UPDATE;
    IF NOT EXISTS (SELECT 1
                   FROM unnest(p_request_ids, p_kinds) AS u (request_id, kind)
                   JOIN mirror_events e ON e.request_id = u.request_id AND e.kind = u.kind)
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
        LEFT JOIN mirror_events e ON e.request_id = u.request_id AND e.kind = u.kind
    ), fresh AS (
        SELECT i.*, v_head + row_number() OVER (ORDER BY i.n) AS seq
        FROM input i WHERE i.existing IS NULL AND i.copy = 1
    ), inserted AS (
        INSERT INTO mirror_events (seq, partition, kind, request_id, route, content, trace_id)
        SELECT seq, partition, kind, request_id, route, content, trace_id FROM fresh
        RETURNING seq
    )
    SELECT array_agg(coalesce(i.existing, f.seq, first.seq) ORDER BY i.n) INTO v_seqs
    FROM input i
    LEFT JOIN fresh f ON f.n = i.n
    LEFT JOIN fresh first ON first.request_id = i.request_id AND first.kind = i.kind;
    UPDATE mirror_head SET seq = v_head + (
        SELECT count(*) FROM mirror_events WHERE seq > v_head
    );
    RETURN v_seqs;
END $$;
