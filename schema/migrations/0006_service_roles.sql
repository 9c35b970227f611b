-- A database role per service (issue 15): each service's login reads and writes only its own
-- tables, appends only to its own streams, and sees only its own inbox rows. Enforced here,
-- by privileges and row-level security, so a bug or a compromise in one service's process
-- cannot read another's data (catalog cannot read auth's password hashes) or write another's
-- history (catalog cannot append an `orders.*` event).
--
--   role                 member of          own tables (beyond the shared ones)   appends streams
--   eventline_auth       eventline_worker   auth_credentials (SELECT, INSERT)     auth.*
--   eventline_catalog    eventline_worker   catalog_products                      catalog.*
--   eventline_orders     eventline_worker   orders_view                           orders.*
--   eventline_payments   eventline_worker   payment_attempts                      payments.*
--   eventline_relay      —                  reads event_log, writes checkpoints   none
--
-- `eventline_worker` (0003) keeps what every service shares: the log (read, append), the inbox
-- and the checkpoints; it loses the service tables. Its members' appends and inbox rows are
-- then narrowed per role by the policies below. A table a later migration grants to
-- `eventline_worker` reaches every service; grant a service's own table to its role instead.
-- Logins are members of exactly one of these roles, created by `eventline migrate` from
-- EVENTLINE_{AUTH,CATALOG,ORDERS,PAYMENTS,RELAY}_DATABASE_URL (workers/src/runtime/db_roles.rs).
--
-- Roles and memberships are global to the server while this runs once per database, possibly
-- in parallel (the tests migrate many databases at once): each step tolerates another session
-- having done it first or at the same moment.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['eventline_auth', 'eventline_catalog', 'eventline_orders',
                             'eventline_payments', 'eventline_relay'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END LOOP;
    FOREACH r IN ARRAY ARRAY['eventline_auth', 'eventline_catalog', 'eventline_orders',
                             'eventline_payments'] LOOP
        IF NOT pg_has_role(r, 'eventline_worker', 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT eventline_worker TO %I', r);
            EXCEPTION
                -- A concurrent GRANT of the same membership ("tuple concurrently updated").
                WHEN unique_violation OR internal_error THEN NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- The shared role holds no service's table any more.
REVOKE ALL ON auth_credentials, catalog_products, orders_view, payment_attempts
    FROM eventline_worker;

-- Auth registers and looks up credentials; a password is never changed in place.
GRANT SELECT, INSERT ON auth_credentials TO eventline_auth;
-- Read models are rebuilt from position 0 when a projection starts over (which deletes them).
GRANT SELECT, INSERT, UPDATE, DELETE ON catalog_products TO eventline_catalog;
GRANT SELECT, INSERT, UPDATE, DELETE ON orders_view TO eventline_orders;
-- Payments records each provider call's intent and answer around the call (0004).
GRANT SELECT, INSERT, UPDATE ON payment_attempts TO eventline_payments;
-- The relay reads the log and records how far it has published; nothing else.
GRANT SELECT ON event_log TO eventline_relay;
GRANT SELECT, INSERT, UPDATE ON checkpoints TO eventline_relay;

-- Row-level security binds the shared tables to each role's own rows. The tables' owner (the
-- administrator that migrates, and the tests) is not subject to it.
ALTER TABLE event_log ENABLE ROW LEVEL SECURITY;
-- Everyone with SELECT reads the whole log: projections and the relay follow its tail by
-- position, and events are public anyway (the relay publishes them all).
CREATE POLICY event_log_read ON event_log FOR SELECT
    TO eventline_worker, eventline_relay USING (true);
CREATE POLICY event_log_append_auth ON event_log FOR INSERT
    TO eventline_auth WITH CHECK (starts_with(stream_id, 'auth.'));
CREATE POLICY event_log_append_catalog ON event_log FOR INSERT
    TO eventline_catalog WITH CHECK (starts_with(stream_id, 'catalog.'));
CREATE POLICY event_log_append_orders ON event_log FOR INSERT
    TO eventline_orders WITH CHECK (starts_with(stream_id, 'orders.'));
CREATE POLICY event_log_append_payments ON event_log FOR INSERT
    TO eventline_payments WITH CHECK (starts_with(stream_id, 'payments.'));

-- The inbox holds stored replies and dispatched commands (a charge carries the card token):
-- each service sees and writes only its own consumers' rows (`catalog.commands`,
-- `catalog.queries`, …).
ALTER TABLE processed_messages ENABLE ROW LEVEL SECURITY;
CREATE POLICY inbox_auth ON processed_messages FOR ALL TO eventline_auth
    USING (starts_with(consumer, 'auth.')) WITH CHECK (starts_with(consumer, 'auth.'));
CREATE POLICY inbox_catalog ON processed_messages FOR ALL TO eventline_catalog
    USING (starts_with(consumer, 'catalog.')) WITH CHECK (starts_with(consumer, 'catalog.'));
CREATE POLICY inbox_orders ON processed_messages FOR ALL TO eventline_orders
    USING (starts_with(consumer, 'orders.')) WITH CHECK (starts_with(consumer, 'orders.'));
CREATE POLICY inbox_payments ON processed_messages FOR ALL TO eventline_payments
    USING (starts_with(consumer, 'payments.')) WITH CHECK (starts_with(consumer, 'payments.'));
