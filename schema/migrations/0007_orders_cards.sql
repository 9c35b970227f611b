-- The card token an order is paid with, private to the orders service. It used to travel in
-- the public `orders.order_placed` event (and so on the events exchange, to every
-- subscriber); now it is written here in the place_order transaction and read back in the
-- transaction that asks payments to charge the order. No other service reads this table.
CREATE TABLE orders_cards (
    order_id uuid PRIMARY KEY,
    card text NOT NULL
);

-- Orders placed before this migration carry their card in their (append-only) event; copy
-- it here so their sagas can still charge them.
INSERT INTO orders_cards (order_id, card)
SELECT (data->>'order_id')::uuid, data->>'card'
FROM event_log
WHERE event_type = 'orders.order_placed' AND data ? 'card'
ON CONFLICT DO NOTHING;

-- Record a card once, read it back; never change one.
REVOKE ALL ON orders_cards FROM PUBLIC;
-- Orders' own table (0006): no other service's login may read a card.
GRANT SELECT, INSERT ON orders_cards TO eventline_orders;
