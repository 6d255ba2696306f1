//! Why a tool call failed, in the classes the statistics count: the
//! sandbox's exception classes ([`ErrorClass`]) plus the failures the agent
//! sees around the interpreter (an unparsable call, a timeout, the memory cap).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sandbox::ErrorClass;

/// The class of a failed tool call. Stored as its name (`"SyntaxError"`, ...,
/// `"other"`, `"format"`, `"timeout"`, `"memory"`), the strings trajectory
/// files have always held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The code raised, or ended otherwise badly ([`ErrorClass::Other`]:
    /// the interpreter crashed or the output overflowed).
    Error(ErrorClass),
    /// The call could not be parsed; nothing ran.
    Format,
    /// The code ran past the time limit.
    Timeout,
    /// The code ran past the memory limit.
    Memory,
}

impl FailureClass {
    /// The name statistics and trajectory files use.
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Error(class) => class.name(),
            FailureClass::Format => "format",
            FailureClass::Timeout => "timeout",
            FailureClass::Memory => "memory",
        }
    }

    /// The class named `name` exactly ([`FailureClass::name`] reversed).
    pub fn from_name(name: &str) -> Option<FailureClass> {
        match name {
            "format" => Some(FailureClass::Format),
            "timeout" => Some(FailureClass::Timeout),
            "memory" => Some(FailureClass::Memory),
            _ => {
                // `of_exception` folds subclasses and unknown names into a
                // class; only a class's own name reads back as that class.
                let class = ErrorClass::of_exception(name);
                (class.name() == name).then_some(FailureClass::Error(class))
            }
        }
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for FailureClass {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for FailureClass {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        FailureClass::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown failure class {name:?} (expected an exception class such as \
                 \"SyntaxError\", or \"other\", \"format\", \"timeout\", \"memory\")"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_json() {
        let classes = [
            FailureClass::Error(ErrorClass::SyntaxError),
            FailureClass::Error(ErrorClass::NameError),
            FailureClass::Error(ErrorClass::ZeroDivisionError),
            FailureClass::Error(ErrorClass::Other),
            FailureClass::Format,
            FailureClass::Timeout,
            FailureClass::Memory,
        ];
        for c in classes {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<FailureClass>(&json).unwrap(), c);
        }
        assert_eq!(
            FailureClass::Error(ErrorClass::Other).name(),
            "other",
            "files hold the lowercase name"
        );
    }

    #[test]
    fn only_exact_class_names_read_back() {
        // A subclass name is folded into its class when classifying, but a
        // file holding it was not written by this format.
        assert_eq!(FailureClass::from_name("UnboundLocalError"), None);
        assert_eq!(FailureClass::from_name("Other"), None);
        assert_eq!(FailureClass::from_name(""), None);
        let e = serde_json::from_str::<FailureClass>("\"Timeout\"").unwrap_err();
        assert!(e.to_string().contains("unknown failure class"), "{e}");
    }
}
