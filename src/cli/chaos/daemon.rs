//! The running daemon as chaos sees it (its API), and the modelled client of one agent.

use carapace_engine::Millis;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running daemon, found through its data directory.
#[derive(Debug)]
pub struct Daemon {
    pub url: String,
    token: String,
    pub pid: u32,
    /// One client, so that polling reuses its connections instead of opening one a call.
    http: ureq::Agent,
}

impl Daemon {
    pub fn find(data: &Path) -> Result<Daemon, String> {
        let about = data.join("serve.json");
        let text = std::fs::read_to_string(&about).map_err(|e| {
            format!(
                "{}: {e} (is carapace serve running on this data dir?)",
                about.display()
            )
        })?;
        let about: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", about.display()))?;
        let token_path = data.join("token");
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| format!("{}: {e}", token_path.display()))?
            .trim()
            .to_owned();
        let pid = about["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        let url = about["url"].as_str().unwrap_or_default().to_owned();
        Ok(Daemon::new(url, token, pid))
    }

    pub fn new(url: String, token: String, pid: u32) -> Daemon {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Daemon {
            url,
            token,
            pid,
            http,
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut response = self
            .http
            .get(&format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()?;
        let text = response.body_mut().read_to_string()?;
        Ok(serde_json::from_str(&text)?)
    }

    /// A request with a JSON body (or none); the status and the JSON answer, whatever the
    /// status.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let mut response = match (method, body) {
            ("POST", Some(body)) => self
                .http
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body)?,
            ("DELETE", None) => self
                .http
                .delete(&url)
                .header("Authorization", &auth)
                .call()?,
            _ => anyhow::bail!("{method} {path}: not a request chaos makes"),
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub fn agent(&self, name: &str) -> anyhow::Result<Value> {
        self.get(&format!("/v1/agents/{name}"))
    }

    pub fn events(&self, after: u64) -> anyhow::Result<Value> {
        self.get(&format!("/v1/events?after={after}"))
    }

    /// The seq of the newest event in the feed.
    pub fn feed_tail(&self) -> anyhow::Result<u64> {
        let feed = self.events(0)?;
        Ok(feed["events"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or(0))
    }

    /// Waits (at most `within`) until every snapshot the engine asked of the agent was taken.
    pub fn wait_for_snapshots(&self, name: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let feed = self.events(0)?;
            let mut pending = 0i64;
            for event in feed["events"].as_array().into_iter().flatten() {
                if event["agent"] != name {
                    continue;
                }
                match event["event"].as_str() {
                    Some("snapshot") => pending += 1,
                    Some("snapshotted") => pending -= 1,
                    _ => {}
                }
            }
            if pending <= 0 || Instant::now() > deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait(
        &self,
        name: &str,
        within: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let view = self.agent(name)?;
            if ready(&view) {
                return Ok(view);
            }
            if Instant::now() > deadline {
                anyhow::bail!("{name} is not running within {within:?}: {view}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The modelled client, for real: a request to the agent every interval, on the port of
/// whichever pod runs it now. Remembers when each request was sent, in engine time.
#[derive(Debug)]
pub struct Client {
    sent: Arc<Mutex<Vec<Millis>>>,
    running: Arc<AtomicBool>,
}

impl Client {
    pub fn start(daemon: &Daemon, name: &str, interval: Duration, timeout: Duration) -> Client {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicBool::new(true));
        let (url, token, name) = (daemon.url.clone(), daemon.token.clone(), name.to_owned());
        let (log, alive) = (sent.clone(), running.clone());
        std::thread::spawn(move || {
            let daemon = Daemon::new(url, token, 0);
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .build()
                .into();
            while alive.load(Ordering::Relaxed) {
                if let Ok(view) = daemon.agent(&name)
                    && let (Some(port), Some(now)) =
                        (view["pod"]["port"].as_u64(), view["now_ms"].as_u64())
                {
                    log.lock().expect("client log").push(Millis(now));
                    let _ = agent
                        .get(&format!("http://127.0.0.1:{port}/healthz"))
                        .call();
                }
                std::thread::sleep(interval);
            }
        });
        Client { sent, running }
    }

    pub fn first_request_after(&self, at: Millis) -> Option<Millis> {
        self.sent
            .lock()
            .expect("client log")
            .iter()
            .copied()
            .find(|t| *t >= at)
    }

    pub fn stop(&self) {
        self.running.store(false, Ordering::Relaxed);
    }
}
