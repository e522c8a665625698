//! `/api/v1/events`: item and job events as Server-Sent Events, for authenticated clients. The per-client
//! feed (replay, filters, lag handling) is shared with the WebSocket route (`ws.rs`).
//!
//! Each client gets only what its token may see (`bus::topic_is_public`): every item event, and
//! job events of its own jobs (all jobs for an admin), live and replayed alike. The `user_id` query
//! parameter only narrows that; asking for another user's private topic is a 403.
//!
//! Each event carries its id; a client that reconnects with `Last-Event-ID` gets what it missed
//! from the notify role's replay buffer. A resume point the node cannot serve (too old, from an
//! earlier run, ahead of the stream) gets an `event: lagged` notice whose `id:` is a position the
//! client may resume from next time. A client too slow to keep up receives an `event: lagged`
//! frame and is disconnected (it never slows the others). A keep-alive comment goes out when idle.
//! A stream ends as soon as its viewer's account changes (a demotion, a deletion, a new password,
//! a logout: the store's `user.changed` event): the client reconnects, and its token is checked
//! again, so an open stream never keeps rights its token has lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::ErrorBody;
use super::extract::Authenticated;
use super::HttpState;
use crate::actors::notify::{ClientEvent, ConnectedClient, ResetReason, Resume};
use crate::bus::{topic_is_public, Event, EventKind, TOPICS};
use crate::domain::Principal;
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/events", "GET").route(web::get().to(events)));
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this topic ("items" or "jobs").
    pub topic: Option<String>,
    /// Only events about this user's data (private topics: yours, unless you are an admin).
    pub user_id: Option<Uuid>,
    /// Resume after this event id, for clients that cannot send a `Last-Event-ID` header (the
    /// header wins when both are given).
    pub last_event_id: Option<u64>,
}

struct Filter {
    topic: Option<String>,
    user_id: Option<Uuid>,
    /// Who is listening (`None`: anonymous, public topics only).
    viewer: Option<Principal>,
}

impl Filter {
    fn accepts(&self, e: &ClientEvent) -> bool {
        self.topic
            .as_deref()
            .is_none_or(|t| t == e.event.kind.topic())
            && self.user_id.is_none_or(|u| u == e.event.user_id)
            && (e.event.kind.is_public()
                || self.viewer.is_some_and(|p| p.may_manage(e.event.user_id)))
    }
}

/// The resume point of a request: the `Last-Event-ID` header, else the `last_event_id` query
/// parameter. Anything but a whole number is a 400.
pub(super) fn resume_point(req: &HttpRequest, query: &EventsQuery) -> Result<Option<u64>, Error> {
    match req.headers().get("Last-Event-ID") {
        None => Ok(query.last_event_id),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| Error::BadRequest("Last-Event-ID must be a whole number".into())),
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
/// (`job.queued`, `job.running`, `job.done`, `job.failed`, `job.dead`) to an authenticated client.
/// Item events go to everyone; job events only to the job's owner and to admins.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Malformed query or header", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Another user's private topic", body = ErrorBody),
        (status = 422, description = "Unknown topic", body = ErrorBody),
        (status = 503, description = "The notify role does not run on this node", body = ErrorBody),
    ))]
pub async fn events(
    state: web::Data<HttpState>,
    who: Authenticated,
    req: HttpRequest,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, Error> {
    let query = query.into_inner();
    let last_id = resume_point(&req, &query)?;
    let feed = Feed::open(&state, Some(who.0), query, last_id)?;
    let body = futures::stream::unfold(feed, |mut feed| async move {
        let item = feed.next().await?;
        Some((Ok::<_, actix_web::Error>(sse_frame(&item)), feed))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

fn sse_frame(item: &FeedItem) -> Bytes {
    match item {
        FeedItem::Event(e) => frame(e),
        FeedItem::Reset {
            reason,
            oldest_available,
            newest,
        } => Bytes::from(format!(
            "id: {newest}\nevent: lagged\ndata: {{\"reason\":\"{}\",\"oldest_available\":{oldest_available},\"last_event_id\":{newest}}}\n\n",
            reason.describe()
        )),
        FeedItem::Lagged { missed, last_event_id } => Bytes::from(format!(
            "event: lagged\ndata: {{\"reason\":\"client too slow\",\"missed\":{missed},\"last_event_id\":{last_event_id}}}\n\n"
        )),
        FeedItem::KeepAlive => Bytes::from_static(b": keep-alive\n\n"),
    }
}

/// What a streaming client is sent next, whatever the transport (SSE here, WebSocket in `ws.rs`).
pub(super) enum FeedItem {
    Event(ClientEvent),
    /// The resume point cannot be served (too old, from an earlier run, ahead of the stream):
    /// the client may have missed events, and should resume from `newest` next time.
    Reset {
        reason: ResetReason,
        oldest_available: u64,
        newest: u64,
    },
    /// The client fell too far behind and is disconnected after this.
    Lagged {
        missed: u64,
        last_event_id: u64,
    },
    /// Nothing happened for a while.
    KeepAlive,
}

/// One client's view of the notify role: the replayed backlog, then live events, filtered, with
/// keep-alives when idle; ends when the node shuts down or the client lagged.
pub(super) struct Feed {
    notice: Option<FeedItem>,
    backlog: VecDeque<ClientEvent>,
    receiver: tokio::sync::broadcast::Receiver<ClientEvent>,
    filter: Filter,
    last_sent: u64,
    heartbeat: Duration,
    closed: tokio::sync::watch::Receiver<bool>,
    /// The bus's events, watched for a change to the viewer's account.
    account: Option<tokio::sync::broadcast::Receiver<Arc<Event>>>,
    /// The hub's gaps: each is a reset notice, and the stream goes on after it.
    gaps: tokio::sync::watch::Receiver<u64>,
    _client: ConnectedClient,
    done: bool,
}

/// Resolves when `viewer`'s account changes, or when the bus can no longer say (it lagged or
/// closed: the stream then ends too, and the client's reconnection is checked afresh).
async fn account_changed(
    events: &mut Option<tokio::sync::broadcast::Receiver<Arc<Event>>>,
    viewer: Option<Principal>,
) {
    let (Some(events), Some(viewer)) = (events.as_mut(), viewer) else {
        return std::future::pending().await;
    };
    loop {
        match events.recv().await {
            Ok(e) if e.kind == EventKind::UserChanged && e.user_id == viewer.user_id => return,
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

impl Feed {
    /// Subscribes `viewer` to this node's notify role (503 when it does not run here; 403 for
    /// another user's private topic).
    pub(super) fn open(
        state: &HttpState,
        viewer: Option<Principal>,
        query: EventsQuery,
        last_id: Option<u64>,
    ) -> Result<Feed, Error> {
        let hub = state.notify.clone().ok_or_else(|| {
            Error::Unavailable("the notify role does not run on this node".into())
        })?;
        if let Some(topic) = &query.topic {
            if !TOPICS.contains(&topic.as_str()) {
                return Err(Error::invalid(
                    "topic",
                    format!("known topics: {}", TOPICS.join(", ")),
                ));
            }
            // Asking for someone else's private events is refused outright rather than answered
            // with a stream that stays silent.
            if !topic_is_public(topic) {
                let allowed = match (viewer, query.user_id) {
                    (None, _) => false,
                    (Some(p), Some(user_id)) => p.may_manage(user_id),
                    (Some(_), None) => true,
                };
                if !allowed {
                    return Err(Error::Forbidden(format!(
                        "the {topic} events of another user are not yours to read"
                    )));
                }
            }
        }
        let mut gaps = hub.watch_gaps();
        gaps.mark_unchanged();
        let (receiver, resume) = hub.subscribe(last_id);
        let (notice, backlog, last_sent) = match resume {
            Resume::From(events) => (None, events.into(), last_id.unwrap_or(0)),
            // Live events resume after the newest one: the client's own position means nothing
            // here (`u64::MAX` would otherwise mute the stream for good).
            Resume::Reset {
                reason,
                oldest_available,
                newest,
            } => (
                Some(FeedItem::Reset {
                    reason,
                    oldest_available,
                    newest,
                }),
                VecDeque::new(),
                newest,
            ),
        };
        Ok(Feed {
            notice,
            backlog,
            receiver,
            filter: Filter {
                topic: query.topic,
                user_id: query.user_id,
                viewer,
            },
            last_sent,
            heartbeat: state.limits.sse_heartbeat,
            closed: hub.closed(),
            account: viewer.map(|_| state.bus.subscribe()),
            gaps,
            _client: hub.connect(),
            done: false,
        })
    }

    pub(super) async fn next(&mut self) -> Option<FeedItem> {
        if self.done {
            return None;
        }
        if let Some(notice) = self.notice.take() {
            return Some(notice);
        }
        while let Some(e) = self.backlog.pop_front() {
            if e.id > self.last_sent && self.filter.accepts(&e) {
                self.last_sent = e.id;
                return Some(FeedItem::Event(e));
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
                        return Some(FeedItem::Event(e));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => {
                        metrics::counter!("gorgon_notify_clients_dropped_total", "reason" => "lagged").increment(1);
                        self.done = true;
                        return Some(FeedItem::Lagged { missed, last_event_id: self.last_sent });
                    }
                    Err(RecvError::Closed) => return None,
                },
                changed = self.gaps.changed() => {
                    let gap = *self.gaps.borrow_and_update();
                    if changed.is_ok() && gap > self.last_sent {
                        self.last_sent = gap;
                        return Some(FeedItem::Reset {
                            reason: ResetReason::Gap,
                            oldest_available: gap + 1,
                            newest: gap,
                        });
                    }
                }
                _ = tokio::time::sleep(self.heartbeat) => return Some(FeedItem::KeepAlive),
                _ = self.closed.changed() => return None,
                _ = account_changed(&mut self.account, self.filter.viewer) => {
                    metrics::counter!("gorgon_notify_clients_dropped_total", "reason" => "account_changed").increment(1);
                    self.done = true;
                    return None;
                }
            }
        }
    }
}
