//! `gorgon dlq list|replay|delete|purge QUEUE`: a queue's dead letters, from the command line.
//!
//! Two ways in, one implementation behind both: with `--redis URL` the command calls
//! `bus::redis::dlq` itself (no node needed: the tool for when every node is down); with
//! `--api URL` it calls a node's admin API (`/api/v1/admin/queues/…`, the admin token in
//! `GORGON_ADMIN_TOKEN`), which runs the same functions, as `/dashboard` does (the tool for an
//! operator who may reach the HTTP front but not Redis). Both print the same lines.

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::bus::redis::dlq::{self, DeadLetterPage, Replayed};
use crate::bus::redis::Keys;
use crate::configuration::{DlqAction, DlqArgs};

/// What can stop the command.
#[derive(Debug, thiserror::Error)]
pub enum DlqCommandError {
    #[error("name --redis URL (GORGON_REDIS_URL) or --api URL (GORGON_API_URL)")]
    NoTarget,
    #[error("--api needs an admin token in GORGON_ADMIN_TOKEN")]
    NoToken,
    #[error("{0} needs --id (from `gorgon dlq list`)")]
    NoId(&'static str),
    #[error("--raw reads Redis itself: use it with --redis")]
    RawNeedsRedis,
    #[error("{0}")]
    Redis(String),
    #[error(transparent)]
    Dead(#[from] dlq::DlqError),
    #[error("the node answered {status}: {message}")]
    Api { status: StatusCode, message: String },
    #[error("cannot reach the node: {0}")]
    Http(#[from] reqwest::Error),
}

/// Runs the command; prints its results on stdout.
pub async fn run(args: DlqArgs) -> Result<(), DlqCommandError> {
    if let Some(base) = args.api.clone() {
        if args.raw {
            return Err(DlqCommandError::RawNeedsRedis);
        }
        let token = std::env::var("GORGON_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or(DlqCommandError::NoToken)?;
        let api = Api::new(&base, &args.queue, token.trim())?;
        return through_api(&api, &args).await;
    }
    let url = args.redis.as_deref().ok_or(DlqCommandError::NoTarget)?;
    let mut conn = dlq::connect(url)
        .await
        .map_err(|e| DlqCommandError::Redis(format!("{e:#}")))?;
    through_redis(&mut conn, &Keys::new(&args.redis_namespace), &args).await
}

fn id(args: &DlqArgs, action: &'static str) -> Result<String, DlqCommandError> {
    args.id.clone().ok_or(DlqCommandError::NoId(action))
}

fn print_replayed(queue: &str, done: &Replayed) {
    println!(
        "replayed {} message(s) onto {queue}; {} dead letter(s) hold no message and were kept; {} left",
        done.requeued, done.kept, done.left
    );
}

/// Pages of at most 100 until `limit` dead letters or the end.
async fn each_page(
    limit: usize,
    mut fetch: impl AsyncFnMut(u64, u64) -> Result<DeadLetterPage, DlqCommandError>,
) -> Result<(), DlqCommandError> {
    let mut offset = 0u64;
    let limit = limit as u64;
    while offset < limit {
        let page = fetch(offset, (limit - offset).min(100)).await?;
        for letter in &page.dead_letters {
            println!("{}", serde_json::to_string(letter).unwrap_or_default());
        }
        offset += page.dead_letters.len() as u64;
        if page.dead_letters.is_empty() || offset >= page.total {
            break;
        }
    }
    Ok(())
}

async fn through_redis(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    args: &DlqArgs,
) -> Result<(), DlqCommandError> {
    let queue = args.queue.as_str();
    let redis_error = |e: redis::RedisError| DlqCommandError::Dead(e.into());
    match args.action {
        DlqAction::List if args.raw => {
            for record in dlq::list(conn, keys, queue, args.limit)
                .await
                .map_err(redis_error)?
            {
                println!("{record}");
            }
        }
        DlqAction::List => {
            each_page(args.limit, async |offset, limit| {
                dlq::page(conn, keys, queue, offset, limit)
                    .await
                    .map_err(redis_error)
            })
            .await?;
        }
        DlqAction::Replay => match &args.id {
            Some(id) => {
                dlq::replay_one(conn, keys, queue, id).await?;
                println!("replayed dead letter {id} onto {queue}");
            }
            None => {
                let done = dlq::replay(conn, keys, queue, args.limit)
                    .await
                    .map_err(redis_error)?;
                print_replayed(queue, &done);
            }
        },
        DlqAction::Delete => {
            let id = id(args, "delete")?;
            dlq::delete_one(conn, keys, queue, &id).await?;
            println!("deleted dead letter {id} of {queue}");
        }
        DlqAction::Purge => {
            let n = dlq::purge(conn, keys, queue).await.map_err(redis_error)?;
            println!("purged {n} dead letter(s) of {queue}");
        }
    }
    Ok(())
}

/// A node's admin API, for one queue.
struct Api {
    client: reqwest::Client,
    /// `{base}/api/v1/admin/queues/{queue}/dead-letters`.
    letters: String,
    token: String,
}

impl Api {
    fn new(base: &str, queue: &str, token: &str) -> Result<Api, DlqCommandError> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        // The queue goes into the path: only names the API would take (no '/', '?', '%').
        if !dlq::valid_queue(queue) {
            return Err(DlqCommandError::Api {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: "a queue's name is 1 to 100 letters, digits, '.', '_' or '-'".into(),
            });
        }
        Ok(Api {
            client,
            letters: format!(
                "{}/api/v1/admin/queues/{queue}/dead-letters",
                base.trim_end_matches('/')
            ),
            token: token.to_string(),
        })
    }

    /// Sends a request to `{letters}{path}`; the JSON answer, or the API's error message.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<T>, DlqCommandError> {
        let response = self
            .client
            .request(method, format!("{}{path}", self.letters))
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() {
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("no error message")
                .to_string();
            return Err(DlqCommandError::Api { status, message });
        }
        serde_json::from_value(body)
            .map(Some)
            .map_err(|e| DlqCommandError::Api {
                status,
                message: format!("an answer this build does not understand: {e}"),
            })
    }

    async fn expect<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, DlqCommandError> {
        self.send(method, path, query)
            .await?
            .ok_or_else(|| DlqCommandError::Api {
                status: StatusCode::NO_CONTENT,
                message: "an empty answer".into(),
            })
    }
}

async fn through_api(api: &Api, args: &DlqArgs) -> Result<(), DlqCommandError> {
    let queue = args.queue.as_str();
    match args.action {
        DlqAction::List => {
            each_page(args.limit, async |offset, limit| {
                let query = [("offset", offset.to_string()), ("limit", limit.to_string())];
                api.expect(Method::GET, "", &query).await
            })
            .await?;
        }
        DlqAction::Replay => match &args.id {
            Some(id) => {
                let _: Replayed = api
                    .expect(Method::POST, &format!("/{id}/replay"), &[])
                    .await?;
                println!("replayed dead letter {id} onto {queue}");
            }
            None => {
                let limit = [("limit", args.limit.clamp(1, 100_000).to_string())];
                let done: Replayed = api.expect(Method::POST, "/replay", &limit).await?;
                print_replayed(queue, &done);
            }
        },
        DlqAction::Delete => {
            let id = id(args, "delete")?;
            api.send::<serde_json::Value>(Method::DELETE, &format!("/{id}"), &[])
                .await?;
            println!("deleted dead letter {id} of {queue}");
        }
        DlqAction::Purge => {
            // The queue was named on the command line: that is the confirmation.
            let confirm = [("confirm", queue.to_string())];
            let purged: serde_json::Value = api.expect(Method::DELETE, "", &confirm).await?;
            let n = purged["purged"].as_u64().unwrap_or(0);
            println!("purged {n} dead letter(s) of {queue}");
        }
    }
    Ok(())
}
