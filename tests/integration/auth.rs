//! Authentication: passwords never leave the auth service in plain text, tokens are verified
//! locally by every service, and bad tokens are refused with a reason.

use std::time::Duration;

use eventline::client::parse_order;
use eventline_events::auth::Role;
use eventline_events::catalog::{CatalogCommand, Restock};
use eventline_events::values::Quantity;
use eventline_events::{Metadata, OutgoingMessage, Reply, Service};

use crate::support::{PATIENCE, TestSystem, eventually, mint, product};

async fn auth(system: &TestSystem, message_type: &str, email: &str, password: &str) -> Reply {
    let message = OutgoingMessage {
        metadata: Metadata::origin(message_type),
        body: serde_json::json!({ "email": email, "password": password })
            .to_string()
            .into_bytes(),
        extra_headers: Vec::new(),
    };
    system.request(message).await
}

fn code(reply: &Reply) -> &str {
    match reply {
        Reply::Rejected { reason } => &reason.code,
        Reply::Accepted { .. } => "accepted",
    }
}

#[tokio::test]
async fn register_log_in_and_refuse_wrong_passwords_and_duplicates() {
    let mut system = TestSystem::start().await;
    system.start_service(Service::Auth, "auth-1");
    system.wait_for_consumers(Service::Auth, 1).await;
    let password = "a long enough password";
    assert_eq!(
        code(&auth(&system, "auth.register_user", "Ann@Example.com", password).await),
        "accepted"
    );
    assert_eq!(
        code(&auth(&system, "auth.register_user", "ann@example.com", password).await),
        "email_taken"
    );
    assert_eq!(
        code(
            &auth(
                &system,
                "auth.log_in",
                "ann@example.com",
                "not the password"
            )
            .await
        ),
        "invalid_credentials"
    );
    assert_eq!(
        code(&auth(&system, "auth.log_in", "nobody@example.com", password).await),
        "invalid_credentials"
    );
    let reply = auth(&system, "auth.log_in", "ann@example.com", password).await;
    let Reply::Accepted {
        result: Some(result),
        ..
    } = reply
    else {
        panic!("log-in refused: {reply:?}")
    };
    let token = result["token"].as_str().expect("a token");
    assert_eq!(token.split('.').count(), 3, "a JWT");
    // The stored hash is argon2id, never the password.
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM auth_credentials")
        .fetch_one(system.store.pool())
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(password));
    system.stop().await;
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused_by_every_service_that_checks() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 5).await;
    let foreign_key = eventline_workers::runtime::token::generate_signing_key();
    let valid_admin = system.token(Role::Admin, Duration::from_secs(600));
    let mut forged = valid_admin
        .split('.')
        .map(str::to_owned)
        .collect::<Vec<_>>();
    forged[1].push('x');
    let cases = [
        (
            "expired",
            Some(system.token(Role::Admin, Duration::ZERO)),
            "token_expired",
        ),
        (
            "another key",
            Some(mint(&foreign_key, Role::Admin, Duration::from_secs(600))),
            "token_invalid",
        ),
        ("forged", Some(forged.join(".")), "token_invalid"),
        ("missing", None, "token_missing"),
    ];
    for (what, token, expected) in cases {
        let client = system.client_with_token(token).await;
        // Catalog: admin commands.
        let restock = CatalogCommand::from(Restock {
            product_id: product("tea"),
            quantity: Quantity::parse(1).unwrap(),
        });
        let reply = client.request(&restock, PATIENCE).await.unwrap();
        assert_eq!(code(&reply), expected, "catalog, {what} token");
        // Orders: placing an order.
        let order = parse_order(&["tea:1".to_string()], "tok_visa").unwrap();
        let outcome = client.place_order(&order, PATIENCE).await.unwrap();
        assert_eq!(
            (outcome.status.as_str(), outcome.code.as_deref()),
            ("rejected", Some(expected)),
            "orders, {what} token"
        );
    }
    // A customer's valid token is not an admin's.
    let customer = system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await;
    let restock = CatalogCommand::from(Restock {
        product_id: product("tea"),
        quantity: Quantity::parse(1).unwrap(),
    });
    assert_eq!(
        code(&customer.request(&restock, PATIENCE).await.unwrap()),
        "forbidden"
    );
    assert_eq!(
        system.stream_versions("catalog.product-tea").await,
        [1],
        "nothing changed"
    );
    system.stop().await;
}

#[tokio::test]
async fn no_password_or_token_appears_in_logs_events_replies_or_dead_letters() {
    let mut system = TestSystem::start().await;
    system.start_relay();
    for service in Service::ALL {
        system
            .processes()
            .spawn(&format!("{service}-1"), &["worker", service.name()])
            .unwrap();
    }
    for service in Service::ALL {
        system.wait_for_consumers(service, 1).await;
    }
    system.add_product("tea", 5).await;
    let password = "s3cret-Passw0rd-for-the-log-scan";
    auth(&system, "auth.register_user", "scan@example.com", password).await;
    let reply = auth(&system, "auth.log_in", "scan@example.com", password).await;
    let Reply::Accepted {
        result: Some(result),
        ..
    } = reply
    else {
        panic!("log-in refused")
    };
    let token = result["token"].as_str().unwrap().to_owned();
    // Use the token, and send poison that carries both secrets, so they reach a dead letter.
    let shopper = system.client_with_token(Some(token.clone())).await;
    let order = parse_order(&["tea:1".to_string()], "tok_visa").unwrap();
    assert_eq!(
        shopper.place_order(&order, PATIENCE).await.unwrap().status,
        "confirmed"
    );
    let poison = OutgoingMessage {
        metadata: Metadata::origin("auth.log_in"),
        body: format!(r#"{{"email":"scan@example.com","password":"{password}","extra":1}}"#)
            .into_bytes(),
        extra_headers: Vec::new(),
    };
    shopper.publish(&poison).await.unwrap();
    eventually("the poison to be dead-lettered", || async {
        let letters = system
            .client
            .dead_letters(Service::Auth, 10)
            .await
            .map_err(|e| e.to_string())?;
        if letters.len() == 1 {
            Ok(())
        } else {
            Err(format!("{} dead letters", letters.len()))
        }
    })
    .await;

    let mut haystacks: Vec<(String, String)> = Vec::new();
    for letter in system.client.dead_letters(Service::Auth, 10).await.unwrap() {
        haystacks.push(("dead letter".into(), format!("{letter:?}")));
    }
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT data::text || metadata::text FROM event_log \
         UNION ALL SELECT coalesce(reply::text, '') || outputs::text FROM processed_messages",
    )
    .fetch_all(system.store.pool())
    .await
    .unwrap();
    haystacks.extend(rows.into_iter().map(|r| ("database".to_string(), r)));
    let log_dir = system.processes().log_dir().to_owned();
    system.stop_workers().await;
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        let path = entry.unwrap().path();
        haystacks.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    assert!(
        haystacks
            .iter()
            .any(|(place, _)| place.ends_with("auth-1.log")),
        "the worker logs were scanned"
    );
    for (place, text) in &haystacks {
        assert!(!text.contains(password), "the password appears in {place}");
        assert!(!text.contains(&token), "the token appears in {place}");
    }
    system.stop().await;
}
