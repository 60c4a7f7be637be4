//! The three stores every case runs on, each isolated from other tests.

use idem_memory::MemoryStore;
use idem_mysql::MySqlStore;
use idem_redis::RedisStore;

pub async fn memory() -> MemoryStore {
    MemoryStore::new()
}

/// A Redis store under a prefix of its own.
pub async fn redis() -> RedisStore {
    let url =
        std::env::var("IDEM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("idem-http-test:{}:", uuid::Uuid::new_v4().simple());
    RedisStore::builder()
        .prefix(prefix)
        .connect(&url)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "Redis at {url} did not answer ({error}). Start it with:\n    \
                 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" \
                 --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log\n\
                 (bash .ci/services redis) or point IDEM_REDIS_URL at a running server."
            )
        })
}

/// A MySQL store on this suite's own table; every case uses keys of its own, and rows
/// expire with the tests' short retention.
pub async fn mysql() -> MySqlStore {
    let url = std::env::var("IDEM_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let store = MySqlStore::builder()
        .table("idem_http_test")
        .connect(&url)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "MariaDB/MySQL at {url} did not answer ({error}). Start it with:\n    \
             mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld && start-stop-daemon \
             --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql\n\
             (bash .ci/services mysql) or point IDEM_MYSQL_URL at a running server."
            )
        });
    store.migrate().await.expect("migrate the test table");
    store
}
