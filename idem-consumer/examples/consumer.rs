//! An idempotent RabbitMQ consumer: five orders are published, two of them twice (a
//! producer that retried after a lost confirm). Each order ships once; the duplicates are
//! acked without running.
//!
//! ```sh
//! cargo run --example consumer        # needs RabbitMQ on 127.0.0.1:5672 (guest/guest)
//! ```
//!
//! Start RabbitMQ with `bash .ci/services rabbitmq` (or `rabbitmq-server -detached &&
//! rabbitmqctl await_startup`), or point `IDEM_AMQP_URL` at one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_consumer::amqp::{self, lapin};
use idem_consumer::{ConsumeOptions, Consumer, Disposition, Message};
use idem_core::{Idempotency, Retryable};
use idem_memory::MemoryStore;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum ShipError {
    WarehouseDown,
}

impl Retryable for ShipError {
    fn is_retryable(&self) -> bool {
        true // requeued, tried again later
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("IDEM_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = match Connection::connect(&url, ConnectionProperties::default()).await {
        Ok(conn) => conn,
        Err(error) => {
            eprintln!(
                "RabbitMQ is not running at {url} ({error}).\n\
                 Start it with:\n    bash .ci/services rabbitmq\n\
                 or:\n    rabbitmq-server -detached && rabbitmqctl await_startup\n\
                 or set IDEM_AMQP_URL to a running broker."
            );
            std::process::exit(1);
        }
    };

    // A queue of our own, gone when the connection closes.
    let channel = conn.create_channel().await?;
    let queue = format!("idem-example-{}", uuid::Uuid::new_v4().simple());
    let temporary = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), temporary, FieldTable::default())
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // The producer sets each message's ID once, from the order: a retried publish
    // carries the same ID.
    let orders = [
        "order-1", "order-2", "order-3", "order-2", "order-4", "order-5", "order-4",
    ];
    for order in orders {
        let properties = BasicProperties::default().with_message_id(order.into());
        let body = format!("{{\"ship\":\"{order}\"}}");
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?
            .await?;
    }
    println!("published {} messages for 5 orders", orders.len());

    let consumer = Consumer::new(Idempotency::new(MemoryStore::new()), "shipping")?;
    let shipped = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let settled = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let (shipped, settled) = (Arc::clone(&shipped), Arc::clone(&settled));
        move |message: Message| {
            let (consumer, shipped, settled) =
                (consumer.clone(), Arc::clone(&shipped), Arc::clone(&settled));
            async move {
                let disposition = consumer
                    .handle_message(&message, || async {
                        // The business effect: runs once per order.
                        *shipped
                            .lock()
                            .expect("lock")
                            .entry(message.id().to_owned())
                            .or_default() += 1;
                        Ok::<_, ShipError>(format!("shipped {}", message.id()))
                    })
                    .await;
                println!("{:<8} -> {disposition}", message.id());
                if disposition.is_final() {
                    settled.add_permits(1);
                }
                disposition
            }
        }
    };

    // Stop once every message is settled (a service would stop on SIGTERM instead).
    let all_settled = {
        let settled = Arc::clone(&settled);
        let count = u32::try_from(orders.len())?;
        async move {
            let wait = settled.acquire_many(count);
            let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
        }
    };
    let summary = amqp::consume(
        &channel,
        &queue,
        ConsumeOptions::default().concurrency(4),
        all_settled,
        handler,
    )
    .await?;
    conn.close(200, "done".into()).await?;

    println!(
        "\nacked {} messages, requeued {}",
        summary.acked, summary.requeued
    );
    for (order, times) in shipped.lock().expect("lock").iter() {
        println!("{order}: shipped {times} time(s)");
    }
    let _ = Disposition::label; // every disposition is in the crate docs' table
    Ok(())
}
