-- 0007_slo_minutes: good and total events per SLO per minute, durable, so attainment and error
-- budgets over any window are a sum of a few rows (sidecar/domain/slo.py).
--
-- Guarantees (tests/integration/test_slo.py):
-- - Comparisons count towards shadow_consistency and shadow_freshness in the transaction that
--   stores them (a trigger): exact, never counted twice (a comparison is stored once).
-- - The customer path's counts (availability, latency, shadow_completeness) are added by each
--   sidecar instance every second, as deltas of its running totals.

CREATE TABLE slo_minutes (
    slo    text NOT NULL,
    minute timestamptz NOT NULL,
    good   bigint NOT NULL DEFAULT 0 CHECK (good >= 0),
    total  bigint NOT NULL DEFAULT 0 CHECK (total >= good),
    PRIMARY KEY (slo, minute)
);

-- thresholds the SLO file sets and the trigger needs (written when the worker starts)
CREATE TABLE slo_thresholds (
    slo       text PRIMARY KEY,
    seconds   double precision NOT NULL CHECK (seconds > 0)
);

CREATE FUNCTION comparisons_count_for_slos() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_fresh interval := make_interval(secs => coalesce(
        (SELECT seconds FROM slo_thresholds WHERE slo = 'shadow_freshness'), 30));
BEGIN
    INSERT INTO slo_minutes AS m (slo, minute, good, total)
    SELECT e.slo, date_trunc('minute', n.compared_at), count(*) FILTER (WHERE e.good), count(*)
    FROM new_rows n
    LEFT JOIN mirror_events o ON o.seq = n.seq
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

CREATE TRIGGER comparisons_count_for_slos AFTER INSERT ON comparisons
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION comparisons_count_for_slos();
