//! Test-only fault injection: with the `fault-injection` feature, a prompt containing
//! `<<phive-fault:POINT>>` panics at that point, so tests can prove that a bug in one request
//! fails only that request (and that a dead engine loop is reported). Without the feature the
//! hook is an empty inline function, so release builds carry nothing of it.

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// While preparing the prompt (front end side, before submission).
    Prepare,
    /// While generating one row of a step (sampling and detokenizing).
    Row,
    /// In the engine loop itself, outside any per-request guard: kills the loop.
    EngineLoop,
}

impl Fault {
    /// The marker a prompt carries to trigger this fault.
    pub fn marker(self) -> &'static str {
        match self {
            Fault::Prepare => "<<phive-fault:prepare>>",
            Fault::Row => "<<phive-fault:row>>",
            Fault::EngineLoop => "<<phive-fault:engine-loop>>",
        }
    }
}

/// Panics if `prompt` asks for `fault`.
#[cfg(feature = "fault-injection")]
pub fn inject(fault: Fault, prompt: &str) {
    if prompt.contains(fault.marker()) {
        panic!("injected fault: {fault:?}");
    }
}

/// Does nothing: fault injection is compiled out.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn inject(_fault: Fault, _prompt: &str) {}
