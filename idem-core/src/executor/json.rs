//! The executor's JSON writer: the very bytes `serde_json::to_vec` writes, cheaper.
//!
//! `serde_json` looks at every byte of every string, one at a time, for the few that JSON
//! escapes (quote, backslash, control characters); on a typical outcome, a few hundred bytes
//! of text, that pass cost more than the rest of the encoding. This writer checks a string
//! in one pass the compiler vectorizes and copies it as it is when nothing in it needs
//! escaping, which is nearly always. Every value it writes is `serde_json`'s own output for
//! the same value, byte for byte (stored outcomes stay what they were, and are read back by
//! `serde_json` as before):
//!
//! - strings that need escaping, numbers, booleans and bytes are written by `serde_json`
//!   itself, one value at a time; map keys that are numbers, booleans or characters are
//!   quoted as `serde_json` quotes them;
//! - what it does not handle (map keys `serde_json` refuses; `serde_json`'s own raw values
//!   and numbers) and every error end the attempt, and `serde_json` encodes the whole value
//!   instead, errors included.
//!
//! One departure: a NaN or infinite float is an error, where `serde_json` writes `null`, which
//! reads back as another value (`Some(f64::NAN)` as `None`) or not at all. The executor then
//! stores an "unserializable" marker, and repeats get a serialization error instead of a value
//! that never ran. (A value the writer hands to `serde_json` whole, one holding a raw value,
//! is not checked.)
//!
//! A value nested deeper than `serde_json` reads back (more than [`MAX_DEPTH`] arrays and
//! objects in one another) is an error too, for the same reason: a repeat would find it
//! unreadable.
//!
//! A `Some` of a value written as `null` (`Some(None)`, `Some(())`) is written as `null` too,
//! which a derived `Deserialize` reads back as `None`, another value, though a hand-written
//! one may read it as the `Some`. So the writer counts them
//! ([`encoded_counted`]), and the executor reads such an outcome back before storing it.

use std::cell::{Cell, RefCell};

use serde::Serialize;
use serde::ser::{self, Serializer};

/// Hands the JSON of `value`, exactly as [`serde_json::to_vec`] writes it, to `take` (which
/// copies what it keeps).
///
/// The JSON is written into a buffer this thread keeps between calls: the caller copies it
/// into an allocation of its exact size, where a `Vec` handed over would cost a second
/// allocation to become `Bytes` (its capacity is not its length).
///
/// # Errors
///
/// As [`serde_json::to_vec`].
pub(crate) fn encoded<T: Serialize + ?Sized, R>(
    value: &T,
    take: impl FnOnce(&[u8]) -> R,
) -> serde_json::Result<R> {
    encoded_counted(value, take).map(|(taken, _)| taken)
}

/// As [`encoded`], and how many `Some`s of a value written as `null` the JSON holds (each
/// written as a bare `null`; none are counted in a value handed to `serde_json` whole).
///
/// # Errors
///
/// As [`serde_json::to_vec`].
pub(crate) fn encoded_counted<T: Serialize + ?Sized, R>(
    value: &T,
    take: impl FnOnce(&[u8]) -> R,
) -> serde_json::Result<(R, usize)> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let taken = write(value, &mut buffer).map(|nulls| (take(&buffer), nulls));
            if buffer.capacity() > SCRATCH_KEPT {
                *buffer = Vec::new(); // a large outcome's buffer is not kept
            }
            taken
        }
        // Already in use on this thread: a `Serialize` impl that encodes an outcome itself.
        Err(_) => {
            let mut buffer = Vec::new();
            write(value, &mut buffer).map(|nulls| (take(&buffer), nulls))
        }
    })
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The `Some`s written as `null` by the encoding under way on this thread.
    static SOME_NULLS: Cell<usize> = const { Cell::new(0) };
}

/// The largest buffer a thread keeps for the next outcome.
const SCRATCH_KEPT: usize = 64 * 1024;

/// Writes the JSON of `value` to the empty `out`; how many `Some`s it wrote as `null`.
fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> serde_json::Result<usize> {
    // Counted from zero, and the count of an encoding this one runs inside kept for it.
    let outer = SOME_NULLS.replace(0);
    let written = value.serialize(Writer {
        out: &mut *out,
        depth: 0,
    });
    let some_nulls = SOME_NULLS.replace(outer);
    match written {
        Ok(()) => Ok(some_nulls),
        // A shape left to serde_json, or an error, which serde_json then reports in its own
        // words. Serializing twice is harmless: `Serialize` takes `&self`.
        Err(Stop::Unsupported) => {
            out.clear();
            serde_json::to_writer(out, value).map(|()| 0)
        }
        Err(Stop::NonFinite) => Err(ser::Error::custom(NON_FINITE)),
        Err(Stop::TooDeep) => Err(ser::Error::custom(TOO_DEEP)),
    }
}

/// Why the fast writer stopped.
#[derive(Debug)]
enum Stop {
    /// It gave up: `serde_json` encodes the value instead.
    Unsupported,
    /// A NaN or infinite float: `serde_json` would write `null`, which reads back as another
    /// value (`None`) or not at all, so the value is refused.
    NonFinite,
    /// More arrays and objects in one another than `serde_json` reads back.
    TooDeep,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported => f.write_str("left to serde_json"),
            Self::NonFinite => f.write_str(NON_FINITE),
            Self::TooDeep => f.write_str(TOO_DEEP),
        }
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Self::Unsupported
    }
}

/// The error for a NaN or infinite float.
const NON_FINITE: &str = "a NaN or infinite float has no JSON form (it would be stored as null)";

/// The most arrays and objects `serde_json` reads nested in one another: its recursion
/// limit, 128, leaves this many.
pub(crate) const MAX_DEPTH: u8 = 127;

/// The error for a value nested deeper than [`MAX_DEPTH`].
const TOO_DEEP: &str =
    "the value nests more than 127 arrays and objects, which serde_json would not read back";

/// The name prefix of `serde_json`'s own marker structs (raw values, arbitrary-precision
/// numbers), which its serializer writes as something else than a struct.
const SERDE_JSON_MARKER: &str = "$serde_json::";

/// Writes compact JSON to `out`.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// The arrays and objects the value is written in.
    depth: u8,
}

impl Writer<'_> {
    /// `serde_json`, writing one value to the same buffer.
    fn json(&mut self) -> serde_json::Serializer<&mut Vec<u8>> {
        serde_json::Serializer::new(&mut *self.out)
    }

    fn reborrow(&mut self, depth: u8) -> Writer<'_> {
        Writer {
            out: self.out,
            depth,
        }
    }

    /// The depth inside one more array or object; refused past [`MAX_DEPTH`].
    fn deeper(depth: u8) -> Result<u8, Stop> {
        if depth >= MAX_DEPTH {
            Err(Stop::TooDeep)
        } else {
            Ok(depth + 1)
        }
    }

    fn string(&mut self, text: &str) -> Result<(), Stop> {
        if needs_escaping(text.as_bytes()) {
            return (&mut self.json())
                .serialize_str(text)
                .map_err(|_| Stop::Unsupported);
        }
        self.out.reserve(text.len() + 2);
        self.out.push(b'"');
        self.out.extend_from_slice(text.as_bytes());
        self.out.push(b'"');
        Ok(())
    }

    /// `{"variant":`, the opening of a variant with content; the depth of the content.
    fn open_variant(&mut self, variant: &str) -> Result<u8, Stop> {
        let depth = Self::deeper(self.depth)?;
        self.out.push(b'{');
        self.string(variant)?;
        self.out.push(b':');
        Ok(depth)
    }
}

/// Whether JSON escapes any of `bytes`: a quote, a backslash or a control character. No
/// early exit, so the loop is vectorized; strings are short, and this runs once each.
fn needs_escaping(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// `$then!` over the integer and boolean methods of `Serializer` with their argument types,
/// and `$more` methods after them.
macro_rules! scalars {
    ($then:ident $(, $more:ident($($type:ty),*))*) => {
        $then!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_i128(i128),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_u128(u128)
            $(, $more($($type),*))*
        );
    };
}

/// `serde_json`'s output for a leaf value, written by `serde_json`.
macro_rules! leaf {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(
            fn $method(mut self, value: $type) -> Result<(), Stop> {
                (&mut self.json()).$method(value).map_err(|_| Stop::Unsupported)
            }
        )*
    };
}

/// Float methods: a NaN or infinite float is refused (see the module docs); any other is
/// written by `serde_json`.
macro_rules! finite {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(
            fn $method(mut self, value: $type) -> Result<(), Stop> {
                if !value.is_finite() {
                    return Err(Stop::NonFinite);
                }
                (&mut self.json()).$method(value).map_err(|_| Stop::Unsupported)
            }
        )*
    };
}

impl<'a> Serializer for Writer<'a> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Sequence<'a>;
    type SerializeTuple = Sequence<'a>;
    type SerializeTupleStruct = Sequence<'a>;
    type SerializeTupleVariant = Sequence<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    scalars!(leaf);

    fn serialize_bytes(mut self, value: &[u8]) -> Result<(), Stop> {
        // Written as an array of numbers: one level deeper.
        Self::deeper(self.depth)?;
        (&mut self.json())
            .serialize_bytes(value)
            .map_err(|_| Stop::Unsupported)
    }

    finite!(serialize_f32(f32), serialize_f64(f64));

    fn serialize_char(mut self, value: char) -> Result<(), Stop> {
        self.string(value.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(mut self, value: &str) -> Result<(), Stop> {
        self.string(value)
    }

    fn serialize_none(self) -> Result<(), Stop> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Stop> {
        let start = self.out.len();
        value.serialize(Writer {
            out: &mut *self.out,
            depth: self.depth,
        })?;
        // Written as `None` is: counted, for the executor to check it reads back.
        if self.out[start..] == *b"null" {
            SOME_NULLS.set(SOME_NULLS.get() + 1);
        }
        Ok(())
    }

    fn serialize_unit(self) -> Result<(), Stop> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Stop> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Stop> {
        self.string(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        let depth = self.open_variant(variant)?;
        value.serialize(self.reborrow(depth))?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Sequence<'a>, Stop> {
        let depth = Self::deeper(self.depth)?;
        self.out.push(b'[');
        Ok(Sequence {
            out: self.out,
            depth,
            first: true,
            variant: false,
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Sequence<'a>, Stop> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Sequence<'a>, Stop> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Sequence<'a>, Stop> {
        let depth = Self::deeper(self.open_variant(variant)?)?;
        self.out.push(b'[');
        Ok(Sequence {
            out: self.out,
            depth,
            first: true,
            variant: true,
        })
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Object<'a>, Stop> {
        let depth = Self::deeper(self.depth)?;
        self.out.push(b'{');
        Ok(Object {
            out: self.out,
            depth,
            first: true,
            variant: false,
        })
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Object<'a>, Stop> {
        if name.starts_with(SERDE_JSON_MARKER) {
            return Err(Stop::Unsupported);
        }
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Object<'a>, Stop> {
        let depth = Self::deeper(self.open_variant(variant)?)?;
        self.out.push(b'{');
        Ok(Object {
            out: self.out,
            depth,
            first: true,
            variant: true,
        })
    }
}

/// An array being written: `[a,b]`, closed by a `}` too when it is a variant's content.
struct Sequence<'a> {
    out: &'a mut Vec<u8>,
    /// The arrays and objects the elements are written in, this one included.
    depth: u8,
    first: bool,
    variant: bool,
}

impl Sequence<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        value.serialize(Writer {
            out: self.out,
            depth: self.depth,
        })
    }

    fn close(self) -> Result<(), Stop> {
        self.out.push(b']');
        if self.variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

/// The four array-shaped `serde` traits, each one element at a time.
macro_rules! sequence {
    ($($trait:ident::$method:ident),+) => {
        $(
            impl ser::$trait for Sequence<'_> {
                type Ok = ();
                type Error = Stop;

                fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
                    self.element(value)
                }

                fn end(self) -> Result<(), Stop> {
                    self.close()
                }
            }
        )+
    };
}

sequence!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// An object being written: `{"k":v}`, closed by a second `}` when it is a variant's
/// content.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// The arrays and objects the values are written in, this one included.
    depth: u8,
    first: bool,
    variant: bool,
}

impl Object<'_> {
    fn comma(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<(), Stop> {
        self.comma();
        let mut writer = Writer {
            out: self.out,
            depth: self.depth,
        };
        writer.string(name)?;
        writer.out.push(b':');
        value.serialize(writer)
    }

    fn close(self) -> Result<(), Stop> {
        self.out.push(b'}');
        if self.variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Stop;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Stop> {
        self.comma();
        key.serialize(StringKey { out: self.out })?;
        self.out.push(b':');
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        value.serialize(Writer {
            out: self.out,
            depth: self.depth,
        })
    }

    fn end(self) -> Result<(), Stop> {
        self.close()
    }
}

/// The two struct-shaped `serde` traits, one named field at a time.
macro_rules! fields {
    ($($trait:ident),+) => {
        $(
            impl ser::$trait for Object<'_> {
                type Ok = ();
                type Error = Stop;

                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    name: &'static str,
                    value: &T,
                ) -> Result<(), Stop> {
                    self.field(name, value)
                }

                fn end(self) -> Result<(), Stop> {
                    self.close()
                }
            }
        )+
    };
}

fields!(SerializeStruct, SerializeStructVariant);

/// A map key, as `serde_json` writes one: a string as it is; a number, a boolean or a
/// character as a string; what `serde_json` refuses (NaN and infinite floats among them) is
/// left to it, for its error.
struct StringKey<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> StringKey<'a> {
    /// The writer of a key's text: a key holds no arrays or objects.
    fn writer(self) -> Writer<'a> {
        Writer {
            out: self.out,
            depth: 0,
        }
    }

    /// The key `write` writes, in quotes.
    fn quoted(self, write: impl FnOnce(Writer<'_>) -> Result<(), Stop>) -> Result<(), Stop> {
        self.out.push(b'"');
        write(Writer {
            out: &mut *self.out,
            depth: 0, // a key holds no arrays or objects
        })?;
        self.out.push(b'"');
        Ok(())
    }
}

/// Map-key methods that write the value quoted.
macro_rules! quoted {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(
            fn $method(self, value: $type) -> Result<(), Stop> {
                self.quoted(|writer| writer.$method(value))
            }
        )*
    };
}

/// Float map-key methods: a finite float is quoted; a NaN or infinite one is left to
/// `serde_json`, for its own error.
macro_rules! quoted_finite {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(
            fn $method(self, value: $type) -> Result<(), Stop> {
                if !value.is_finite() {
                    return Err(Stop::Unsupported);
                }
                self.quoted(|writer| writer.$method(value))
            }
        )*
    };
}

/// Map-key methods that give up.
macro_rules! not_a_string {
    ($($method:ident($($type:ty),*)),* $(,)?) => {
        $(
            fn $method(self, $(_: $type),*) -> Result<(), Stop> {
                Err(Stop::Unsupported)
            }
        )*
    };
}

impl Serializer for StringKey<'_> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = ser::Impossible<(), Stop>;
    type SerializeTuple = ser::Impossible<(), Stop>;
    type SerializeTupleStruct = ser::Impossible<(), Stop>;
    type SerializeTupleVariant = ser::Impossible<(), Stop>;
    type SerializeMap = ser::Impossible<(), Stop>;
    type SerializeStruct = ser::Impossible<(), Stop>;
    type SerializeStructVariant = ser::Impossible<(), Stop>;

    fn serialize_str(self, value: &str) -> Result<(), Stop> {
        self.writer().string(value)
    }

    scalars!(quoted);
    quoted_finite!(serialize_f32(f32), serialize_f64(f64));

    fn serialize_char(self, value: char) -> Result<(), Stop> {
        self.writer().string(value.encode_utf8(&mut [0; 4]))
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Stop> {
        self.writer().string(variant)
    }

    not_a_string!(
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Stop> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Stop> {
        Err(Stop::Unsupported)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Stop> {
        Err(Stop::Unsupported)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Stop> {
        Err(Stop::Unsupported)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Stop> {
        Err(Stop::Unsupported)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Stop> {
        Err(Stop::Unsupported)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Stop> {
        Err(Stop::Unsupported)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Stop> {
        Err(Stop::Unsupported)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Stop> {
        Err(Stop::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    use super::*;

    fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
        encoded(value, <[u8]>::to_vec)
    }

    /// Writes `value` both ways and insists on the same bytes (or both failing).
    fn same<T: Serialize + ?Sized + std::fmt::Debug>(value: &T) {
        match (to_vec(value), serde_json::to_vec(value)) {
            (Ok(ours), Ok(theirs)) => assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "{value:?}"
            ),
            (Err(ours), Err(theirs)) => assert_eq!(ours.to_string(), theirs.to_string()),
            (ours, theirs) => panic!("{value:?}: ours {ours:?}, serde_json {theirs:?}"),
        }
    }

    #[derive(Debug, Serialize)]
    struct Unit;

    #[derive(Debug, Serialize)]
    struct Newtype(String);

    #[derive(Debug, Serialize)]
    struct Pair(u8, &'static str);

    #[derive(Debug, Serialize)]
    struct Empty {}

    #[derive(Debug, Serialize)]
    enum Shape {
        Unit,
        Newtype(Vec<u8>),
        Tuple(i32, Option<bool>),
        Struct {
            name: &'static str,
            #[serde(rename = "we\"ird")]
            weird: f64,
        },
        Empty(),
    }

    #[derive(Debug, Serialize)]
    struct Charge {
        id: String,
        cents: u64,
        refunded: bool,
        fee: Option<f32>,
        tags: Vec<&'static str>,
        meta: BTreeMap<String, serde_json::Value>,
        shape: Shape,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        #[serde(flatten)]
        extra: HashMap<String, i8>,
    }

    #[test]
    fn every_byte_in_a_string_is_written_as_serde_json_writes_it() {
        for byte in 0..=0x7F_u8 {
            let text = format!("a{}b", char::from(byte));
            same(&text);
            same(&char::from(byte));
            same(&BTreeMap::from([(text.clone(), text)]));
        }
        for text in [
            "",
            "plain",
            "é ü 😀",
            "\u{7f}",
            "tab\tquote\"slash\\",
            // An even number of characters to escape: a check that toggles per character
            // instead of remembering any would call these clean.
            "two \"quotes\"",
            "\r\n",
            "\u{2028}",
        ] {
            same(text);
        }
        same(&"x".repeat(10_000));
        same(&format!("{}\n", "y".repeat(1000)));
    }

    #[test]
    fn every_shape_is_written_as_serde_json_writes_it() {
        same(&Unit);
        same(&());
        same(&Newtype("n".into()));
        same(&Pair(7, "p"));
        same(&Empty {});
        same(&(
            1_u8,
            -2_i64,
            3.5_f64,
            'c',
            "t",
            None::<u8>,
            Some(()),
            i128::MIN,
            u128::MAX,
        ));
        same(&[-0.0, 1e300, 0.1, f64::MAX, f64::MIN_POSITIVE]);
        same(&[f32::MIN_POSITIVE, 1.0]);
        same(&Vec::<u8>::new());
        same(&serde_bytes_like());
        for shape in [
            Shape::Unit,
            Shape::Newtype(vec![1, 2]),
            Shape::Tuple(-1, Some(true)),
            Shape::Struct {
                name: "s",
                weird: 2.0,
            },
            Shape::Empty(),
        ] {
            same(&shape);
            same(&vec![shape]);
        }
        let charge = Charge {
            id: "ch_1".into(),
            cents: 4999,
            refunded: false,
            fee: Some(0.3),
            tags: vec!["a", "b\u{1}"],
            meta: BTreeMap::from([
                (
                    "k".into(),
                    serde_json::json!({"nested": [1, "two", null, {"x": 1.5}]}),
                ),
                ("q\"".into(), serde_json::Value::Null),
            ]),
            shape: Shape::Tuple(3, None),
            skipped: None,
            extra: HashMap::from([("flat".into(), -3)]),
        };
        same(&charge);
        same(&serde_json::to_value(&charge).expect("a value"));
        same(&Ok::<_, ()>(Some(vec![Some("a"), None])));
    }

    /// Bytes, written by `serde_json` as an array of numbers.
    fn serde_bytes_like() -> impl Serialize + std::fmt::Debug {
        #[derive(Debug)]
        struct Raw(&'static [u8]);
        impl Serialize for Raw {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(self.0)
            }
        }
        Raw(b"\x00\xff")
    }

    /// Keys `serde_json` quotes (numbers, booleans) or refuses, and errors: `serde_json`'s own
    /// output and words.
    #[test]
    fn what_is_left_to_serde_json_comes_out_as_serde_json_writes_it() {
        same(&BTreeMap::from([(1_u32, "one"), (2, "two")]));
        same(&BTreeMap::from([(true, 1)]));
        same(&BTreeMap::from([('c', 1)]));
        same(&HashMap::from([((1_u8, 2_u8), 3_u8)]));
        same(&vec![BTreeMap::from([(Some(1), 1)])]);
        same(&BTreeMap::from([(None::<u8>, 1)]));
        same(&BTreeMap::from([(i128::MIN, 1), (0, 2)]));
        same(&BTreeMap::from([(u128::MAX, 1)]));
        #[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
        enum Color {
            Red,
            #[serde(rename = "g\"reen")]
            Green,
        }
        same(&BTreeMap::from([(Color::Red, 1), (Color::Green, 2)]));
        for float in [1.5_f64, -0.0, 1e300, f64::NAN, f64::INFINITY] {
            #[derive(Debug)]
            struct FloatKey(f64);
            impl Serialize for FloatKey {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    use ser::SerializeMap;
                    let mut map = serializer.serialize_map(Some(1))?;
                    map.serialize_entry(&self.0, &(self.0 as f32).to_bits())?;
                    map.serialize_entry(&"q\"", &'c')?;
                    map.end()
                }
            }
            same(&FloatKey(float));
        }
        // Keys that wrap a value: a newtype struct, a newtype variant.
        #[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
        struct Name(String);
        #[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
        enum Tagged {
            Id(u8),
        }
        same(&BTreeMap::from([(Name("n".into()), 1)]));
        same(&BTreeMap::from([(Tagged::Id(4), 1)]));
        #[derive(Debug)]
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("refused by its own impl"))
            }
        }
        same(&(1, Refuses));
        assert!(to_vec(&Refuses).is_err());
    }

    /// A NaN or infinite float is refused, wherever it is: `serde_json` would write `null`,
    /// which does not read back as the float.
    #[test]
    fn a_non_finite_float_is_refused() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let error = to_vec(&bad).expect_err("refused");
            assert!(error.to_string().contains("NaN or infinite"), "{error}");
            assert!(to_vec(&Some(bad)).is_err());
            assert!(to_vec(&(bad as f32)).is_err());
            assert!(to_vec(&BTreeMap::from([(1_u8, vec![0.5, bad])])).is_err());
            assert!(to_vec(&BTreeMap::from([(1_u8, bad)])).is_err());
            assert!(to_vec(&HashMap::from([((1_u8, 2_u8), bad)])).is_err());
            // Under float keys too, which the writer quotes itself.
            assert!(to_vec(&FloatKeyed(1.5_f32, bad)).is_err());
            assert!(to_vec(&FloatKeyed(1.5_f64, bad)).is_err());
        }
    }

    /// A `Some` of a value written as `null` is written as `serde_json` writes it, and
    /// counted, wherever it is; a `Some` of anything else is not counted.
    #[test]
    fn a_some_written_as_null_is_counted() {
        let counted = |value: &dyn erased::Value| -> usize { value.counted().expect("written").1 };
        for (value, nulls) in [
            (&Some(None::<u8>) as &dyn erased::Value, 1),
            (&Some(()), 1),
            (&Some(Unit), 1),
            (&Some(serde_json::Value::Null), 1),
            (&vec![Some(Some(1_u8)), Some(None), Some(None)], 2),
            (&BTreeMap::from([(1_u8, Some(()))]), 1),
            (&Some(Some(1_u8)), 0),
            (&Some(""), 0),
            (&Some(vec![None::<u8>]), 0),
            (&BTreeMap::from([(Some(1_u8), 2_u8)]), 0),
        ] {
            assert_eq!(counted(value), nulls, "{value:?}");
            value.same();
        }
    }

    /// Object-safe views of what the tests write, to list values of many types.
    mod erased {
        use super::*;

        pub(super) trait Value: std::fmt::Debug {
            fn counted(&self) -> serde_json::Result<(Vec<u8>, usize)>;
            fn same(&self);
        }

        impl<T: Serialize + std::fmt::Debug> Value for T {
            fn counted(&self) -> serde_json::Result<(Vec<u8>, usize)> {
                encoded_counted(self, <[u8]>::to_vec)
            }
            fn same(&self) {
                super::same(self);
            }
        }
    }

    /// A value is refused exactly when `serde_json` would not read it back for its depth, in
    /// every shape that nests: arrays, objects, variants with content, bytes.
    #[test]
    fn a_value_is_refused_exactly_when_it_nests_too_deep_to_read_back() {
        #[derive(Debug, Serialize)]
        enum Nest {
            Leaf,
            Bytes(#[serde(serialize_with = "as_bytes")] u8),
            Newtype(Box<Nest>),
            Tuple(Box<Nest>, u8),
            Struct { inner: Box<Nest> },
            Array(Vec<Nest>),
            Map(BTreeMap<String, Nest>),
        }
        fn as_bytes<S: Serializer>(byte: &u8, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&[*byte])
        }
        let wrappers: [fn(Nest) -> Nest; 5] = [
            |n| Nest::Newtype(Box::new(n)),
            |n| Nest::Tuple(Box::new(n), 1),
            |n| Nest::Struct { inner: Box::new(n) },
            |n| Nest::Array(vec![n]),
            |n| Nest::Map(BTreeMap::from([("k".to_owned(), n)])),
        ];
        for wrap in wrappers {
            for bottom in [|| Nest::Leaf, || Nest::Bytes(7)] {
                let (mut written, mut refused) = (0, 0);
                for levels in 60..135 {
                    let value = (0..levels).fold(bottom(), |inner, _| wrap(inner));
                    let json = serde_json::to_vec(&value).expect("serde_json writes it");
                    let readable = serde_json::from_slice::<serde_json::Value>(&json).is_ok();
                    match to_vec(&value) {
                        Ok(ours) => {
                            assert!(readable, "written, unreadable: {levels} of {value:?}");
                            assert_eq!(ours, json);
                            written += 1;
                        }
                        Err(error) => {
                            assert!(!readable, "refused, readable: {levels} of {value:?}");
                            assert!(error.to_string().contains("127"), "{error}");
                            refused += 1;
                        }
                    }
                }
                assert!(
                    written > 0 && refused > 0,
                    "{written} written, {refused} refused"
                );
            }
        }
        // At the edge: 127 arrays are read back, 128 are not.
        let arrays = |depth: usize| {
            (0..depth).fold(serde_json::Value::Null, |inner, _| {
                serde_json::Value::Array(vec![inner])
            })
        };
        same(&arrays(usize::from(MAX_DEPTH)));
        assert!(to_vec(&arrays(usize::from(MAX_DEPTH) + 1)).is_err());
    }

    /// A map of one entry whose key is a float, which `BTreeMap` cannot hold.
    #[derive(Debug)]
    struct FloatKeyed<K>(K, f64);

    impl<K: Serialize> Serialize for FloatKeyed<K> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use ser::SerializeMap;
            let mut map = serializer.serialize_map(Some(1))?;
            map.serialize_entry(&self.0, &self.1)?;
            map.end()
        }
    }

    #[test]
    fn float_keys_are_written_as_serde_json_writes_them() {
        for key in [
            1.5_f32,
            -0.0,
            3.4e38,
            f32::MIN_POSITIVE,
            f32::NAN,
            f32::INFINITY,
        ] {
            same(&FloatKeyed(key, 2.0));
        }
        for key in [1.5_f64, -0.0, 1e300, f64::NAN, f64::NEG_INFINITY] {
            same(&FloatKeyed(key, 2.0));
        }
    }

    /// An outcome whose own `Serialize` encodes another while the thread's buffer is in use
    /// gets a buffer of its own, and neither is disturbed.
    #[test]
    fn an_encoding_inside_an_encoding_gets_a_buffer_of_its_own() {
        #[derive(Debug)]
        struct Nested;
        impl Serialize for Nested {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let inner = to_vec(&vec!["inner"]).map_err(ser::Error::custom)?;
                serializer.serialize_str(&String::from_utf8_lossy(&inner))
            }
        }
        assert_eq!(
            to_vec(&("a", Nested)).expect("encodes"),
            br#"["a","[\"inner\"]"]"#
        );
        same(&("a", Nested));
        let big = "z".repeat(SCRATCH_KEPT * 2);
        same(&big);
        SCRATCH.with(|scratch| assert!(scratch.borrow().capacity() <= SCRATCH_KEPT));
    }
}
