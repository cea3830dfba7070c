//! `carapace serve --config carapace.toml`: the engine's Controller in a daemon, carrying its
//! decisions out as pods on this machine, with a durable store, a journal every decision can
//! be replayed from, and an HTTP API.

mod actions;
pub(crate) mod agents;
mod api;
mod clock;
mod cluster;
pub(crate) mod config;
mod daemon;
mod dashboard;
mod desired;
pub(crate) mod driver;
mod durable;
mod feed;
mod incidents;
mod memory;
mod reports;
mod restart;
mod rollouts;
mod secrets;
mod tenants;
mod warm;

use super::EXIT_BAD_INPUT;
use api::{Envelope, Request};
use carapace_drivers::cgroup::Enforcement;
use carapace_engine::{AgentStatus, Millis};
use daemon::{ApiError, Daemon, LOCAL_NODE};
use driver::{PodSettings, ProcessDriver};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tenants::Caller;
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The daemon's config file (TOML): data_dir, [api], [node], [pods], [policy], [cluster].
    #[arg(long)]
    config: PathBuf,
    /// Run as one of a cluster's controller replicas, with these etcd members' client URLs
    /// (comma-separated; sets the file's `cluster.etcd`).
    #[arg(long)]
    etcd: Option<String>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(&args.config, args.etcd.as_deref()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("carapace serve: {message}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    if !config.api.listen.ip().is_loopback() {
        if !config.api.risk_serving_tokens_in_clear_on_a_public_address {
            eprintln!(
                "carapace serve: {}: field `api.listen`: {} is not a loopback address; the API \
                 has no TLS, so tokens and secrets would cross the network in clear. Serve on \
                 loopback behind a TLS proxy, or set \
                 api.risk_serving_tokens_in_clear_on_a_public_address = true",
                args.config.display(),
                config.api.listen
            );
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
        eprintln!(
            "carapace serve: WARNING: serving {} without TLS: tokens and secrets cross the \
             network in clear",
            config.api.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(serve(config)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) if error.is::<daemon::PolicyChanged>() => {
            eprintln!("carapace serve: {}: {error}", args.config.display());
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
        Err(error) if error.is::<cluster::Deposed>() => {
            eprintln!("carapace serve: {error}; stopping (a restart campaigns again)");
            Ok(ExitCode::from(super::EXIT_DEPOSED))
        }
        Err(error) => Err(error),
    }
}

/// The next news of the cluster link; never, on one machine.
async fn cluster_news(
    news: &mut Option<tokio::sync::mpsc::UnboundedReceiver<cluster::link::News>>,
) -> Option<cluster::link::News> {
    match news {
        Some(news) => news.recv().await,
        None => std::future::pending().await,
    }
}

async fn serve(config: config::ServeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let shutdown = crate::cli::shutdown_signal()?;
    tokio::pin!(shutdown);
    let token = read_or_create_token(&config.api.token_file)?;
    let (reports_tx, mut reports) = mpsc::channel(1024);
    let settings = PodSettings {
        startup_probe_interval: duration(config.pods.startup_probe_interval.0),
        probe_interval: duration(config.pods.probe_interval.0),
        probe_timeout: duration(config.pods.probe_timeout.0),
        memory_interval: duration(config.pods.memory_interval.0),
        grace: duration(config.pods.grace.0),
        policy: config.policy.supervisor.clone(),
        port_base: config.pods.port_base,
        port_stride: config.pods.port_stride,
        max_pods: config.pods.max_pods,
        fence: None,
        replicas: config.pods.replicas(),
    };
    let mut driver = ProcessDriver::new(
        config.data_dir.clone(),
        &config.node.cgroup_parent,
        settings,
        reports_tx,
    )?;
    if let Some(template) = config.warm_pool.as_ref().and_then(|w| w.template.clone()) {
        driver = driver.with_warm_pool(template, config.policy.placement.warm_pool_per_node);
    }
    // A cluster's controller runs no pods: its nodes say whether theirs are limited.
    match driver.enforcement() {
        _ if config.cluster.is_some() => {}
        enforced @ Enforcement::Enforced { .. } => tracing::info!("{enforced}"),
        unenforced => {
            eprintln!("carapace serve: WARNING: {unenforced}");
            tracing::warn!("{unenforced}");
        }
    }
    let now_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let vault = secrets::Vault::open_or_create(&config.api.secrets_key_file)
        .map_err(|message| anyhow::anyhow!(message))?;
    let mut leading = None;
    let mut news = None;
    let mut daemon = match &config.cluster {
        None => {
            let store =
                carapace_store::Store::open(&config.data_dir.join("carapace.redb"), now_unix_ms)?;
            let memory = match config.node.memory {
                Some(bytes) => bytes.0,
                None => machine_memory_bytes()?,
            };
            let store = durable::Durable::Local(store);
            Daemon::open(
                store,
                config.policy.clone(),
                Some(memory),
                driver,
                vault,
                None,
            )?
        }
        Some(cluster_config) => {
            // Tests and scripts wait for these lines.
            println!("carapace serve: standby: campaigning for leadership in etcd");
            let candidate = format!("{} pid {}", config.api.listen, std::process::id());
            let cluster_config = cluster_config.clone();
            let campaign =
                tokio::task::spawn_blocking(move || cluster::campaign(&cluster_config, &candidate));
            let led = tokio::select! {
                () = &mut shutdown => {
                    eprintln!("carapace serve: stopping while standby");
                    return Ok(());
                }
                led = campaign => led??,
            };
            println!(
                "carapace serve: leading (leadership revision {})",
                led.leadership.revision
            );
            let journal = carapace_cluster::journal::EtcdJournal::open(
                led.client.clone(),
                led.keys.root(),
                led.leadership.clone(),
                now_unix_ms,
            )?;
            let link = cluster::link::Link::start(
                &cluster::link::LinkSettings {
                    client: led.client.clone(),
                    keys: led.keys.clone(),
                    leadership: led.leadership.clone(),
                },
                &led.news,
            );
            let cluster = cluster::Cluster::new(link);
            let store = durable::Durable::Cluster(journal);
            let daemon = Daemon::open(
                store,
                config.policy.clone(),
                None,
                driver,
                vault,
                Some(cluster),
            )?;
            news = Some(led.news_received);
            leading = Some((led.client, led.leadership));
            daemon
        }
    };
    if let Some(dropped) = &daemon.replayed.dropped {
        eprintln!("carapace serve: WARNING: the journal was cut short: {dropped}");
    }
    tracing::info!(
        records = daemon.replayed.records,
        divergences = daemon.replayed.divergences,
        agents = daemon.agents.len(),
        "journal replayed"
    );
    daemon.reconcile()?;
    let (requests_tx, mut requests) = mpsc::channel::<Envelope>(256);
    let listener = tokio::net::TcpListener::bind(config.api.listen).await?;
    let address = listener.local_addr()?;
    // Where `carapace chaos` (and operators' scripts) find this daemon.
    let about = json!({ "url": format!("http://{address}"), "pid": std::process::id() });
    std::fs::write(config.data_dir.join("serve.json"), about.to_string())?;
    // Tests and scripts wait for this line: the API answers from here on.
    println!("carapace serve: listening on http://{address}");
    let limits = tenants::RateLimits::new(
        config.api.tenant_requests_per_second,
        config.api.tenant_burst,
    );
    let app = api::router(
        requests_tx,
        token,
        daemon.keys.clone(),
        limits,
        daemon.feed_live.clone(),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the API server stopped");
        }
    });
    let alerts_file = config.api.alerts_file.clone();
    let webhook = config.api.alert_webhook.clone();
    let mut alerts_written = daemon.alerts.len();
    loop {
        let deadline = daemon
            .controller
            .next_deadline()
            .map(|at| daemon.clock.instant(at));
        tokio::select! {
            () = &mut shutdown => break,
            Some(report) = reports.recv() => daemon.on_report(report),
            Some(news) = cluster_news(&mut news) => daemon.on_cluster_news(news)?,
            Some((caller, request, reply)) = requests.recv() => {
                let _ = reply.send(answer(&mut daemon, caller, request));
            }
            () = sleep_until(deadline) => {
                if let Err(error) = daemon.tick() {
                    tracing::error!(%error, "the engine refused a timeout");
                }
            }
        }
        alerts_written = write_alerts(&daemon, &alerts_file, webhook.as_deref(), alerts_written);
    }
    // Pods keep running without the daemon: rung 1 is theirs, and a restarted daemon
    // reattaches to them.
    eprintln!("carapace serve: stopping; pods keep running");
    if let Some((client, leadership)) = leading {
        tokio::task::spawn_blocking(move || cluster::step_down(&client, &leadership)).await?;
    }
    Ok(())
}

fn answer(daemon: &mut Daemon, caller: Caller, request: Request) -> api::Answer {
    // Fleet-wide routes are the admin's; to a tenant they do not exist.
    let admin_only = matches!(
        request,
        Request::Nodes | Request::Tenants | Request::CreateTenant(_) | Request::DrainNode { .. }
    );
    if admin_only && caller != Caller::Admin {
        return Err(ApiError::NotFound("no such route".into()));
    }
    match request {
        Request::ListAgents => {
            let agents: Vec<Value> = daemon
                .agents
                .values()
                .filter(|record| caller.sees(record.request.tenant))
                .map(|record| agent_view(daemon, record.id))
                .collect();
            Ok(json!({ "agents": agents }))
        }
        Request::Agent { tenant, name } => {
            let id = daemon.id_of(tenant, &name)?;
            Ok(agent_view(daemon, id))
        }
        Request::Versions { tenant, name } => {
            let id = daemon.id_of(tenant, &name)?;
            Ok(versions_view(daemon, id))
        }
        Request::Create(mut request) => {
            // A tenant's token creates in its own tenant, whatever the body says.
            request.tenant = caller.scope(Some(request.tenant));
            let record = daemon.create(request)?;
            Ok(agent_view(daemon, record.id))
        }
        Request::Update {
            tenant,
            name,
            mut request,
        } => {
            request.tenant = caller.scope(Some(request.tenant));
            let record = daemon.update(tenant, &name, request)?;
            Ok(agent_view(daemon, record.id))
        }
        Request::Delete { tenant, name } => {
            daemon.remove(tenant, &name)?;
            Ok(json!({ "removed": name }))
        }
        Request::Secrets { tenant, name } => {
            Ok(json!({ "secrets": daemon.secret_names(tenant, &name)? }))
        }
        Request::SetSecret {
            tenant,
            name,
            secret,
            value,
        } => {
            let set = value.is_some();
            daemon.set_secret(tenant, &name, &secret, value.as_deref())?;
            Ok(json!({ "secret": secret, "set": set }))
        }
        Request::Memory { tenant, name } => {
            let id = daemon.id_of(tenant, &name)?;
            Ok(json!({
                "name": name,
                "memory_limit_bytes": daemon.agents[&id].request.memory_limit.0,
                "points": daemon.memory.points(id),
            }))
        }
        Request::Act {
            tenant,
            name,
            action,
        } => act(daemon, tenant, &name, action),
        Request::DrainNode { node } => {
            daemon.drain(node)?;
            Ok(json!({ "draining": node }))
        }
        Request::StartRollout { tenant, request } => daemon.start_rollout(tenant, request),
        Request::Rollouts => Ok(json!({ "rollouts": daemon.rollout_views(|t| caller.sees(t)) })),
        Request::Rollout { id } => daemon
            .rollout_view(id, |t| caller.sees(t))
            // Another tenant's rollout answers exactly as one that does not exist.
            .ok_or_else(|| ApiError::NotFound(format!("no rollout {id}"))),
        Request::Incidents => {
            let seen = daemon
                .feed
                .iter()
                .filter(|e| caller == Caller::Admin || e.tenant.is_some_and(|t| caller.sees(t)));
            let incidents: Vec<Value> = incidents::incidents(seen)
                .into_iter()
                .map(|incident| {
                    // The journal up to the incident's end replays every decision it saw.
                    let until = incident.recovered_at_ms.unwrap_or(daemon.clock.now().0);
                    let mut view = json!(incident);
                    view["replay_command"] = json!(daemon.replay_command(until));
                    view
                })
                .collect();
            Ok(json!({ "now_ms": daemon.clock.now().0, "incidents": incidents }))
        }
        Request::Events { after } => {
            let events: Vec<_> = daemon
                .feed
                .iter()
                .filter(|e| e.seq > after)
                .filter(|e| caller == Caller::Admin || e.tenant.is_some_and(|t| caller.sees(t)))
                .collect();
            Ok(json!({ "now_ms": daemon.clock.now().0, "events": events }))
        }
        Request::Alerts => {
            let alerts: Vec<Value> = daemon
                .alerts
                .iter()
                .filter(|pm| caller.sees(pm.tenant.0))
                .map(|pm| alert_view(daemon, pm))
                .collect();
            Ok(json!({ "alerts": alerts }))
        }
        Request::Nodes if daemon.cluster.is_some() => Ok(daemon.cluster_nodes_view()),
        Request::Nodes => {
            let node = daemon
                .controller
                .node(LOCAL_NODE)
                .ok_or_else(|| ApiError::NotFound("the local node has not joined".into()))?;
            let density = &daemon.controller.config().density;
            let watermarks = json!({
                "stop_placing": density.watermark_stop_placing,
                "migrate": density.watermark_migrate,
                "evict": density.watermark_evict,
            });
            Ok(
                json!({ "nodes": [{ "id": LOCAL_NODE.0, "memory": node, "watermarks": watermarks }] }),
            )
        }
        Request::Metrics => Ok(Value::String(metrics(daemon, caller))),
        Request::Tenants => {
            let tenants: Vec<Value> = daemon
                .tenants
                .values()
                .map(|t| json!({ "id": t.id, "name": t.name }))
                .collect();
            Ok(json!({ "tenants": tenants }))
        }
        Request::CreateTenant(request) => {
            let (record, token) = daemon.create_tenant(request)?;
            // The only time the token is shown: the store keeps its hash.
            Ok(json!({ "id": record.id, "name": record.name, "token": token }))
        }
    }
}

/// Carries out an operator's action; answers with the agent as it is now.
fn act(daemon: &mut Daemon, tenant: u32, name: &str, action: api::Action) -> api::Answer {
    let id = daemon.id_of(tenant, name)?;
    let done = match action {
        api::Action::Restart => json!({ "restarted": daemon.restart(tenant, name)? }),
        api::Action::Recreate => {
            json!({ "config_version": daemon.recreate(tenant, name)?.version.config })
        }
        api::Action::Restore(request) => {
            let record = daemon.restore(tenant, name, request)?;
            json!({ "restored": request.config_version, "config_version": record.version.config })
        }
    };
    Ok(json!({ "done": done, "agent": agent_view(daemon, id) }))
}

fn agent_view(daemon: &Daemon, id: carapace_engine::AgentId) -> Value {
    let mut view = daemon.agents[&id].view();
    if let Some(status) = daemon.controller.agent(id) {
        view["status"] = json!(status.status);
        view["instance"] = json!(status.instance.0);
        view["running_version"] = json!(status.version);
        view["desired_version"] = json!(status.desired_version);
        view["known_good"] = json!(status.known_good);
        view["latest_snapshot"] = json!(status.latest_snapshot.map(|s| s.0));
        view["rung"] = json!(status.rung);
        view["node"] = json!(status.node.map(|n| n.0));
        if let (Some(cluster), Some(node)) = (&daemon.cluster, status.node) {
            view["node_name"] = json!(cluster.members.get(&node).map(|m| &m.name));
            // The pod is on the node's machine; its agent's pid is what the node reported.
            view["agent_pid"] = json!(
                daemon
                    .agent_pids
                    .get(&id)
                    .filter(|(instance, _)| *instance == status.instance)
                    .map(|(_, pid)| *pid)
            );
        }
        view["reservation_bytes"] = json!(status.reservation_bytes);
        let dir = daemon.driver.pod_dir(id, status.instance);
        if dir.root().exists() {
            let read = |name: &str| {
                std::fs::read_to_string(dir.root().join(name))
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
            };
            let agent_pid = daemon
                .agent_pids
                .get(&id)
                .filter(|(instance, _)| *instance == status.instance)
                .map(|(_, pid)| *pid);
            view["pod"] = json!({
                "dir": dir.root(),
                "port": read("port"),
                "supervisor_pid": read("supervise.pid"),
                "agent_pid": agent_pid,
            });
        }
    }
    view["now_ms"] = json!(daemon.clock.now().0);
    view
}

/// An agent's versions: its config versions (the texts stay in the store: configs hold
/// secrets), the running and known-good ones, and its snapshots with their sizes.
fn versions_view(daemon: &Daemon, id: carapace_engine::AgentId) -> Value {
    let configs: Vec<u32> = daemon.config_versions(id);
    let store = carapace_drivers::snapshot::Store::open(daemon.driver.snapshots(id));
    let snapshots: Vec<Value> = store
        .and_then(|store| {
            let mut listed = Vec::new();
            for version in store.versions()? {
                let manifest = store.manifest(version)?;
                listed.push(json!({
                    "id": version,
                    "files": manifest.files.len(),
                    "bytes": manifest.files.iter().map(|f| f.size).sum::<u64>(),
                }));
            }
            Ok(listed)
        })
        .unwrap_or_default();
    let status = daemon.controller.agent(id);
    json!({
        "name": daemon.agents[&id].request.name,
        "desired_version": daemon.agents[&id].version,
        "running_version": status.map(|s| s.version),
        "known_good": status.and_then(|s| s.known_good),
        "latest_snapshot": status.and_then(|s| s.latest_snapshot).map(|s| s.0),
        "config_versions": configs,
        "snapshots": snapshots,
    })
}

/// A post-mortem as operators get it: with the command that replays the journal up to the
/// alert, so the incident can be reproduced and its decisions checked.
fn alert_view(daemon: &Daemon, post_mortem: &carapace_engine::PostMortem) -> Value {
    let mut view = json!(post_mortem);
    view["replay_command"] = json!(daemon.replay_command(post_mortem.at.0));
    view
}

/// Prometheus text: fleet state by status, the ladder, the journal, the cgroup guard.
/// Prometheus text for `caller`: the fleet-wide series for the admin, and per tenant and per
/// agent the ones the caller may see. Labels are bounded by the tenants and agents that exist
/// (both capped), never by anything a client sends.
fn metrics(daemon: &Daemon, caller: Caller) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    tenant_metrics(daemon, caller, &mut text);
    if caller != Caller::Admin {
        return text;
    }
    let mut by_status = std::collections::BTreeMap::new();
    for id in daemon.agents.keys() {
        if let Some(view) = daemon.controller.agent(*id) {
            *by_status.entry(view.status).or_insert(0u64) += 1;
        }
    }
    let _ = writeln!(text, "# HELP carapace_agents Desired agents by status.");
    let _ = writeln!(text, "# TYPE carapace_agents gauge");
    for status in [
        AgentStatus::Queued,
        AgentStatus::Starting,
        AgentStatus::Running,
        AgentStatus::Restarting,
        AgentStatus::Stopping,
        AgentStatus::Parked,
    ] {
        let name = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let count = by_status.get(&status).copied().unwrap_or(0);
        let _ = writeln!(text, "carapace_agents{{status=\"{name}\"}} {count}");
    }
    let stats = daemon.controller.stats();
    let _ = writeln!(
        text,
        "# HELP carapace_incidents_resolved_total Incidents closed by each rung."
    );
    let _ = writeln!(text, "# TYPE carapace_incidents_resolved_total counter");
    for (rung, count) in stats.resolved_by_rung.iter().enumerate() {
        let _ = writeln!(
            text,
            "carapace_incidents_resolved_total{{rung=\"{}\"}} {count}",
            rung + 1
        );
    }
    for (name, help, value) in [
        (
            "carapace_alerts_total",
            "Critical alerts raised (agents parked).",
            stats.alerts,
        ),
        (
            "carapace_engine_inputs_total",
            "Inputs the engine took.",
            stats.inputs,
        ),
        (
            "carapace_engine_commands_total",
            "Commands the engine issued.",
            stats.commands,
        ),
        (
            "carapace_journal_records",
            "Records in the journal.",
            daemon.journal_records,
        ),
        (
            "carapace_journal_replay_divergences",
            "Commands that replayed differently at startup.",
            daemon.replayed.divergences,
        ),
    ] {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(
            text,
            "# TYPE {name} {}",
            if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            }
        );
        let _ = writeln!(text, "{name} {value}");
    }
    let enforced = u8::from(daemon.driver.enforcement().is_enforced());
    let _ = writeln!(
        text,
        "# HELP carapace_memory_limits_enforced 1 when pods run under memory cgroups; 0 means limits are NOT enforced."
    );
    let _ = writeln!(text, "# TYPE carapace_memory_limits_enforced gauge");
    let _ = writeln!(text, "carapace_memory_limits_enforced {enforced}");
    let _ = writeln!(
        text,
        "# HELP carapace_warm_standbys_ready Standby pods of the warm pool booted and waiting to be adopted."
    );
    let _ = writeln!(text, "# TYPE carapace_warm_standbys_ready gauge");
    let _ = writeln!(
        text,
        "carapace_warm_standbys_ready {}",
        daemon.driver.standbys_ready()
    );
    text
}

fn tenant_metrics(daemon: &Daemon, caller: Caller, text: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "# HELP carapace_tenant_agents Desired agents by tenant and status."
    );
    let _ = writeln!(text, "# TYPE carapace_tenant_agents gauge");
    let mut counts: std::collections::BTreeMap<(u32, String), u64> = Default::default();
    let mut agents = Vec::new();
    for record in daemon
        .agents
        .values()
        .filter(|r| caller.sees(r.request.tenant))
    {
        let Some(view) = daemon.controller.agent(record.id) else {
            continue;
        };
        let status = serde_json::to_value(view.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *counts
            .entry((record.request.tenant, status.clone()))
            .or_default() += 1;
        agents.push((
            record.request.tenant,
            &record.request.name,
            status,
            view.rung,
        ));
    }
    for ((tenant, status), count) in &counts {
        let _ = writeln!(
            text,
            "carapace_tenant_agents{{tenant=\"{tenant}\",status=\"{status}\"}} {count}"
        );
    }
    let _ = writeln!(
        text,
        "# HELP carapace_agent_up 1 when the agent runs with no incident open."
    );
    let _ = writeln!(text, "# TYPE carapace_agent_up gauge");
    for (tenant, name, status, rung) in agents {
        // Names are checked on creation to [A-Za-z0-9._-]: safe inside a label.
        let up = u8::from(status == "running" && rung.is_none());
        let _ = writeln!(
            text,
            "carapace_agent_up{{tenant=\"{tenant}\",agent=\"{name}\"}} {up}"
        );
    }
}

/// Appends post-mortems raised since the last call to the alerts file, as JSON lines, and
/// posts each to the webhook when one is set.
fn write_alerts(daemon: &Daemon, path: &Path, webhook: Option<&str>, written: usize) -> usize {
    use std::io::Write as _;
    if daemon.alerts.len() <= written {
        return daemon.alerts.len();
    }
    let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        tracing::error!(path = %path.display(), "cannot open the alerts file");
        return written;
    };
    for post_mortem in daemon.alerts.iter().skip(written) {
        let Ok(line) = serde_json::to_vec(&alert_view(daemon, post_mortem)) else {
            continue;
        };
        let _ = file.write_all(&line);
        let _ = file.write_all(b"\n");
        if let Some(url) = webhook {
            post_alert(url.to_owned(), line);
        }
    }
    daemon.alerts.len()
}

/// One attempt, off the daemon's loop, bounded by a timeout; failures are logged without
/// the URL.
fn post_alert(url: String, body: Vec<u8>) {
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let sent = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..]);
        // The error's text may hold the URL, and with it a secret: only its kind is logged.
        match sent {
            Ok(_) => {}
            Err(ureq::Error::StatusCode(status)) => {
                tracing::error!(status, "the alert webhook refused a post-mortem");
            }
            Err(_) => tracing::error!("the alert webhook could not be reached"),
        }
    });
}

/// The token clients present; made (mode 0600) on first start.
fn read_or_create_token(path: &Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Ok(text) = std::fs::read_to_string(path) {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{}: the token file is readable by others (mode {mode:o}); chmod 600 it",
                path.display()
            );
        }
        let token = text.trim().to_owned();
        if token.len() < 16 {
            anyhow::bail!(
                "{}: the token must be at least 16 characters",
                path.display()
            );
        }
        return Ok(token);
    }
    let token = agents::fresh_token() + &agents::fresh_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(token.as_bytes())?;
    eprintln!(
        "carapace serve: wrote a new API token to {}",
        path.display()
    );
    Ok(token)
}

pub(crate) fn machine_memory_bytes() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/meminfo has no MemTotal"))?;
    Ok(kib * 1024)
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn duration(millis: Millis) -> Duration {
    Duration::from_millis(millis.0)
}

/// The daemon config's parser, for the fuzz targets.
#[cfg(test)]
pub fn fuzz_config(text: &str, path: &Path) -> Result<(), String> {
    config::parse(text, path).map(|_| ())
}

/// The API's body parsers and checks, for the fuzz targets.
#[cfg(test)]
pub fn fuzz_bodies(bytes: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<agents::AgentRequest>(bytes) {
        let _ = request.check();
        let record = agents::AgentRecord {
            id: carapace_engine::AgentId(1),
            request,
            version: carapace_engine::Version::new(agents::RUNTIME, 1),
        };
        let _ = record.spec();
        let _ = record.view();
        if let Some(text) = record.config_text() {
            let dir = carapace_drivers::pod::PodDir::new("/fuzz/pod");
            let _ =
                agents::Rendered::new(&record, carapace_engine::Instance(1), 1, &dir).config(&text);
        }
    }
    if let Ok(request) = serde_json::from_slice::<tenants::TenantRequest>(bytes) {
        let _ = request.check();
    }
    if let Ok(request) = serde_json::from_slice::<rollouts::RolloutRequest>(bytes)
        && request.check().is_ok()
    {
        let mut config = serde_json::json!({"port": "{port}", "a": {"b": [1]}});
        rollouts::merge_patch(&mut config, &request.config_patch);
    }
}
