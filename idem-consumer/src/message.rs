//! A message as the core sees it, and where its ID comes from.

use bytes::Bytes;
use idem_core::Fingerprint;

/// Where a message's ID comes from. The ID is the idempotency key: two deliveries with the
/// same ID take effect once.
///
/// The producer must set it (a business ID, an outbox row's ID, a UUID made once per
/// message); an ID made fresh for each *send* defeats deduplication of duplicate sends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdSource {
    /// AMQP's `message_id` property (RabbitMQ). The lapin adapter's default.
    AmqpMessageId,
    /// A header of this name: an AMQP header table entry (a string or bytes), or a NATS
    /// header.
    Header(String),
    /// The SHA-256 of the body, as lowercase hex: **explicit opt-in**. Two messages with the
    /// same bytes are then one message, on purpose or not, and a message with a new body is
    /// always new.
    BodyDigest,
}

impl IdSource {
    /// JetStream's own deduplication header, `Nats-Msg-Id`: the NATS adapter's default.
    #[must_use]
    pub fn nats_msg_id() -> Self {
        Self::Header(NATS_MSG_ID.to_owned())
    }

    /// A header of this name.
    pub fn header(name: impl Into<String>) -> Self {
        Self::Header(name.into())
    }

    /// Where this source looks, for error messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::AmqpMessageId => "the AMQP message_id property".to_owned(),
            Self::Header(name) => format!("the header {name:?}"),
            Self::BodyDigest => "the body digest".to_owned(),
        }
    }
}

/// The name of JetStream's deduplication header.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// A message carried no ID where its [`IdSource`] looks (or an empty one). Adapters
/// dead-letter such a message ([`DeadLetterReason::MissingId`](crate::DeadLetterReason))
/// and never run it; where it is kept depends on the broker's dead-letter route (see
/// [`Disposition::DeadLetter`](crate::Disposition::DeadLetter)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the message has no ID in {looked_in}; it is dead-lettered, not run")]
#[non_exhaustive]
pub struct MissingId {
    /// Where the adapter looked.
    pub looked_in: String,
}

impl MissingId {
    /// The error for `source`.
    #[must_use]
    pub fn new(source: &IdSource) -> Self {
        Self {
            looked_in: source.describe(),
        }
    }
}

/// The hex SHA-256 digest of a body, the ID under [`IdSource::BodyDigest`].
#[cfg(any(feature = "lapin", feature = "nats"))]
pub(crate) fn body_digest(body: &[u8]) -> String {
    Fingerprint::from_bytes(body).to_string()
}

/// One delivery of a message, broker-neutral: what the adapters hand the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    id: String,
    body: Bytes,
    deliveries: Option<u32>,
}

impl Message {
    /// A message with its ID and body; the delivery count is unknown.
    pub fn new(id: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            id: id.into(),
            body: body.into(),
            deliveries: None,
        }
    }

    /// Sets how many times the broker has delivered it, this time included (JetStream's
    /// `delivered`; on RabbitMQ a quorum queue's `x-delivery-count` + 1).
    #[must_use]
    pub fn with_deliveries(mut self, deliveries: Option<u32>) -> Self {
        self.deliveries = deliveries;
        self
    }

    /// The ID: the idempotency key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// How many times the broker has delivered it, when the broker says.
    pub fn deliveries(&self) -> Option<u32> {
        self.deliveries
    }

    /// The body's fingerprint: a later message with the same ID and another body is caught.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_bytes(&self.body)
    }
}

/// What the core needs of one delivery: its ID, its content's fingerprint, and how often
/// the broker has delivered it (when it says).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery<'a> {
    pub(crate) id: &'a str,
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) deliveries: Option<u32>,
}

impl<'a> From<&'a Message> for Delivery<'a> {
    fn from(message: &'a Message) -> Self {
        Self {
            id: message.id(),
            fingerprint: Some(message.fingerprint()),
            deliveries: message.deliveries(),
        }
    }
}
