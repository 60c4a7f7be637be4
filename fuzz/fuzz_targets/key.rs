//! Keys from clients: a key that keeps both parts exactly, or `InvalidInput`; two keys
//! encode alike only when they are the same key.
#![no_main]

use idem_core::{Error, Key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|parts: ((&str, &str), (&str, &str))| {
    let ((na, ia), (nb, ib)) = parts;
    let keys = [Key::new(na, ia), Key::new(nb, ib)];
    for (key, (namespace, id)) in keys.iter().zip([(na, ia), (nb, ib)]) {
        match key {
            Ok(key) => assert_eq!((key.namespace(), key.id()), (namespace, id)),
            Err(Error::InvalidInput(_)) => {}
            Err(other) => panic!("a key built to {other:?}"),
        }
    }
    if let [Ok(a), Ok(b)] = &keys {
        assert_eq!(a.encoded() == b.encoded(), (na, ia) == (nb, ib));
    }
});
