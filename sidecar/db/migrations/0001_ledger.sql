-- 0001_ledger: accounts, decided transfers, postings, the hash-chained event log, and post_batch.
--
-- Names are unqualified: the migrator sets search_path to the target schema, and every function
-- captures it (SET search_path FROM CURRENT), so one database can hold several ledgers
-- (the live one, a rebuild, one per test).
--
-- Guarantees, each kept by the database itself (tests/integration/test_database_guards.py):
-- - An entry whose postings do not balance per currency, or has fewer than two postings, is
--   refused (postings_balanced statement trigger; transfers_have_postings constraint trigger).
-- - A posting's currency is its account's currency (composite foreign key).
-- - A balance never crosses its account's floor or overdraft limit (balance_within_limit).
-- - Idempotency keys are unique; a transfer is reversed by at most one posted reversal.
-- - events, transfers and postings are append-only: UPDATE, DELETE and TRUNCATE fail, for the
--   table owner too, unless the migrator set ledger_sidecar.migrating for its transaction.
--   accounts rows cannot be deleted and their identity columns cannot change.
-- - post_batch appends events with a gap-free seq in commit order (one log_head row, locked
--   for the rest of the transaction) and hash = sha256(prev || int8(seq) || utf8(content)).
-- - post_batch refuses a plan made from stale balances (SQLSTATE LS409) so no writer can
--   overwrite a balance another writer changed since it read it.

CREATE TABLE accounts (
    id                    text PRIMARY KEY
                          CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$'),
    currency              text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    currency_exponent     smallint NOT NULL CHECK (currency_exponent BETWEEN 0 AND 18),
    normal_side           text NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    status                text NOT NULL CHECK (status IN ('open', 'frozen', 'closed')),
    overdraft_limit_minor bigint CHECK (overdraft_limit_minor >= 0),
    balance_minor         bigint NOT NULL DEFAULT 0,
    opened_seq            bigint NOT NULL UNIQUE,
    UNIQUE (id, currency),
    CONSTRAINT balance_within_limit
        CHECK (overdraft_limit_minor IS NULL OR balance_minor >= -overdraft_limit_minor)
);

CREATE TABLE log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint NOT NULL,
    hash      bytea NOT NULL CHECK (octet_length(hash) = 32),
    batches   bigint NOT NULL
);
INSERT INTO log_head (seq, hash, batches) VALUES (0, decode(repeat('00', 32), 'hex'), 0);

CREATE TABLE events (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    batch       bigint NOT NULL,
    type        text NOT NULL
                CHECK (type IN ('account_opened', 'transfer_posted', 'transfer_rejected')),
    content     text NOT NULL,
    hash        bytea NOT NULL CHECK (octet_length(hash) = 32),
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE transfers (
    key         text PRIMARY KEY CHECK (key ~ '^[\x21-\x7e]{1,128}$'),
    fingerprint bytea NOT NULL,
    status      text NOT NULL CHECK (status IN ('posted', 'rejected')),
    rejection   text CHECK ((status = 'rejected') = (rejection IS NOT NULL))
                CHECK (rejection IN ('insufficient_funds', 'account_not_open',
                                     'balance_out_of_range')),
    reverses    text REFERENCES transfers (key),
    metadata    jsonb NOT NULL DEFAULT '{}',
    seq         bigint NOT NULL UNIQUE REFERENCES events (seq)
);
CREATE UNIQUE INDEX transfers_reversed_once ON transfers (reverses)
    WHERE status = 'posted' AND reverses IS NOT NULL;

CREATE TABLE postings (
    transfer_key        text NOT NULL REFERENCES transfers (key),
    leg                 smallint NOT NULL CHECK (leg >= 0),
    account_id          text NOT NULL,
    currency            text NOT NULL,
    amount_minor        bigint NOT NULL CHECK (amount_minor <> 0),
    balance_after_minor bigint NOT NULL,
    seq                 bigint NOT NULL,  -- the event that posted it
    PRIMARY KEY (seq, leg),
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency)
);
-- point-in-time balance: the last posting at or before a seq
CREATE INDEX postings_account_history ON postings (account_id, seq, leg);

-- ---------------------------------------------------------------------------------------------
-- append-only

CREATE FUNCTION refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('ledger_sidecar.migrating', true) = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'LS001',
        MESSAGE = format('%s is append-only: %s refused', TG_TABLE_NAME, TG_OP),
        HINT = 'corrections are new entries (reversals); schema changes go through migrations';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER log_head_no_delete BEFORE DELETE ON log_head
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER log_head_no_truncate BEFORE TRUNCATE ON log_head
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE FUNCTION accounts_identity_fixed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('ledger_sidecar.migrating', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF (NEW.id, NEW.currency, NEW.currency_exponent, NEW.normal_side, NEW.opened_seq)
       IS DISTINCT FROM
       (OLD.id, OLD.currency, OLD.currency_exponent, OLD.normal_side, OLD.opened_seq) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS001',
            MESSAGE = format('account %s: id, currency, side and opening are fixed', OLD.id);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_identity_fixed BEFORE UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_identity_fixed();

CREATE FUNCTION log_head_forward_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('ledger_sidecar.migrating', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF NEW.seq < OLD.seq OR NEW.batches < OLD.batches THEN
        RAISE EXCEPTION USING ERRCODE = 'LS001', MESSAGE = 'the log head only moves forward';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER log_head_forward_only BEFORE UPDATE ON log_head
    FOR EACH ROW EXECUTE FUNCTION log_head_forward_only();

-- ---------------------------------------------------------------------------------------------
-- double entry

CREATE FUNCTION postings_balanced() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    bad record;
BEGIN
    -- grouped by the posting event: every posting of one entry carries that entry's seq
    SELECT p.seq, p.currency, sum(p.amount_minor) AS off INTO bad
    FROM postings p
    WHERE p.seq IN (SELECT DISTINCT seq FROM new_postings)
    GROUP BY p.seq, p.currency
    HAVING sum(p.amount_minor) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'postings_balanced',
            MESSAGE = format('entry at seq %s does not balance in %s: off by %s',
                             bad.seq, bad.currency, bad.off);
    END IF;
    SELECT p.seq, min(t.status) AS status, count(*) AS legs,
           count(DISTINCT p.transfer_key) AS keys, bool_and(t.seq = p.seq) AS same INTO bad
    FROM postings p LEFT JOIN transfers t ON t.key = p.transfer_key
    WHERE p.seq IN (SELECT DISTINCT seq FROM new_postings)
    GROUP BY p.seq
    HAVING count(*) < 2 OR count(DISTINCT p.transfer_key) <> 1
        OR bool_and(t.status = 'posted' AND t.seq = p.seq) IS NOT TRUE
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'postings_balanced',
            MESSAGE = format('the %s postings at seq %s do not form one posted entry',
                             bad.legs, bad.seq);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_balanced();

CREATE FUNCTION transfers_have_postings() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF (SELECT count(*) FROM postings WHERE seq = NEW.seq) < 2 THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'transfers_have_postings',
            MESSAGE = format('posted transfer %s has fewer than two postings', NEW.key);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER transfers_have_postings AFTER INSERT ON transfers
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.status = 'posted')
    EXECUTE FUNCTION transfers_have_postings();

-- ---------------------------------------------------------------------------------------------
-- the posting function: one call writes and seals one planned batch

CREATE FUNCTION post_batch(
    p_events          text[],   -- canonical event documents, in order
    p_account_ids     text[],   -- every account the plan consulted
    p_balances_before bigint[], -- the balance the plan assumed (0 for accounts it opens)
    p_balances_after  bigint[]  -- the balance the plan leaves
) RETURNS bigint                -- seq of the first event (head + 1)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_seq     bigint;
    v_hash    bytea;
    v_batch   bigint;
    v_first   bigint;
    v_docs    jsonb[];
    v_types   text[];
    v_seqs    bigint[];
    v_hashes  bytea[];
    v_stale   text;
    i         integer;
BEGIN
    IF coalesce(array_length(p_events, 1), 0) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'post_batch needs at least one event';
    END IF;

    -- 1. lock every consulted account in id order (no deadlocks) and check the plan's view
    SELECT string_agg(g.id, ', ' ORDER BY g.id) INTO v_stale
    FROM unnest(p_account_ids, p_balances_before) AS g (id, before)
    LEFT JOIN (
        SELECT a.id, a.balance_minor FROM accounts a
        WHERE a.id = ANY (p_account_ids)
        ORDER BY a.id
        FOR UPDATE
    ) AS cur ON cur.id = g.id
    WHERE cur.balance_minor IS DISTINCT FROM g.before
      AND NOT (cur.id IS NULL AND g.before = 0);
    IF v_stale IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS409',
            MESSAGE = 'balances changed since the batch was planned',
            DETAIL = v_stale;
    END IF;

    -- 2. seal: take the log head (serialises commits, so seq order is commit order)
    SELECT seq, hash, batches + 1 INTO v_seq, v_hash, v_batch FROM log_head FOR UPDATE;
    v_first := v_seq + 1;
    v_docs := ARRAY (SELECT d::jsonb FROM unnest(p_events) WITH ORDINALITY AS u (d, n) ORDER BY n);
    v_types := ARRAY (SELECT d ->> 'type' FROM unnest(v_docs) WITH ORDINALITY AS u (d, n) ORDER BY n);
    v_seqs := ARRAY[]::bigint[];
    v_hashes := ARRAY[]::bytea[];
    FOR i IN 1 .. array_length(p_events, 1) LOOP
        v_seq := v_seq + 1;
        v_hash := sha256(v_hash || int8send(v_seq) || convert_to(p_events[i], 'UTF8'));
        v_seqs := v_seqs || v_seq;
        v_hashes := v_hashes || v_hash;
    END LOOP;
    INSERT INTO events (seq, batch, type, content, hash)
    SELECT s, v_batch, t, c, h FROM unnest(v_seqs, v_types, p_events, v_hashes) AS u (s, t, c, h);
    UPDATE log_head SET seq = v_seq, hash = v_hash, batches = v_batch;

    -- 3. rows derived from the event documents: accounts, transfers, postings
    INSERT INTO accounts (id, currency, currency_exponent, normal_side, status,
                          overdraft_limit_minor, opened_seq)
    SELECT d ->> 'account', d ->> 'currency', (d ->> 'exponent')::smallint, d ->> 'normal_side',
           d ->> 'status', (d ->> 'overdraft_limit_minor')::bigint, v_first + n - 1
    FROM unnest(v_docs) WITH ORDINALITY AS u (d, n)
    WHERE d ->> 'type' = 'account_opened'
    ORDER BY n;

    INSERT INTO transfers (key, fingerprint, status, rejection, reverses, metadata, seq)
    SELECT d ->> 'key', decode(d ->> 'fingerprint', 'hex'),
           CASE d ->> 'type' WHEN 'transfer_posted' THEN 'posted' ELSE 'rejected' END,
           d ->> 'rejection', d ->> 'reverses', d -> 'metadata', v_first + n - 1
    FROM unnest(v_docs) WITH ORDINALITY AS u (d, n)
    WHERE d ->> 'type' IN ('transfer_posted', 'transfer_rejected')
    ORDER BY n;

    INSERT INTO postings (transfer_key, leg, account_id, currency, amount_minor,
                          balance_after_minor, seq)
    SELECT d ->> 'key', (l - 1)::smallint, p ->> 'account', p ->> 'currency',
           (p ->> 'amount_minor')::bigint, (p ->> 'balance_after_minor')::bigint, v_first + n - 1
    FROM unnest(v_docs) WITH ORDINALITY AS u (d, n),
         jsonb_array_elements(d -> 'postings') WITH ORDINALITY AS x (p, l)
    WHERE d ->> 'type' = 'transfer_posted';

    -- 4. balances: the plan's netted result, checked against the postings it planned
    SELECT string_agg(coalesce(g.id, moved.account_id), ', ') INTO v_stale
    FROM (
        SELECT g.id, g.after - g.before AS change, a.normal_side
        FROM unnest(p_account_ids, p_balances_before, p_balances_after) AS g (id, before, after)
        JOIN accounts a ON a.id = g.id
    ) AS g
    FULL JOIN (
        SELECT p ->> 'account' AS account_id, sum((p ->> 'amount_minor')::bigint) AS net
        FROM unnest(v_docs) AS d, jsonb_array_elements(d -> 'postings') AS p
        WHERE d ->> 'type' = 'transfer_posted'
        GROUP BY 1
    ) AS moved ON moved.account_id = g.id
    WHERE g.id IS NULL
       OR g.change <> coalesce(CASE g.normal_side WHEN 'debit' THEN moved.net
                                                  ELSE -moved.net END, 0);
    IF v_stale IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS500',
            MESSAGE = 'planned balances disagree with the planned postings',
            DETAIL = v_stale;
    END IF;

    -- every posting's balance-after is the running balance up to it (point-in-time reads)
    SELECT string_agg(DISTINCT r.account_id, ', ') INTO v_stale
    FROM (
        SELECT x.p ->> 'account' AS account_id,
               (x.p ->> 'balance_after_minor')::bigint AS said,
               g.before + sum(CASE a.normal_side WHEN 'debit' THEN (x.p ->> 'amount_minor')::bigint
                                                 ELSE -(x.p ->> 'amount_minor')::bigint END)
                   OVER (PARTITION BY g.id ORDER BY u.n, x.l) AS running
        FROM unnest(v_docs) WITH ORDINALITY AS u (d, n),
             jsonb_array_elements(u.d -> 'postings') WITH ORDINALITY AS x (p, l),
             unnest(p_account_ids, p_balances_before) AS g (id, before),
             accounts a
        WHERE u.d ->> 'type' = 'transfer_posted' AND g.id = x.p ->> 'account' AND a.id = g.id
    ) AS r
    WHERE r.running <> r.said;
    IF v_stale IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS500',
            MESSAGE = 'planned balance-after values disagree with the running balances',
            DETAIL = v_stale;
    END IF;

    UPDATE accounts a SET balance_minor = g.after
    FROM unnest(p_account_ids, p_balances_after) AS g (id, after)
    WHERE a.id = g.id AND a.balance_minor <> g.after;

    RETURN v_first;
END $$;
