//! Token text from a client: a token or `InvalidInput`, never a panic.
#![no_main]

use idem_core::{Error, Token, UuidV7Tokens};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    match Token::parse(raw, &UuidV7Tokens) {
        Ok(token) => assert_eq!(token.as_str(), raw),
        Err(Error::InvalidInput(_)) => {}
        Err(other) => panic!("a token parsed to {other:?}"),
    }
});
