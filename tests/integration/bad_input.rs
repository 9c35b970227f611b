//! The bad-input suite: every kind of bad input we know of, sent to one running system (one
//! replica of each service) with valid commands interleaved, and the observed outcome of each
//! rendered as the table in `docs/bad-input.md`.
//!
//! Each case is one raw AMQP message, built from a well-formed command and spoiled one way. The
//! suite checks, per case, the reply (if the envelope allowed one) and the dead letter (code
//! only: codes are stable, texts quote input), and for the whole run that no worker crashed or
//! looped: every valid command interleaved with the poison is applied exactly once, the dead-
//! letter queues hold exactly the expected poison, and every command queue drains to empty.
//!
//! The table is checked for drift like the JSON Schemas: `UPDATE_DOCS=1 cargo test --test
//! integration bad_input` rewrites it after a deliberate change.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventline::client::parse_order;
use eventline_events::auth::{Role, SERVICE_CREDENTIAL_HEADER, TOKEN_HEADER};
use eventline_events::catalog::{AddProduct, CatalogCommand, ChangePrice, Restock};
use eventline_events::envelope::headers;
use eventline_events::values::{Money, OrderId, ProductName, Quantity, StockLevel};
use eventline_events::{CorrelationId, IncomingMessage, Metadata, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::{broker, token};
use futures_util::StreamExt;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};

use crate::support::{PATIENCE, TestSystem, mint, product};

/// A header only this suite sets, so that a dead letter can be traced back to its case even
/// when the case spoiled every id. Workers ignore headers they do not know.
const CASE_HEADER: &str = "x-bad-input-case";

/// What happened to one message: the reply its sender got, the dead letters it left, and, for
/// an order, how the order ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Outcome {
    reply: Option<String>,
    dead_letters: Vec<String>,
    order: Option<String>,
}

impl Outcome {
    fn accepted() -> Self {
        Self {
            reply: Some("accepted".into()),
            ..Self::default()
        }
    }

    /// A domain rejection: a reply, no dead letter.
    fn rejected(code: &str) -> Self {
        Self {
            reply: Some(format!("rejected `{code}`")),
            ..Self::default()
        }
    }

    /// Poison with a valid envelope: dead-lettered, and the sender is told why.
    fn poison(code: &str) -> Self {
        Self::rejected(code).dead_letter(code)
    }

    /// Poison whose envelope is broken: there is nobody to reply to.
    fn dead_letter_only(code: &str) -> Self {
        Self::default().dead_letter(code)
    }

    /// Neither reply nor dead letter (the reply went elsewhere).
    fn silent() -> Self {
        Self::default()
    }

    fn dead_letter(mut self, code: &str) -> Self {
        self.dead_letters.push(code.into());
        self
    }

    fn order(mut self, end: &str) -> Self {
        self.order = Some(end.into());
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![match &self.reply {
            Some(reply) => format!("reply {reply}"),
            None => "no reply".into(),
        }];
        for code in &self.dead_letters {
            parts.push(format!("DLQ `{code}`"));
        }
        if let Some(order) = &self.order {
            parts.push(format!("order {order}"));
        }
        f.write_str(&parts.join(" + "))
    }
}

/// One bad input.
struct Case {
    name: &'static str,
    service: Service,
    /// What was sent, for people reading the table.
    sent: &'static str,
    expected: Outcome,
    /// Why this is the right outcome, where it is a decision rather than obvious.
    why: &'static str,
    body: Vec<u8>,
    properties: BasicProperties,
    /// The order this case places, whose end is part of the outcome.
    order: Option<OrderId>,
    /// A replayed message id: the reply the first delivery got.
    first_reply: Option<Reply>,
}

/// A well-formed command of `message_type` to spoil: fresh ids, a correlation id of its own
/// (replies are matched by it), a reply address, schema version 1, JSON.
struct Message {
    metadata: Metadata,
    body: Vec<u8>,
    token: Option<String>,
    /// The `x-eventline-service-credential` header, if any.
    credential: Option<AMQPValue>,
}

impl Message {
    fn new(message_type: &str, body: impl Into<Vec<u8>>, reply_to: &str) -> Self {
        let mut metadata = Metadata::origin(message_type).with_reply_to(reply_to);
        metadata.correlation_id = CorrelationId::new();
        Self {
            metadata,
            body: body.into(),
            token: None,
            credential: None,
        }
    }

    fn json(message_type: &str, body: serde_json::Value, reply_to: &str) -> Self {
        Self::new(message_type, body.to_string(), reply_to)
    }

    fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Signed with `key` as orders signs a saga step (over this id, type and body).
    fn signed(mut self, key: &ed25519_dalek::SigningKey) -> Self {
        let credential = token::service_credential(
            key,
            &self.metadata.message_id.to_string(),
            &self.metadata.message_type,
            &self.body,
        );
        self.credential = Some(text(&credential));
        self
    }

    /// An `eventline.reply` to step `step` of `order`, as a callee would send it, signed (if
    /// at all) by `key` claiming to be `signer`.
    fn reply_to_step(
        mut self,
        order: OrderId,
        step: &str,
        signer: Option<(&ed25519_dalek::SigningKey, Service)>,
    ) -> Self {
        self.metadata.correlation_id = CorrelationId::from_uuid(order.as_uuid());
        self.metadata.causation_id =
            eventline_workers::services::orders::step_id(order, step).into();
        if let Some((key, signer)) = signer {
            let credential = token::reply_credential(
                key,
                signer,
                &self.metadata.message_id.to_string(),
                &self.metadata.causation_id.to_string(),
                &self.body,
            );
            self.credential = Some(text(&credential));
        }
        self
    }

    /// A saga step as orders would send it: with orders' credential.
    fn signed_by_orders(self, system: &TestSystem) -> Self {
        let key = system
            .config
            .saga
            .orders
            .signing
            .clone()
            .expect("test keys")
            .0;
        self.signed(&key)
    }

    fn properties(&self) -> BasicProperties {
        let mut message = OutgoingMessage {
            metadata: self.metadata.clone(),
            body: Vec::new(),
            extra_headers: Vec::new(),
        };
        if let Some(token) = &self.token {
            message.extra_headers.push((
                TOKEN_HEADER,
                eventline_events::envelope::HeaderValue::Text(token.clone()),
            ));
        }
        let properties = broker::properties(&message);
        match &self.credential {
            Some(credential) => edit_headers(properties, |h| {
                h.insert(SERVICE_CREDENTIAL_HEADER.into(), credential.clone());
            }),
            None => properties,
        }
    }
}

/// Builds the case list; `Spoil` edits a well-formed message's AMQP properties.
struct Cases {
    list: Vec<Case>,
    reply_to: String,
}

type Spoil = fn(BasicProperties) -> BasicProperties;

impl Cases {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        name: &'static str,
        service: Service,
        sent: &'static str,
        message: Message,
        spoil: Spoil,
        expected: Outcome,
        why: &'static str,
    ) -> &mut Case {
        let properties = spoil(message.properties());
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(CASE_HEADER.into(), text(name));
        self.list.push(Case {
            name,
            service,
            sent,
            expected,
            why,
            body: message.body,
            properties: properties.with_headers(headers),
            order: None,
            first_reply: None,
        });
        self.list.last_mut().unwrap()
    }

    fn message(&self, message_type: &str, body: impl Into<Vec<u8>>) -> Message {
        Message::new(message_type, body, &self.reply_to)
    }

    fn json(&self, message_type: &str, body: serde_json::Value) -> Message {
        Message::json(message_type, body, &self.reply_to)
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn same(properties: BasicProperties) -> BasicProperties {
    properties
}

fn edit_headers(
    properties: BasicProperties,
    edit: impl FnOnce(&mut BTreeMap<lapin::types::ShortString, AMQPValue>),
) -> BasicProperties {
    let mut inner = properties
        .headers()
        .clone()
        .unwrap_or_default()
        .inner()
        .clone();
    edit(&mut inner);
    properties.with_headers(FieldTable::from(inner))
}

/// Where a case's replies arrive: a private queue, with replies keyed by correlation id (each
/// case has its own, so replays of one message id are told apart).
struct Replies {
    queue: String,
    received: Arc<Mutex<HashMap<String, Vec<Reply>>>>,
    connection: Connection,
}

impl Replies {
    async fn open(system: &TestSystem) -> Self {
        let connection = broker::connect(&system.config.amqp_url, "bad-input replies")
            .await
            .unwrap();
        let queue = broker::open_private_queue(&connection, "bad-input")
            .await
            .unwrap();
        let mut consumer = queue.consumer;
        let queue = queue.name;
        let received: Arc<Mutex<HashMap<String, Vec<Reply>>>> = Arc::default();
        let sink = received.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let message = broker::incoming(&delivery.properties, delivery.data);
                let (Some(correlation), Ok(reply)) = (
                    message.correlation_id.clone(),
                    serde_json::from_slice::<Reply>(&message.body),
                ) else {
                    continue;
                };
                sink.lock()
                    .unwrap()
                    .entry(correlation)
                    .or_default()
                    .push(reply);
            }
        });
        Self {
            queue,
            received,
            connection,
        }
    }

    fn of(&self, case: &Case) -> Vec<Reply> {
        let Some(correlation) = case.properties.correlation_id() else {
            return Vec::new();
        };
        self.received
            .lock()
            .unwrap()
            .get(correlation.as_str())
            .cloned()
            .unwrap_or_default()
    }
}

fn describe(reply: &Reply, first: Option<&Reply>) -> String {
    match reply {
        Reply::Rejected { reason } => format!("rejected `{}`", reason.code),
        Reply::Accepted { .. } if first == Some(reply) => {
            "accepted (the first delivery's stored reply, unchanged)".into()
        }
        Reply::Accepted { .. } => "accepted".into(),
    }
}

/// Ready messages in a queue (unacked ones are not counted by the broker's passive declare).
async fn ready(connection: &Connection, queue: &str) -> u32 {
    broker::inspect_queue(connection, queue)
        .await
        .unwrap_or_else(|e| panic!("queue {queue}: {e}"))
        .message_count()
}

/// Every dead letter of a service, read without removing them (unacked, then the channel closes).
async fn dead_letters(connection: &Connection, queue: &str) -> Vec<IncomingMessage> {
    let channel = connection.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        out.push(broker::incoming(&delivery.properties, delivery.data));
    }
    let _ = channel.close(200, "peeked".into()).await;
    out
}

/// How an order ended, from its stream (`None` while it is still running).
async fn order_end(system: &TestSystem, order: OrderId) -> Option<String> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT event_type, data->>'code' FROM event_log WHERE stream_id = $1 \
         AND event_type IN ('orders.order_confirmed', 'orders.order_rejected', 'orders.order_cancelled') \
         ORDER BY stream_version LIMIT 1",
    )
    .bind(eventline_events::orders::order_stream(order).as_str())
    .fetch_optional(system.store.pool())
    .await
    .unwrap();
    row.map(|(kind, code)| {
        let status = kind.trim_start_matches("orders.order_");
        match code {
            Some(code) => format!("{status} `{code}`"),
            None => status.to_owned(),
        }
    })
}

fn restock(product_id: &str, quantity: u32) -> serde_json::Value {
    serde_json::json!({ "product_id": product_id, "quantity": quantity })
}

fn add_product(product_id: &str, name: &str) -> serde_json::Value {
    serde_json::json!({ "product_id": product_id, "name": name, "price": 100, "initial_stock": 1 })
}

fn register(email: &str, password: &str) -> serde_json::Value {
    serde_json::json!({ "email": email, "password": password })
}

#[tokio::test]
async fn every_kind_of_bad_input_is_refused_with_a_reason_while_valid_traffic_flows() {
    let system = TestSystem::with_all_services(1).await;
    let replies = Replies::open(&system).await;
    let admin = system.token(Role::Admin, Duration::from_secs(600));
    let customer = system.token(Role::Customer, Duration::from_secs(600));

    // Given: "tea" takes only the valid traffic; "jar" is the target of bad commands and must
    // never change; "ok" takes the odd-but-valid commands; "cup" has its message ids replayed.
    for (id, stock) in [("tea", 0), ("jar", 0), ("ok", 0), ("cup", 10), ("mug", 5)] {
        assert!(system.add_product(id, stock).await.is_accepted(), "{id}");
    }
    let gold = CatalogCommand::from(AddProduct {
        product_id: product("gold"),
        name: ProductName::parse("Gold bar".into()).unwrap(),
        price: Money::parse(Money::MAX_MINOR_UNITS).unwrap(),
        initial_stock: StockLevel::parse(10).unwrap(),
    });
    let bulk = CatalogCommand::from(AddProduct {
        product_id: product("bulk"),
        name: ProductName::parse("Bulk".into()).unwrap(),
        price: Money::parse(1).unwrap(),
        initial_stock: StockLevel::parse(StockLevel::MAX).unwrap(),
    });
    for command in [gold, bulk] {
        let reply = system.client.request(&command, PATIENCE).await.unwrap();
        assert!(reply.is_accepted(), "{reply:?}");
    }
    let registered = system
        .client
        .request_message(
            Message::json(
                "auth.register_user",
                register("ann@example.com", "a long enough password"),
                "",
            )
            .into_outgoing(),
            PATIENCE,
        )
        .await
        .unwrap();
    assert!(registered.is_accepted(), "{registered:?}");
    // An order placed by one customer, whose id another customer then tries to reuse.
    let taken = parse_order(&["mug:1".to_string()], "tok_visa").unwrap();
    let first_customer = system.client_with_token(Some(customer.clone())).await;
    assert_eq!(
        first_customer
            .place_order(&taken, PATIENCE)
            .await
            .unwrap()
            .status,
        "confirmed"
    );
    // Two commands whose ids are replayed later: a restock of cup, then a price change.
    let restock_cup = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: product("cup"),
            quantity: Quantity::parse(1).unwrap(),
        }),
    );
    let reprice_cup = OutgoingMessage::new(
        Metadata::origin("catalog.change_price"),
        &CatalogCommand::from(ChangePrice {
            product_id: product("cup"),
            price: Money::parse(300).unwrap(),
        }),
    );
    let restocked = system.request(restock_cup.clone()).await;
    let repriced = system.request(reprice_cup.clone()).await;
    assert!(restocked.is_accepted() && repriced.is_accepted());

    let cases = build_cases(
        &system,
        &replies.queue,
        &admin,
        &customer,
        &taken,
        [(&restock_cup, &restocked), (&reprice_cup, &repriced)],
    );
    let names: std::collections::BTreeSet<_> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    // When: each case is sent, followed by a valid restock of tea.
    for case in &cases {
        system
            .client
            .publish_raw(case.service, &case.body, case.properties.clone())
            .await
            .unwrap_or_else(|e| panic!("publish {}: {e}", case.name));
        let valid = Message::json("catalog.restock", restock("tea", 1), "").token(&admin);
        system
            .client
            .publish_raw(Service::Catalog, &valid.body, valid.properties())
            .await
            .unwrap();
    }

    // Then: wait until everything expected has arrived and every command queue is empty.
    let probe = broker::connect(&system.config.amqp_url, "bad-input probe")
        .await
        .unwrap();
    let expected_letters: usize = cases.iter().map(|c| c.expected.dead_letters.len()).sum();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pending = pending(&system, &probe, &replies, &cases, expected_letters).await;
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for the system to settle; still waiting for: {}",
            pending.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // ok: polling under the deadline above
    }

    // Observe each case.
    let mut letters: HashMap<String, Vec<String>> = HashMap::new();
    let correlation_to_case: HashMap<String, &str> = cases
        .iter()
        .filter_map(|c| Some((c.properties.correlation_id().as_ref()?.to_string(), c.name)))
        .collect();
    let mut strays = Vec::new();
    for service in Service::ALL {
        let queue = system.topology.dead_letter_queue(service);
        for letter in dead_letters(&probe, &queue).await {
            let code = match letter.headers.get(headers::DEAD_LETTER_CODE) {
                Some(eventline_events::envelope::HeaderValue::Text(code)) => code.clone(),
                _ => "(no code)".into(),
            };
            assert!(
                !String::from_utf8_lossy(&letter.body).contains("Sh0rt!7"),
                "a dead letter kept a password: {letter:?}"
            );
            let case = match letter.headers.get(CASE_HEADER) {
                Some(eventline_events::envelope::HeaderValue::Text(name)) => Some(name.clone()),
                // A reply sent into a command queue carries its command's correlation id.
                _ => letter
                    .correlation_id
                    .as_ref()
                    .and_then(|c| correlation_to_case.get(c))
                    .map(|name| (*name).to_owned()),
            };
            match case {
                Some(case) => letters.entry(case).or_default().push(code),
                None => strays.push(format!("{service}: {code} {letter:?}")),
            }
        }
    }
    let mut observed = Vec::new();
    for case in &cases {
        let got = replies.of(case);
        let reply = match got.as_slice() {
            [] => None,
            [one] => Some(describe(one, case.first_reply.as_ref())),
            many => Some(format!(
                "{} replies: {}",
                many.len(),
                many.iter()
                    .map(|r| describe(r, case.first_reply.as_ref()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        let order = match case.order {
            Some(order) => order_end(&system, order).await,
            None => None,
        };
        observed.push(Outcome {
            reply,
            dead_letters: letters.remove(case.name).unwrap_or_default(),
            order,
        });
    }

    // The valid traffic: every restock of tea applied exactly once; nothing else changed.
    assert_eq!(
        system.stream_versions("catalog.product-tea").await,
        (1..=1 + cases.len() as i64).collect::<Vec<_>>(),
        "every valid restock applied exactly once"
    );
    assert_eq!(
        system.stream_versions("catalog.product-jar").await,
        [1],
        "no bad command changed jar"
    );
    assert_eq!(
        system.stream_versions("catalog.product-cup").await,
        [1, 2, 3],
        "replayed message ids had no second effect"
    );
    let odd_but_valid = cases
        .iter()
        .filter(|c| c.body == restock("ok", 1).to_string().as_bytes())
        .count() as i64;
    assert_eq!(
        system.stream_versions("catalog.product-ok").await,
        (1..=1 + odd_but_valid).collect::<Vec<_>>(),
        "every odd-but-valid restock applied once"
    );
    system.wait_for_projection().await;
    assert_eq!(system.stock("tea").await.0, cases.len() as i64);
    // Every service still answers.
    let shopper = system.client_with_token(Some(customer.clone())).await;
    let order = parse_order(&["mug:1".to_string()], "tok_visa").unwrap();
    assert_eq!(
        shopper.place_order(&order, PATIENCE).await.unwrap().status,
        "confirmed"
    );
    let reply = system
        .client
        .request_message(
            Message::json(
                "auth.log_in",
                register("ann@example.com", "a long enough password"),
                "",
            )
            .into_outgoing(),
            PATIENCE,
        )
        .await
        .unwrap();
    assert!(reply.is_accepted(), "auth still answers: {reply:?}");

    let mismatches: Vec<String> = cases
        .iter()
        .zip(&observed)
        .filter(|(case, seen)| case.expected != **seen)
        .map(|(case, seen)| {
            format!(
                "{}: expected {}, observed {}",
                case.name, case.expected, seen
            )
        })
        .collect();
    assert!(
        mismatches.is_empty() && strays.is_empty(),
        "{} of {} cases differ from what they expect:\n{}\ndead letters of no case: {strays:?}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    for service in Service::ALL {
        for queue in [
            system.topology.command_queue(service),
            system.topology.retry_queue(service),
        ] {
            assert_eq!(ready(&probe, &queue).await, 0, "{queue} drained");
        }
    }
    check_docs(&render(&cases, &observed));
    let _ = probe.close(200, "done".into()).await;
    let _ = replies.connection.close(200, "done".into()).await;
    system.stop().await;
}

impl Message {
    fn into_outgoing(self) -> OutgoingMessage {
        let mut metadata = self.metadata;
        metadata.reply_to = None;
        OutgoingMessage {
            metadata,
            body: self.body,
            extra_headers: Vec::new(),
        }
    }
}

/// What the run still waits for, described; empty once settled.
async fn pending(
    system: &TestSystem,
    probe: &Connection,
    replies: &Replies,
    cases: &[Case],
    expected_letters: usize,
) -> Vec<String> {
    let mut pending = Vec::new();
    let versions = system.stream_versions("catalog.product-tea").await.len();
    if versions < 1 + cases.len() {
        pending.push(format!(
            "valid restocks ({} of {})",
            versions - 1,
            cases.len()
        ));
    }
    let missing: Vec<&str> = cases
        .iter()
        .filter(|c| c.expected.reply.is_some() && replies.of(c).is_empty())
        .map(|c| c.name)
        .collect();
    if !missing.is_empty() {
        pending.push(format!("replies to {missing:?}"));
    }
    let mut letters = 0;
    for service in Service::ALL {
        letters += ready(probe, &system.topology.dead_letter_queue(service)).await as usize;
        let queue = system.topology.command_queue(service);
        let waiting = ready(probe, &queue).await;
        if waiting > 0 {
            pending.push(format!("{waiting} messages in {queue}"));
        }
    }
    if letters < expected_letters {
        pending.push(format!("dead letters ({letters} of {expected_letters})"));
    }
    for case in cases {
        if let Some(order) = case.order
            && case.expected.order.is_some()
            && order_end(system, order).await.is_none()
        {
            pending.push(format!("order of {} to end", case.name));
        }
    }
    pending
}

fn build_cases(
    system: &TestSystem,
    reply_to: &str,
    admin: &str,
    customer: &str,
    taken: &eventline_events::orders::PlaceOrder,
    replayed: [(&OutgoingMessage, &Reply); 2],
) -> Vec<Case> {
    use Service::{Auth, Catalog, Orders, Payments};
    let mut c = Cases {
        list: Vec::new(),
        reply_to: reply_to.to_owned(),
    };
    let jar = restock("jar", 1);
    let ok = restock("ok", 1);
    let restock_jar = |c: &Cases| c.json("catalog.restock", jar.clone()).token(admin);
    let order_body = |order_id: OrderId, lines: serde_json::Value, card: &str| serde_json::json!({ "order_id": order_id, "lines": lines, "card": card });
    let line = |product_id: &str, quantity: u64| serde_json::json!({ "product_id": product_id, "quantity": quantity });

    // The body: syntax and encoding.
    let m = c.message("catalog.restock", "{not json").token(admin);
    c.add(
        "malformed_json",
        Catalog,
        "`{not json`",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c.message("catalog.restock", "").token(admin);
    c.add(
        "empty_body",
        Catalog,
        "an empty body",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c.message("catalog.restock", "null").token(admin);
    c.add(
        "json_null",
        Catalog,
        "`null`",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c
        .message("catalog.restock", format!("[{jar}]"))
        .token(admin);
    c.add(
        "json_array",
        Catalog,
        "the restock object inside an array",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c.message("catalog.restock", r#"["jar", 1]"#).token(admin);
    c.add(
        "json_positional_array",
        Catalog,
        "`[\"jar\", 1]` (the restock's fields by position)",
        m,
        same,
        Outcome::poison("invalid_body"),
        "a body must be a JSON object: positional bodies break silently when a field is added",
    );
    let m = c
        .message("catalog.restock", format!("{jar} {jar}"))
        .token(admin);
    c.add(
        "trailing_data",
        Catalog,
        "two JSON objects back to back",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c
        .message(
            "catalog.restock",
            [b"\xEF\xBB\xBF".as_slice(), jar.to_string().as_bytes()].concat(),
        )
        .token(admin);
    c.add(
        "utf8_bom",
        Catalog,
        "a valid restock preceded by a UTF-8 byte-order mark",
        m,
        same,
        Outcome::poison("invalid_body"),
        "JSON (RFC 8259) forbids a BOM in sent text; rejecting it keeps every reader agreeing on the bytes",
    );
    let m = c
        .message("catalog.restock", vec![0xff, 0xfe, 0x00])
        .token(admin);
    c.add(
        "invalid_utf8",
        Catalog,
        "bytes `FF FE 00`",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c
        .message(
            "catalog.restock",
            b"{\"product_id\":\"j\xffr\",\"quantity\":1}".to_vec(),
        )
        .token(admin);
    c.add(
        "invalid_utf8_in_string",
        Catalog,
        "a restock whose product id holds byte `FF`",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c
        .message(
            "catalog.add_product",
            r#"{"product_id":"n-surrogate","name":"Tea \ud800","price":1,"initial_stock":1}"#,
        )
        .token(admin);
    c.add(
        "lone_surrogate",
        Catalog,
        "a name with the escape `\\ud800` (half a UTF-16 pair)",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c
        .message(
            "catalog.restock",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        )
        .token(admin);
    c.add(
        "deep_nesting",
        Catalog,
        "10,000 nested arrays",
        m,
        same,
        Outcome::poison("invalid_body"),
        "the parser stops at depth 128, so nesting cannot exhaust the stack",
    );
    let m = c
        .message(
            "catalog.restock",
            format!(
                r#"{{"product_id":{}"jar"{},"quantity":1}}"#,
                "[".repeat(5_000),
                "]".repeat(5_000)
            ),
        )
        .token(admin);
    c.add(
        "deep_nesting_in_a_field",
        Catalog,
        "a restock whose product id is nested in 5,000 arrays",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let mut big = jar.to_string().into_bytes();
    big.resize(eventline_events::MAX_BODY_BYTES + 1, b' ');
    let m = c.message("catalog.restock", big).token(admin);
    c.add(
        "oversized_body",
        Catalog,
        "a valid restock padded with spaces to 65,537 bytes",
        m,
        same,
        Outcome::poison("body_too_large"),
        "the size is checked before anything is parsed",
    );

    // The body: fields and values.
    let m = c
        .json(
            "catalog.restock",
            serde_json::json!({ "product_id": "jar", "quantity": 1, "colour": "red" }),
        )
        .token(admin);
    c.add(
        "unknown_field",
        Catalog,
        "a restock with an extra field `colour`",
        m,
        same,
        Outcome::poison("invalid_body"),
        "commands refuse unknown fields: a misspelt optional field must not be silently ignored",
    );
    let m = c
        .message(
            "catalog.restock",
            r#"{"product_id":"jar","quantity":1,"quantity":1000}"#,
        )
        .token(admin);
    c.add(
        "duplicate_field",
        Catalog,
        "`quantity` given twice",
        m,
        same,
        Outcome::poison("invalid_body"),
        "readers disagree on which duplicate wins, so none is chosen",
    );
    let m = c
        .json(
            "catalog.restock",
            serde_json::json!({ "product_id": "jar" }),
        )
        .token(admin);
    c.add(
        "missing_body_field",
        Catalog,
        "a restock without `quantity`",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    let m = c
        .json(
            "catalog.restock",
            serde_json::json!({ "product_id": "jar", "quantity": "1" }),
        )
        .token(admin);
    c.add(
        "wrong_field_type",
        Catalog,
        "`\"quantity\": \"1\"` (a string)",
        m,
        same,
        Outcome::poison("invalid_body"),
        "no type coercion",
    );
    for (name, sent, quantity) in [
        ("zero_quantity", "`\"quantity\": 0`", "0"),
        ("negative_quantity", "`\"quantity\": -4`", "-4"),
        ("fractional_quantity", "`\"quantity\": 1.5`", "1.5"),
        ("exponent_quantity", "`\"quantity\": 1e2`", "1e2"),
        (
            "quantity_over_limit",
            "`\"quantity\": 1000001` (limit 1,000,000)",
            "1000001",
        ),
        (
            "quantity_u64_max",
            "`\"quantity\": 18446744073709551615`",
            "18446744073709551615",
        ),
        (
            "quantity_beyond_u64",
            "`\"quantity\": 99999999999999999999999`",
            "99999999999999999999999",
        ),
    ] {
        let m = c
            .message(
                "catalog.restock",
                format!(r#"{{"product_id":"jar","quantity":{quantity}}}"#),
            )
            .token(admin);
        c.add(
            name,
            Catalog,
            sent,
            m,
            same,
            Outcome::poison("invalid_body"),
            "",
        );
    }
    for (name, sent, price) in [
        ("negative_price", "a price change to `-1`", "-1"),
        ("fractional_price", "a price change to `2.50`", "2.50"),
        (
            "price_over_limit",
            "a price change to 10^12 + 1 minor units",
            "1000000000001",
        ),
        (
            "price_beyond_i64",
            "a price change to 2^63",
            "9223372036854775808",
        ),
    ] {
        let m = c
            .message(
                "catalog.change_price",
                format!(r#"{{"product_id":"jar","price":{price}}}"#),
            )
            .token(admin);
        let why = if name == "fractional_price" {
            "money is an integer of minor units (cents); no float touches it"
        } else {
            ""
        };
        c.add(
            name,
            Catalog,
            sent,
            m,
            same,
            Outcome::poison("invalid_body"),
            why,
        );
    }
    let m = c
        .json(
            "catalog.add_product",
            serde_json::json!({ "product_id": "n-stock", "name": "Stock", "price": 1, "initial_stock": 1_000_000_001u64 }),
        )
        .token(admin);
    c.add(
        "stock_over_limit",
        Catalog,
        "a new product with 1,000,000,001 in stock",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );
    for (name, sent, id) in [
        (
            "sql_injection_id",
            "product id `jar'; DROP TABLE event_log;--`",
            "jar'; DROP TABLE event_log;--",
        ),
        ("unicode_id", "product id `jär`", "jär"),
        ("empty_id", "product id `\"\"`", ""),
        (
            "long_id",
            "a product id of 65 characters",
            "j".repeat(65).as_str(),
        ),
    ] {
        let m = c.json("catalog.restock", restock(id, 1)).token(admin);
        c.add(
            name,
            Catalog,
            sent,
            m,
            same,
            Outcome::poison("invalid_body"),
            "",
        );
    }
    let m = c
        .json(
            "catalog.reserve_stock",
            serde_json::json!({ "product_id": "jar", "order_id": "order-1", "quantity": 1 }),
        )
        .token(admin);
    c.add(
        "invalid_order_id",
        Catalog,
        "a reservation with order id `order-1`",
        m,
        same,
        Outcome::poison("invalid_body"),
        "",
    );

    // Product names: what a person will see next to a price.
    for (name, sent, product_name, expected, why) in [
        (
            "name_emoji",
            "name `Tea 🍵`",
            "Tea 🍵",
            Outcome::accepted(),
            "emoji are text",
        ),
        (
            "name_emoji_sequence",
            "name with a ZWJ family emoji",
            "Family pack \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            Outcome::accepted(),
            "zero-width joiners inside emoji sequences are allowed",
        ),
        (
            "name_combining_marks",
            "name with stacked combining marks (`Z͑͒a͓lgo`)",
            "Z\u{0351}\u{0352}a\u{0353}lgo",
            Outcome::accepted(),
            "counted in characters, limited to 200",
        ),
        (
            "name_sql_shaped",
            "name `Robert'); DROP TABLE event_log;--`",
            "Robert'); DROP TABLE event_log;--",
            Outcome::accepted(),
            "a name is data: stored verbatim through bound parameters, never spliced into SQL",
        ),
        (
            "name_200_chars",
            "a name of 200 two-byte characters",
            "é".repeat(200).as_str(),
            Outcome::accepted(),
            "the limit counts characters, not bytes",
        ),
        (
            "name_201_chars",
            "a name of 201 characters",
            "a".repeat(201).as_str(),
            Outcome::poison("invalid_body"),
            "",
        ),
        (
            "name_blank",
            "name of three spaces",
            "   ",
            Outcome::poison("invalid_body"),
            "names are trimmed first",
        ),
        (
            "name_nul",
            "name `Tea\\u0000`",
            "Tea\u{0}",
            Outcome::poison("invalid_body"),
            "control characters",
        ),
        (
            "name_newline",
            "name `Tea\\nTime`",
            "Tea\nTime",
            Outcome::poison("invalid_body"),
            "control characters",
        ),
        (
            "name_line_separator",
            "name with U+2028 LINE SEPARATOR",
            "Tea\u{2028}Time",
            Outcome::poison("invalid_body"),
            "a line break by another name",
        ),
        (
            "name_rtl_override",
            "name with U+202E RIGHT-TO-LEFT OVERRIDE",
            "Tea \u{202E}gnp.exe",
            Outcome::poison("invalid_body"),
            "bidirectional controls reorder the text shown around the name",
        ),
        (
            "name_zero_width_only",
            "name of U+200B ZERO WIDTH SPACE only",
            "\u{200B}\u{200B}",
            Outcome::poison("invalid_body"),
            "a name must have a visible character",
        ),
        (
            "name_hangul_filler",
            "name of U+3164 HANGUL FILLER only",
            "\u{3164}",
            Outcome::poison("invalid_body"),
            "a blank-looking letter: no visible character",
        ),
    ] {
        let id = format!("n-{}", name.trim_start_matches("name_").replace('_', "-"));
        let m = c
            .json("catalog.add_product", add_product(&id, product_name))
            .token(admin);
        c.add(name, Catalog, sent, m, same, expected, why);
    }

    // The envelope.
    let m = restock_jar(&c);
    c.add(
        "wrong_content_type",
        Catalog,
        "content type `text/plain`",
        m,
        |p| p.with_content_type("text/plain".into()),
        Outcome::poison("unsupported_content_type"),
        "",
    );
    let m = c.json("catalog.restock", ok.clone()).token(admin);
    c.add(
        "content_type_with_charset",
        Catalog,
        "content type `Application/JSON; charset=utf-8`",
        m,
        |p| p.with_content_type("Application/JSON; charset=utf-8".into()),
        Outcome::accepted(),
        "case and parameters are ignored (CONTRACT.md)",
    );
    let m = c
        .message("catalog.launch_rockets", jar.to_string())
        .token(admin);
    c.add(
        "unknown_type",
        Catalog,
        "type `catalog.launch_rockets`",
        m,
        same,
        Outcome::poison("unknown_message_type"),
        "",
    );
    let m = c
        .message("orders.place_order", jar.to_string())
        .token(admin);
    c.add(
        "other_services_type",
        Catalog,
        "type `orders.place_order` on the catalog's queue",
        m,
        same,
        Outcome::poison("unknown_message_type"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "missing_type",
        Catalog,
        "no `type` property",
        m,
        |p| {
            BasicProperties::default()
                .with_message_id(p.message_id().clone().unwrap())
                .with_correlation_id(p.correlation_id().clone().unwrap())
                .with_headers(p.headers().clone().unwrap())
                .with_reply_to(p.reply_to().clone().unwrap())
        },
        Outcome::dead_letter_only("missing_field"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "missing_message_id",
        Catalog,
        "no `message_id`",
        m,
        |p| {
            let q = BasicProperties::default()
                .with_type(p.kind().clone().unwrap())
                .with_correlation_id(p.correlation_id().clone().unwrap())
                .with_reply_to(p.reply_to().clone().unwrap());
            q.with_headers(p.headers().clone().unwrap())
        },
        Outcome::dead_letter_only("missing_field"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "invalid_message_id",
        Catalog,
        "message id `not-a-uuid`",
        m,
        |p| p.with_message_id("not-a-uuid".into()),
        Outcome::dead_letter_only("invalid_id"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "nil_message_id",
        Catalog,
        "the nil UUID as message id",
        m,
        |p| p.with_message_id("00000000-0000-0000-0000-000000000000".into()),
        Outcome::dead_letter_only("invalid_id"),
        "every careless sender would share it, and get each other's stored replies",
    );
    let m = c.json("catalog.restock", ok.clone()).token(admin);
    c.add(
        "uppercase_message_id",
        Catalog,
        "a message id in upper case",
        m,
        |p| {
            let id = p.message_id().as_ref().unwrap().as_str().to_uppercase();
            p.with_message_id(id.into())
        },
        Outcome::accepted(),
        "a UUID's hex digits are case-insensitive; dedup compares UUIDs, not strings",
    );
    let m = restock_jar(&c);
    c.add(
        "missing_correlation_id",
        Catalog,
        "no `correlation_id`",
        m,
        |p| {
            let mut q = BasicProperties::default()
                .with_type(p.kind().clone().unwrap())
                .with_message_id(p.message_id().clone().unwrap())
                .with_reply_to(p.reply_to().clone().unwrap());
            q = q.with_headers(p.headers().clone().unwrap());
            q
        },
        Outcome::dead_letter_only("missing_field"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "missing_causation_id",
        Catalog,
        "no `x-causation-id` header",
        m,
        |p| {
            edit_headers(p, |h| {
                h.remove(headers::CAUSATION_ID);
            })
        },
        Outcome::dead_letter_only("missing_field"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "causation_id_as_integer",
        Catalog,
        "`x-causation-id` as the integer 42",
        m,
        |p| {
            edit_headers(p, |h| {
                h.insert(headers::CAUSATION_ID.into(), AMQPValue::LongLongInt(42));
            })
        },
        Outcome::dead_letter_only("invalid_header"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "bad_occurred_at",
        Catalog,
        "`x-occurred-at: yesterday`",
        m,
        |p| {
            edit_headers(p, |h| {
                h.insert(headers::OCCURRED_AT.into(), text("yesterday"));
            })
        },
        Outcome::dead_letter_only("invalid_header"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "future_schema_version",
        Catalog,
        "`x-schema-version: 2`",
        m,
        |p| {
            edit_headers(p, |h| {
                h.insert(headers::SCHEMA_VERSION.into(), AMQPValue::LongLongInt(2));
            })
        },
        Outcome::dead_letter_only("unsupported_schema_version"),
        "a newer sender's body may mean something else; nothing is guessed",
    );
    let m = restock_jar(&c);
    c.add(
        "schema_version_zero",
        Catalog,
        "`x-schema-version: 0`",
        m,
        |p| {
            edit_headers(p, |h| {
                h.insert(headers::SCHEMA_VERSION.into(), AMQPValue::LongLongInt(0));
            })
        },
        Outcome::dead_letter_only("unsupported_schema_version"),
        "",
    );
    let m = restock_jar(&c);
    c.add(
        "schema_version_as_float",
        Catalog,
        "`x-schema-version` as the float 1.0",
        m,
        |p| {
            edit_headers(p, |h| {
                h.insert(headers::SCHEMA_VERSION.into(), AMQPValue::Double(1.0));
            })
        },
        Outcome::dead_letter_only("unsupported_schema_version"),
        "",
    );
    let m = c.json("catalog.restock", ok.clone()).token(admin);
    c.add(
        "schema_version_as_string",
        Catalog,
        "`x-schema-version` as the string `\"1\"`",
        m,
        |p| {
            edit_headers(p, |h| {
                h.insert(headers::SCHEMA_VERSION.into(), text("1"));
            })
        },
        Outcome::accepted(),
        "allowed by CONTRACT.md: some client libraries cannot choose header types",
    );
    let m = restock_jar(&c);
    c.add(
        "no_headers",
        Catalog,
        "no headers at all",
        m,
        |p| p.with_headers(FieldTable::default()),
        Outcome::dead_letter_only("missing_field"),
        "",
    );

    // Where the reply goes.
    let m = c.json("catalog.restock", ok.clone()).token(admin);
    c.add("reply_to_missing_queue", Catalog, "`reply_to` naming a queue that does not exist", m, |p| p.with_reply_to("no-such-queue".into()), Outcome::silent(), "applied (counted in `ok`); the returned reply is logged and dropped: replies are best effort, the outcome is stored");
    let m = c.json("catalog.restock", ok.clone()).token(admin);
    let loop_queue = system.topology.command_queue(Catalog);
    let case = c.add("reply_to_command_queue", Catalog, "`reply_to` naming the catalog's own command queue", m, same, Outcome::silent().dead_letter("unknown_message_type"), "applied; its reply arrives as a command, is dead-lettered once, and asks for no reply: no loop");
    case.properties = case
        .properties
        .clone()
        .with_reply_to(loop_queue.as_str().into());

    // Tokens on an admin command.
    let foreign = mint(
        &eventline_workers::runtime::token::generate_signing_key(),
        Role::Admin,
        Duration::from_secs(600),
    );
    let mut forged: Vec<String> = admin.split('.').map(str::to_owned).collect();
    forged[1].push('x');
    let forged = forged.join(".");
    let payload = admin.split('.').nth(1).unwrap();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let expired = system.token(Role::Admin, Duration::ZERO);
    for (name, sent, token, code) in [
        (
            "forged_token",
            "an admin token with its payload altered",
            forged.as_str(),
            "token_invalid",
        ),
        (
            "expired_token",
            "an admin token that has expired",
            expired.as_str(),
            "token_expired",
        ),
        (
            "foreign_token",
            "an admin token signed by another key",
            foreign.as_str(),
            "token_invalid",
        ),
        (
            "alg_none_token",
            "an unsigned token with `alg: none`",
            alg_none.as_str(),
            "token_invalid",
        ),
        (
            "garbage_token",
            "token `not.a.token`",
            "not.a.token",
            "token_invalid",
        ),
        (
            "customer_token",
            "a valid customer token on an admin command",
            customer,
            "forbidden",
        ),
    ] {
        let m = c.json("catalog.restock", jar.clone()).token(token);
        c.add(name, Catalog, sent, m, same, Outcome::rejected(code), "");
    }
    let m = c.json("catalog.restock", jar.clone());
    c.add(
        "missing_token",
        Catalog,
        "an admin command without a token",
        m,
        same,
        Outcome::rejected("token_missing"),
        "",
    );
    let m = c.json("catalog.restock", jar.clone());
    let bearer = format!("Bearer {admin}");
    let case = c.add(
        "token_in_wrong_header",
        Catalog,
        "the token in an `authorization` header",
        m,
        same,
        Outcome::rejected("token_missing"),
        "only `x-auth-token` is read",
    );
    case.properties = edit_headers(case.properties.clone(), |h| {
        h.insert("authorization".into(), text(&bearer));
    });
    let m = c.json("catalog.restock", jar.clone());
    c.add(
        "token_as_integer",
        Catalog,
        "`x-auth-token` as the integer 7",
        m,
        |p| {
            edit_headers(p, |h| {
                h.insert(TOKEN_HEADER.into(), AMQPValue::LongLongInt(7));
            })
        },
        Outcome::rejected("token_invalid"),
        "",
    );

    // Commands for things that do not exist, or that the domain refuses.
    let m = c.json("catalog.restock", restock("ghost", 1)).token(admin);
    c.add(
        "restock_unknown_product",
        Catalog,
        "a restock of a product never added",
        m,
        same,
        Outcome::rejected("unknown_product"),
        "",
    );
    let m = c
        .json(
            "catalog.change_price",
            serde_json::json!({ "product_id": "ghost", "price": 5 }),
        )
        .token(admin);
    c.add(
        "reprice_unknown_product",
        Catalog,
        "a price change of a product never added",
        m,
        same,
        Outcome::rejected("unknown_product"),
        "",
    );
    let m = c
        .json(
            "catalog.commit_reservation",
            serde_json::json!({ "product_id": "jar", "order_id": OrderId::new() }),
        )
        .signed_by_orders(system);
    c.add(
        "commit_unknown_order",
        Catalog,
        "a commit for an order that reserved nothing",
        m,
        same,
        Outcome::rejected("no_reservation"),
        "",
    );
    let m = c
        .json(
            "catalog.reserve_stock",
            serde_json::json!({ "product_id": "jar", "order_id": OrderId::new(), "quantity": 1 }),
        )
        .signed_by_orders(system);
    c.add(
        "reserve_beyond_stock",
        Catalog,
        "a reservation of 1 from 0 available",
        m,
        same,
        Outcome::rejected("insufficient_stock"),
        "",
    );
    let m = c
        .json("catalog.add_product", add_product("jar", "Jar"))
        .token(admin);
    c.add(
        "add_existing_product",
        Catalog,
        "`catalog.add_product` for a product that exists",
        m,
        same,
        Outcome::rejected("product_exists"),
        "",
    );
    let m = c.json("catalog.restock", restock("bulk", 1)).token(admin);
    c.add(
        "restock_beyond_stock_limit",
        Catalog,
        "a restock of 1 for a product at the 1,000,000,000 limit",
        m,
        same,
        Outcome::rejected("stock_limit"),
        "",
    );

    // Replayed message ids.
    let [(restock_cup, restocked), (reprice_cup, repriced)] = replayed;
    let stored = || Outcome {
        reply: Some("accepted (the first delivery's stored reply, unchanged)".into()),
        ..Outcome::default()
    };
    let unchanged = "no second effect (`cup` stays at version 3)";
    let reused = "a message id is an idempotency key: the same id with other content (type or body) is refused, with no effect, and the first outcome stands (CONTRACT.md)";
    for (name, sent, original, first, message_type, body, expected, why) in [
        (
            "replay_after_success",
            "the price change's message id and body again",
            reprice_cup,
            repriced,
            "catalog.change_price",
            reprice_cup.body.clone(),
            stored(),
            unchanged,
        ),
        (
            "replay_after_change",
            "the first restock's message id and body again, after the price changed",
            restock_cup,
            restocked,
            "catalog.restock",
            restock_cup.body.clone(),
            stored(),
            unchanged,
        ),
        (
            "replay_with_other_body",
            "the first restock's message id with quantity 7",
            restock_cup,
            restocked,
            "catalog.restock",
            restock("cup", 7).to_string().into_bytes(),
            Outcome::rejected("idempotency_key_reused"),
            reused,
        ),
        (
            "replay_with_other_type",
            "the price change's message id on a restock of cup",
            reprice_cup,
            repriced,
            "catalog.restock",
            restock("cup", 1).to_string().into_bytes(),
            Outcome::rejected("idempotency_key_reused"),
            reused,
        ),
    ] {
        let mut m = c.message(message_type, body).token(admin);
        m.metadata.message_id = original.metadata.message_id;
        m.metadata.causation_id = original.metadata.message_id.into();
        let case = c.add(name, Catalog, sent, m, same, expected, why);
        case.first_reply = Some(first.clone());
    }

    // Orders.
    let ghost_order = OrderId::new();
    let m = c
        .json(
            "orders.place_order",
            order_body(
                ghost_order,
                serde_json::json!([line("ghost", 1)]),
                "tok_visa",
            ),
        )
        .token(customer);
    let case = c.add(
        "order_unknown_product",
        Orders,
        "an order for a product never added",
        m,
        same,
        Outcome::accepted().order("rejected `unknown_product`"),
        "the order is accepted, then rejected by the saga; nothing charged",
    );
    case.order = Some(ghost_order);
    let gold_order = OrderId::new();
    let m = c
        .json(
            "orders.place_order",
            order_body(gold_order, serde_json::json!([line("gold", 2)]), "tok_visa"),
        )
        .token(customer);
    let case = c.add(
        "order_total_overflow",
        Orders,
        "2 items at the maximum price (total over the payment limit)",
        m,
        same,
        Outcome::accepted().order("rejected `amount_too_large`"),
        "reservations are released; nothing charged",
    );
    case.order = Some(gold_order);
    let m = c
        .json(
            "orders.place_order",
            order_body(
                taken.order_id,
                serde_json::json!([line("mug", 1)]),
                "tok_visa",
            ),
        )
        .token(&system.token(Role::Customer, Duration::from_secs(600)));
    c.add(
        "order_id_of_another_customer",
        Orders,
        "an order id another customer already used",
        m,
        same,
        Outcome::rejected("order_exists"),
        "",
    );
    // The first customer's own order id again: identical is a re-send, different is refused.
    for (name, sent, lines, card, expected, why) in [
        (
            "order_placed_again_identical",
            "the customer's confirmed order again, same lines and card, under a new message id",
            serde_json::json!([line("mug", 1)]),
            "tok_visa",
            Outcome::accepted(),
            "an order id is the order's natural key: the same order again is a success with no new effect (nothing reserved or charged twice)",
        ),
        (
            "order_id_reused_with_other_lines",
            "the customer's own order id with 2 mugs instead of 1",
            serde_json::json!([line("mug", 2)]),
            "tok_visa",
            Outcome::rejected("order_exists"),
            "a placed order never changes; the reason names the lines placed and sent",
        ),
        (
            "order_id_reused_with_other_card",
            "the customer's own order id with another card",
            serde_json::json!([line("mug", 1)]),
            "tok_declined",
            Outcome::rejected("order_exists"),
            "the reason says the card differs and never quotes a card token",
        ),
    ] {
        let m = c
            .json(
                "orders.place_order",
                order_body(taken.order_id, lines, card),
            )
            .token(customer);
        c.add(name, Orders, sent, m, same, expected, why);
    }
    let m = c.json(
        "orders.place_order",
        order_body(
            OrderId::new(),
            serde_json::json!([line("mug", 1)]),
            "tok_visa",
        ),
    );
    c.add(
        "order_without_token",
        Orders,
        "an order without a token",
        m,
        same,
        Outcome::rejected("token_missing"),
        "",
    );
    for (name, sent, lines, card) in [
        (
            "order_card_number",
            "card `4242424242424242` instead of a token",
            serde_json::json!([line("mug", 1)]),
            "4242424242424242",
        ),
        (
            "order_no_lines",
            "an order with no lines",
            serde_json::json!([]),
            "tok_visa",
        ),
        (
            "order_21_lines",
            "an order with 21 lines (limit 20)",
            serde_json::Value::Array((0..21).map(|i| line(&format!("p{i}"), 1)).collect()),
            "tok_visa",
        ),
        (
            "order_duplicate_lines",
            "an order with the same product on two lines",
            serde_json::json!([line("mug", 1), line("mug", 1)]),
            "tok_visa",
        ),
        (
            "order_zero_quantity",
            "an order line with quantity 0",
            serde_json::json!([line("mug", 0)]),
            "tok_visa",
        ),
    ] {
        let m = c
            .json(
                "orders.place_order",
                order_body(OrderId::new(), lines, card),
            )
            .token(customer);
        c.add(
            name,
            Orders,
            sent,
            m,
            same,
            Outcome::poison("invalid_body"),
            "",
        );
    }
    let nested = OrderId::new();
    let m = c
        .json(
            "orders.place_order",
            order_body(nested, serde_json::json!([["mug", 1]]), "tok_visa"),
        )
        .token(customer);
    let case = c.add("order_line_as_array", Orders, "an order line as `[\"mug\", 1]` instead of an object", m, same, Outcome::accepted().order("confirmed"), "known gap: only the top level of a body is checked to be an object; serde reads a nested struct from an array by position");
    case.order = Some(nested);
    let m = c
        .json(
            "orders.expire_order",
            serde_json::json!({ "order_id": OrderId::new() }),
        )
        .signed_by_orders(system);
    c.add(
        "expire_unknown_order",
        Orders,
        "a saga timer for an order that does not exist",
        m,
        same,
        Outcome::accepted(),
        "a timer for nothing does nothing",
    );

    // Payments.
    for (name, sent, amount, card) in [
        (
            "charge_negative_amount",
            "a charge of `-100`",
            serde_json::json!(-100),
            "tok_visa",
        ),
        (
            "charge_fractional_amount",
            "a charge of `9.99`",
            serde_json::json!(9.99),
            "tok_visa",
        ),
        (
            "charge_amount_over_limit",
            "a charge of u64::MAX minor units",
            serde_json::json!(u64::MAX),
            "tok_visa",
        ),
        (
            "charge_card_number",
            "a charge with card `4242 4242 4242 4242`",
            serde_json::json!(100),
            "4242 4242 4242 4242",
        ),
    ] {
        let m = c.json(
            "payments.charge_payment",
            serde_json::json!({ "order_id": OrderId::new(), "amount": amount, "card": card }),
        );
        c.add(
            name,
            Payments,
            sent,
            m,
            same,
            Outcome::poison("invalid_body"),
            "",
        );
    }
    let m = c
        .json(
            "payments.charge_payment",
            serde_json::json!({ "order_id": OrderId::new(), "amount": 100, "card": "tok_stolen" }),
        )
        .signed_by_orders(system);
    c.add(
        "charge_unknown_card",
        Payments,
        "a charge with the well-formed but unknown card `tok_stolen`",
        m,
        same,
        Outcome::rejected("payment_unknown_card"),
        "",
    );
    let m = c
        .json(
            "payments.charge_payment",
            serde_json::json!({ "order_id": OrderId::new(), "amount": 100, "card": "tok_visa" }),
        )
        .signed_by_orders(system);
    c.add("charge_unknown_order", Payments, "a charge, with orders' credential, for an order id that orders never saw", m, same, Outcome::accepted(), "payments does not read orders' data (autonomy): it trusts the saga, proven by orders' signature; without it see `forged_charge_*`");
    let m = c
        .json(
            "payments.refund_payment",
            serde_json::json!({ "order_id": OrderId::new() }),
        )
        .signed_by_orders(system);
    c.add(
        "refund_unknown_order",
        Payments,
        "a refund for an order that was never charged",
        m,
        same,
        Outcome::accepted(),
        "closes the payment with amount 0, so a late charge is refused",
    );

    // Saga steps from anyone but the order saga: refused before their id is claimed, so a
    // forged step cannot take a real step's (predictable) id; dead-lettered for operators.
    let saga_only = "only the order saga may send it: orders signs each step with its own key; tokens do not count";
    let foreign_key = token::generate_signing_key();
    let other = c
        .json(
            "catalog.reserve_stock",
            serde_json::json!({ "product_id": "jar", "order_id": OrderId::new(), "quantity": 1 }),
        )
        .signed_by_orders(system);
    let copied = other.credential.clone().expect("signed");
    let reserve_all = serde_json::json!({ "product_id": "jar", "order_id": OrderId::new(), "quantity": 1_000_000 });
    for (name, sent, m) in [
        (
            "forged_reserve_customer",
            "`catalog.reserve_stock` with a customer's token",
            c.json("catalog.reserve_stock", reserve_all.clone())
                .token(customer),
        ),
        (
            "forged_reserve_admin",
            "`catalog.reserve_stock` with an admin's token",
            c.json("catalog.reserve_stock", reserve_all.clone())
                .token(admin),
        ),
        (
            "forged_reserve_foreign_key",
            "`catalog.reserve_stock` with a credential signed by another key (another service's)",
            c.json("catalog.reserve_stock", reserve_all.clone())
                .signed(&foreign_key),
        ),
        (
            "forged_release_copied_credential",
            "`catalog.release_reservation` carrying the credential of another (real) saga step",
            {
                let mut m = c.json(
                    "catalog.release_reservation",
                    serde_json::json!({ "product_id": "jar", "order_id": taken.order_id }),
                );
                m.credential = Some(copied.clone());
                m
            },
        ),
        (
            "forged_commit_no_credential",
            "`catalog.commit_reservation` without a credential",
            c.json(
                "catalog.commit_reservation",
                serde_json::json!({ "product_id": "jar", "order_id": taken.order_id }),
            )
            .token(admin),
        ),
        (
            "forged_credential_not_text",
            "`catalog.reserve_stock` whose credential header is an integer",
            {
                let mut m = c.json("catalog.reserve_stock", reserve_all.clone());
                m.credential = Some(AMQPValue::LongLongInt(7));
                m
            },
        ),
    ] {
        c.add(
            name,
            Catalog,
            sent,
            m,
            same,
            Outcome::poison("forbidden"),
            saga_only,
        );
    }
    for (name, sent, m) in [
        ("forged_charge_unknown_order", "`payments.charge_payment` of 123 for an order that does not exist, no credential", c.json("payments.charge_payment", serde_json::json!({ "order_id": OrderId::new(), "amount": 123, "card": "tok_visa" })).token(customer)),
        ("forged_refund_confirmed_order", "`payments.refund_payment` of a confirmed (paid) order, admin token", c.json("payments.refund_payment", serde_json::json!({ "order_id": taken.order_id })).token(admin)),
        ("forged_refund_foreign_key", "`payments.refund_payment` of a confirmed order, signed by another key", c.json("payments.refund_payment", serde_json::json!({ "order_id": taken.order_id })).signed(&foreign_key)),
    ] {
        c.add(name, Payments, sent, m, same, Outcome::poison("forbidden"), saga_only);
    }
    let m = c
        .json(
            "orders.expire_order",
            serde_json::json!({ "order_id": taken.order_id }),
        )
        .token(customer);
    c.add(
        "forged_expire_order",
        Orders,
        "`orders.expire_order` for another customer's order, customer token",
        m,
        same,
        Outcome::poison("forbidden"),
        "the timeout is a message orders sends itself",
    );
    // Replies to saga steps from anyone but the step's callee: refused before their id is
    // claimed, dead-lettered, and the order untouched.
    let catalog_key = system.signing_key(Service::Catalog);
    let paid = serde_json::to_value(Reply::Accepted {
        stream_id: eventline_events::payments::payment_stream(taken.order_id),
        events: Vec::new(),
        result: None,
    })
    .expect("a reply is JSON");
    // Each case its own order: the order is the reply's conversation (its correlation id).
    for (name, sent, order, signer) in [
        (
            "forged_reply_to_charge",
            "`eventline.reply` accepted for a confirmed order's charge step, no credential",
            taken.order_id,
            None,
        ),
        (
            "forged_reply_other_service_key",
            "`eventline.reply` accepted for an order's charge step, signed with catalog's key",
            OrderId::new(),
            Some((&catalog_key, Service::Catalog)),
        ),
    ] {
        let m = c
            .json(eventline_events::reply::REPLY_TYPE, paid.clone())
            .reply_to_step(order, "charge", signer);
        c.add(
            name,
            Orders,
            sent,
            m,
            same,
            Outcome::poison("forbidden"),
            "a reply to a step is its callee's word: payments signs its replies to the charge with its own key",
        );
    }
    // Token roles as the contract states them.
    let m = c
        .json(
            "orders.place_order",
            order_body(
                OrderId::new(),
                serde_json::json!([line("mug", 1)]),
                "tok_visa",
            ),
        )
        .token(admin);
    c.add(
        "order_with_admin_token",
        Orders,
        "`orders.place_order` with an admin's token",
        m,
        same,
        Outcome::rejected("forbidden"),
        "placing an order needs the customer role",
    );

    // Auth.
    for (name, sent, email, password) in [
        (
            "email_two_at_signs",
            "email `ann@@example.com`",
            "ann@@example.com",
            "a long enough password",
        ),
        (
            "email_no_dot",
            "email `ann@localhost`",
            "ann@localhost",
            "a long enough password",
        ),
        (
            "email_with_space",
            "email `ann smith@example.com`",
            "ann smith@example.com",
            "a long enough password",
        ),
        (
            "email_rtl_override",
            "email with U+202E RIGHT-TO-LEFT OVERRIDE",
            "moc.elgoog\u{202E}@evil.example",
            "a long enough password",
        ),
        (
            "email_too_long",
            "an email of 260 characters",
            format!("{}@example.com", "a".repeat(248)).as_str(),
            "a long enough password",
        ),
        (
            "password_too_short",
            "a 7-character password",
            "bob@example.com",
            "Sh0rt!7",
        ),
    ] {
        let m = c.json("auth.register_user", register(email, password));
        c.add(
            name,
            Auth,
            sent,
            m,
            same,
            Outcome::poison("invalid_body"),
            if name == "password_too_short" {
                "the dead letter's body has the password replaced by `***`"
            } else {
                ""
            },
        );
    }
    let m = c.json(
        "auth.register_user",
        register("ANN@Example.COM", "another long password"),
    );
    c.add(
        "email_taken_other_case",
        Auth,
        "registering `ANN@Example.COM` when `ann@example.com` exists",
        m,
        same,
        Outcome::rejected("email_taken"),
        "emails are lower-cased first",
    );
    let m = c.json(
        "auth.register_user",
        register(
            "\u{0442}\u{0435}\u{0441}\u{0442}@example.com",
            "a long enough password",
        ),
    );
    c.add(
        "email_unicode_local_part",
        Auth,
        "email `тест@example.com`",
        m,
        same,
        Outcome::accepted(),
        "internationalised addresses (RFC 6531) are real",
    );
    let m = c.json(
        "auth.log_in",
        register("nobody@example.com", "a long enough password"),
    );
    c.add(
        "log_in_unknown_user",
        Auth,
        "a log-in for an email never registered",
        m,
        same,
        Outcome::rejected("invalid_credentials"),
        "the same answer as a wrong password: no account discovery",
    );

    c.list
}

/// The table in `docs/bad-input.md`.
fn render(cases: &[Case], observed: &[Outcome]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::from(
        "# Bad input\n\n\
         Generated by `tests/integration/bad_input.rs`; do not edit. After a deliberate change, \
         regenerate with `UPDATE_DOCS=1 cargo test --test integration bad_input`.\n\n\
         Every case below is one AMQP message sent to a running system (one replica of each \
         service), each followed by a valid `catalog.restock`. The suite passes only if each \
         case's observed outcome is the expected one, every valid restock is applied exactly \
         once, the products the bad commands aim at are unchanged, the dead-letter queues hold \
         exactly the poison listed here, and every command and retry queue drains to empty: no \
         crash, no endless requeue.\n\n\
         - **reply** is what the sender got on its `reply_to` (`rejected` with the code from \
         [schema/CONTRACT.md](../schema/CONTRACT.md) §4). A message whose envelope is broken \
         (ids, type, headers) gets no reply: there is no valid id to answer.\n\
         - **DLQ** is the `x-eventline-reason-code` of the dead letter it left; the dead letter \
         also carries the reason as text (`x-eventline-reason`), e.g. \
         `eventline dead-letters catalog`.\n\
         - **order** is how the order ended, for commands that start one.\n\n",
    );
    out.push_str("| # | Case | Service | What was sent | Expected | Observed | Why |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for (i, (case, seen)) in cases.iter().zip(observed).enumerate() {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} |\n",
            i + 1,
            case.name,
            case.service,
            cell(case.sent),
            cell(&case.expected.to_string()),
            cell(&seen.to_string()),
            cell(case.why),
        ));
    }
    out
}

fn check_docs(rendered: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/bad-input.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == rendered,
        "docs/bad-input.md is out of date with the bad-input suite; run \
         `UPDATE_DOCS=1 cargo test --test integration bad_input` and commit the result"
    );
}
