//! What the agent is and does: its state, and one function per HTTP endpoint.

use crate::http::{Request, Response};
use crate::memory::{self, Ballast};
use crate::session::Session;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
pub struct Agent {
    session: Mutex<Session>,
    ballast: Mutex<Ballast>,
    /// What the config file says now: reloaded while the agent runs.
    live: Mutex<Live>,
    ready: AtomicBool,
    hung: AtomicBool,
}

/// The settings a running agent takes from a changed config file without a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub greeting: Option<String>,
    pub token: Option<String>,
}

impl Agent {
    pub fn new(session: Session, live: Live) -> Agent {
        Agent {
            session: Mutex::new(session),
            ballast: Mutex::new(Ballast::default()),
            live: Mutex::new(live),
            ready: AtomicBool::new(false),
            hung: AtomicBool::new(false),
        }
    }

    /// Boot is over: `/readyz` answers 200 from now on.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// A changed config file took effect.
    pub fn reload(&self, live: Live) {
        *lock(&self.live) = live;
    }

    /// Whether `/hang` was called: the server must stop answering.
    pub fn is_hung(&self) -> bool {
        self.hung.load(Ordering::SeqCst)
    }

    pub fn handle(&self, request: &Request) -> Response {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/healthz") => ok(json!({ "ok": true })),
            ("GET", "/readyz") => self.readiness(),
            ("GET", "/state") => ok(self.state(&lock(&self.session))),
            ("GET" | "POST", "/auth") => self.auth(request),
            ("POST", "/turn") => self.turn(),
            ("POST", "/spike") => self.spike(request),
            ("POST", "/release") => self.release(),
            ("POST", "/crash") => crash(request),
            ("POST", "/hang") => self.hang(),
            _ => Response::error(404, "not found"),
        }
    }

    fn readiness(&self) -> Response {
        if self.ready.load(Ordering::SeqCst) {
            ok(json!({ "ready": true }))
        } else {
            Response::new(503, json!({ "ready": false }))
        }
    }

    fn state(&self, session: &Session) -> Value {
        let mut state = json!({ "turns": session.turns(), "pid": std::process::id() });
        if let Some(greeting) = &lock(&self.live).greeting {
            state["greeting"] = json!(greeting);
        }
        state
    }

    /// 200 when the request carries the config's current token as a bearer credential.
    fn auth(&self, request: &Request) -> Response {
        let live = lock(&self.live);
        let presented = request
            .authorization
            .as_deref()
            .and_then(|value| value.strip_prefix("Bearer "));
        match (&live.token, presented) {
            (Some(token), Some(presented)) if token == presented => ok(json!({ "ok": true })),
            _ => Response::error(401, "unauthorized"),
        }
    }

    /// One turn of conversation: the session's counter moves and is saved before the reply.
    fn turn(&self) -> Response {
        let mut session = lock(&self.session);
        match session.advance() {
            Ok(_) => ok(self.state(&session)),
            Err(e) => Response::error(500, format!("cannot save the session: {e}")),
        }
    }

    fn spike(&self, request: &Request) -> Response {
        let Some(bytes) = request.param("bytes") else {
            return Response::error(400, "/spike needs ?bytes=N");
        };
        let Ok(bytes) = bytes.parse::<usize>() else {
            return Response::error(400, format!("bytes={bytes:?} is not a number of bytes"));
        };
        let mut ballast = lock(&self.ballast);
        match ballast.grow(bytes) {
            Ok(()) => ok(memory_report(&ballast)),
            Err(e) => Response::error(500, format!("cannot allocate {bytes} bytes: {e}")),
        }
    }

    fn release(&self) -> Response {
        let mut ballast = lock(&self.ballast);
        ballast.release();
        ok(memory_report(&ballast))
    }

    /// Marks the agent hung before replying: the client that asked for the hang gets its 200,
    /// and every connection accepted after that reply is left unanswered.
    fn hang(&self) -> Response {
        self.hung.store(true, Ordering::SeqCst);
        ok(json!({ "hanging": true }))
    }
}

/// `/crash?code=N`: reply, then exit with N (1 if not given).
fn crash(request: &Request) -> Response {
    let code = match request.param("code").map(str::parse::<u8>) {
        None => 1,
        Some(Ok(code)) => code,
        Some(Err(_)) => return Response::error(400, "code must be an exit code, 0 to 255"),
    };
    Response {
        exit_after: Some(i32::from(code)),
        ..ok(json!({ "exiting": code }))
    }
}

fn memory_report(ballast: &Ballast) -> Value {
    json!({ "rss_bytes": memory::rss_bytes(), "held_bytes": ballast.held() })
}

fn ok(body: Value) -> Response {
    Response::new(200, body)
}

/// Handlers never panic while holding a lock, but should one ever, the data is still
/// consistent (every update is a single assignment), so the agent carries on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
