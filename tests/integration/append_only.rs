//! The log is append-only by construction: the database refuses to rewrite history.

use crate::support::TestSystem;

#[tokio::test]
async fn update_delete_and_truncate_on_the_log_fail() {
    let system = TestSystem::with_catalog(1).await;
    system.add_product("tea", 1).await;
    for sql in [
        "UPDATE event_log SET data = '{}'",
        "DELETE FROM event_log",
        "TRUNCATE event_log",
    ] {
        let error = sqlx::query(sql)
            .execute(system.store.pool())
            .await
            .expect_err(sql);
        assert!(error.to_string().contains("append-only"), "{sql}: {error}");
    }
    assert_eq!(system.count("SELECT count(*) FROM event_log").await, 1);
    system.stop().await;
}
