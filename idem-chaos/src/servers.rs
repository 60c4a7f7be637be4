//! Private servers the campaign starts on free loopback ports, in directories of their own,
//! and kills by PID. The shared servers on the standard ports are never touched.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// What went wrong starting a server.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// A free loopback port, as the OS hands one out.
fn free_port() -> Result<u16, StartError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to a process.
fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status();
}

/// How many ports a server is tried on before its start fails.
const PORT_TRIES: usize = 5;

/// Why a server did not come up.
#[derive(Debug)]
pub enum StartFailure {
    /// It exited before answering: a port it was to bind was taken (between `free_port`
    /// and its bind, by another process), or it could not start at all.
    ExitedAtOnce(String),
    /// Anything else: it could not be spawned, or it did not answer in time.
    Other(StartError),
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ExitedAtOnce(why) => f.write_str(why),
            Self::Other(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for StartFailure {}

/// The exit status of `child` if it has exited (and is reaped: `child` is then `None`).
fn exited(child: &mut Option<Child>) -> Option<std::process::ExitStatus> {
    let status = child.as_mut()?.try_wait().ok()??;
    *child = None;
    Some(status)
}

/// Whether the server at `client`'s address is the process `pid`: another process on the
/// port (whoever took it first) answers too, and a listener that never answers is given up
/// on.
fn answered_by(client: &redis::Client, pid: u32) -> bool {
    let patience = Duration::from_millis(500);
    let Ok(mut connection) = client.get_connection_with_timeout(patience) else {
        return false;
    };
    if connection.set_read_timeout(Some(patience)).is_err() {
        return false;
    }
    let me = format!("process_id:{pid}");
    redis::cmd("INFO")
        .arg("server")
        .query::<String>(&mut connection)
        .is_ok_and(|info| info.lines().any(|line| line.trim_end() == me))
}

/// Which server speaks the Redis protocol: Redis itself, or Valkey 8.1, whose `SET ...
/// IFEQ` idem-redis finishes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `redis-server`, from the machine's packages.
    Redis,
    /// `valkey-server`, built into /opt by `bash .ci/services valkey` (or
    /// `IDEM_VALKEY_SERVER`).
    Valkey,
}

impl Flavor {
    fn binary(self) -> String {
        match self {
            Self::Redis => "redis-server".to_owned(),
            Self::Valkey => std::env::var("IDEM_VALKEY_SERVER")
                .unwrap_or_else(|_| "/opt/valkey-8.1.1/valkey-server".to_owned()),
        }
    }

    fn install(self) -> &'static str {
        match self {
            Self::Redis => "apt-get install redis-server",
            Self::Valkey => "bash .ci/services valkey",
        }
    }
}

/// A `redis-server` (or `valkey-server`) of the campaign's own, killed when dropped.
pub struct RedisServer {
    flavor: Flavor,
    port: u16,
    dir: TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a `redis-server` with `args` on top of a private port and directory.
    ///
    /// # Errors
    ///
    /// A [`StartError`] when no free port or temporary directory could be had, or the server did
    /// not start, as [`restart`](Self::restart).
    pub fn start(args: &[&str]) -> Result<Self, StartError> {
        Self::start_flavor(Flavor::Redis, args)
    }

    /// Starts a server of `flavor` with `args` on top of a private port and directory.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_flavor(flavor: Flavor, args: &[&str]) -> Result<Self, StartError> {
        Self::start_from(flavor, args, free_port()?)
    }

    /// Starts a server of `flavor` on `port`, or on other free ports if it exits at once.
    fn start_from(flavor: Flavor, args: &[&str], port: u16) -> Result<Self, StartError> {
        let mut server = Self {
            flavor,
            port,
            dir: tempfile::Builder::new()
                .prefix("idem-chaos-redis")
                .tempdir()?,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        // A port is free when `free_port` finds it, not always when the server binds it a
        // moment later: a server that exits at once (its port taken meanwhile) is started
        // again on another.
        for _ in 1..PORT_TRIES {
            match server.restart() {
                Err(StartFailure::ExitedAtOnce(_)) => server.port = free_port()?,
                started => return started.map(|()| server).map_err(StartError::from),
            }
        }
        server.restart()?;
        Ok(server)
    }

    /// The URL to connect to.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (after [`kill`](Self::kill)) and waits until it answers.
    ///
    /// # Errors
    ///
    /// [`StartFailure::ExitedAtOnce`] when the server exited before answering (its port
    /// taken), [`StartFailure::Other`] when it cannot be spawned or does not answer in time.
    pub fn restart(&mut self) -> Result<(), StartFailure> {
        let binary = self.flavor.binary();
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                StartFailure::Other(
                    format!("{binary} did not start ({e}); {}", self.flavor.install()).into(),
                )
            })?;
        self.child = Some(child);
        self.wait_until_up()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server's process (SIGSTOP): it keeps its connections and answers nothing.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, "STOP");
        }
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, "CONT");
        }
    }

    /// Waits until the server's own process answers on its port; a server that exits
    /// first is reaped.
    fn wait_until_up(&mut self) -> Result<(), StartFailure> {
        let started = Instant::now();
        let client = redis::Client::open(self.url()).map_err(|e| StartFailure::Other(e.into()))?;
        let pid = self.child.as_ref().map_or(0, Child::id);
        while started.elapsed() < Duration::from_secs(20) {
            if answered_by(&client, pid) {
                return Ok(());
            }
            if let Some(status) = exited(&mut self.child) {
                return Err(StartFailure::ExitedAtOnce(format!(
                    "{:?} on port {} exited at once ({status}; its port taken?)",
                    self.flavor, self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(StartFailure::Other(
            format!("{:?} on port {} did not answer", self.flavor, self.port).into(),
        ))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A `mariadbd` of the campaign's own with a fresh data directory (`mariadb-install-db`),
/// killed when dropped.
pub struct MariaDb {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl MariaDb {
    /// Initialises a data directory and starts the server on a free port; row lock waits
    /// give up after one second, so a held lock turns into errors quickly.
    ///
    /// # Errors
    ///
    /// A [`StartError`] when `mariadb-install-db` fails, `mariadbd` cannot be spawned, or the
    /// server does not accept connections in time.
    pub async fn start() -> Result<Self, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("idem-chaos-mariadb")
            .tempdir()?;
        let status = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data_dir(&dir).display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| {
                format!("mariadb-install-db did not run ({e}); apt-get install mariadb-server")
            })?;
        if !status.success() {
            return Err(format!("mariadb-install-db failed: {status}").into());
        }
        let mut server = Self {
            port: free_port()?,
            dir,
            child: None,
        };
        // As for Redis: a server that exits at once lost its port; it gets another.
        for _ in 1..PORT_TRIES {
            server.launch()?;
            match server.wait_until_up().await {
                Err(StartFailure::ExitedAtOnce(_)) => server.port = free_port()?,
                up => return up.map(|()| server).map_err(StartError::from),
            }
        }
        server.launch()?;
        server.wait_until_up().await?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<(), StartError> {
        let dir = self.dir.path();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data_dir(&self.dir).display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .args(["--user=root", "--bind-address=127.0.0.1", "--skip-log-bin"])
            .args([
                "--innodb-buffer-pool-size=32M",
                "--innodb-lock-wait-timeout=1",
            ])
            .args(["--max-connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("mariadbd did not start ({e}); apt-get install mariadb-server"))?;
        self.child = Some(child);
        Ok(())
    }

    /// The URL of its `test` database.
    #[must_use]
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    /// Waits until the server takes connections, and makes the `test` database; a server
    /// that exits first is reaped.
    async fn wait_until_up(&mut self) -> Result<(), StartFailure> {
        use sqlx::Connection;
        let root = format!("mysql://root@127.0.0.1:{}/mysql", self.port);
        let started = Instant::now();
        loop {
            match sqlx::MySqlConnection::connect(&root).await {
                Ok(mut connection) => {
                    return sqlx::raw_sql("CREATE DATABASE IF NOT EXISTS test")
                        .execute(&mut connection)
                        .await
                        .map(drop)
                        .map_err(|e| StartFailure::Other(e.into()));
                }
                Err(_) if exited(&mut self.child).is_some() => {
                    return Err(StartFailure::ExitedAtOnce(format!(
                        "mariadbd on port {} exited at once:\n{}",
                        self.port,
                        self.error_log()
                    )));
                }
                Err(error) if started.elapsed() > Duration::from_secs(60) => {
                    return Err(StartFailure::Other(
                        format!("mariadbd did not answer: {error}\n{}", self.error_log()).into(),
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

fn data_dir(dir: &TempDir) -> PathBuf {
    dir.path().join("data")
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose port was taken between `free_port` and its bind (by another test's
    /// server, say) exits at once; it is started on another port, not waited for 20 s and
    /// failed.
    ///
    /// Taken by a listener that never answers, and by another `redis-server`, which answers
    /// `PING` as well as the server being started would: only the server's own process counts.
    #[test]
    fn a_server_whose_port_is_taken_starts_on_another() {
        let silent = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let silent_port = silent.local_addr().expect("its address").port();
        let other = RedisServer::start(&[]).expect("a first server");
        for taken in [silent_port, other.port] {
            let started = Instant::now();
            let server = RedisServer::start_from(Flavor::Redis, &[], taken)
                .unwrap_or_else(|e| panic!("the server did not start: {e}"));
            assert_ne!(server.port, taken);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the start waited {:?} on the taken port",
                started.elapsed()
            );
            let pid = server.child.as_ref().expect("the server runs").id();
            let client = redis::Client::open(server.url()).expect("a valid URL");
            assert!(answered_by(&client, pid), "the server answers on its port");
        }
    }
}
