//! Small field checks shared by the request translators; every error names its field.

use serde_json::Value;

use crate::api::ApiError;

/// The `param` of an error about the top-level field `name`.
pub(super) fn p(name: &str) -> Option<String> {
    Some(name.to_string())
}

pub(super) fn check_range(name: &str, value: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => {
            Err(ApiError::invalid(p(name), format!("{name} must be between {lo} and {hi}, got {v}")))
        }
        _ => Ok(()),
    }
}

/// Refuses an unsupported feature unless its field is absent, `null` or empty.
pub(super) fn check_empty(name: &str, value: &Option<Value>, what: &str) -> Result<(), ApiError> {
    let empty = match value {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if empty {
        Ok(())
    } else {
        Err(ApiError::invalid(p(name), format!("{what} is not supported by phive"))
            .with_code("unsupported_parameter"))
    }
}
