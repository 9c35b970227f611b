-- The whole seed system: what each handled message caused (for tracing without clocks and
-- for re-sending a saga's commands after a crash), auth's credentials, and the orders read model.

-- The inbox remembers the message's place in its conversation, and the messages handling it
-- dispatched. A redelivered message re-sends exactly these (same ids), so a crash between
-- commit and publish loses nothing and duplicates nothing.
ALTER TABLE processed_messages
    ADD COLUMN correlation_id uuid,
    ADD COLUMN causation_id   uuid,
    ADD COLUMN message_type   text,
    ADD COLUMN outputs        jsonb NOT NULL DEFAULT '[]';

CREATE INDEX processed_messages_correlation ON processed_messages (correlation_id);

-- Password hashes live here, owned by the auth service, never in an event: events are
-- published to every subscriber, and a hash is still material for offline guessing.
CREATE TABLE auth_credentials (
    user_id       uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%')
);

-- Orders with their status, kept by the orders projection.
CREATE TABLE orders_view (
    order_id    uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL,
    status      text        NOT NULL,
    code        text,
    reason      text,
    total       bigint,
    lines       jsonb       NOT NULL,
    stream_version bigint   NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX orders_view_customer ON orders_view (customer_id);
