-- The log's readers wait only on the log's own writers, never on the server-wide xmin.
--
-- Positions are drawn from an identity sequence when a row is inserted, and transactions
-- commit in any order, so a reader sees holes. A hole is permanent once every transaction
-- that could still fill it has ended. Which transactions those are is recorded here, not
-- inferred from transaction ids: every statement that inserts into event_log first takes a
-- *shared* transaction-scoped advisory lock (the append lock), held until the transaction (or
-- the savepoint the insert ran in) ends. Shared: appenders never wait on each other.
--
-- A reader that sees a hole below a visible row asks which transactions hold the append lock
-- now (event_log_writers()). Whoever drew the missing position drew it before the visible
-- row was drawn, so it is among them or has already ended; once all of them are gone, a fresh
-- snapshot shows every row they committed, and what is still missing never will be (PostgreSQL
-- releases a transaction's locks after its commit became visible). Anyone who takes the lock
-- later draws a higher position. The wait is bounded by this log's own (short, bounded)
-- transactions: another database's idle session, a pg_dump, a slow provider call outside
-- the log's writers cannot hold a reader back.
--
-- The lock is taken by a trigger, not by the application, so no writer can skip the protocol:
-- a raw INSERT or COPY from a test, the bench or psql takes it too.

CREATE FUNCTION event_log_take_append_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Keys (25974, 7106407) = ('ev', 'log') in ASCII; event_log_writers() matches them.
    PERFORM pg_advisory_xact_lock_shared(25974, 7106407);
    RETURN NULL;
END;
$$;

-- BEFORE ... FOR EACH STATEMENT fires before the statement produces its first row, so before
-- the identity default draws any position.
CREATE TRIGGER event_log_appenders_hold_the_append_lock
    BEFORE INSERT ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION event_log_take_append_lock();

-- The virtual transaction ids of the transactions that hold the append lock in this database
-- right now. pg_locks is not MVCC: it is read when the function runs, after the snapshot of
-- whatever the caller read before.
CREATE FUNCTION event_log_writers() RETURNS text[] LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(array_agg(virtualtransaction ORDER BY virtualtransaction), '{}')
    FROM pg_locks
    WHERE locktype = 'advisory'
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = 25974 AND objid = 7106407 AND objsubid = 2
      AND granted
$$;

-- One projector per read model at a time, fenced. A projector is elected by a session
-- advisory lock and then bumps `epoch` (recording itself as `owner`); every batch it applies
-- moves the checkpoint with a compare-and-set on (epoch, position) in the transaction that
-- applied the events. A projector that lost its election (a dropped connection, a rebuild)
-- finds the epoch moved and its batch rolls back: a zombie cannot commit.
--
-- `poison` is why a projection stopped (an event its code cannot apply), NULL while healthy:
-- visible to operators and tests, cleared by `eventline projections rebuild`.
ALTER TABLE checkpoints
    ADD COLUMN owner  text,
    ADD COLUMN epoch  bigint NOT NULL DEFAULT 0,
    ADD COLUMN poison text;

-- Payments' own record of what it asked the provider, so no provider call happens inside a
-- database transaction: the intent is written first (a statement of its own), the provider
-- is called with no transaction open, keyed by the order id (the provider's idempotency key:
-- a repeated call returns the first answer and charges nothing more), the answer is written
-- back, and only then does the command's transaction record the outcome in the log.
-- A redelivery finds the answer here and does not call again. Never holds the card token.
--
-- refund_requested: a refund (order cancelled) was asked for. A charge that reads it after its
-- own provider call releases what it authorized; a refund that finds an answer here releases
-- it itself. Both write the same row, so one of the two always sees the other.
CREATE TABLE payment_attempts (
    order_id         uuid        PRIMARY KEY,
    amount           bigint      CHECK (amount >= 0),
    reference        text,
    declined         text,
    refund_requested boolean     NOT NULL DEFAULT false,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    answered_at      timestamptz
);
REVOKE ALL ON payment_attempts FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON payment_attempts TO eventline_worker;
