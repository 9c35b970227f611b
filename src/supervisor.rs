//! Runs parts of the system as child processes of this binary, the way a process manager or
//! compose would: the demo uses it to start worker replicas and the relay, and tests use it
//! to kill a worker for real (SIGKILL, no chance to clean up).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use eventline_events::Namespace;
use eventline_workers::runtime::config::SagaKeys;
use eventline_workers::runtime::{SecretUrl, token};
use tokio::process::{Child, Command};

/// A set of named child processes, each running a subcommand of the `eventline` binary.
pub struct Supervisor {
    exe: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    children: BTreeMap<String, Child>,
}

/// The environment every worker and relay process of one system shares: the broker, the
/// database, the namespace, the auth key pair (auth signs with the private half, every service
/// verifies with the public half), the saga timeout, and fresh saga keys (orders signs its
/// steps, catalog and payments their replies; each worker keeps only its own signing key).
pub fn system_env(
    amqp_url: &SecretUrl,
    database_url: &SecretUrl,
    namespace: &Namespace,
    auth: &SigningKey,
    saga_timeout_ms: u64,
) -> Vec<(String, String)> {
    [
        ("AMQP_URL".into(), amqp_url.expose().to_owned()),
        ("DATABASE_URL".into(), database_url.expose().to_owned()),
        ("EVENTLINE_NAMESPACE".into(), namespace.to_string()),
        (
            "EVENTLINE_AUTH_SIGNING_KEY".into(),
            token::encode_key(&auth.to_bytes()),
        ),
        (
            "EVENTLINE_AUTH_PUBLIC_KEY".into(),
            token::encode_key(&auth.verifying_key().to_bytes()),
        ),
        (
            "EVENTLINE_SAGA_TIMEOUT_MS".into(),
            saga_timeout_ms.to_string(),
        ),
    ]
    .into_iter()
    .chain(SagaKeys::generate().signing_env())
    .collect()
}

impl Supervisor {
    /// `exe` is the `eventline` binary; `env` is added to every child's environment; each
    /// child's output goes to `{log_dir}/{name}.log`.
    pub fn new(
        exe: impl Into<PathBuf>,
        env: Vec<(String, String)>,
        log_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            exe: exe.into(),
            env,
            log_dir: log_dir.into(),
            children: BTreeMap::new(),
        }
    }

    /// Sets (or, with `None`, stops adding) one variable of the children started from now on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts `eventline {args}` as `name`, which is also its replica name.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.log_dir)?;
        let log = std::fs::File::create(self.log_dir.join(format!("{name}.log")))?;
        let child = Command::new(&self.exe)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("EVENTLINE_REPLICA", name)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.children.insert(name.to_owned(), child);
        Ok(())
    }

    /// SIGKILL: the process dies mid-whatever, as in a power cut.
    pub async fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.children.remove(name) {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM to one child; waits for it to exit and returns its status.
    pub async fn terminate(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let mut child = self.children.remove(name)?;
        send_sigterm(&child);
        child.wait().await.ok()
    }

    /// SIGTERM to every child, then waits up to `grace` for each before SIGKILL.
    pub async fn stop_all(&mut self, grace: Duration) {
        for child in self.children.values() {
            send_sigterm(child);
        }
        for (_, mut child) in std::mem::take(&mut self.children) {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }

    /// Names of children that have exited (crashed) on their own.
    pub fn exited(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .filter_map(|(name, child)| {
                matches!(child.try_wait(), Ok(Some(_))).then(|| name.clone())
            })
            .collect()
    }
}

fn send_sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        // A plain `kill -TERM`: no libc binding needed for one signal.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}
