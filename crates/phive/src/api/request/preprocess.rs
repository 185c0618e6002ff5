//! The crop-limit extra fields of a chat request: `num_crops` (Phi-3.5-vision) and `dynamic_hd`
//! (Phi-4-multimodal) at the top level, or nested in vLLM's `mm_processor_kwargs`. Ranges and
//! the model family are checked where the model is known ([`crate::api::ChatInput::prepare`]).

use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::models::PreprocessOptions;

/// vLLM's `mm_processor_kwargs`: the same crop limits as the top-level fields. Other keys are
/// refused rather than ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MmProcessorKwargs {
    /// As the request's `num_crops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 256)]
    pub num_crops: Option<usize>,
    /// As the request's `dynamic_hd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1024)]
    pub dynamic_hd: Option<usize>,
}

/// The request's crop limits; a limit given both ways must agree.
pub(super) fn preprocess_options(
    num_crops: Option<usize>,
    dynamic_hd: Option<usize>,
    nested: Option<&MmProcessorKwargs>,
) -> Result<PreprocessOptions, ApiError> {
    let nested = nested.cloned().unwrap_or_default();
    let merge = |name: &str, top: Option<usize>, inner: Option<usize>| match (top, inner) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid(
            Some(format!("mm_processor_kwargs.{name}")),
            format!("{name} is {a} but mm_processor_kwargs.{name} is {b}; give one value"),
        )),
        _ => Ok(top.or(inner)),
    };
    Ok(PreprocessOptions {
        num_crops: merge("num_crops", num_crops, nested.num_crops)?,
        dynamic_hd: merge("dynamic_hd", dynamic_hd, nested.dynamic_hd)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::{phi3v_hd::MAX_NUM_CROPS, phi4mm_hd::MAX_DYNAMIC_HD};
    use utoipa::PartialSchema;

    #[test]
    fn takes_either_spelling_and_refuses_a_conflict() {
        let kwargs = |n| MmProcessorKwargs { num_crops: Some(n), dynamic_hd: None };
        let options = preprocess_options(None, Some(9), Some(&kwargs(16))).unwrap();
        assert_eq!(options, PreprocessOptions { num_crops: Some(16), dynamic_hd: Some(9) });
        assert_eq!(preprocess_options(Some(4), None, Some(&kwargs(4))).unwrap().num_crops, Some(4));
        let err = preprocess_options(Some(4), None, Some(&kwargs(16))).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("mm_processor_kwargs.num_crops"));
        assert_eq!(preprocess_options(None, None, None).unwrap(), PreprocessOptions::default());
        let unknown = serde_json::from_value::<MmProcessorKwargs>(serde_json::json!({"max_pixels": 1}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field `max_pixels`"));
    }

    #[test]
    fn the_schema_bounds_are_the_preprocessors() {
        let schema = serde_json::to_value(MmProcessorKwargs::schema()).unwrap();
        let props = &schema["properties"];
        assert_eq!(props["num_crops"]["maximum"], serde_json::json!(MAX_NUM_CROPS), "{schema}");
        assert_eq!(props["dynamic_hd"]["maximum"], serde_json::json!(MAX_DYNAMIC_HD), "{schema}");
        assert_eq!(props["num_crops"]["minimum"], serde_json::json!(1));
    }
}
