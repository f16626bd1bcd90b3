//! Enums whose values have names: the config's, the CLI's and the views' words for
//! roles, fates, attach modes, entry sources and protocols, declared once.
//!
//! Contract: [`named_enum!`] gives an enum its `ALL` values, `name()`, `Display`,
//! `FromStr` (the exact name, nothing else) and `expected()`, the list of valid names
//! that error messages quote; so a name is written in one place, and a message can
//! never list a name the parser refuses. Such an enum is a plain value: the macro
//! derives `Clone`, `Copy`, `Debug`, `PartialEq` and `Eq`; other derives are the
//! declaration's. Values the kernel stores are the enum's own business (`to_kernel`),
//! beside it.

/// A name that is none of an enum's ([`named_enum!`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{input}` (expected {expected})")]
pub struct Unknown {
    pub what: &'static str,
    pub input: String,
    /// The valid names, as [`list`] writes them.
    pub expected: String,
}

/// `a`, `a or b`, `a, b or c`.
pub fn list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Declare an enum whose variants have names:
/// `named_enum! { /// doc  pub enum Fate ("fate") { Pass = "pass", Drop = "drop" } }`;
/// the string after the enum's name is what an [`Unknown`] error calls it. The enum
/// derives `Clone`, `Copy`, `Debug`, `PartialEq` and `Eq` (its `name` takes it by
/// value); attributes before `enum`, further derives among them, are passed on.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            $vis const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's name in the config, the CLI and the views.
            $vis fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The valid names, for messages: `a, b or c`.
            $vis fn expected() -> String {
                $crate::names::list(&[$($text),+])
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::names::Unknown;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                Self::ALL.iter().copied().find(|v| v.name() == input).ok_or_else(|| $crate::names::Unknown {
                    what: $what,
                    input: input.to_owned(),
                    expected: Self::expected(),
                })
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        enum Colour ("colour") { Red = "red", Green = "green", Blue = "blue" }
    }

    #[test]
    fn names_round_trip_and_refusals_list_every_name() {
        for c in Colour::ALL {
            assert_eq!(c.name().parse::<Colour>(), Ok(*c));
            assert_eq!(c.to_string(), c.name());
        }
        let e = "Red".parse::<Colour>().unwrap_err();
        assert_eq!(e.to_string(), "unknown colour `Red` (expected red, green or blue)");
        assert_eq!(super::list(&["a"]), "a");
        assert_eq!(super::list(&["a", "b"]), "a or b");
    }
}
