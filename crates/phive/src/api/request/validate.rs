//! Small field checks shared by the request translators; every error names its field.

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
