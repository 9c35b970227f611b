-- The event log: the seed's shared Database, as an append-only, event-sourced log.
--
-- position        global order of appends (gap-prone: rolled-back transactions burn numbers;
--                 readers use the gap-safe protocol in workers/src/runtime/log_reader.rs)
-- stream_version  1, 2, 3 … per stream, unique: the optimistic-concurrency check. Two writers
--                 that read the same version cannot both append the next one.
CREATE TABLE event_log (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       text        NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 200),
    stream_version  bigint      NOT NULL CHECK (stream_version >= 1),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, stream_version)
);

CREATE INDEX event_log_correlation ON event_log ((metadata ->> 'correlation_id'));

-- Append-only by construction, not by convention: rewriting history fails for every role,
-- the owner included. (A later migration also revokes the privileges from the workers' role.)
CREATE FUNCTION event_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Record a new, compensating event instead of changing an old one.';
END;
$$;

CREATE TRIGGER event_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON event_log
    FOR EACH ROW EXECUTE FUNCTION event_log_is_append_only();

CREATE TRIGGER event_log_no_truncate
    BEFORE TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION event_log_is_append_only();

-- The inbox: one row per message a consumer has handled, written in the same transaction as
-- the message's effects. A redelivered message finds its row and gets the stored reply again
-- instead of a second effect.
CREATE TABLE processed_messages (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    handled_by   text        NOT NULL,
    reply        jsonb,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Where each log reader (the relay, each projection) has got to. Updated in the same
-- transaction as the reader's effects where it has any (projections), or after the broker
-- confirmed the publishes (the relay: at-least-once, consumers deduplicate by event id).
CREATE TABLE checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The catalog's products read model, kept by the catalog projection from the log. It can be
-- dropped and rebuilt from position 0 at any time.
CREATE TABLE catalog_products (
    product_id     text        PRIMARY KEY,
    name           text        NOT NULL,
    price          bigint      NOT NULL CHECK (price >= 0),
    available      bigint      NOT NULL CHECK (available >= 0),
    reserved       bigint      NOT NULL CHECK (reserved >= 0),
    sold           bigint      NOT NULL CHECK (sold >= 0),
    stream_version bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
