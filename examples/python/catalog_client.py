#!/usr/bin/env python3
"""Add a product to eventline's catalog from Python, using only schema/CONTRACT.md.

Publishes one `catalog.add_product` command with the properties and headers the contract
requires, waits for the reply on a private queue, prints it as one line of JSON and exits
0 if the command was accepted, 1 if it was rejected, 2 on a timeout or connection error.

    pip install -r examples/python/requirements.txt
    python3 examples/python/catalog_client.py --product-id green-tea --stock 12

Configuration: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) and
EVENTLINE_NAMESPACE (default eventline), as for every eventline process, and EVENTLINE_TOKEN:
adding a product needs an admin session token (`eventline token --role admin`).
"""

import argparse
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone

import pika


def new_id() -> str:
    """A UUIDv7 (time-ordered, RFC 9562). Any UUID is accepted; v7 is recommended."""
    if hasattr(uuid, "uuid7"):  # Python 3.14+
        return str(uuid.uuid7())
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # 12 random bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product-id", required=True)
    parser.add_argument("--name", default="Tea from Python")
    parser.add_argument("--price", type=int, default=199, help="minor units (cents)")
    parser.add_argument("--stock", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    args = parser.parse_args()

    url = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/%2f"
    namespace = os.environ.get("EVENTLINE_NAMESPACE") or "eventline"
    token = os.environ.get("EVENTLINE_TOKEN")

    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as error:
        host = pika.URLParameters(url).host
        print(f"could not reach RabbitMQ at {host}: {error!r}; set AMQP_URL", file=sys.stderr)
        return 2
    channel = connection.channel()
    channel.confirm_delivery()  # publisher confirms: basic_publish raises if the broker refuses

    # A private, server-named queue for the reply; it disappears with the connection.
    reply_queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue

    message_id = new_id()
    body = {
        "product_id": args.product_id,
        "name": args.name,
        "price": args.price,
        "initial_stock": args.stock,
    }
    properties = pika.BasicProperties(
        message_id=message_id,
        correlation_id=message_id,  # this message starts the conversation
        type="catalog.add_product",
        content_type="application/json",
        delivery_mode=2,  # persistent
        reply_to=reply_queue,
        headers={
            "x-causation-id": message_id,  # a conversation's first message causes itself
            "x-schema-version": 1,
            "x-occurred-at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            **({"x-auth-token": token} if token else {}),
        },
    )
    try:
        channel.basic_publish(
            exchange=f"{namespace}.commands",
            routing_key="catalog",
            body=json.dumps(body).encode(),
            properties=properties,
            mandatory=True,  # an unroutable command is returned, not silently dropped
        )
    except pika.exceptions.UnroutableError:
        print(f"no catalog queue in namespace {namespace!r}: is a catalog worker running?", file=sys.stderr)
        return 2

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        method, props, payload = channel.basic_get(reply_queue, auto_ack=True)
        if method is None:
            connection.process_data_events(time_limit=0.05)
            continue
        # Replies name the command that caused them in x-causation-id.
        if (props.headers or {}).get("x-causation-id") != message_id:
            continue
        reply = json.loads(payload)
        print(json.dumps(reply))
        connection.close()
        return 0 if reply.get("outcome") == "accepted" else 1

    print(f"no reply within {args.timeout}s; send the same message id again to learn the outcome", file=sys.stderr)
    connection.close()
    return 2


if __name__ == "__main__":
    sys.exit(main())
