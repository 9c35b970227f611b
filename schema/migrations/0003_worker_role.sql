-- Least privilege: the role every worker, projection and relay connects as. It may read the
-- log and append to it, and nothing more there: UPDATE, DELETE and TRUNCATE on event_log are
-- refused by the privilege check, before the append-only trigger is even reached.
--
-- `eventline_worker` is a group role (NOLOGIN); the logins that workers actually use are its
-- members, created by `eventline migrate` from EVENTLINE_WORKER_DATABASE_URL (see README,
-- "Least privilege"). Roles are global to the server while this migration runs once per
-- database, possibly in parallel (the tests migrate many databases at once), so creating the
-- role tolerates it existing already, or being created concurrently (unique_violation).
DO $$
BEGIN
    CREATE ROLE eventline_worker NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Nothing by default: only what is granted below.
REVOKE ALL ON event_log, processed_messages, checkpoints, catalog_products, auth_credentials,
    orders_view FROM PUBLIC;

-- The log: read streams and the tail, append. Never rewrite.
GRANT SELECT, INSERT ON event_log TO eventline_worker;
-- The inbox: claim a message id, then store its reply and outputs in the same transaction.
GRANT SELECT, INSERT, UPDATE ON processed_messages TO eventline_worker;
-- Auth's credentials: register, then look up at log-in. A password is never changed in place.
GRANT SELECT, INSERT ON auth_credentials TO eventline_worker;
-- Checkpoints and read models are derived from the log and rebuilt from position 0 when a
-- projection starts over (which deletes them), so they need the full set.
GRANT SELECT, INSERT, UPDATE, DELETE ON checkpoints, catalog_products, orders_view
    TO eventline_worker;
