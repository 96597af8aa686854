-- 0005_capture_counts: what each sidecar instance served and captured, so that capture
-- completeness can be measured from outside the process (ledger-sidecar stream status).
-- One row per instance, overwritten with its running totals every second and at stop.

CREATE TABLE capture_counts (
    instance    text PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    served      bigint NOT NULL DEFAULT 0 CHECK (served >= 0),     -- requests answered
    mapped      bigint NOT NULL DEFAULT 0 CHECK (mapped >= 0),     -- of those, on mapped routes
    recorded    bigint NOT NULL DEFAULT 0 CHECK (recorded >= 0),   -- records handed to capture
    committed   bigint NOT NULL DEFAULT 0 CHECK (committed >= 0),
    late        bigint NOT NULL DEFAULT 0 CHECK (late >= 0),
    dropped     jsonb NOT NULL DEFAULT '{}'                        -- by reason
);
