//! The HTTP API of `carapace serve`: loopback by default, a bearer token on every route but
//! `/healthz`. Handlers do not touch the daemon: they send a [`Request`] to its loop and
//! wait for the answer, so every change goes through the one place that journals it.

use super::actions::RestoreRequest;
use super::agents::AgentRequest;
use super::daemon::ApiError;
use super::feed::FeedEntry;
use super::rollouts::RolloutRequest;
use super::tenants::{Caller, Keys, RateLimits, TenantRequest};
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Query, Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What a handler asks of the daemon's loop. Agent names are looked up in `tenant`'s
/// namespace.
#[derive(Debug)]
pub enum Request {
    ListAgents,
    Agent {
        tenant: u32,
        name: String,
    },
    Versions {
        tenant: u32,
        name: String,
    },
    Create(AgentRequest),
    Update {
        tenant: u32,
        name: String,
        request: AgentRequest,
    },
    Delete {
        tenant: u32,
        name: String,
    },
    Secrets {
        tenant: u32,
        name: String,
    },
    /// `value: None` deletes the secret.
    SetSecret {
        tenant: u32,
        name: String,
        secret: String,
        value: Option<String>,
    },
    /// An agent's recent memory samples.
    Memory {
        tenant: u32,
        name: String,
    },
    /// An operator's action on an agent.
    Act {
        tenant: u32,
        name: String,
        action: Action,
    },
    DrainNode {
        node: u32,
    },
    /// A config change staged across agents of `tenant`.
    StartRollout {
        tenant: u32,
        request: RolloutRequest,
    },
    Rollouts,
    Rollout {
        id: u32,
    },
    Events {
        after: u64,
    },
    Incidents,
    Alerts,
    Nodes,
    Metrics,
    Tenants,
    CreateTenant(TenantRequest),
}

/// What an operator asks of one agent (see [`super::actions`]).
#[derive(Debug)]
pub enum Action {
    Restart,
    Recreate,
    Restore(RestoreRequest),
}

pub type Answer = Result<Value, ApiError>;
pub type Envelope = (Caller, Request, oneshot::Sender<Answer>);

#[derive(Clone, Debug)]
struct AppState {
    requests: mpsc::Sender<Envelope>,
    admin_token: Arc<String>,
    keys: Keys,
    limits: RateLimits,
    feed: tokio::sync::broadcast::Sender<FeedEntry>,
}

/// Every route, with the token check in front of all but `/healthz`.
pub fn router(
    requests: mpsc::Sender<Envelope>,
    admin_token: String,
    keys: Keys,
    limits: RateLimits,
    feed: tokio::sync::broadcast::Sender<FeedEntry>,
) -> Router {
    let state = AppState {
        requests,
        admin_token: Arc::new(admin_token),
        keys,
        limits,
        feed,
    };
    let guarded = Router::new()
        .route("/v1/agents", get(list_agents).post(create_agent))
        .route(
            "/v1/agents/{name}",
            get(show_agent).put(update_agent).delete(delete_agent),
        )
        .route("/v1/agents/{name}/versions", get(agent_versions))
        .route("/v1/agents/{name}/memory", get(agent_memory))
        .route("/v1/agents/{name}/restart", post(restart_agent))
        .route("/v1/agents/{name}/recreate", post(recreate_agent))
        .route("/v1/agents/{name}/restore", post(restore_agent))
        .route("/v1/nodes/{node}/drain", post(drain_node))
        .route("/v1/rollouts", get(list_rollouts).post(start_rollout))
        .route("/v1/rollouts/{id}", get(show_rollout))
        .route("/v1/incidents", get(incidents))
        .route("/v1/agents/{name}/secrets", get(list_secrets))
        .route(
            "/v1/agents/{name}/secrets/{secret}",
            axum::routing::put(put_secret).delete(delete_secret),
        )
        .route("/v1/events", get(events))
        .route("/v1/events/stream", get(stream_events))
        .route("/v1/alerts", get(alerts))
        .route("/v1/nodes", get(nodes))
        .route("/metrics", get(metrics))
        .route("/v1/tenants", get(tenants).post(create_tenant))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    // The dashboard's pages hold no data (they read it through the guarded routes above, with
    // the token the operator typed in), so they are served to anyone who can reach the API.
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"ok": true})) }),
        )
        .merge(super::dashboard::router())
        .merge(guarded)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

async fn authorize(
    State(state): State<AppState>,
    mut request: HttpRequest,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = presented.and_then(|token| {
        if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) {
            Some(Caller::Admin)
        } else {
            state.keys.tenant_of(token).map(Caller::Tenant)
        }
    });
    if let Some(Caller::Tenant(tenant)) = caller
        && let Err(retry_after_s) = state.limits.take(tenant)
    {
        return too_many("rate: this tenant is over its request rate", retry_after_s);
    }
    match caller {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            let mut response = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// Compares without an early exit, so response timing tells nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ask(state: &AppState, caller: Caller, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if state.requests.send((caller, request, reply)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        );
    }
    match answer.await {
        Ok(Ok(value)) => axum::Json(value).into_response(),
        Ok(Err(api)) => api_error(api),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        ),
    }
}

fn too_many(message: &str, retry_after_s: u64) -> Response {
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, message);
    if let Ok(value) = header::HeaderValue::from_str(&retry_after_s.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn api_error(api: ApiError) -> Response {
    if let ApiError::TooMany {
        message,
        retry_after_s,
    } = &api
    {
        return too_many(message, *retry_after_s);
    }
    let status = match &api {
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    error(status, &api.to_string())
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// A body that does not parse: 400, naming the field, line and column serde reports; one
/// past the size limit 413, one that is not JSON at all 415.
fn bad_body(rejection: JsonRejection) -> Response {
    let status = match rejection.status() {
        status @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => status,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, &rejection.body_text())
}

/// `?tenant=N`: the namespace an admin addresses; a tenant's own token ignores it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scope {
    tenant: Option<u32>,
}

type Scoped = Result<Query<Scope>, axum::extract::rejection::QueryRejection>;

/// The namespace a request addresses, or why its query does not parse.
fn tenant_of(caller: Caller, scope: Scoped) -> Result<u32, String> {
    match scope {
        Ok(Query(scope)) => Ok(caller.scope(scope.tenant)),
        Err(rejection) => Err(rejection.body_text()),
    }
}

/// Asks the daemon about an agent (or its parts) named in the caller's namespace.
async fn ask_scoped(
    state: &AppState,
    caller: Caller,
    scope: Scoped,
    request: impl FnOnce(u32) -> Request,
) -> Response {
    match tenant_of(caller, scope) {
        Ok(tenant) => ask(state, caller, request(tenant)).await,
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

/// A successful creation answers 201.
fn created(mut response: Response) -> Response {
    if response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::CREATED;
    }
    response
}

async fn list_agents(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    ask(&state, caller, Request::ListAgents).await
}

async fn show_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
) -> Response {
    ask_scoped(&state, caller, scope, |tenant| Request::Agent {
        tenant,
        name,
    })
    .await
}

async fn agent_versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
) -> Response {
    ask_scoped(&state, caller, scope, |tenant| Request::Versions {
        tenant,
        name,
    })
    .await
}

async fn agent_memory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
) -> Response {
    ask_scoped(&state, caller, scope, |tenant| Request::Memory {
        tenant,
        name,
    })
    .await
}

async fn restart_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
) -> Response {
    ask_scoped(&state, caller, scope, |tenant| Request::Act {
        tenant,
        name,
        action: Action::Restart,
    })
    .await
}

async fn recreate_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
) -> Response {
    ask_scoped(&state, caller, scope, |tenant| Request::Act {
        tenant,
        name,
        action: Action::Recreate,
    })
    .await
}

async fn restore_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
    body: Result<axum::Json<RestoreRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(axum::Json(request)) => {
            ask_scoped(&state, caller, scope, |tenant| Request::Act {
                tenant,
                name,
                action: Action::Restore(request),
            })
            .await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn drain_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    node: Result<Path<u32>, axum::extract::rejection::PathRejection>,
) -> Response {
    match node {
        Ok(Path(node)) => ask(&state, caller, Request::DrainNode { node }).await,
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "node: must be a node id (a number)",
        ),
    }
}

async fn start_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    scope: Scoped,
    body: Result<axum::Json<RolloutRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(axum::Json(request)) => created(
            ask_scoped(&state, caller, scope, |tenant| Request::StartRollout {
                tenant,
                request,
            })
            .await,
        ),
        Err(rejection) => bad_body(rejection),
    }
}

async fn list_rollouts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    ask(&state, caller, Request::Rollouts).await
}

async fn show_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u32>, axum::extract::rejection::PathRejection>,
) -> Response {
    match id {
        Ok(Path(id)) => ask(&state, caller, Request::Rollout { id }).await,
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "id: must be a rollout id (a number)",
        ),
    }
}

async fn incidents(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    ask(&state, caller, Request::Incidents).await
}

async fn create_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<axum::Json<AgentRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(axum::Json(request)) => created(ask(&state, caller, Request::Create(request)).await),
        Err(rejection) => bad_body(rejection),
    }
}

async fn update_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
    body: Result<axum::Json<AgentRequest>, JsonRejection>,
) -> Response {
    let tenant = match tenant_of(caller, scope) {
        Ok(tenant) => tenant,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match body {
        Ok(axum::Json(request)) => {
            ask(
                &state,
                caller,
                Request::Update {
                    tenant,
                    name,
                    request,
                },
            )
            .await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn delete_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
) -> Response {
    ask_scoped(&state, caller, scope, |tenant| Request::Delete {
        tenant,
        name,
    })
    .await
}

async fn list_secrets(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    scope: Scoped,
) -> Response {
    ask_scoped(&state, caller, scope, |tenant| Request::Secrets {
        tenant,
        name,
    })
    .await
}

/// The body is the secret's value, as text; it is never echoed back.
async fn put_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, secret)): Path<(String, String)>,
    scope: Scoped,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> Response {
    let tenant = match tenant_of(caller, scope) {
        Ok(tenant) => tenant,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let Ok(value) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "secret value: the body must be UTF-8 text",
        );
    };
    let request = Request::SetSecret {
        tenant,
        name,
        secret,
        value: Some(value),
    };
    ask(&state, caller, request).await
}

async fn delete_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, secret)): Path<(String, String)>,
    scope: Scoped,
) -> Response {
    ask_scoped(&state, caller, scope, |tenant| Request::SetSecret {
        tenant,
        name,
        secret,
        value: None,
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<After>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match query {
        Ok(Query(After { after })) => ask(&state, caller, Request::Events { after }).await,
        Err(rejection) => error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    }
}

/// The event feed as server-sent events, live: each entry the caller may see, as it happens.
/// A client too slow to keep up is told how many it missed, and can read them from
/// `/v1/events`.
async fn stream_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let receiver = state.feed.subscribe();
    let stream = futures_util::stream::unfold(receiver, move |mut receiver| async move {
        loop {
            let event = match receiver.recv().await {
                Ok(entry)
                    if caller == Caller::Admin || entry.tenant.is_some_and(|t| caller.sees(t)) =>
                {
                    Event::default().event(entry.event).json_data(&entry)
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    Ok(Event::default().event("lagged").data(missed.to_string()))
                }
                Err(RecvError::Closed) => return None,
            };
            if let Ok(event) = event {
                return Some((Ok::<_, std::convert::Infallible>(event), receiver));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn alerts(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    ask(&state, caller, Request::Alerts).await
}

async fn nodes(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    ask(&state, caller, Request::Nodes).await
}

async fn tenants(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    ask(&state, caller, Request::Tenants).await
}

async fn create_tenant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<axum::Json<TenantRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(axum::Json(request)) => {
            created(ask(&state, caller, Request::CreateTenant(request)).await)
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn metrics(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let response = ask(&state, caller, Request::Metrics).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let text: String = serde_json::from_slice(&bytes).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The API's description, served as it is; a test checks every route in it answers.
pub const OPENAPI: &str = include_str!("openapi.json");
