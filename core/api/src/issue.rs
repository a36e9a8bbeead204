//! One problem with a config ([`ConfigIssue`]): what every check of a method's settings reports,
//! from the schema's bounds to a method's own rules.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// One problem with a config: where (a JSON pointer), the offending value, and the rule.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ConfigIssue {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(path: &str, value: Option<Value>, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            path: path.to_string(),
            value,
            message: message.into(),
        }
    }

    /// A broken rule about `field` of the settings `given` (the object under `prefix`): the value
    /// given, or, when the field was left out, a message saying the default breaks the rule.
    pub fn of_rule(prefix: &str, field: &str, given: &Value, message: String) -> ConfigIssue {
        let value = given.get(field).cloned();
        let message = match value {
            Some(_) => message,
            None => format!("{message} (this is the default `{field}`: give one that fits)"),
        };
        ConfigIssue::new(&format!("{prefix}/{field}"), value, message)
    }

    /// The same issue with `prefix` put before its path (an issue of a nested config).
    pub fn prefixed(mut self, prefix: &str) -> ConfigIssue {
        self.path = format!("{prefix}{}", self.path);
        self
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        match &self.value {
            Some(v) => write!(f, "{path} = {v}: {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}
