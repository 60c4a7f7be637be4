//! Constants defined once, here in Rust, and handed to the Lua scripts as locals: the reply
//! codes and the record and token layouts. Neither side writes a bare number the other must
//! match by hand.

/// Defines each constant for Rust, and `$lua`: the same constants as Lua locals, one line
/// each (`local {prefix}{NAME} = value`), which [`crate::scripts`] puts ahead of every
/// script.
macro_rules! shared_with_lua {
    (
        $(#[$lua_doc:meta])* $lua:ident, lua prefix $prefix:literal;
        $( $(#[$doc:meta])* const $name:ident: $ty:ty = $value:literal; )+
    ) => {
        $( $(#[$doc])* pub(crate) const $name: $ty = $value; )+
        $(#[$lua_doc])*
        pub(crate) const $lua: &str =
            concat!($("local ", $prefix, stringify!($name), " = ", $value, "\n"),+);
    };
}
