//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! from Debian's `chromium-driver`), against a system of the test's own.
//!
//! The page must draw every running replica, show rates moving while orders flow, drop a
//! SIGKILLed replica within a few seconds (its heartbeats stop; nobody tells the page), and
//! show an order's causal path when it is clicked. The test saves what the browser saw as
//! `target/dashboard.png` (the README's picture is one of these).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventline::client::parse_order;
use eventline_events::Service;
use eventline_events::auth::Role;
use eventline_workers::runtime::Shutdown;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{PATIENCE, TestSystem, eventually};

/// chromedriver on a free loopback port, in a process group of its own so that the browser
/// it starts dies with it, whatever way the test ends.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect(
                "chromedriver runs (apt-get install chromium chromium-driver; scripts/test does)",
            );
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        eventually("chromedriver to listen", || async move {
            tokio::net::TcpStream::connect(address)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self) -> Browser {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1440,840"] }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a headless Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The whole group: chromedriver and every Chromium process it started.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

/// What the page shows, read from its DOM in one script.
async fn page_state(browser: &Browser) -> Result<Value, String> {
    browser
        .execute(
            r#"return {
                replicas: [...document.querySelectorAll('[data-replica]')].map(g => ({
                    replica: g.dataset.replica, service: g.dataset.service,
                    rate: Number(g.dataset.rate), total: Number(g.dataset.total) })),
                orders: [...document.querySelectorAll('#orders [data-order]')].map(li => li.dataset.order),
                trace: document.getElementById('trace').dataset.loaded || null,
                traceText: document.getElementById('trace').textContent,
            };"#,
            vec![],
        )
        .await
        .map_err(|e| e.to_string())
}

fn replicas(state: &Value) -> Vec<(String, f64, u64)> {
    state["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["replica"].as_str().unwrap_or_default().to_owned(),
                r["rate"].as_f64().unwrap_or_default(),
                r["total"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn names(state: &Value) -> Vec<String> {
    let mut names: Vec<String> = replicas(state).into_iter().map(|r| r.0).collect();
    names.sort();
    names
}

fn screenshot_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("dashboard.png")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_draws_live_replicas_moving_rates_a_killed_replica_leaving_and_a_trace() {
    let mut system = TestSystem::start().await;
    // Catalog's replicas are processes of their own, so one can be SIGKILLed for real.
    for name in ["catalog-1", "catalog-2"] {
        system
            .processes()
            .spawn(name, &["worker", "catalog"])
            .unwrap();
    }
    for service in [Service::Auth, Service::Orders, Service::Payments] {
        system.start_service(service, &format!("{service}-1"));
    }
    system.start_relay();
    for service in Service::ALL {
        let n = if service == Service::Catalog { 2 } else { 1 };
        system.wait_for_consumers(service, n).await;
    }
    system.add_product("tea", 100_000).await;

    let shutdown = Shutdown::new();
    let address = eventline::dashboard::start(
        system.config.clone(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &shutdown,
    )
    .await
    .expect("the dashboard starts");
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&format!("http://{address}/"))
        .await
        .expect("the page loads");

    // Every running replica is drawn (the relay's replica is the test config's, "test").
    let expected = [
        "auth-1",
        "catalog-1",
        "catalog-2",
        "orders-1",
        "payments-1",
        "test",
    ];
    eventually("every replica on the page", || async {
        let state = page_state(&browser).await?;
        let seen = names(&state);
        if seen == expected {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;

    // Orders flow while the page watches.
    let running = Arc::new(AtomicBool::new(true));
    let shopper = Arc::new(
        system
            .client_with_token(Some(
                system.token(Role::Customer, Duration::from_secs(3600)),
            ))
            .await,
    );
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (shopper, running) = (shopper.clone(), running.clone());
        load.spawn(async move {
            while running.load(Ordering::Relaxed) {
                let order = parse_order(&["tea:1".to_string()], "tok_visa").unwrap();
                let _ = shopper.place_order(&order, PATIENCE).await;
            }
        });
    }
    let before: u64 = {
        let state = page_state(&browser).await.unwrap();
        replicas(&state)
            .iter()
            .filter(|r| r.0.starts_with("catalog"))
            .map(|r| r.2)
            .sum()
    };
    eventually("catalog's rates to move on the page", || async {
        let state = page_state(&browser).await?;
        let catalog: Vec<_> = replicas(&state)
            .into_iter()
            .filter(|r| r.0.starts_with("catalog"))
            .collect();
        let total: u64 = catalog.iter().map(|r| r.2).sum();
        let moving = catalog.iter().any(|r| r.1 > 0.0);
        if moving && total > before {
            Ok(())
        } else {
            Err(format!("{catalog:?}, {before} handled before the load"))
        }
    })
    .await;

    // The picture, while the orders flow.
    let png = browser.screenshot().await.expect("a screenshot");
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();

    // SIGKILL one catalog replica: the page loses it within a few seconds, and only it.
    system.processes().kill("catalog-2").await;
    let killed = Instant::now();
    eventually("catalog-2 to leave the page", || async {
        let seen = names(&page_state(&browser).await?);
        if !seen.iter().any(|n| n == "catalog-2") {
            Ok(seen)
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    let gone_after = killed.elapsed();
    assert!(
        gone_after < Duration::from_secs(8),
        "catalog-2 stayed on the page {gone_after:?} after it was killed"
    );
    let seen = names(&page_state(&browser).await.unwrap());
    assert!(
        seen.iter().any(|n| n == "catalog-1"),
        "catalog-1 is gone too: {seen:?}"
    );

    running.store(false, Ordering::Relaxed);
    while load.join_next().await.is_some() {}

    // Clicking an order shows its causal path, as `eventline trace` prints it.
    let order_id = eventually("an order listed on the page", || async {
        let state = page_state(&browser).await?;
        state["orders"][0]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{state}"))
    })
    .await;
    browser
        .find(Locator::Css(&format!(
            "#orders [data-order=\"{order_id}\"]"
        )))
        .await
        .expect("the order's line")
        .click()
        .await
        .expect("a click");
    let trace = eventually("the clicked order's trace", || async {
        let state = page_state(&browser).await?;
        if state["trace"].as_str() == Some(order_id.as_str()) {
            Ok(state["traceText"].as_str().unwrap_or_default().to_owned())
        } else {
            Err(format!("{state}"))
        }
    })
    .await;
    assert!(
        trace.starts_with(&format!("conversation {order_id}"))
            && trace.contains("orders.place_order")
            && trace.contains("catalog.reserve_stock"),
        "{trace}"
    );

    let _ = browser.close().await;
    drop(driver);
    shutdown.trigger();
    system.stop().await;
}
