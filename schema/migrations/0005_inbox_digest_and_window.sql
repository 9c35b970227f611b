-- Idempotency keyed on content, and an inbox bounded by a stated dedup window.
--
-- digest: SHA-256 of what the message says (its type and its body re-serialized canonically,
-- password fields left out; workers/src/runtime/inbox.rs has the exact rule), written with
-- the claim. The same id with the same digest is a re-send and gets the stored reply; the
-- same id with another digest is refused (`idempotency_key_reused`). NULL for rows claimed
-- before this migration, and for tools that append without a message body: those compare as
-- the same message, as every row did before.
ALTER TABLE processed_messages
    ADD COLUMN digest bytea CHECK (digest IS NULL OR length(digest) = 32);

-- The pruner's scan: oldest rows first, without reading the whole inbox.
CREATE INDEX processed_messages_processed_at ON processed_messages (processed_at);

-- Removes at most `max_rows` inbox rows claimed longer than `dedup_window` ago, oldest
-- first, and says how many it removed. The only way rows leave the inbox.
--
-- SECURITY DEFINER, so the workers' role holds no DELETE on the inbox: a worker that could
-- delete any row could make any handled message look new (a second effect). Through this
-- function it can only forget what is older than the window it states, in bounded batches.
-- A row whose claim has not committed is invisible to the DELETE's snapshot and untouched;
-- so is every row younger than the window. ctid = ANY(ARRAY(...)) is a TID scan: the rows are
-- found once, through the processed_at index, and deleted where they lie.
CREATE FUNCTION eventline_prune_inbox(dedup_window interval, max_rows integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    removed integer;
BEGIN
    IF dedup_window IS NULL OR dedup_window < interval '1 second' THEN
        RAISE EXCEPTION 'dedup window % is too short: at least 1 second', dedup_window
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_rows IS NULL OR max_rows < 1 OR max_rows > 10000 THEN
        RAISE EXCEPTION 'max_rows % is out of range: 1 to 10000', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM processed_messages
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM processed_messages
        WHERE processed_at < now() - dedup_window
        ORDER BY processed_at
        LIMIT max_rows));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

-- Functions are executable by PUBLIC unless revoked.
REVOKE ALL ON FUNCTION eventline_prune_inbox(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventline_prune_inbox(interval, integer) TO eventline_worker;
