//! What the benchmarks share: sizes from the environment and a user to act as.

/// `name` from the environment as a number, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Registers `email` on the node at `base` and logs in; the bearer token.
pub async fn token(http: &reqwest::Client, base: &str, email: &str) -> String {
    let password = "bench-password-0123";
    let creds = serde_json::json!({"name": "Bench", "email": email, "password": password});
    http.post(format!("{base}/api/v1/auth/register"))
        .json(&creds)
        .send()
        .await
        .expect("register");
    let login: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login reply");
    login["token"].as_str().expect("token").to_string()
}
