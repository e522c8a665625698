//! `/api/v1/ws`: the same event feed as `/api/v1/events`, over a WebSocket, for authenticated
//! clients (the bearer token in the `Authorization` header of the upgrade request).
//!
//! Each event is one text message `{"id", "event", "data"}`; filters are the query's `topic`
//! and `user_id`, within what the token may see (as for SSE: item events, and job events of the
//! caller's own jobs or of all for an admin). A client resumes with `Last-Event-ID` on the upgrade
//! request or `last_event_id` in the query; a resume point the node cannot serve gets a
//! `{"event":"lagged","id":…}` notice whose `id` is where to resume next time. A client too slow to keep up gets a `{"event":"lagged",…}` message and a close
//! frame (policy violation), so it never slows the others; pings keep idle connections alive and
//! clients' pings are answered.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures::StreamExt;
use serde_json::json;

use super::error::ErrorBody;
use super::events::{resume_point, EventsQuery, Feed, FeedItem};
use super::extract::Authenticated;
use super::HttpState;
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/ws", "GET").route(web::get().to(ws)));
}

/// Streams item and job events over a WebSocket (job events only to their owner and admins).
#[utoipa::path(get, path = "/api/v1/ws", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")),
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade, or a malformed query", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Another user's private topic", body = ErrorBody),
        (status = 422, description = "Unknown topic", body = ErrorBody),
        (status = 503, description = "The notify role does not run on this node", body = ErrorBody),
    ))]
pub async fn ws(
    state: web::Data<HttpState>,
    who: Authenticated,
    req: HttpRequest,
    query: web::Query<EventsQuery>,
    body: web::Payload,
) -> Result<HttpResponse, Error> {
    let query = query.into_inner();
    let last_id = resume_point(&req, &query)?;
    let feed = Feed::open(&state, Some(who.0), query, last_id)?;
    let (response, session, incoming) = actix_ws::handle(&req, body)
        .map_err(|e| Error::BadRequest(format!("not a WebSocket upgrade: {e}")))?;
    actix_web::rt::spawn(pump(feed, session, incoming));
    Ok(response)
}

/// Sends the feed to the client and answers its control frames until either side ends.
async fn pump(
    mut feed: Feed,
    mut session: actix_ws::Session,
    mut incoming: actix_ws::MessageStream,
) {
    let reason = loop {
        tokio::select! {
            item = feed.next() => {
                let Some(item) = item else {
                    break Some(CloseReason { code: CloseCode::Away, description: Some("the node is shutting down".into()) });
                };
                let sent = match &item {
                    FeedItem::Event(e) => {
                        let message = json!({"id": e.id, "event": e.event.kind.name(), "data": &*e.event});
                        session.text(message.to_string()).await
                    }
                    FeedItem::Reset { reason, oldest_available, newest } => {
                        let message = json!({"id": newest, "event": "lagged", "reason": reason.describe(), "oldest_available": oldest_available, "last_event_id": newest});
                        session.text(message.to_string()).await
                    }
                    FeedItem::Lagged { missed, last_event_id } => {
                        let message = json!({"event": "lagged", "reason": "client too slow", "missed": missed, "last_event_id": last_event_id});
                        let _ = session.text(message.to_string()).await;
                        break Some(CloseReason { code: CloseCode::Policy, description: Some("client too slow".into()) });
                    }
                    FeedItem::KeepAlive => session.ping(b"").await,
                };
                if sent.is_err() {
                    return; // The client is gone.
                }
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                // Clients have nothing to say on this socket; their messages are ignored.
                Some(Ok(_)) => {}
            },
        }
    };
    let _ = session.close(reason).await;
}
