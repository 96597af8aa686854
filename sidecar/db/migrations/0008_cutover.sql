-- 0008_cutover: the cutover flag, the admin API's tokens, divergence triage and the audit log.
--
-- Guarantees (tests/integration/test_cutover_store.py):
-- - The flag is one row at a version; every change writes the next version, so instances that
--   poll the version see each change once and in order.
-- - The audit log is append-only (UPDATE, DELETE and TRUNCATE refused by triggers) and
--   hash-chained by append_audit(): hash = sha256(previous hash || seq as 8 big-endian bytes ||
--   content as UTF-8), the event log's rule (sidecar/domain/chain.py), so `ledger verify`
--   checks both the same way. append_audit locks the head: appends are serialised, gap-free.
-- - A token is stored as the SHA-256 of its secret, never the secret.

CREATE TABLE flag_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint NOT NULL CHECK (version >= 0),
    -- FlagRules.document()'s default and cohorts; version 0: nothing set yet (the sidecar's
    -- configured proxy.mode is the default until the first change)
    default_mode text CHECK (default_mode IN ('legacy', 'shadow', 'ledger-primary', 'ledger-only')),
    cohorts    jsonb NOT NULL DEFAULT '[]',
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO flag_state (version) VALUES (0);

CREATE TABLE api_tokens (
    id          text COLLATE "C" PRIMARY KEY CHECK (id ~ '^[a-z0-9]{12}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'release_manager', 'admin')),
    secret_hash bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by  text NOT NULL,
    revoked_at  timestamptz
);

-- the operator's verdict on a divergence (a stored comparison); its history is the audit log
CREATE TABLE divergence_triage (
    seq        bigint PRIMARY KEY,  -- comparisons.seq
    state      text NOT NULL CHECK (state IN ('acknowledged', 'resolved', 'expected_noise')),
    note       text CHECK (length(note) <= 2000),
    actor      text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE audit_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint NOT NULL,
    hash      bytea NOT NULL CHECK (octet_length(hash) = 32)
);
INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE TABLE audit_log (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    action      text NOT NULL,
    allowed     boolean NOT NULL,   -- false: a refused attempt, recorded too
    content     text NOT NULL,      -- the canonical record (sidecar/domain/audit.py)
    hash        bytea NOT NULL CHECK (octet_length(hash) = 32)
);
CREATE INDEX audit_log_by_action ON audit_log (action, seq);

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE FUNCTION append_audit(p_actor text, p_action text, p_allowed boolean, p_content text)
RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_seq  bigint;
    v_hash bytea;
BEGIN
    SELECT seq + 1, hash INTO v_seq, v_hash FROM audit_head FOR UPDATE;
    v_hash := sha256(v_hash || int8send(v_seq) || convert_to(p_content, 'UTF8'));
    INSERT INTO audit_log (seq, actor, action, allowed, content, hash)
    VALUES (v_seq, p_actor, p_action, p_allowed, p_content, v_hash);
    UPDATE audit_head SET seq = v_seq, hash = v_hash;
    RETURN v_seq;
END $$;

-- each reconciliation sweep's result, for the readiness report's "last sweep clean" check
CREATE TABLE reconcile_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    accounts    integer NOT NULL CHECK (accounts >= 0),
    matched     integer NOT NULL CHECK (matched >= 0),
    drifted     integer NOT NULL CHECK (drifted >= 0),
    unreadable  integer NOT NULL CHECK (unreadable >= 0)
);
