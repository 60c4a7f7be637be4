#![doc = include_str!("../README.md")]

mod history;
mod postgres;
mod run;
mod scenarios;
mod servers;
mod sql;
mod tokens;
mod workload;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

pub use history::{Answer, ErrorKind, FINAL_MARGIN, Fault, History, Rule, RunId, Summary};
pub use servers::{Flavor, MariaDb, RedisServer, StartError, StartFailure};
pub use tokens::TokenTally;
pub use workload::{OpError, Receipt, Workload};

/// How long and how hard a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The full campaign: hundreds of keys, faults until the load is done.
    Full,
    /// A short run for the test suite.
    Short,
}

impl Mode {
    fn workload(self, seed: u64) -> Workload {
        match self {
            Self::Full => Workload::full(seed),
            Self::Short => Workload::short(seed),
        }
    }
}

/// The campaign's scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The memory store under concurrency and callers that go away.
    Memory,
    /// A memory store at capacity, refusing new keys.
    MemoryFull,
    /// The memory store under `CancelPolicy::Release`: operations mark `commit` before their
    /// effect, and one caller in five goes away.
    MemoryRelease,
    /// Redis without persistence, killed and restarted: every record is lost each time.
    RedisKill,
    /// Redis with AOF and `appendfsync always`, killed and restarted.
    RedisAof,
    /// Redis paused (SIGSTOP) and resumed (SIGCONT), sometimes for longer than a lease.
    RedisPause,
    /// `redis-pause` under `CancelPolicy::Release`, as `memory-release`.
    RedisRelease,
    /// The store's Redis connections closed by the server (`CLIENT KILL`), busy or idle.
    RedisClients,
    /// One-time tokens combined with keys (`Tokens::consume_for` inside the execution under
    /// the token's key), on one server whose writes are paused past the consume's resends
    /// and whose connections are closed: each token's business runs once, none is refused.
    RedisTokens,
    /// `redis-kill` on Valkey 8.1, where the store finishes with `SET ... IFEQ`.
    ValkeyKill,
    /// `redis-pause` on Valkey 8.1, where the store finishes with `SET ... IFEQ`: finishes
    /// held up past their lease meet other owners' claims.
    ValkeyPause,
    /// MariaDB queries and connections killed while row locks make queries wait.
    MysqlKill,
    /// MariaDB row locks held on claimed rows, past the lock wait timeout.
    MysqlLocks,
    /// The transactional mode with injected rollbacks and killed connections.
    MysqlTx,
    /// PostgreSQL (the shared server, the campaign's own connections and table): queries
    /// cancelled and connections terminated while short row locks make queries wait.
    PostgresKill,
    /// PostgreSQL row locks held on claimed rows, up to two leases.
    PostgresLocks,
    /// Corrupt records planted in Redis and MariaDB.
    Corrupt,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 17] = [
        Self::Memory,
        Self::MemoryFull,
        Self::MemoryRelease,
        Self::RedisKill,
        Self::RedisAof,
        Self::RedisPause,
        Self::RedisRelease,
        Self::RedisClients,
        Self::RedisTokens,
        Self::ValkeyKill,
        Self::ValkeyPause,
        Self::MysqlKill,
        Self::MysqlLocks,
        Self::MysqlTx,
        Self::PostgresKill,
        Self::PostgresLocks,
        Self::Corrupt,
    ];

    /// The name on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::MemoryFull => "memory-full",
            Self::MemoryRelease => "memory-release",
            Self::RedisKill => "redis-kill",
            Self::RedisAof => "redis-aof",
            Self::RedisPause => "redis-pause",
            Self::RedisRelease => "redis-release",
            Self::RedisClients => "redis-clients",
            Self::RedisTokens => "redis-tokens",
            Self::ValkeyKill => "valkey-kill",
            Self::ValkeyPause => "valkey-pause",
            Self::MysqlKill => "mysql-kill",
            Self::MysqlLocks => "mysql-locks",
            Self::MysqlTx => "mysql-tx",
            Self::PostgresKill => "postgres-kill",
            Self::PostgresLocks => "postgres-locks",
            Self::Corrupt => "corrupt",
        }
    }

    /// What it does, for `--help`.
    #[must_use]
    pub fn about(self) -> &'static str {
        match self {
            Self::Memory => "memory store; callers that go away; operations slower than the lease",
            Self::MemoryFull => "memory store at capacity (refuses new keys with Unavailable)",
            Self::MemoryRelease => {
                "memory store, CancelPolicy::Release, commit before each effect, 20 % of callers go away"
            }
            Self::RedisKill => "private redis-server without persistence, SIGKILLed and restarted",
            Self::RedisAof => {
                "private redis-server, AOF appendfsync always, SIGKILLed and restarted"
            }
            Self::RedisPause => {
                "private redis-server paused with SIGSTOP/SIGCONT, up to 1.5 leases"
            }
            Self::RedisRelease => {
                "redis-pause under CancelPolicy::Release, commit before each effect, 20 % of callers go away"
            }
            Self::RedisClients => {
                "private redis-server closing the store's connections (CLIENT KILL), busy or idle"
            }
            Self::RedisTokens => {
                "tokens as keys (consume_for), private redis-server: CLIENT PAUSE WRITE past the resends, CLIENT KILL"
            }
            Self::ValkeyKill => "redis-kill on a private valkey-server 8.1: finishes by SET IFEQ",
            Self::ValkeyPause => "redis-pause on a private valkey-server 8.1: finishes by SET IFEQ",
            Self::MysqlKill => {
                "private mariadbd: KILL QUERY / KILL CONNECTION while locks make queries wait"
            }
            Self::MysqlLocks => {
                "private mariadbd: row locks held on claimed rows past the lock wait timeout"
            }
            Self::MysqlTx => {
                "private mariadbd: transactional mode, injected rollbacks, killed connections"
            }
            Self::PostgresKill => {
                "shared PostgreSQL, own connections: pg_cancel_backend / pg_terminate_backend while locks make queries wait"
            }
            Self::PostgresLocks => {
                "shared PostgreSQL, own table: row locks held on claimed rows, up to two leases"
            }
            Self::Corrupt => "corrupt records planted in private Redis and MariaDB servers",
        }
    }

    /// The scenario named `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Runs the scenario and checks its history. A server that cannot be started is
    /// reported as a failed summary (never a skip).
    pub async fn run(self, mode: Mode, seed: u64) -> Summary {
        install_panic_counter();
        let panics_before = PANICS.load(Ordering::SeqCst);
        let started = Instant::now();
        let workload = mode.workload(seed);
        let result = match self {
            Self::Memory => scenarios::memory(&workload).await,
            Self::MemoryFull => scenarios::memory_full(&workload).await,
            Self::MemoryRelease => scenarios::memory(&scenarios::releasing(&workload)).await,
            Self::RedisKill => scenarios::redis_kill(&workload, Flavor::Redis, false).await,
            Self::RedisAof => scenarios::redis_kill(&workload, Flavor::Redis, true).await,
            Self::RedisPause => scenarios::redis_pause(&workload, Flavor::Redis).await,
            Self::RedisRelease => {
                scenarios::redis_pause(&scenarios::releasing(&workload), Flavor::Redis).await
            }
            Self::ValkeyKill => scenarios::redis_kill(&workload, Flavor::Valkey, false).await,
            Self::ValkeyPause => scenarios::redis_pause(&workload, Flavor::Valkey).await,
            Self::RedisClients => scenarios::redis_clients(&workload).await,
            Self::RedisTokens => tokens::redis_tokens(&workload).await,
            Self::MysqlKill => scenarios::mysql_kill(&workload).await,
            Self::MysqlLocks => scenarios::mysql_locks(&workload).await,
            Self::MysqlTx => scenarios::mysql_tx(&workload).await,
            Self::PostgresKill => postgres::postgres_kill(&workload).await,
            Self::PostgresLocks => postgres::postgres_locks(&workload).await,
            Self::Corrupt => scenarios::corrupt(seed).await,
        };
        let mut summary = match result {
            Ok(summary) => summary,
            Err(error) => Summary {
                setup_error: Some(error.to_string()),
                ..Summary::default()
            },
        };
        summary.scenario = self.name().to_owned();
        summary.panics += PANICS.load(Ordering::SeqCst) - panics_before;
        summary.elapsed = started.elapsed();
        summary
    }
}

/// Panics anywhere in the process, including tasks idem spawns itself.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn install_panic_counter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}
