//! `/api/v1/events`: item and job events as Server-Sent Events.
//!
//! Each event carries its id; a client that reconnects with `Last-Event-ID` gets what it missed
//! from the notify role's replay buffer. A client too slow to keep up receives an `event: lagged`
//! frame and is disconnected (it never slows the others). A keep-alive comment goes out when idle.

use std::collections::VecDeque;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::ErrorBody;
use super::HttpState;
use crate::actors::notify::{ClientEvent, ConnectedClient, Resume};
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/events", "GET").route(web::get().to(events)));
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this topic ("items" or "jobs").
    pub topic: Option<String>,
    /// Only events about this user's data.
    pub user_id: Option<Uuid>,
}

struct Filter {
    topic: Option<String>,
    user_id: Option<Uuid>,
}

impl Filter {
    fn accepts(&self, e: &ClientEvent) -> bool {
        self.topic
            .as_deref()
            .is_none_or(|t| t == e.event.kind.topic())
            && self.user_id.is_none_or(|u| u == e.event.user_id)
    }
}

fn frame(e: &ClientEvent) -> Bytes {
    let data = serde_json::to_string(&*e.event).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        e.id,
        e.event.kind.name(),
        data
    ))
}

/// Streams item events (`item.created`, `item.updated`, `item.deleted`) and job events
/// (`job.queued`, `job.running`, `job.done`, `job.failed`, `job.dead`).
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Malformed query or header", body = ErrorBody),
        (status = 422, description = "Unknown topic", body = ErrorBody),
        (status = 503, description = "The notify role does not run on this node", body = ErrorBody),
    ))]
pub async fn events(
    state: web::Data<HttpState>,
    req: HttpRequest,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, Error> {
    let hub = state
        .notify
        .clone()
        .ok_or_else(|| Error::Unavailable("the notify role does not run on this node".into()))?;
    let query = query.into_inner();
    if let Some(topic) = &query.topic {
        if topic != "items" && topic != "jobs" {
            return Err(Error::invalid("topic", "known topics: items, jobs"));
        }
    }
    let last_id = match req.headers().get("Last-Event-ID") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::BadRequest("Last-Event-ID must be a number".into()))?,
        ),
    };
    let (receiver, resume) = hub.subscribe(last_id);
    let mut notice = None;
    let backlog: VecDeque<ClientEvent> = match resume {
        Resume::From(events) => events.into(),
        Resume::TooOld { oldest_available } => {
            notice = Some(Bytes::from(format!(
                "event: lagged\ndata: {{\"reason\":\"resume point is older than the replay buffer\",\"oldest_available\":{oldest_available}}}\n\n"
            )));
            VecDeque::new()
        }
    };
    let stream = SseStream {
        notice,
        backlog,
        receiver,
        filter: Filter {
            topic: query.topic,
            user_id: query.user_id,
        },
        last_sent: last_id.unwrap_or(0),
        heartbeat: state.limits.sse_heartbeat,
        closed: hub.closed(),
        _client: hub.connect(),
        done: false,
    };
    let body = futures::stream::unfold(stream, |mut s| async move {
        s.next_frame()
            .await
            .map(|b| (Ok::<_, actix_web::Error>(b), s))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

struct SseStream {
    notice: Option<Bytes>,
    backlog: VecDeque<ClientEvent>,
    receiver: tokio::sync::broadcast::Receiver<ClientEvent>,
    filter: Filter,
    last_sent: u64,
    heartbeat: Duration,
    closed: tokio::sync::watch::Receiver<bool>,
    _client: ConnectedClient,
    done: bool,
}

impl SseStream {
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(notice) = self.notice.take() {
            return Some(notice);
        }
        while let Some(e) = self.backlog.pop_front() {
            if e.id > self.last_sent && self.filter.accepts(&e) {
                self.last_sent = e.id;
                return Some(frame(&e));
            }
        }
        loop {
            if *self.closed.borrow() {
                return None;
            }
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(e) if e.id > self.last_sent && self.filter.accepts(&e) => {
                        self.last_sent = e.id;
                        return Some(frame(&e));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => {
                        metrics::counter!("gorgon_notify_clients_dropped_total", "reason" => "lagged").increment(1);
                        self.done = true;
                        return Some(Bytes::from(format!(
                            "event: lagged\ndata: {{\"reason\":\"client too slow\",\"missed\":{missed},\"last_event_id\":{}}}\n\n",
                            self.last_sent
                        )));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(self.heartbeat) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                _ = self.closed.changed() => return None,
            }
        }
    }
}
