-- 0002_mirror: the mirror stream (captured legacy requests and their answers) and consumer
-- offsets, in the ledger's schema so the applier can commit ledger writes and its offset in
-- one transaction.
--
-- Guarantees, kept by the database (tests/contract/test_mirror_log.py):
-- - append_mirror gives a group of records consecutive seqs after the head, in commit order
--   (one mirror_head row, locked for the rest of the transaction): the stream has no gaps.
-- - A request's intent and its outcome are each recorded once: appending one again returns
--   the seq it already has and adds nothing (a capture retried after an ambiguous failure).
-- - mirror_events is append-only, for its owner too.
-- - A consumer's offset per partition only moves forward.

CREATE TABLE mirror_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint NOT NULL CHECK (seq >= 0)
);
INSERT INTO mirror_head (seq) VALUES (0);

CREATE TABLE mirror_events (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    partition   integer NOT NULL CHECK (partition >= 0),
    kind        text NOT NULL CHECK (kind IN ('intent', 'outcome')),
    request_id  text COLLATE "C" NOT NULL CHECK (octet_length(request_id) BETWEEN 1 AND 128),
    route       text,
    content     jsonb NOT NULL,
    trace_id    text,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT mirror_events_once UNIQUE (request_id, kind)
);
CREATE INDEX mirror_events_partition ON mirror_events (partition, seq);

CREATE TRIGGER mirror_events_append_only BEFORE UPDATE OR DELETE ON mirror_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER mirror_events_no_truncate BEFORE TRUNCATE ON mirror_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TABLE mirror_offsets (
    consumer  text NOT NULL CHECK (consumer ~ '^[a-z][a-z0-9_.-]*$' AND octet_length(consumer) <= 64),
    partition integer NOT NULL CHECK (partition >= 0),
    seq       bigint NOT NULL CHECK (seq >= 0),
    PRIMARY KEY (consumer, partition)
);

CREATE FUNCTION mirror_offsets_forward_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq < OLD.seq THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS001',
            MESSAGE = format('offset of %s on partition %s only moves forward (%s -> %s)',
                             OLD.consumer, OLD.partition, OLD.seq, NEW.seq);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER mirror_offsets_forward_only BEFORE UPDATE ON mirror_offsets
    FOR EACH ROW EXECUTE FUNCTION mirror_offsets_forward_only();

-- One group commit: the records in order; returns each one's seq (the existing seq for a
-- record already appended).
CREATE FUNCTION append_mirror(
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
    v_seqs bigint[];
BEGIN
    SELECT seq INTO v_head FROM mirror_head FOR UPDATE;
    WITH input AS (
        SELECT u.*, e.seq AS existing,
               -- a request_id+kind twice in one call: the first one counts
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
    -- (a data-modifying WITH runs to completion whether or not the query reads it)
    UPDATE mirror_head SET seq = v_head + (
        SELECT count(*) FROM mirror_events WHERE seq > v_head
    );
    RETURN v_seqs;
END $$;
