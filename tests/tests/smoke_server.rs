//! The harness itself: a server starts, answers, and restarts on the same data.

use latchkey_tests::server::{admin_client, LatchkeyServer, ServerOptions};

#[tokio::test]
async fn server_starts_and_restarts_on_its_own_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let created = admin_client()
        .post(server.url("/v1/connections"))
        .json(&serde_json::json!({"name": "k", "project_id": "p", "type": "api_key", "config": {"api_key": "sk-smoke"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = server.restart().await.unwrap();
    let creds: serde_json::Value = admin_client()
        .get(server.url(&format!("/v1/connections/{id}/credentials")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(creds["data"]["api_key"], "sk-smoke");
}
