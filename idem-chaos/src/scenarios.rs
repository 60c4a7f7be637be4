//! The scenarios: a store, a load, and the faults injected while the load runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idem::attempt::CancelPolicy;
use idem::mysql::MySqlStore;
use idem::mysql::sqlx::{self, Connection, MySqlConnection, Row};
use idem::redis::RedisStore;
use idem::{
    Claim, ClaimRequest, Error, Idempotency, IdempotencyStore, MemoryStore, OwnerToken, Ttl,
};

use crate::history::{Answer, ErrorKind, Fault, History, RunId};
use crate::run::{Outcome, executor, pause_ms, run_name, verdict, with_faults};
use crate::servers::{Flavor, MariaDb, RedisServer, StartError};
use crate::sql::{self, SqlFaults};
use crate::workload::{self, Workload};

// ---- memory ----

pub(crate) async fn memory(workload: &Workload) -> Outcome {
    let history = Arc::new(History::new(workload.lease));
    let idem = executor(MemoryStore::new(), workload)?;
    workload::drive(idem, workload, &run_name(), &history).await;
    let mut summary = history.check("memory");
    summary.flag_kinds(&[
        ErrorKind::Unavailable,
        ErrorKind::Backend,
        ErrorKind::Corrupt,
    ]);
    Ok(summary)
}

pub(crate) async fn memory_full(workload: &Workload) -> Outcome {
    let history = Arc::new(History::new(workload.lease));
    // Room for a few dozen records: most new keys are refused, held ones keep working.
    let idem = executor(MemoryStore::with_capacity(8 * 1024), workload)?;
    let workload = Workload {
        deadline: Duration::from_millis(150),
        ..workload.clone()
    };
    workload::drive(idem, &workload, &run_name(), &history).await;
    let mut summary = history.check("memory-full");
    summary.flag_kinds(&[ErrorKind::Backend, ErrorKind::Corrupt]);
    Ok(summary)
}

/// `workload` under [`CancelPolicy::Release`]: each operation marks its commit before its
/// effect and goes on after it, and one caller in five goes away at a random moment, before
/// or after the mark.
pub(crate) fn releasing(workload: &Workload) -> Workload {
    Workload {
        cancel_policy: CancelPolicy::Release,
        cancel_percent: 20,
        ..workload.clone()
    }
}

// ---- Redis ----

/// A store on a private server that gives up quickly while the server is away.
pub(crate) async fn redis_store(server: &RedisServer) -> Result<RedisStore, StartError> {
    Ok(RedisStore::builder()
        .prefix("chaos:")
        .connection_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(500))
        .connect(&server.url())
        .await?)
}

/// Waits until `store`, the callers' own client, answers again, and records the outage of
/// `what` from `from` until then: after a restart that includes its reconnecting, which the
/// server's first answer does not.
async fn outage_until_answered(
    history: &History,
    store: &RedisStore,
    stop: &AtomicBool,
    what: &'static str,
    from: Instant,
) {
    if let Ok(probe) = workload::key("probe", 0) {
        while store.read(&probe).await.is_err() && !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    history.fault(Fault::Outage {
        what,
        key: None,
        from,
        to: Instant::now(),
    });
}

/// A private server started with `args`, the executor on a store of it, a second client of
/// the store to probe it with, and the history.
async fn redis_ground(
    flavor: Flavor,
    args: &[&str],
    workload: &Workload,
) -> Result<
    (
        RedisServer,
        Idempotency<RedisStore>,
        RedisStore,
        Arc<History>,
    ),
    StartError,
> {
    let server = RedisServer::start_flavor(flavor, args)?;
    let store = redis_store(&server).await?;
    if flavor == Flavor::Valkey && !store.finishes_by_conditional_set() {
        // The scenario would test the finish script and say it tested the other way.
        return Err("the Valkey server does not offer SET ... IFEQ".into());
    }
    let probe = store.clone();
    let idem = executor(store, workload)?;
    Ok((server, idem, probe, Arc::new(History::new(workload.lease))))
}

pub(crate) async fn redis_kill(workload: &Workload, flavor: Flavor, aof: bool) -> Outcome {
    let args: &[&str] = if aof {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    let (server, idem, probe, history) = redis_ground(flavor, args, workload).await?;
    let injector_history = Arc::clone(&history);
    let seed = workload.seed;
    with_faults(idem, workload, &history, move |stop| async move {
        let mut server = server;
        let history = injector_history;
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        while !stop.load(Ordering::SeqCst) {
            pause_ms(&mut rng, 300..900).await;
            let from = Instant::now();
            tokio::task::block_in_place(|| server.kill());
            if !aof {
                // Timed once the process is gone (`kill` waits for it), not as the kill
                // was sent: a write that reached the server in between is lost too.
                history.fault(Fault::DataLoss { at: Instant::now() });
            }
            pause_ms(&mut rng, 10..600).await;
            if let Err(error) = tokio::task::block_in_place(|| server.restart()) {
                eprintln!("redis-server did not come back: {error}");
                return;
            }
            let what = if aof { "kill-aof" } else { "kill" };
            outage_until_answered(&history, &probe, &stop, what, from).await;
        }
    })
    .await;
    Ok(verdict(&history))
}

pub(crate) async fn redis_pause(workload: &Workload, flavor: Flavor) -> Outcome {
    let (server, idem, probe, history) =
        redis_ground(flavor, &["--appendonly", "no"], workload).await?;
    let injector_history = Arc::clone(&history);
    let (seed, lease) = (workload.seed, workload.lease);
    with_faults(idem, workload, &history, move |stop| async move {
        let history = injector_history;
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x9a05e);
        let longest = u64::try_from(lease.as_millis() * 3 / 2).unwrap_or(1500);
        while !stop.load(Ordering::SeqCst) {
            pause_ms(&mut rng, 300..900).await;
            let from = Instant::now();
            server.pause();
            pause_ms(&mut rng, 20..longest).await;
            server.resume();
            outage_until_answered(&history, &probe, &stop, "pause", from).await;
        }
    })
    .await;
    Ok(verdict(&history))
}

/// The server closes the store's connections now and then (`CLIENT KILL`), whether a call
/// is on them or they sit idle: each is `Unavailable` at worst, and nothing runs twice.
pub(crate) async fn redis_clients(workload: &Workload) -> Outcome {
    let (server, idem, _probe, history) =
        redis_ground(Flavor::Redis, &["--appendonly", "no"], workload).await?;
    let mut admin = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;
    let injector_history = Arc::clone(&history);
    let seed = workload.seed;
    with_faults(idem, workload, &history, move |stop| async move {
        let _server = server;
        let history = injector_history;
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xc11e);
        while !stop.load(Ordering::SeqCst) {
            pause_ms(&mut rng, 50..400).await;
            // Every connection but the injector's own.
            let killed: Result<u64, _> = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                .query_async(&mut admin)
                .await;
            match killed {
                Ok(n) if n > 0 => history.fault(Fault::Instant {
                    what: "client-kill",
                }),
                Ok(_) => {}
                Err(e) => eprintln!("client kill: {e}"),
            }
        }
    })
    .await;
    Ok(verdict(&history))
}

// ---- MariaDB ----

/// A migrated store on a fresh table of a private server.
async fn mysql_store(server: &MariaDb, table: &str) -> Result<MySqlStore, StartError> {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(24)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&server.url())
        .await?;
    let store = MySqlStore::builder().table(table).build(pool)?;
    store.migrate().await?;
    Ok(store)
}

/// A private MariaDB server and the campaign's table on it; the server goes when this does.
pub(crate) struct Private {
    server: MariaDb,
    table: String,
}

/// A private server with a migrated store on a fresh table of it.
async fn private() -> Result<(MySqlStore, Private), StartError> {
    let server = MariaDb::start().await?;
    let table = format!("chaos_{}", run_name());
    let store = mysql_store(&server, &table).await?;
    Ok((store, Private { server, table }))
}

impl SqlFaults for Private {
    type Admin = MySqlConnection;
    const SALTS: [u64; 3] = [0x10c5, 0x4111, 0x10c6];

    /// To the `mysql` database, so the store's connections are the ones in `test`.
    async fn admin(&self) -> Result<MySqlConnection, StartError> {
        let url = self.server.url().replace("/test", "/mysql");
        Ok(MySqlConnection::connect(&url).await?)
    }

    async fn lock_claimed(
        &self,
        admin: &mut MySqlConnection,
        rows: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::raw_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; BEGIN")
            .execute(&mut *admin)
            .await?;
        let query = format!(
            "SELECT CAST(idem_key AS CHAR) FROM `test`.`{}` WHERE state = 1 LIMIT {rows} FOR UPDATE SKIP LOCKED",
            self.table
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(query))
            .fetch_all(&mut *admin)
            .await
    }

    async fn unlock(admin: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *admin).await?;
        Ok(())
    }

    /// `KILL CONNECTION` of one of the store's connections, or `KILL QUERY` of one that
    /// runs a query.
    async fn kill_one(
        &self,
        admin: &mut MySqlConnection,
        rng: &mut fastrand::Rng,
    ) -> Result<Option<&'static str>, sqlx::Error> {
        let busy: Vec<(u64, bool)> = sqlx::query(
            "SELECT CAST(ID AS UNSIGNED), CAST(INFO IS NOT NULL AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE DB = 'test' AND ID <> CONNECTION_ID()",
        )
        .fetch_all(&mut *admin)
        .await?
        .iter()
        .filter_map(|row| {
            Some((
                row.try_get::<u64, _>(0).ok()?,
                row.try_get::<i64, _>(1).ok()? != 0,
            ))
        })
        .collect();
        let running: Vec<u64> = busy.iter().filter(|(_, q)| *q).map(|(id, _)| *id).collect();
        let (statement, what) = if rng.bool() {
            let Some((id, _)) = busy.get(rng.usize(0..busy.len().max(1))) else {
                return Ok(None);
            };
            (format!("KILL CONNECTION {id}"), "kill-connection")
        } else {
            let Some(id) = running.get(rng.usize(0..running.len().max(1))) else {
                return Ok(None);
            };
            (format!("KILL QUERY {id}"), "kill-query")
        };
        // The target may have finished meanwhile ("unknown thread id"): that is no fault.
        Ok(sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut *admin)
            .await
            .ok()
            .map(|_| what))
    }
}

pub(crate) async fn mysql_kill(workload: &Workload) -> Outcome {
    let (store, private) = private().await?;
    sql::kills(store, private, workload).await
}

pub(crate) async fn mysql_locks(workload: &Workload) -> Outcome {
    let (store, private) = private().await?;
    sql::locks(store, private, workload).await
}

/// The transactional mode: each request claims, writes its business row and completes in
/// one transaction of its own; some are rolled back on purpose, and connections are killed.
/// The business table is the ledger: a key with two committed rows ran twice.
pub(crate) async fn mysql_tx(workload: &Workload) -> Outcome {
    let (store, private) = private().await?;
    let (store, private) = (Arc::new(store), Arc::new(private));
    let run = run_name();
    let business = format!("chaos_effects_{run}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE `{business}` (seq BIGINT AUTO_INCREMENT PRIMARY KEY, \
         k INT UNSIGNED NOT NULL, request BIGINT UNSIGNED NOT NULL, fencing BIGINT UNSIGNED NOT NULL)"
    )))
    .execute(store.pool())
    .await?;
    let history = Arc::new(History::new(workload.lease));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut killer = private.admin().await?;
    let kills = Arc::clone(&history);
    let stop_kills = Arc::clone(&stop);
    let seed = workload.seed;
    let injector_faults = Arc::clone(&private);
    let injector = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x7a);
        while !stop_kills.load(Ordering::SeqCst) {
            pause_ms(&mut rng, 50..300).await;
            if let Ok(Some(what)) = injector_faults.kill_one(&mut killer, &mut rng).await {
                kills.fault(Fault::Instant { what });
            }
        }
    });
    let queue: Vec<(u32, u64)> = (0..workload.keys)
        .flat_map(|k| (0..u64::from(workload.requests_per_key)).map(move |r| (k, r)))
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(queue.into_iter()));
    let mut callers = Vec::new();
    for worker in 0..workload.concurrency {
        let (store, history, queue) =
            (Arc::clone(&store), Arc::clone(&history), Arc::clone(&queue));
        let (business, workload) = (business.clone(), workload.clone());
        let run = run.clone();
        callers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(workload.seed ^ worker as u64);
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next();
                let Some((k, r)) = next else { return };
                let request = u64::from(k) << 8 | r;
                let deadline = Instant::now() + workload.deadline;
                let mut served = false;
                while !served && Instant::now() < deadline {
                    served = tx_attempt(
                        &store, &business, &run, k, request, &workload, &history, &mut rng,
                    )
                    .await;
                    if !served {
                        pause_ms(&mut rng, 20..100).await;
                    }
                }
                history.request_done(served);
            }
        }));
    }
    for caller in callers {
        if caller.await.is_err() {
            history.panicked();
        }
    }
    stop.store(true, Ordering::SeqCst);
    if injector.await.is_err() {
        history.panicked();
    }
    // The committed effects, in commit order.
    let rows: Vec<(u32, u64, u64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT k, request, fencing FROM `{business}` ORDER BY seq"
    )))
    .fetch_all(store.pool())
    .await?;
    for (key, request, fencing) in rows {
        history.ran(
            RunId {
                key,
                request,
                fencing,
            },
            started,
            started,
        );
    }
    let summary = verdict(&history);
    drop(private);
    Ok(summary)
}

/// One transactional attempt; `true` when the request was served (committed or replayed).
#[allow(clippy::too_many_arguments)]
async fn tx_attempt(
    store: &MySqlStore,
    business: &str,
    run: &str,
    k: u32,
    request: u64,
    workload: &Workload,
    history: &History,
    rng: &mut fastrand::Rng,
) -> bool {
    let result = tx_once(store, business, run, k, request, workload, rng).await;
    let answer = match result {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            history.fault(Fault::Instant { what: "rollback" });
            return false;
        }
        Err(error) => {
            let kind = ErrorKind::of(&error);
            if matches!(
                kind,
                ErrorKind::Backend | ErrorKind::Corrupt | ErrorKind::Other
            ) {
                history.note(format!("{kind:?}: {error}"));
            }
            Answer::Error(kind)
        }
    };
    history.answered(k, request, answer);
    matches!(answer, Answer::Executed(_) | Answer::Replayed(_))
}

/// `Ok(None)`: rolled back on purpose.
async fn tx_once(
    store: &MySqlStore,
    business: &str,
    run: &str,
    k: u32,
    request: u64,
    workload: &Workload,
    rng: &mut fastrand::Rng,
) -> Result<Option<Answer>, Error> {
    let unavailable = Error::unavailable;
    let mut tx = store.pool().begin().await.map_err(unavailable)?;
    let key = workload::key(run, k)?;
    let lease_ttl = Ttl::new(workload.lease)?;
    let claim = ClaimRequest::new(key, lease_ttl).with_owner(OwnerToken::random());
    let lease = match store.claim_in(&mut tx, &claim).await? {
        Claim::Acquired(lease) => lease,
        Claim::Completed(response) | Claim::Failed(response) => {
            let id: RunId = serde_json::from_slice(&response)
                .map_err(|e| Error::corrupt_with("not a run id", e))?;
            return Ok(Some(Answer::Replayed(id)));
        }
        Claim::InProgress { .. } => return Ok(Some(Answer::Error(ErrorKind::InProgress))),
    };
    let id = RunId {
        key: k,
        request,
        fencing: lease.fencing,
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO `{business}` (k, request, fencing) VALUES (?, ?, ?)"
    )))
    .bind(k)
    .bind(request)
    .bind(lease.fencing)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    pause_ms(rng, 0..20).await;
    if rng.u32(0..100) < 15 {
        tx.rollback().await.map_err(unavailable)?;
        return Ok(None);
    }
    let payload = serde_json::to_vec(&id).map_err(|e| Error::Serialization {
        source: Box::new(e),
    })?;
    let retention = Ttl::from_secs(600)?;
    store
        .complete_in(&mut tx, &lease, payload.into(), retention)
        .await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(Some(Answer::Executed(id)))
}

// ---- corrupt records ----

/// Records that are not what idem writes, planted under keys that are then executed: each
/// must give `CorruptRecord` (never a panic, never another kind, never a run).
pub(crate) async fn corrupt(seed: u64) -> Outcome {
    let history = Arc::new(History::new(Duration::from_secs(1)));
    let run = run_name();
    let mut next = 0;
    let mut notes = Vec::new();
    // Redis: bytes that do not follow the record layout.
    let redis = RedisServer::start(&["--appendonly", "no"])?;
    let store = redis_store(&redis).await?;
    let client = redis::Client::open(redis.url())?;
    let mut raw = client.get_multiplexed_async_connection().await?;
    let mut rng = fastrand::Rng::with_seed(seed);
    for value in redis_garbage(&mut rng) {
        let key = workload::key(&run, next)?;
        let _: () = redis::cmd("SET")
            .arg(store.redis_key(&key))
            .arg(&value)
            .query_async(&mut raw)
            .await?;
        if let Some(note) = execute_once(&store, next, &run, &history).await? {
            notes.push(format!("redis value {value:02x?}: {note}"));
        }
        next += 1;
    }
    // A value of another Redis type under a managed key.
    let key = workload::key(&run, next)?;
    let _: () = redis::cmd("HSET")
        .arg(store.redis_key(&key))
        .arg("f")
        .arg("v")
        .query_async(&mut raw)
        .await?;
    if let Some(note) = execute_once(&store, next, &run, &history).await? {
        notes.push(format!("redis hash under the key: {note}"));
    }
    next += 1;
    // MariaDB: rows no store writes.
    let (store, private) = private().await?;
    let table = &private.table;
    for row in MYSQL_GARBAGE {
        let key = workload::key(&run, next)?;
        let insert = format!(
            "INSERT INTO `{table}` (namespace, idem_key, state, fingerprint, owner, fencing, lease_until, expires_at, payload) \
             VALUES (?, ?, {row})"
        );
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(key.namespace().as_bytes())
            .bind(key.id().as_bytes())
            .execute(store.pool())
            .await?;
        if let Some(note) = execute_once(&store, next, &run, &history).await? {
            notes.push(format!("mysql row ({row}): {note}"));
        }
        next += 1;
    }
    let mut summary = history.check("");
    summary.flag_kinds(&[
        ErrorKind::Backend,
        ErrorKind::Unavailable,
        ErrorKind::Other,
        ErrorKind::Serialization,
    ]);
    summary.requests = next as usize;
    summary.examples.extend(notes);
    Ok(summary)
}

/// One call of the executor on a planted key, recorded: a run on a corrupt record counts
/// as a run, and its answer as the error kind it got.
async fn execute_once<S: IdempotencyStore>(
    store: &S,
    n: u32,
    run: &str,
    history: &History,
) -> Result<Option<String>, Error> {
    let key = workload::key(run, n)?;
    let lease = store
        .claim(&ClaimRequest::new(key.clone(), Ttl::from_secs(1)?))
        .await;
    let mut note = None;
    match lease {
        Ok(Claim::Acquired(lease)) => {
            note = Some(format!("claim took it over at fencing {}", lease.fencing));
            // The store took over what it found: a run, and the record it replaced is gone.
            let id = RunId {
                key: n,
                request: 0,
                fencing: lease.fencing,
            };
            let now = Instant::now();
            history.ran(id, now, now);
            let _ = store.release(&lease).await;
        }
        Ok(_) => {}
        Err(error) => {
            let kind = ErrorKind::of(&error);
            if kind != ErrorKind::Corrupt {
                note = Some(format!("claim: {error}"));
            }
            history.answered(n, 0, Answer::Error(kind));
        }
    }
    let read = store.read(&key).await;
    if let Err(error) = &read {
        let kind = ErrorKind::of(error);
        if kind != ErrorKind::Corrupt {
            note = Some(format!("read: {error}"));
        }
        history.answered(n, 0, Answer::Error(kind));
    }
    Ok(note)
}

/// Values that do not follow Redis record layout v2 (`version 2 | phase | fencing u64 BE |
/// fingerprint flag [32 bytes] | ...`).
fn redis_garbage(rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    let header = |version: u8, phase: u8, fencing: u64| {
        let mut out = vec![version, phase];
        out.extend_from_slice(&fencing.to_be_bytes());
        out
    };
    let with = |mut head: Vec<u8>, tail: &[u8]| {
        head.extend_from_slice(tail);
        head
    };
    let mut values = vec![
        Vec::new(),
        vec![2],
        vec![2, 3, 0, 0],
        header(1, 3, 1),
        header(9, 3, 1),
        header(2, 0, 1),
        header(2, 7, 1),
        header(2, 3, 0),
        header(2, 3, u64::MAX),
        header(2, 3, 1),
        with(header(2, 3, 1), &[5]),
        with(header(2, 3, 1), &[1, 0xaa, 0xbb]),
        with(header(2, 4, 1), &[1; 20]),
        header(2, 1, 1),
        with(header(2, 1, 1), &[0, 1, 2, 3]),
        with(header(2, 1, 1), &[7; 40]),
        header(2, 2, 1),
        with(header(2, 2, 3), &[2; 3]),
        b"not a record at all".to_vec(),
    ];
    for _ in 0..8 {
        let len = rng.usize(0..80);
        let mut value: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if let Some(first) = value.first_mut() {
            *first = 2;
        }
        values.push(value);
    }
    values
}

/// `state, fingerprint, owner, fencing, lease_until, expires_at, payload` of rows no store
/// writes (the statement binds namespace and key first).
const MYSQL_GARBAGE: &[&str] = &[
    // Unknown states.
    "0, NULL, REPEAT('a', 16), 1, NULL, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, NULL",
    "9, NULL, REPEAT('a', 16), 1, NULL, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, 'x'",
    // Finished without a payload.
    "3, NULL, REPEAT('a', 16), 1, NULL, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, NULL",
    "4, NULL, REPEAT('a', 16), 1, NULL, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, NULL",
    // Claimed without a lease end.
    "1, NULL, REPEAT('a', 16), 1, NULL, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, NULL",
    // Fencing number zero.
    "1, NULL, REPEAT('a', 16), 0, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, UTC_TIMESTAMP(6) + INTERVAL 2 HOUR, NULL",
    // A lapsed claim whose fencing number cannot grow in a signed BIGINT (2^63 - 1).
    "1, NULL, REPEAT('a', 16), 9223372036854775807, UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, NULL",
    // A fencing number past i64 (2^64 - 1), lapsed.
    "1, NULL, REPEAT('a', 16), 18446744073709551615, UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, NULL",
    // A released row at the top of the range.
    "2, NULL, REPEAT('a', 16), 18446744073709551615, NULL, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, NULL",
    // A completed row whose lease end is after its expiry.
    "3, NULL, REPEAT('a', 16), 1, UTC_TIMESTAMP(6) + INTERVAL 9 HOUR, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, 'ok'",
];
