//! Bad input never crashes a worker and never loops: each poison message lands in the
//! dead-letter queue with its reason while valid commands keep flowing.

use eventline_events::catalog::{CatalogCommand, Restock};
use eventline_events::values::Quantity;
use eventline_events::{Metadata, OutgoingMessage, Service};
use eventline_workers::runtime::broker;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::support::{TestSystem, eventually, product};

/// Properties of a well-formed command of `message_type`, to be spoiled one way at a time.
fn good_properties(message_type: &str) -> BasicProperties {
    broker::properties(&OutgoingMessage {
        metadata: Metadata::origin(message_type),
        body: Vec::new(),
        extra_headers: Vec::new(),
    })
}

fn with_header(properties: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    properties.with_headers(headers)
}

fn without_headers(properties: BasicProperties) -> BasicProperties {
    properties.with_headers(FieldTable::default())
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_a_reason_while_valid_ones_flow() {
    let system = TestSystem::with_catalog(1).await;
    system.add_product("tea", 0).await;
    let restock = r#"{"product_id":"tea","quantity":1}"#.as_bytes();

    let cases: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        (
            "invalid_body",
            b"{not json".to_vec(),
            good_properties("catalog.restock"),
        ),
        (
            "unknown_message_type",
            restock.to_vec(),
            good_properties("catalog.launch_rockets"),
        ),
        (
            "missing_field",
            restock.to_vec(),
            BasicProperties::default().with_type("catalog.restock".into()),
        ),
        (
            "missing_field",
            restock.to_vec(),
            without_headers(good_properties("catalog.restock")),
        ),
        (
            "unsupported_schema_version",
            restock.to_vec(),
            with_header(
                good_properties("catalog.restock"),
                "x-schema-version",
                AMQPValue::LongLongInt(2),
            ),
        ),
        (
            "invalid_id",
            restock.to_vec(),
            good_properties("catalog.restock").with_message_id("not-a-uuid".into()),
        ),
        (
            "body_too_large",
            vec![b' '; 70 * 1024],
            good_properties("catalog.restock"),
        ),
        (
            "unsupported_content_type",
            restock.to_vec(),
            good_properties("catalog.restock").with_content_type("text/plain".into()),
        ),
        (
            "invalid_body",
            vec![0xff, 0xfe, 0x00],
            good_properties("catalog.restock"),
        ),
        (
            "invalid_body",
            br#"{"product_id":"tea","quantity":-4}"#.to_vec(),
            good_properties("catalog.restock"),
        ),
        (
            "invalid_body",
            br#"{"product_id":"tea'; DROP TABLE event_log;--","quantity":1}"#.to_vec(),
            good_properties("catalog.restock"),
        ),
        (
            "invalid_body",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            good_properties("catalog.restock"),
        ),
    ];
    let poison = cases.len();
    // Valid restocks interleaved with the poison.
    for (_, body, properties) in &cases {
        system
            .client
            .publish_raw(Service::Catalog, body, properties.clone())
            .await
            .unwrap();
        let valid = OutgoingMessage::new(
            Metadata::origin("catalog.restock"),
            &CatalogCommand::from(Restock {
                product_id: product("tea"),
                quantity: Quantity::parse(1).unwrap(),
            }),
        );
        system.client.publish(&valid).await.unwrap();
    }

    let letters = eventually("every poison message in the dead-letter queue", || async {
        let letters = system
            .client
            .dead_letters(Service::Catalog, 100)
            .await
            .unwrap();
        if letters.len() >= poison {
            Ok(letters)
        } else {
            Err(format!("{} of {poison}", letters.len()))
        }
    })
    .await;
    let mut codes: Vec<&str> = letters.iter().map(|l| l.code.as_str()).collect();
    let mut expected: Vec<&str> = cases.iter().map(|c| c.0).collect();
    codes.sort_unstable();
    expected.sort_unstable();
    assert_eq!(codes, expected);
    assert!(
        letters
            .iter()
            .all(|l| !l.reason.is_empty() && l.handled_by.is_some())
    );
    let versions = eventually("every valid restock to be applied", || async {
        let versions = system.stream_versions("catalog.product-tea").await;
        if versions.len() == 1 + poison {
            Ok(versions)
        } else {
            Err(format!("{} events", versions.len()))
        }
    })
    .await;
    assert_eq!(versions, (1..=1 + poison as i64).collect::<Vec<_>>());
    // The worker is still alive and answering.
    assert!(system.add_product("after", 1).await.is_accepted());
    system.stop().await;
}

#[tokio::test]
async fn a_poison_command_with_a_reply_address_gets_a_rejection_naming_the_field() {
    let system = TestSystem::with_catalog(1).await;
    let reply = system
        .client
        .request_message(
            OutgoingMessage {
                metadata: Metadata::origin("catalog.reserve_stock"),
                body: br#"{"product_id":"tea","order_id":"0190f0a0-0000-7000-8000-000000000000","quantity":0}"#.to_vec(),
                extra_headers: Vec::new(),
            },
            crate::support::PATIENCE,
        )
        .await
        .unwrap();
    let eventline_events::Reply::Rejected { reason } = reply else {
        panic!("quantity 0 was accepted")
    };
    assert_eq!(reason.code, "invalid_body");
    assert!(
        reason.message.contains("quantity 0 is out of range"),
        "{}",
        reason.message
    );
    system.stop().await;
}
