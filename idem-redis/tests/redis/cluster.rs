//! The store on a real Redis Cluster of the test's own (three primaries): every call
//! touches one hash slot, so keys spread over all nodes and every rule still holds.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{RedisServer, acquire, free_port, ttl_ms, unique_prefix};
use idem_core::{Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key};
use idem_redis::RedisStore;
use idem_redis::redis::{self, cluster::ClusterClient};

/// Three cluster nodes and their working directory, all gone when dropped.
struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("idem-redis-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for i in 0..3 {
            // A fresh bus port for each try, as the node's own port.
            let args = || {
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-config-file",
                    &format!("nodes-{i}.conf"),
                    "--dir",
                    &cluster.dir.to_string_lossy(),
                ]
                .iter()
                .map(|a| (*a).to_owned())
                .collect()
            };
            let node = RedisServer::start_with_fresh(args);
            cluster.nodes.push(node);
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_until_ok();
        cluster
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn wait_until_ok(&self) {
        let started = Instant::now();
        for url in self.urls() {
            let client = redis::Client::open(url).expect("a valid URL");
            loop {
                let info: String = client
                    .get_connection()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the cluster did not form"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn key_counts(&self) -> Vec<u64> {
        self.urls()
            .into_iter()
            .map(|url| {
                let mut c = redis::Client::open(url)
                    .and_then(|client| client.get_connection())
                    .expect("a node");
                redis::cmd("DBSIZE").query(&mut c).expect("DBSIZE")
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear(); // kills them
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_works_on_redis_cluster() {
    let cluster = RedisCluster::start();
    let client = ClusterClient::new(cluster.urls()).expect("cluster client");
    let connection = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    let store = RedisStore::builder()
        .prefix(unique_prefix())
        .build(connection)
        .expect("store");
    store.load_scripts().await.expect("load scripts");

    let ids: Vec<String> = (0..90)
        .map(|i| match i % 3 {
            0 => format!("order-{i}"),
            1 => format!("{{order}}-{i}"),
            _ => format!("}}{i}{{"),
        })
        .collect();
    for id in &ids {
        let key = Key::new("cluster", id.as_str()).expect("valid");
        let request = ClaimRequest::new(key.clone(), ttl_ms(30_000));
        let lease = acquire(&store, &request).await;
        assert_eq!(lease.fencing, 1, "{id} shared a record");
        let other = ClaimRequest::new(key.clone(), ttl_ms(30_000));
        assert!(matches!(
            store.claim(&other).await,
            Ok(Claim::InProgress { .. })
        ));
        store.renew(&lease, ttl_ms(30_000)).await.expect("renew");
        let payload = Bytes::from(id.clone().into_bytes());
        store
            .complete(&lease, payload.clone(), ttl_ms(30_000))
            .await
            .expect("complete");
        assert!(matches!(store.release(&lease).await, Err(Error::LeaseLost)));
        assert_eq!(
            store.claim(&other).await.expect("replay"),
            Claim::Completed(payload)
        );
        assert!(store.read(&key).await.expect("read").is_some());
    }
    // The keys are spread over every primary, not piled in one slot.
    let counts = cluster.key_counts();
    assert!(counts.iter().all(|&n| n > 0), "keys per node: {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), ids.len() as u64);
    for id in &ids {
        let key = Key::new("cluster", id.as_str()).expect("valid");
        assert!(store.remove(&key).await.expect("remove"));
    }
}

/// How many scripts the node at `url` holds (`INFO memory`'s `number_of_cached_scripts`).
fn cached_scripts(url: &str) -> u64 {
    let mut c = redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .expect("a node");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut c)
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("number_of_cached_scripts:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO memory counts the cached scripts")
}

/// `load_scripts` promises that even the first call of each kind is one round trip: on a
/// cluster, every primary must hold the scripts, since a key may live on any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_scripts_loads_them_on_every_cluster_node() {
    let cluster = RedisCluster::start();
    let client = ClusterClient::new(cluster.urls()).expect("cluster client");
    let connection = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    let store = RedisStore::builder()
        .prefix(unique_prefix())
        .build(connection.clone())
        .expect("store");
    store.load_scripts().await.expect("load scripts");
    let tokens = idem_redis::RedisTokenStore::builder()
        .prefix(unique_prefix())
        .build(connection)
        .expect("token store");
    tokens.load_scripts().await.expect("load the token script");

    let per_node: Vec<u64> = cluster
        .urls()
        .iter()
        .map(|url| cached_scripts(url))
        .collect();
    assert!(
        per_node.iter().all(|&n| n == 7),
        "scripts per node (6 of the store, 1 of the tokens): {per_node:?}"
    );
}
