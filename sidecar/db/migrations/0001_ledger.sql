-- 0001_ledger: accounts, decided transfers, postings, the hash-chained event log, and post_batch.
--
-- Identifiers (account ids, keys, currency codes) are ASCII and compared bytewise (COLLATE "C"):
-- the same order on every server whatever its locale, and no locale lookups in hot indexes.
--
-- Names are unqualified: the migrator sets search_path to the target schema, and every function
-- captures it (SET search_path FROM CURRENT), so one database can hold several ledgers
-- (the live one, a rebuild, one per test).
--
-- Guarantees, each kept by the database itself (tests/integration/test_database_guards.py),
-- for any INSERT or UPDATE, not only post_batch's (with triggers on, as they always are
-- outside session_replication_role = replica, which only a superuser may set):
-- - An entry whose postings do not balance per currency, has fewer than two postings, or does
--   not have exactly the legs its transfer records, all inserted by one statement, is refused
--   (postings_balanced statement trigger).
-- - Every row refers to rows that exist and came before it: a posting to its transfer and to an
--   account in the posting's currency opened at an earlier seq, a transfer to its event of the
--   matching type, a reversal to a transfer decided earlier, an account to the account_opened
--   event that describes it (statement triggers with transition tables: one set-based check per
--   INSERT instead of one locking lookup per row, which cost more than the rest of a batch;
--   complete because the referenced rows can be neither deleted nor changed).
-- - The log head moves forward only, over exactly the events appended with it, and carries the
--   last one's hash; events beyond it are refused; the events a head advance seals have
--   exactly the rows they describe, and accounts opened there hold only what their postings
--   there moved (log_head_sealed_rows, deferred to commit, once per batch).
-- - A balance never crosses its account's floor or overdraft limit (balance_within_limit), and
--   post_batch refuses a plan that crosses one at the end of any entry or posts to an account
--   that is not open (LS500).
-- - Idempotency keys are unique; a transfer is reversed by at most one posted reversal.
-- - events, transfers and postings are append-only: UPDATE, DELETE and TRUNCATE fail, for the
--   table owner too, with no setting to switch that off. Accounts rows cannot be deleted and
--   only their balance changes.
-- - post_batch appends events with a gap-free seq in commit order (the log_head row is locked
--   first, for the rest of the transaction) and hash = sha256(prev || int8(seq) || utf8(content)).
-- - post_batch refuses a plan made from stale balances (SQLSTATE LS409) so no writer can
--   overwrite a balance another writer changed since it read it.
-- What the triggers cannot see, verify does: that each row's content equals its event's
-- (sidecar/verify.py), and a superuser with the triggers switched off.

-- Checked where a value is assigned (domains), not on every balance update (a table CHECK is
-- re-evaluated by each UPDATE of the row: regular expressions there cost a seventh of a batch).
CREATE DOMAIN account_id AS text COLLATE "C"
    CHECK (VALUE ~ '^[A-Za-z0-9][A-Za-z0-9._:@-]*$' AND octet_length(VALUE) <= 128);
CREATE DOMAIN currency_code AS text COLLATE "C" CHECK (VALUE ~ '^[A-Z]{3}$');

CREATE TABLE accounts (
    id                    account_id PRIMARY KEY,
    currency              currency_code NOT NULL,
    currency_exponent     smallint NOT NULL CHECK (currency_exponent BETWEEN 0 AND 18),
    normal_side           text NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    status                text NOT NULL CHECK (status IN ('open', 'frozen', 'closed')),
    overdraft_limit_minor bigint CHECK (overdraft_limit_minor >= 0),
    balance_minor         bigint NOT NULL DEFAULT 0,
    opened_seq            bigint NOT NULL UNIQUE,
    CONSTRAINT balance_within_limit
        CHECK (overdraft_limit_minor IS NULL OR balance_minor >= -overdraft_limit_minor)
) WITH (fillfactor = 70);  -- room on the page: balance updates stay HOT (no index writes)

-- equality lookups of accounts by id (every posting, every balance update) without walking a
-- text b-tree: about 2 us per transfer less in post_batch; balance updates stay HOT
CREATE INDEX accounts_id_hash ON accounts USING hash (id);

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
    -- printable ASCII, 1-128 characters (a bounded repeat like {1,128} makes PostgreSQL's
    -- regex engine build a large automaton: it was a tenth of a batch)
    key         text COLLATE "C" PRIMARY KEY
                CHECK (key ~ '^[\x21-\x7e]+$' AND octet_length(key) <= 128),
    fingerprint bytea NOT NULL,
    status      text NOT NULL CHECK (status IN ('posted', 'rejected')),
    rejection   text CHECK ((status = 'rejected') = (rejection IS NOT NULL))
                CHECK (rejection IN ('insufficient_funds', 'account_not_open',
                                     'balance_out_of_range')),
    reverses    text COLLATE "C",  -- the transfer it reverses: checked per statement
    metadata    jsonb NOT NULL DEFAULT '{}',
    legs        smallint NOT NULL  -- how many postings a posted transfer has
                CONSTRAINT transfers_legs
                CHECK (CASE status WHEN 'posted' THEN legs >= 2 ELSE legs = 0 END),
    seq         bigint NOT NULL UNIQUE  -- its event: checked per statement (transfers_recorded)
);
CREATE UNIQUE INDEX transfers_reversed_once ON transfers (reverses)
    WHERE status = 'posted' AND reverses IS NOT NULL;

CREATE TABLE postings (
    transfer_key        text COLLATE "C" NOT NULL,  -- its transfer: checked per statement (postings_balanced)
    leg                 smallint NOT NULL CHECK (leg >= 0),
    account_id          text COLLATE "C" NOT NULL,
    currency            text COLLATE "C" NOT NULL,
    amount_minor        bigint NOT NULL CHECK (amount_minor <> 0),
    balance_after_minor bigint NOT NULL,
    seq                 bigint NOT NULL,  -- the event that posted it
    PRIMARY KEY (seq, leg)
);
-- point-in-time balance: the last posting at or before a seq
CREATE INDEX postings_account_history ON postings (account_id, seq, leg);

-- ---------------------------------------------------------------------------------------------
-- append-only

-- No setting switches these off: a migration that must rewrite history disables the trigger
-- by name (ALTER TABLE ... DISABLE TRIGGER), which only the tables' owner may do.
CREATE FUNCTION refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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

-- Only the balance of an account moves. Status and overdraft limit are fixed too until an event
-- records their changes (the planner reads them, and the log must explain every decision).
CREATE FUNCTION accounts_identity_fixed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.currency, NEW.currency_exponent, NEW.normal_side, NEW.opened_seq,
        NEW.status, NEW.overdraft_limit_minor)
       IS DISTINCT FROM
       (OLD.id, OLD.currency, OLD.currency_exponent, OLD.normal_side, OLD.opened_seq,
        OLD.status, OLD.overdraft_limit_minor) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS001',
            MESSAGE = format('account %s: only the balance changes (id, currency, side, '
                             'opening, status and limit are fixed)', OLD.id);
    END IF;
    RETURN NEW;
END $$;
-- fires only for statements that name one of these columns: balance updates never pay for it
CREATE TRIGGER accounts_identity_fixed
    BEFORE UPDATE OF id, currency, currency_exponent, normal_side, opened_seq, status,
                     overdraft_limit_minor ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_identity_fixed();

CREATE FUNCTION log_head_forward_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq < OLD.seq OR NEW.batches < OLD.batches THEN
        RAISE EXCEPTION USING ERRCODE = 'LS001', MESSAGE = 'the log head only moves forward';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER log_head_forward_only BEFORE UPDATE ON log_head
    FOR EACH ROW EXECUTE FUNCTION log_head_forward_only();

-- Events are appended only up to the log head, which must be advanced first in the same
-- transaction (log_head_sealed_rows then checks the advance at commit): a stray event beyond the
-- head would otherwise take the next batch's sequence number and block every later commit.
CREATE FUNCTION events_within_head() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_beyond bigint;
BEGIN
    SELECT max(n.seq) INTO v_beyond FROM new_events n WHERE n.seq > (SELECT seq FROM log_head);
    IF v_beyond IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'events_within_head',
            MESSAGE = format('event %s is beyond the log head: advance the head first',
                             v_beyond);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER events_within_head AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_within_head();

-- An account row is what its account_opened event says, at that event's seq, opened at 0
-- (its balance at the commit of its batch is checked against its postings there).
CREATE FUNCTION accounts_opened_by_event() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, n.opened_seq INTO bad
    FROM new_accounts n
    LEFT JOIN events e ON e.seq = n.opened_seq AND e.type = 'account_opened'
    WHERE e.seq IS NULL
       OR (e.content::jsonb ->> 'account', e.content::jsonb ->> 'currency',
           (e.content::jsonb ->> 'exponent')::smallint, e.content::jsonb ->> 'normal_side',
           e.content::jsonb ->> 'status', (e.content::jsonb ->> 'overdraft_limit_minor')::bigint)
          IS DISTINCT FROM
          (n.id::text, n.currency::text, n.currency_exponent, n.normal_side, n.status,
           n.overdraft_limit_minor)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'accounts_opened_by_event',
            MESSAGE = format('account %s is not what an account_opened event at seq %s says',
                             bad.id, bad.opened_seq);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER accounts_opened_by_event AFTER INSERT ON accounts
    REFERENCING NEW TABLE AS new_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION accounts_opened_by_event();

-- ---------------------------------------------------------------------------------------------
-- double entry

CREATE FUNCTION postings_balanced() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Checks only this statement's rows: an entry's postings must all arrive in one statement, as
-- many as its transfer's legs, numbered 0..legs-1 (the primary key then refuses any later
-- posting to the same seq), so nothing outside new_postings needs reading.
DECLARE
    bad record;
BEGIN
    SELECT n.transfer_key, n.account_id, n.currency, n.seq INTO bad
    FROM new_postings n
    LEFT JOIN accounts a ON a.id = n.account_id AND a.currency = n.currency
                        AND a.opened_seq < n.seq
    WHERE a.id IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503',
            CONSTRAINT = 'postings_account',
            MESSAGE = format('posting of %s to %s in %s at seq %s: no such account in that '
                             'currency opened before it',
                             bad.transfer_key, bad.account_id, bad.currency, bad.seq);
    END IF;

    SELECT n.seq, n.currency, sum(n.amount_minor) AS off INTO bad
    FROM new_postings n
    GROUP BY n.seq, n.currency
    HAVING sum(n.amount_minor) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'postings_balanced',
            MESSAGE = format('entry at seq %s does not balance in %s: off by %s',
                             bad.seq, bad.currency, bad.off);
    END IF;

    SELECT e.seq, e.legs INTO bad
    FROM (
        SELECT n.seq, count(*) AS legs, max(n.leg) AS top,
               min(n.transfer_key) AS key, max(n.transfer_key) AS key_max
        FROM new_postings n
        GROUP BY n.seq
    ) AS e
    LEFT JOIN transfers t ON t.seq = e.seq  -- by seq: an integer probe, not a text one
    WHERE e.key <> e.key_max OR t.key IS NULL OR t.key <> e.key OR t.status <> 'posted'
       OR t.legs <> e.legs OR e.top <> e.legs - 1
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'postings_balanced',
            MESSAGE = format('the %s postings at seq %s do not form the posted entry recorded '
                             'there (one transfer, all of its legs, in one statement)',
                             bad.legs, bad.seq);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_balanced();

CREATE FUNCTION transfers_recorded() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.key, n.seq, n.status INTO bad
    FROM new_transfers n
    LEFT JOIN events e ON e.seq = n.seq AND e.type = 'transfer_' || n.status
    WHERE e.seq IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503',
            CONSTRAINT = 'transfers_recorded',
            MESSAGE = format('transfer %s (%s) has no transfer_%s event at seq %s',
                             bad.key, bad.status, bad.status, bad.seq);
    END IF;
    SELECT n.key, n.reverses INTO bad
    FROM new_transfers n
    WHERE n.reverses IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.key = n.reverses AND r.seq < n.seq)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23503',
            CONSTRAINT = 'transfers_recorded',
            MESSAGE = format('transfer %s reverses %s, which was not decided before it',
                             bad.key, bad.reverses);
    END IF;
    -- beyond the head only together with the head's advance, which log_head_sealed_rows checks
    SELECT n.key, n.seq INTO bad
    FROM new_transfers n
    WHERE n.seq > (SELECT seq FROM log_head)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'transfers_recorded',
            MESSAGE = format('transfer %s at seq %s is beyond the sealed log head',
                             bad.key, bad.seq);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER transfers_recorded AFTER INSERT ON transfers
    REFERENCING NEW TABLE AS new_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION transfers_recorded();

-- Once per sealed batch, at commit: the head moved over exactly the events appended, its hash
-- is the last one's, and those events have exactly the rows they describe (one check per batch,
-- where a deferred trigger per transfer cost a tenth of a batch). Counting suffices for the
-- rows: transfers_recorded ties each transfer to an event of its type at its seq (seq is
-- unique), postings_balanced ties each seq's postings to the posted transfer there, and
-- accounts_opened_by_event ties each account to its event; equal counts make each tie
-- one-to-one. An account opened here holds exactly what its postings here moved.
CREATE FUNCTION log_head_sealed_rows() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_events          bigint;
    v_last_hash       bytea;
    v_transfer_events bigint;
    v_opening_events  bigint;
    v_transfers       bigint;
    v_posted          bigint;
    v_posted_entries  bigint;
    v_opened          bigint;
    v_bad             text;
BEGIN
    SELECT count(*),
           count(*) FILTER (WHERE type <> 'account_opened'),
           count(*) FILTER (WHERE type = 'account_opened')
      INTO v_events, v_transfer_events, v_opening_events
    FROM events WHERE seq > OLD.seq AND seq <= NEW.seq;
    SELECT hash INTO v_last_hash FROM events WHERE seq = NEW.seq;
    IF v_events <> NEW.seq - OLD.seq
       OR (NEW.seq > OLD.seq AND v_last_hash IS DISTINCT FROM NEW.hash)
       OR (NEW.seq = OLD.seq AND NEW.hash <> OLD.hash) THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'log_head_sealed_rows',
            MESSAGE = format('the log head moved from %s to %s over %s events, or its hash is '
                             'not the last event''s', OLD.seq, NEW.seq, v_events);
    END IF;
    SELECT count(*), count(*) FILTER (WHERE status = 'posted') INTO v_transfers, v_posted
    FROM transfers WHERE seq > OLD.seq AND seq <= NEW.seq;
    SELECT count(DISTINCT seq) INTO v_posted_entries
    FROM postings WHERE seq > OLD.seq AND seq <= NEW.seq;
    SELECT count(*) INTO v_opened
    FROM accounts WHERE opened_seq > OLD.seq AND opened_seq <= NEW.seq;
    IF (v_transfers, v_posted_entries, v_opened)
       IS DISTINCT FROM (v_transfer_events, v_posted, v_opening_events) THEN
        RAISE EXCEPTION USING
            ERRCODE = '23514',
            CONSTRAINT = 'log_head_sealed_rows',
            MESSAGE = format('events %s..%s were sealed without exactly the rows they describe: '
                             '%s transfers for %s transfer events, %s posted entries with '
                             'postings of %s, %s accounts for %s openings',
                             OLD.seq + 1, NEW.seq, v_transfers, v_transfer_events,
                             v_posted_entries, v_posted, v_opened, v_opening_events);
    END IF;
    IF v_opened > 0 THEN
        SELECT string_agg(a.id, ', ') INTO v_bad
        FROM accounts a
        WHERE a.opened_seq > OLD.seq AND a.opened_seq <= NEW.seq
          AND a.balance_minor <> coalesce((
              SELECT sum(CASE a.normal_side WHEN 'debit' THEN p.amount_minor
                                            ELSE -p.amount_minor END)
              FROM postings p WHERE p.account_id = a.id), 0);
        IF v_bad IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = '23514',
                CONSTRAINT = 'log_head_sealed_rows',
                MESSAGE = format('accounts opened with money their postings do not explain: %s',
                                 v_bad);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER log_head_sealed_rows AFTER UPDATE ON log_head
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION log_head_sealed_rows();

-- ---------------------------------------------------------------------------------------------
-- the posting function: one call writes and seals one planned batch

CREATE FUNCTION post_batch(
    p_events          text[],   -- canonical event documents, in order
    p_account_ids     text[],   -- every account the plan consulted
    p_balances_before bigint[], -- the balance the plan assumed (0 for accounts it opens)
    p_balances_after  bigint[]  -- the balance the plan leaves
) RETURNS bigint                -- seq of the first event (head + 1)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET jit = off  -- rough row estimates for array joins tipped queries over jit_above_cost: ~15 ms
               -- of compiling per call for statements that run in a millisecond
AS $$
-- Commits are serialised by the log head row, taken first: one writer at a time touches
-- balances, so no account row needs locking ahead of time (a SELECT ... FOR UPDATE pass cost a
-- sixth of a batch) and no two writers can deadlock. A balance the plan changes is updated
-- only if it still holds the plan's balance-before; one it only consulted must still hold it.
DECLARE
    v_seq        bigint;
    v_hash       bytea;
    v_batch      bigint;
    v_first      bigint;
    v_count      integer := coalesce(array_length(p_events, 1), 0);
    v_docs       jsonb[];
    v_types      text[];
    v_seqs       bigint[];
    v_hashes     bytea[];
    v_open_ids   text[];
    v_open_sides text[];
    v_open_status text[];
    v_open_limits bigint[];
    v_moved_status text[];
    v_moved_limits bigint[];
    v_keys       text[];
    v_legs       smallint[];
    v_accounts   text[];
    v_currencies text[];
    v_amounts    bigint[];
    v_afters     bigint[];
    v_event_no   integer[];  -- 1-based position of each posting's event in the batch
    v_moved      text[];     -- accounts whose balance this batch moved
    v_moved_sides text[];    -- and their normal sides
    v_bad        text;
    v_rule       text;
BEGIN
    IF v_count = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'post_batch needs at least one event';
    END IF;

    -- 1. take the log head: from here on this batch is the only writer, and batches commit
    -- one after another in the order they reach the database
    SELECT seq, hash, batches + 1 INTO v_seq, v_hash, v_batch FROM log_head FOR UPDATE;
    v_first := v_seq + 1;

    -- 2. parse once: the documents, the accounts they open, their postings in order
    v_docs := ARRAY (SELECT d::jsonb FROM unnest(p_events) WITH ORDINALITY AS u (d, n) ORDER BY n);
    SELECT array_agg(d ->> 'type' ORDER BY n),
           coalesce(array_agg(d ->> 'account' ORDER BY n)
                    FILTER (WHERE d ->> 'type' = 'account_opened'), '{}'),
           coalesce(array_agg(d ->> 'normal_side' ORDER BY n)
                    FILTER (WHERE d ->> 'type' = 'account_opened'), '{}'),
           coalesce(array_agg(d ->> 'status' ORDER BY n)
                    FILTER (WHERE d ->> 'type' = 'account_opened'), '{}'),
           coalesce(array_agg((d ->> 'overdraft_limit_minor')::bigint ORDER BY n)
                    FILTER (WHERE d ->> 'type' = 'account_opened'), '{}')
      INTO v_types, v_open_ids, v_open_sides, v_open_status, v_open_limits
    FROM unnest(v_docs) WITH ORDINALITY AS u (d, n);

    SELECT coalesce(array_agg(d ->> 'key' ORDER BY n, l), '{}'),
           coalesce(array_agg((l - 1)::smallint ORDER BY n, l), '{}'),
           coalesce(array_agg(p ->> 'account' ORDER BY n, l), '{}'),
           coalesce(array_agg(p ->> 'currency' ORDER BY n, l), '{}'),
           coalesce(array_agg((p ->> 'amount_minor')::bigint ORDER BY n, l), '{}'),
           coalesce(array_agg((p ->> 'balance_after_minor')::bigint ORDER BY n, l), '{}'),
           coalesce(array_agg(n::integer ORDER BY n, l), '{}')
      INTO v_keys, v_legs, v_accounts, v_currencies, v_amounts, v_afters, v_event_no
    FROM unnest(v_docs) WITH ORDINALITY AS u (d, n),
         jsonb_array_elements(d -> 'postings') WITH ORDINALITY AS x (p, l)
    WHERE d ->> 'type' = 'transfer_posted';

    -- 3. balances: move those the plan changes if they still hold its balance-before, and
    -- check that those it only consulted still hold it; refuse the plan otherwise (LS409)
    WITH moved AS (
        UPDATE accounts a SET balance_minor = g.after
        FROM unnest(p_account_ids, p_balances_before, p_balances_after) AS g (id, before, after)
        WHERE a.id = g.id AND g.after <> g.before AND a.balance_minor = g.before
          AND NOT (g.id = ANY (v_open_ids))
        RETURNING a.id, a.normal_side, a.status, a.overdraft_limit_minor
    )
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(normal_side), '{}'),
           coalesce(array_agg(status), '{}'), coalesce(array_agg(overdraft_limit_minor), '{}')
      INTO v_moved, v_moved_sides, v_moved_status, v_moved_limits
    FROM moved;
    SELECT string_agg(g.id, ', ' ORDER BY g.id) INTO v_bad  -- consulted only, or opened
    FROM (
        SELECT g.id, g.before, g.id = ANY (v_open_ids) AS opening
        FROM unnest(p_account_ids, p_balances_before, p_balances_after) AS g (id, before, after)
        WHERE g.after = g.before OR g.id = ANY (v_open_ids)
    ) AS g
    LEFT JOIN accounts a ON a.id = g.id
    WHERE CASE WHEN g.opening THEN g.before <> 0                -- opened at 0, or
                                   OR a.balance_minor <> g.before  -- it exists already
               ELSE a.balance_minor IS DISTINCT FROM g.before END;
    IF v_bad IS NULL AND coalesce(array_length(v_moved, 1), 0) <> (
        SELECT count(*) FROM unnest(p_account_ids, p_balances_before, p_balances_after)
                             AS g (id, before, after)
        WHERE g.after <> g.before AND NOT (g.id = ANY (v_open_ids))
    ) THEN
        SELECT string_agg(g.id, ', ' ORDER BY g.id) INTO v_bad        -- not moved
        FROM unnest(p_account_ids, p_balances_before, p_balances_after) AS g (id, before, after)
        LEFT JOIN unnest(v_moved) AS m (id) ON m.id = g.id
        WHERE g.after <> g.before AND NOT (g.id = ANY (v_open_ids)) AND m.id IS NULL;
    END IF;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS409',
            MESSAGE = 'balances changed since the batch was planned',
            DETAIL = v_bad;
    END IF;

    -- 4. the plan's own arithmetic and rules (a failure here undoes step 3): each posting's
    -- balance-after is the account's balance-before plus its postings up to it; at the end of
    -- each entry the account is within its floor or overdraft limit; postings go only to open
    -- accounts. Sides, limits and statuses come from the update above, from the event opening
    -- the account, or (net zero: not updated) the table. Postings to accounts that exist
    -- nowhere are refused at insert (step 5).
    SELECT string_agg(DISTINCT r.account_id, ', ') FILTER (WHERE r.running IS DISTINCT FROM r.said),
           string_agg(DISTINCT r.account_id, ', ') FILTER (
               WHERE r.status IS DISTINCT FROM 'open'
                  OR (r.entry_end AND r.lim IS NOT NULL AND r.running < -r.lim))
      INTO v_bad, v_rule
    FROM (
        SELECT p.account_id, p.said, p.status, p.lim,
               g.before + sum(CASE p.side WHEN 'debit' THEN p.amount ELSE -p.amount END)
                          OVER (PARTITION BY p.account_id ORDER BY p.ord) AS running,
               lead(p.entry) OVER (PARTITION BY p.account_id ORDER BY p.ord)
                   IS DISTINCT FROM p.entry AS entry_end
        FROM (
            -- (the subqueries run only for accounts neither moved nor opened here: CASE
            -- evaluates them only when reached)
            SELECT p.account_id, p.amount, p.said, p.entry, p.ord,
                   CASE WHEN m.id IS NOT NULL THEN m.side
                        WHEN o.id IS NOT NULL THEN o.side
                        ELSE (SELECT a.normal_side FROM accounts a WHERE a.id = p.account_id)
                   END AS side,
                   CASE WHEN m.id IS NOT NULL THEN m.status
                        WHEN o.id IS NOT NULL THEN o.status
                        ELSE (SELECT a.status FROM accounts a WHERE a.id = p.account_id)
                   END AS status,
                   CASE WHEN m.id IS NOT NULL THEN m.lim
                        WHEN o.id IS NOT NULL THEN o.lim
                        ELSE (SELECT a.overdraft_limit_minor FROM accounts a
                              WHERE a.id = p.account_id)
                   END AS lim
            FROM unnest(v_accounts, v_amounts, v_afters, v_event_no) WITH ORDINALITY
                 AS p (account_id, amount, said, entry, ord)
            LEFT JOIN unnest(v_moved, v_moved_sides, v_moved_status, v_moved_limits)
                   AS m (id, side, status, lim) ON m.id = p.account_id
            LEFT JOIN unnest(v_open_ids, v_open_sides, v_open_status, v_open_limits)
                   AS o (id, side, status, lim) ON o.id = p.account_id
        ) AS p
        LEFT JOIN unnest(p_account_ids, p_balances_before) AS g (id, before)
               ON g.id = p.account_id
    ) AS r;  -- running NULL: an account the plan did not list
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS500',
            MESSAGE = 'planned balance-after values disagree with the running balances',
            DETAIL = v_bad;
    END IF;
    IF v_rule IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS500',
            MESSAGE = 'the plan posts to an account that is not open or leaves it past its '
                      'floor or overdraft limit at the end of an entry',
            DETAIL = v_rule;
    END IF;

    -- every posting's account is listed (above), so an account's last balance-after is its
    -- planned balance-after, and a listed account without postings must not move
    SELECT string_agg(g.id, ', ') INTO v_bad
    FROM unnest(p_account_ids, p_balances_before, p_balances_after) AS g (id, before, after)
    LEFT JOIN (
        SELECT DISTINCT ON (p.account_id) p.account_id, p.said AS last
        FROM unnest(v_accounts, v_afters) WITH ORDINALITY AS p (account_id, said, ord)
        ORDER BY p.account_id, p.ord DESC
    ) AS moved ON moved.account_id = g.id
    WHERE g.after <> coalesce(moved.last, g.before);
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LS500',
            MESSAGE = 'planned balances disagree with the planned postings',
            DETAIL = v_bad;
    END IF;

    -- 5. seal and write: sequence numbers, hashes, then the rows the events describe
    v_seqs := ARRAY (SELECT s FROM generate_series(v_first, v_seq + v_count) AS s);
    v_hashes := array_fill(NULL::bytea, ARRAY[v_count]);
    FOR i IN 1 .. v_count LOOP
        v_hash := sha256(v_hash || int8send(v_seqs[i]) || convert_to(p_events[i], 'UTF8'));
        v_hashes[i] := v_hash;
    END LOOP;
    v_seq := v_seq + v_count;
    UPDATE log_head SET seq = v_seq, hash = v_hash, batches = v_batch;
    INSERT INTO events (seq, batch, type, content, hash)
    SELECT s, v_batch, t, c, h FROM unnest(v_seqs, v_types, p_events, v_hashes) AS u (s, t, c, h);

    IF array_length(v_open_ids, 1) > 0 THEN
        INSERT INTO accounts (id, currency, currency_exponent, normal_side, status,
                              overdraft_limit_minor, balance_minor, opened_seq)
        SELECT d ->> 'account', d ->> 'currency', (d ->> 'exponent')::smallint,
               d ->> 'normal_side', d ->> 'status', (d ->> 'overdraft_limit_minor')::bigint,
               coalesce(g.after, 0), v_first + n - 1
        FROM unnest(v_docs) WITH ORDINALITY AS u (d, n)
        LEFT JOIN unnest(p_account_ids, p_balances_after) AS g (id, after)
               ON g.id = d ->> 'account'
        WHERE d ->> 'type' = 'account_opened'
        ORDER BY n;
    END IF;

    INSERT INTO transfers (key, fingerprint, status, rejection, reverses, metadata, legs, seq)
    SELECT d ->> 'key', decode(d ->> 'fingerprint', 'hex'),
           CASE d ->> 'type' WHEN 'transfer_posted' THEN 'posted' ELSE 'rejected' END,
           d ->> 'rejection', d ->> 'reverses', d -> 'metadata',
           coalesce(jsonb_array_length(d -> 'postings'), 0), v_first + n - 1
    FROM unnest(v_docs) WITH ORDINALITY AS u (d, n)
    WHERE d ->> 'type' IN ('transfer_posted', 'transfer_rejected')
    ORDER BY n;

    INSERT INTO postings (transfer_key, leg, account_id, currency, amount_minor,
                          balance_after_minor, seq)
    SELECT k, l, a, c, m, b, v_first + e - 1
    FROM unnest(v_keys, v_legs, v_accounts, v_currencies, v_amounts, v_afters, v_event_no)
         AS u (k, l, a, c, m, b, e);

    RETURN v_first;
END $$;
